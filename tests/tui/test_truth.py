"""The console tells the truth, live (issue 9): health on a timer, the time asked for a restore,
safe wizard defaults, vanished storage, a wrong passphrase, scheduler liveness. Time moves with
INSITE_FAKE_NOW (clock.now()), and no key is pressed between the two checks of a live change."""

from __future__ import annotations

import shutil

from textual.widgets import DataTable, Input, Static

from insite_console import backup
from tests.tui.test_console import settle, static_text, table_rows


async def wait_until(pilot, predicate, seconds: float = 3.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await pilot.pause(0.05)
    return predicate()


# ----- 2, 3: the restore wizard --------------------------------------------------------------


def _two_points(ws, monkeypatch) -> tuple[str, str]:
    monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T19:00:00Z")
    early = backup.run(ws, "app_files", "full")["id"]
    monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T19:11:00Z")
    late = backup.run(ws, "app_files", "full")["id"]
    monkeypatch.setenv("INSITE_FAKE_NOW", "2030-01-01T19:20:00Z")
    return early, late


async def test_a_typed_time_applies_on_ctrl_n_and_the_plan_repeats_it(make_app, console_workspace, monkeypatch):
    early, late = _two_points(console_workspace, monkeypatch)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        screen = app.screen
        assert screen.backup["id"] == late  # the newest is highlighted first
        screen.query_one("#at", Input).focus()
        await pilot.pause()
        await pilot.press(*"2030-01-01T19:05:30Z")
        await pilot.press("ctrl+n")  # no enter: leaving the field applies it
        await settle(app, pilot)
        assert app.current_mode == "restore" and screen.step == 1
        assert screen.backup["id"] == early
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        assert screen.step == 3
        summary = static_text(app, "#plan-summary")
        assert "You asked for 2030-01-01 19:05:30 UTC; restore point " + early in summary
        assert "taken at 2030-01-01 19:00:00 UTC (5m 30s before it)" in summary
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert "You asked for 2030-01-01 19:05:30" in static_text(app, "#confirm-text")


async def test_tab_applies_the_time_and_a_newer_point_is_refused(make_app, console_workspace, monkeypatch):
    from insite_console import restore
    from insite_console.errors import RestoreRefused
    from insite_console.clock import parse_iso

    early, late = _two_points(console_workspace, monkeypatch)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        screen = app.screen
        screen.query_one("#at", Input).focus()
        await pilot.press(*"2030-01-01T19:05:30Z", "tab")
        await settle(app, pilot)
        assert screen.backup["id"] == early and "You asked for" in static_text(app, "#window")
        screen.choose(screen._points[late])  # a newer point chosen by hand: refused
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        assert screen.step == 0 and "taken after the time you asked" in static_text(app, "#window")
    try:
        restore.run(console_workspace, late, "/tmp/nowhere", dry_run=True, at=parse_iso("2030-01-01T19:05:30Z"))
    except RestoreRefused as exc:
        assert "after the time asked" in str(exc)
    else:
        raise AssertionError("the engine restored a point newer than the time asked")


async def test_every_new_restore_starts_beside_production(make_app, console_workspace):
    etc = console_workspace.catalog.backups(policy="etc")[0]["id"]
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        screen = app.screen
        await pilot.press("ctrl+n", "ctrl+n")
        await settle(app, pilot)
        screen.query_one("#where-original").value = True
        await pilot.pause()
        assert screen.where_mode == "original" and screen.target == "/"
        app.open_restore(etc)  # a new restore, as `r` in the catalog starts one
        await settle(app, pilot)
        assert screen.step == 0 and screen.backup["id"] == etc
        assert screen.where_mode == "beside" and screen.target.endswith(f"restores/{etc}")
        screen.query_one("#where-original").value = True
        await pilot.pause()
        screen.reset()  # "New restore" on the result step
        await pilot.pause()
        assert screen.where_mode == "beside" and screen.target != "/"
