"""The restore wizard's platform branch (issue 13): a recovery plan, the point in time, the plan
per component with its checks and skew, the typed confirmation, progress, the result with data
loss per component; and the dashboard's newest recoverable point. Two file-tree components
(real repository, real group backup) keep it fast; the engine tests cover PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select

from tests.tui.conftest import CONFIG, make_workspace
from tests.tui.test_console import settle, static_text, table_rows

PLATFORM = """
[group.both]
policies = ["app_files", "etc"]

[recovery.platform]
components = ["etc", "app_files"]
group = "both"
targets = {{ etc = "{target}/etc", app_files = "{target}/app" }}
"""


@pytest.fixture
def platform_ws(tmp_path):
    from insite_console import group
    from insite_console.workspace import Workspace

    root = tmp_path / "ws"
    make_workspace(root, backups=False).close()
    target = tmp_path / "restored"
    (root / "config.toml").write_text(CONFIG + PLATFORM.format(target=target))
    ws = Workspace.load(root / "config.toml")
    point = group.run(ws, "both")
    assert point["status"] == "succeeded", point
    ws.point, ws.target = point, target
    yield ws
    ws.close()


def _restored(ws, policy: str, name: str) -> Path:
    source = ws.config.sources[policy]["paths"][0]
    return ws.target / ("etc" if policy == "etc" else "app") / source.lstrip("/") / name


async def test_platform_recovery_through_the_wizard_with_typed_confirmation(platform_ws):
    from insite_console.tui.app import InsiteApp
    from insite_console.tui.screens.platform import PlatformRecoveryScreen

    ws = platform_ws
    hosts = _restored(ws, "etc", "hosts")
    hosts.parent.mkdir(parents=True)
    hosts.write_text("damaged\n")  # the etc target holds something the recovery overwrites
    app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        panel = static_text(app, "#recoverable")
        assert "platform: the whole platform to" in panel and f"group point {ws.point['id']}" in panel

        await pilot.press("4")
        await settle(app, pilot)
        kind = app.screen.query_one("#restore-kind", Select)
        assert kind.display and kind.has_focus  # the first choice: one backup, or the platform
        kind.value = "platform"
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, PlatformRecoveryScreen)
        assert "the whole platform to" in static_text(app, "#pr-about")
        screen.query_one("#pr-reason", Input).value = "incident 7"
        await pilot.press("ctrl+n")  # empty time: the latest
        await settle(app, pilot)
        assert screen.step == 1 and screen.plan_ok
        summary = static_text(app, "#pr-summary")
        assert f"Group restore point {ws.point['id']}" in summary and "Skew between" in summary
        rows = table_rows(screen.query_one("#pr-table", DataTable))
        assert [r[0] for r in rows] == ["etc", "app_files"]  # in the plan's order
        assert (rows[0][5], rows[1][5], rows[1][7]) == ("1", "0", "✓ ok")
        checks = static_text(app, "#pr-checks")
        assert "etc: target now: 1 existing item(s) overwritten" in checks and "target reachable" in checks

        await pilot.press("ctrl+n")  # confirm
        await pilot.pause()
        field = screen.query_one("#pr-confirm-input", Input)
        assert field.display and field.has_focus
        assert "Type the plan name exactly" in static_text(app, "#pr-confirm-text")
        field.value = "plat"
        await pilot.press("enter")
        await settle(app, pilot)
        assert screen.step == 2 and "nothing was restored" in static_text(app, "#pr-confirm-error")
        assert hosts.read_text() == "damaged\n"

        field.value = "platform"
        await pilot.press("enter")
        await settle(app, pilot, 0.2)
        await settle(app, pilot, 0.6)
        assert screen.step == 4, static_text(app, "#pr-progress")
        result = static_text(app, "#pr-result")
        assert "✓ ok" in result and f"to group restore point {ws.point['id']}" in result
        rows = table_rows(screen.query_one("#pr-result-table", DataTable))
        assert [(r[0], r[1], r[4]) for r in rows] == [("etc", "✓ ok", "✓ verified"), ("app_files", "✓ ok", "✓ verified")]
        assert all(r[3] not in ("—", "") for r in rows)  # data loss per component
        await pilot.press("3")  # Live jobs: the recovery and each component's restore
        await settle(app, pilot, 0.3)
        jobs = [(r[1], r[2], r[0]) for r in table_rows(app.screen.query_one("#job-table", DataTable))]
        assert jobs.count(("recover", "platform", "✓ ok")) == 1, jobs  # one row: the console's job is the run
        assert sum(1 for kind, _, status in jobs if kind == "restore" and status == "✓ ok") == 2, jobs
    source = Path(ws.config.sources["etc"]["paths"][0]) / "hosts"
    assert hosts.read_bytes() == source.read_bytes()
    [record] = ws.catalog.recoveries()
    assert record["status"] == "succeeded" and record["reason"] == "incident 7"
    runs = {(r["kind"], r["status"]) for r in ws.catalog.runs(limit=20)}
    assert ("recover", "succeeded") in runs and ("restore", "succeeded") in runs  # in Live jobs


async def test_a_failed_pre_flight_keeps_the_recovery_from_starting(platform_ws):
    from insite_console.tui.app import InsiteApp
    from insite_console.tui.screens.platform import PlatformRecoveryScreen

    ws = platform_ws
    app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.push_screen(PlatformRecoveryScreen("platform"))
        await settle(app, pilot)
        app.screen.query_one("#pr-at", Input).value = "2000-01-01T00:00:00Z"
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        screen = app.screen
        assert screen.plan is None and "no succeeded group restore point" in static_text(app, "#pr-summary")
        assert screen.query_one("#pr-next").disabled
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.step == 1  # cannot go on
    assert ws.catalog.recoveries() == []
