"""The console tells the truth, live (issue 9): health on a timer, the time asked for a restore,
safe wizard defaults, vanished storage, a wrong passphrase, scheduler liveness. Time moves with
INSITE_FAKE_NOW (clock.now()), and no key is pressed between the two checks of a live change."""

from __future__ import annotations

import shutil

from textual.widgets import DataTable, Input, Static

from insite_console import backup
from tests.tui.tables import column_index, keyed_rows
from tests.tui.test_console import settle, static_text


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


async def _type_time(app, pilot, leave_with: str):
    """Open the wizard, type the time asked into its field, leave the field with `leave_with`."""
    await pilot.press("4")
    await settle(app, pilot)
    app.screen.query_one("#at", Input).focus()
    await pilot.pause()
    await pilot.press(*"2030-01-01T19:05:30Z", leave_with)  # the "2"s must not switch screens
    await settle(app, pilot)
    return app.screen


async def test_a_typed_time_applies_on_ctrl_n_and_the_plan_repeats_it(make_app, console_workspace, monkeypatch):
    early, late = _two_points(console_workspace, monkeypatch)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _type_time(app, pilot, "ctrl+n")  # no enter: leaving the field applies it
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
        screen = await _type_time(app, pilot, "tab")
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


# ----- 1: health on a timer, nobody at the keyboard ------------------------------------------


async def test_the_idle_dashboard_turns_to_breach_and_alerts(make_app, console_workspace, monkeypatch):
    from insite_console import clock

    newest = console_workspace.catalog.last_backup("app_files")["finished_at"]
    soon = clock.parse_iso(newest) + clock.parse_duration("30s")
    monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(soon))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        table = app.screen.query_one("#health", DataTable)
        assert keyed_rows(table)[0]["status"].startswith("✓ ok")
        monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(soon + clock.parse_duration("2h")))  # time passes
        assert await wait_until(pilot, lambda: keyed_rows(table)[0]["status"].startswith("✗ RPO breach"))
        assert "2h" in keyed_rows(table)[0]["age"]
        assert await wait_until(pilot, lambda: any("RPO breach: policy app_files" in n.message
                                                   for n in app._notifications))


# ----- 4, 5: a vanished repository, a wrong passphrase ----------------------------------------


async def test_a_vanished_repository_is_a_red_banner_without_init_advice(make_app, console_workspace):
    from insite_console.errors import RepositoryError
    from insite_console.workspace import Workspace

    app = make_app(probe_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        banner = app.screen.query_one("#banner", Static)
        assert not banner.display
        shutil.rmtree(console_workspace.config.base_dir / "backups")  # rm -rf of the local storage
        assert await wait_until(pilot, lambda: banner.display)
        text = static_text(app, "#banner")
        assert "repository is missing" in text and "expects 2 backup(s)" in text
        assert "Do NOT run `insite-console init`" in text
        assert "✗ MISSING" in static_text(app, "#storage")
    fresh = Workspace(console_workspace.config)  # the engine's message, as `b` would show it
    try:
        fresh.repository("local")
    except RepositoryError as exc:
        assert "expects 2 backup(s)" in str(exc) and "Do NOT run" in str(exc)
    else:
        raise AssertionError("opened a repository that is gone")
    finally:
        fresh.close()


async def test_a_wrong_passphrase_is_a_banner_at_start(console_workspace, monkeypatch):
    from insite_console.tui.app import InsiteApp
    from insite_console.workspace import Workspace

    monkeypatch.setenv("INSITE_PASSPHRASE", "not-the-passphrase")
    ws = Workspace(console_workspace.config)
    app = InsiteApp(ws, theme="insite-dark", detach_jobs=False, poll_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            banner = app.screen.query_one("#banner", Static)
            assert await wait_until(pilot, lambda: banner.display)
            assert "wrong passphrase" in static_text(app, "#banner")
            assert "cannot open the repository key" in static_text(app, "#banner")
    finally:
        ws.close()


# ----- 6: scheduler liveness and missed runs --------------------------------------------------


async def test_a_missed_run_says_the_scheduler_is_not_running(make_app, console_workspace, monkeypatch):
    from insite_console import clock, status

    newest = clock.parse_iso(console_workspace.catalog.last_backup("app_files")["started_at"])
    top = newest.replace(minute=0, second=0, microsecond=0)
    monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(top + clock.parse_duration("50m")))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        table = app.screen.query_one("#health", DataTable)

        def next_run(table) -> str:  # by its key: the columns that fit move it
            return keyed_rows(table)[0]["next"]

        assert "missed" not in next_run(table)
        assert "no scheduler has ever run" in static_text(app, "#running")
        # the hourly run is due at the next full hour; three minutes later nothing has run it
        monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(top + clock.parse_duration("63m")))
        due = top + clock.parse_duration("1h")
        assert await wait_until(pilot, lambda: next_run(table)
                                == f"▲ missed {model_clock(due)}: scheduler not running")
        assert await wait_until(pilot, lambda: any("missed" in n.message for n in app._notifications))
        # a scheduler that beats: running, and the reason changes
        console_workspace.catalog.scheduler_beat(clock.iso(due), 30)
        assert await wait_until(pilot, lambda: "Scheduler: running on" in static_text(app, "#running"))
        assert status.scheduler_state(console_workspace)["running"] is True
        assert await wait_until(pilot, lambda: "the scheduler did not start it" in next_run(table))


async def test_at_80_columns_a_missed_run_fits_and_its_reason_moves_under_the_scheduler(
        make_app, console_workspace, monkeypatch):
    from insite_console import clock

    newest = clock.parse_iso(console_workspace.catalog.last_backup("app_files")["started_at"])
    top = newest.replace(minute=0, second=0, microsecond=0)
    monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(top + clock.parse_duration("63m")))
    due = model_clock(top + clock.parse_duration("1h"))
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        table = app.screen.query_one("#health", DataTable)
        assert str(table.get_cell_at((0, column_index(table, "next")))) == f"▲ missed {due}"
        # the columns shown end inside the 80 columns: nothing of them is cut
        assert sum(column.get_render_width(table) for column in table.ordered_columns) <= table.size.width
        assert f"app_files missed {due}: scheduler not running" in static_text(app, "#running")
        await pilot.resize_terminal(120, 40)
        await pilot.pause(0.3)
        assert str(table.get_cell_at((0, column_index(table, "next")))) == f"▲ missed {due}: scheduler not running"
        assert "app_files missed" not in static_text(app, "#running")


def model_clock(value) -> str:
    from insite_console.tui import model

    return model.short_clock(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


# ----- issue 14: the streaming archiver on the dashboard ----------------------------------------


async def test_the_dashboard_says_whether_wal_stream_runs(tmp_path):
    """A physical source's wal-stream heartbeat: running (host, pid, the segment in progress) under
    the scheduler line; stopped, a warning naming it, never silently nothing."""
    from insite_console import clock
    from insite_console.tui.app import InsiteApp
    from insite_console.workspace import Workspace
    from tests.tui.conftest import CONFIG

    (tmp_path / "config.toml").write_text(CONFIG + """
[source.db]
type = "postgresql"
dsn = "postgresql://postgres@127.0.0.1:1/postgres"
mode = "physical"

[policy.db]
source = "db"
storage = "local"
type = "full"
""")
    ws = Workspace.load(tmp_path / "config.toml")
    ws.init_repository("local")
    started = clock.iso(clock.now())
    ws.catalog.wal_stream_beat("db", started, "000000010000000000000003", started, None, None, stopped=True)
    app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            assert await wait_until(pilot, lambda: "▲ db: wal-stream not running (stopped; last seen" in static_text(app, "#running"))
            assert "last pushed 000000010000000000000003" in static_text(app, "#running")
            ws.catalog.wal_stream_beat("db", started, "000000010000000000000003", started,
                                       "000000010000000000000004.partial", None)
            assert await wait_until(pilot, lambda: "▶ db: wal-stream running on" in static_text(app, "#running"), 5)
            assert "receiving 000000010000000000000004.partial" in static_text(app, "#running")
    finally:
        ws.close()
