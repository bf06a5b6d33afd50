"""Policy trends (issue 9, plots): the age of the newest restore point against the RPO over the
last day, and the size and duration of the last backups, from the dashboard's `p`."""

from __future__ import annotations

from datetime import timedelta

from textual.widgets import Sparkline

from insite_console import clock
from tests.tui.test_console import settle, static_text

NOW = "2026-11-27T12:00:00Z"


def _history(catalog, policy: str) -> None:
    """Backups every 30 minutes over the last day, none from 10:00 to 07:00 before now (a
    3-hour gap), each a bit bigger and slower than the one before."""
    now = clock.parse_iso(NOW)
    for i in range(50):
        end = now - timedelta(minutes=30 * i)
        if now - timedelta(hours=10) < end < now - timedelta(hours=7):
            continue
        start = end - timedelta(seconds=60 + (50 - i))
        catalog.insert_backup({"id": f"{i:016x}", "policy": policy, "source": policy, "source_type": "files",
                               "storage": "local", "type": "incremental", "status": "succeeded",
                               "started_at": clock.iso(start), "finished_at": clock.iso(end),
                               "bytes_read": 1000, "bytes_stored": 1000 * (50 - i), "files": 3})


async def test_trends_show_a_breach_of_the_rpo_and_the_last_runs(make_app, console_workspace, monkeypatch):
    catalog = console_workspace.catalog
    catalog.db.execute("DELETE FROM backups WHERE policy = 'app_files'")
    _history(catalog, "app_files")
    monkeypatch.setenv("INSITE_FAKE_NOW", NOW)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.screen.selected_policy() == "app_files"
        await pilot.press("p")
        await settle(app, pilot)
        ages = app.screen.query_one("#rpo-plot", Sparkline).data
        assert len(ages) == 48 and max(ages) == 2 * 3600  # the gap, capped at 2 × RPO (1h)
        assert ages[0] <= 30 * 60 and ages[-1] == 0  # a backup ended right now
        title = static_text(app, "#rpo-title")
        assert "✗ over the RPO for about" in title and "worst 2h 5" in title
        sizes = app.screen.query_one("#size-plot", Sparkline).data
        assert len(sizes) == 30 and sizes == sorted(sizes) and sizes[-1] == 50_000
        durations = app.screen.query_one("#duration-plot", Sparkline).data
        assert durations == sorted(durations) and durations[-1] == 110
        assert "newest 48.8 KiB" in static_text(app, "#size-title")
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "DashboardScreen"


async def test_trends_of_a_policy_within_its_rpo_all_day(make_app, console_workspace, monkeypatch):
    catalog = console_workspace.catalog
    catalog.db.execute("DELETE FROM backups WHERE policy = 'etc'")  # RPO 1d
    _history(catalog, "etc")
    monkeypatch.setenv("INSITE_FAKE_NOW", NOW)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("down", "p")
        await settle(app, pilot)
        assert "Policy etc" in static_text(app, "#policy-head")
        assert "✓ within the RPO all day" in static_text(app, "#rpo-title")
