"""The restore wizard's platform branch (issue 13): a recovery plan, the point in time, the plan
per component with its checks and skew, the typed confirmation, progress, the result with data
loss per component; and the dashboard's newest recoverable point. Two file-tree components
(real repository, real group backup) keep it fast; the engine tests cover PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select

from tests.tui.conftest import CONFIG, make_workspace
from tests.tui.tables import keyed_rows, table_rows  # the plan tables: fixed columns
from tests.tui.test_console import settle, static_text

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
        assert (rows[0][4], rows[1][4], rows[1][1]) == ("1", "0", "✓ ok")  # overwrites, checks
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
        assert [(r[0], r[1], r[2]) for r in rows] == [("etc", "✓ ok", "✓ verified"), ("app_files", "✓ ok", "✓ verified")]
        assert all(r[4] not in ("—", "") for r in rows)  # data loss per component
        await pilot.press("3")  # Live jobs: the recovery and each component's restore
        await settle(app, pilot, 0.3)
        jobs = [(r["kind"], r["subject"], r["status"]) for r in keyed_rows(app.screen.query_one("#job-table", DataTable))]
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


THREE = """
[source.big]
type = "files"
paths = ["data/big"]

[policy.big]
source = "big"
storage = "local"
type = "full"

[group.three]
policies = ["etc", "big", "app_files"]

[recovery.platform]
components = ["etc", "big", "app_files"]
group = "three"
targets = {{ etc = "{target}/etc", big = "{target}/big", app_files = "{target}/app" }}
"""


async def test_cancel_a_rolling_platform_recovery_from_live_jobs(tmp_path, monkeypatch):
    """The console's real path: the recovery runs detached (`recover` in a child process, every
    chunk read slowed); cancelled from Live jobs after the confirmation, while its second
    component restores: the first stays recovered, the second is cancelled, the third skipped."""
    import json
    import subprocess
    import sys

    from insite_console import group, who
    from insite_console.tui.app import InsiteApp
    from insite_console.workspace import Workspace
    from tests.tui.conftest import SLOW_CHUNKS

    root = tmp_path / "ws"
    make_workspace(root, backups=False).close()
    (root / "data/big").mkdir(parents=True)
    for i in range(12):
        (root / f"data/big/blob-{i:02d}.bin").write_bytes(bytes([i]) * 20_000)
    target = tmp_path / "restored"
    (root / "config.toml").write_text(CONFIG + THREE.format(target=target))
    ws = Workspace.load(root / "config.toml")
    point = group.run(ws, "three")
    assert point["status"] == "succeeded", point
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_CHUNKS)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("INSITE_TEST_SLOW_READ", "1.5")  # big: 12 chunks, about 18 s: room to cancel on a loaded machine
    app = InsiteApp(ws, theme="insite-dark", poll_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            await pilot.press("4")
            await settle(app, pilot)
            app.screen.query_one("#restore-kind", Select).value = "platform"
            await settle(app, pilot)
            screen = app.screen
            screen.query_one("#pr-reason", Input).value = "drill 9"
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert screen.step == 1 and screen.plan_ok, static_text(app, "#pr-summary")
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert "nothing existing is overwritten" in static_text(app, "#pr-confirm-text")
            await pilot.press("ctrl+n")  # Recover
            await pilot.pause()
            assert screen.step == 3
            job = app.console_jobs[screen.job_key]
            assert job.detached
            record = None
            for _ in range(300):  # until etc is recovered and big is being restored
                await pilot.pause(0.1)
                record = screen.current_record()
                if record and [c["status"] for c in record["components"]][:2] == ["succeeded", "running"]:
                    break
            assert record and record["components"][1]["status"] == "running", record
            for _ in range(20):  # the screen follows the record (every half second)
                await pilot.pause(0.1)
                progress = table_rows(screen.query_one("#pr-progress-table", DataTable))
                if progress and progress[0][1] == "✓ ok":
                    break
            assert [r[1] for r in progress] == ["✓ ok", "▶ running", "· pending"], progress

            await pilot.press("escape")  # Esc while it runs asks to cancel; Esc again is No
            await pilot.pause()
            assert type(app.screen).__name__ == "ConfirmDialog"
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is screen and job.status == "running" and not job.cancel.cancelled

            await pilot.press("3")  # Live jobs: select the recovery and cancel it
            await pilot.pause(0.3)  # (not settle: the detached job's watcher is a worker)
            jobs = app.screen
            table = jobs.query_one("#job-table", DataTable)
            table.focus()
            for _ in range(table.row_count):
                if jobs.selected_id() == record["id"]:
                    break
                await pilot.press("down")
            assert jobs.selected_id() == record["id"], table_rows(table)
            await pilot.press("c")
            await pilot.pause()
            assert type(app.screen).__name__ == "ConfirmDialog", (jobs.selected_id(), jobs.selected_view(),
                                                                   app.focused, table_rows(table))
            await pilot.press("tab", "enter")  # the second button: cancel
            for _ in range(300):
                await pilot.pause(0.1)
                if job.status != "running":
                    break
            assert job.status == "cancelled", job.error
            await settle(app, pilot, 0.5)
            rows = {(r["kind"], r["subject"]): r["status"] for r in keyed_rows(app.screen.query_one("#job-table", DataTable))}
            assert rows[("recover", "platform")].startswith("■ cancelled by "), rows
            assert not any(status.startswith("✓") for (kind, _), status in rows.items() if kind == "recover")

            await pilot.press("4")  # the wizard shows the result: nothing claimed that did not finish
            await settle(app, pilot, 0.6)
            assert app.screen is screen and screen.step == 4, static_text(app, "#pr-progress")
            result = static_text(app, "#pr-result")
            me = f"{who.user()}@{__import__('socket').gethostname()}"
            assert f"cancelled by {me}" in result and "Recovered: etc" in result and "Not recovered: big, app_files" in result
            rows = table_rows(screen.query_one("#pr-result-table", DataTable))
            assert [(r[0], r[1]) for r in rows] == [("etc", "✓ ok"), ("big", "■ cancelled"), ("app_files", "○ skipped")]
            assert rows[1][2] != "✓ verified" and rows[2][2] != "✓ verified"
            notes = static_text(app, "#pr-result-notes")
            assert "big: cancelled by" in notes and "app_files: not started: " in notes, notes
    finally:
        ws.close()
    out = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(root / "config.toml"), "recover",
                          "--history", "--json"], capture_output=True, text=True, check=True).stdout
    [record] = json.loads(out)
    assert record["status"] == "cancelled" and record["cancelled_by"] == me and record["reason"] == "drill 9"
    assert [(c["policy"], c["status"]) for c in record["components"]] == [
        ("etc", "succeeded"), ("big", "cancelled"), ("app_files", "skipped")]
    assert record["recovered"] == ["etc"] and record["components"][1]["verified"] is None
    assert not (target / "app").exists()  # never started


SNAPSHOT_PLAN = """
[recovery.platform]
components = ["etc", "app_files"]
targets = { etc = "restored/etc", app_files = "restored/app" }
"""


@pytest.fixture
def platform_snapshot_ws(snapshot_workspace):
    """The snapshot workspace (fixed clock, ids, host) with a recovery plan over its two policies."""
    from insite_console.workspace import Workspace

    config = snapshot_workspace.config.base_dir / "config.toml"
    config.write_text(config.read_text() + SNAPSHOT_PLAN)
    ws = Workspace.load(config)
    yield ws
    ws.close()


async def _snapshot_settle(pilot, delay: float = 0.3) -> None:
    app = pilot.app
    for _ in range(2):
        await app.workers.wait_for_complete()
        await pilot.pause(delay)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("step", ["plan", "result"])
def test_platform_step_snapshot(snap_compare, platform_snapshot_ws, step, size):
    from insite_console.tui.app import InsiteApp

    app = InsiteApp(platform_snapshot_ws, theme="insite-dark", detach_jobs=False, poll_seconds=3600, alerts=False)

    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.press("4")
        await _snapshot_settle(pilot)
        pilot.app.screen.query_one("#restore-kind", Select).value = "platform"
        await _snapshot_settle(pilot)
        await pilot.press("ctrl+n")  # the latest: the plan per component
        await _snapshot_settle(pilot)
        assert pilot.app.screen.step == 1 and pilot.app.screen.plan_ok
        if step == "result":
            await pilot.press("ctrl+n", "ctrl+n")  # confirm (nothing overwritten), recover
            await _snapshot_settle(pilot, 0.6)
            assert pilot.app.screen.step == 4
            pilot.app.clear_notifications()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


async def test_a_time_in_the_future_is_refused_not_planned_with_invented_data_loss(platform_ws, capsys):
    """Before: 2030 was planned, every component "1125d > RPO" of data loss, and recoverable."""
    from insite_console import recovery
    from insite_console.cli import main
    from insite_console.errors import RestoreRefused
    from insite_console.tui.app import InsiteApp
    from insite_console.tui.screens.platform import PlatformRecoveryScreen

    ws = platform_ws
    with pytest.raises(RestoreRefused, match="is in the future"):
        recovery.plan(ws, "platform", __import__("insite_console").clock.parse_iso("2030-01-01T00:00:00Z"))
    config = str(ws.config.base_dir / "config.toml")
    assert main(["-c", config, "recover", "platform", "--at", "2030-01-01T00:00:00Z", "--dry-run"]) == 1
    assert "2030-01-01T00:00:00.000000Z is in the future" in capsys.readouterr().err
    app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.push_screen(PlatformRecoveryScreen("platform"))
        await settle(app, pilot)
        screen = app.screen
        field = screen.query_one("#pr-at", Input)
        field.focus()
        field.value = "2030-01-01T00:00Z"
        await pilot.press("enter")
        await pilot.press("ctrl+n")
        await settle(app, pilot)
        assert screen.step == 0 and field.has_focus
        assert "is in the future" in static_text(app, "#pr-at-check")
        field.value = ""
        await pilot.press("enter")  # the latest; Enter goes on to the reason, then to the plan
        assert screen.query_one("#pr-reason", Input).has_focus
        await pilot.press(*"INC-9", "enter")
        await settle(app, pilot)
        assert screen.step == 1 and screen.plan_ok
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert "Reason, recorded with the result: INC-9" in static_text(app, "#pr-confirm-text")
    assert ws.catalog.recoveries() == []
