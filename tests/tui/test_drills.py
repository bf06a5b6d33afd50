"""The DR drills screen (key 5): a drill run from the console with manual steps marked through
Pilot, judged honestly (a skipped step makes it incomplete, never passed), and snapshots of the
screen mid-drill and in playback. The drill clock is one the test controls, so drill time only
moves when the test says."""

from __future__ import annotations

import time

import pytest

from tests.tui.test_snapshots import _settle

SCENARIO = """
[scenario]
id = "tabletop_demo"
name = "Tabletop demo"
type = "human_error"
description = "An operator dropped a table; recover it from the last backup."
probability = 0.1
tier = "tier_1"
cost = 10000
policies = ["app_files"]
rto = "45m"
rpo = "2h"

[plan]
channels = ["#incident"]

[plan.team.incident_commander]
people = ["Head of Operations"]
contact = "#incident"
[plan.team.dba]
people = ["DBA on call"]
contact = "pager"

[[plan.escalations]]
level = 1
after = "10m"
notify = ["incident_commander"]
[[plan.escalations]]
level = 2
on = "failure"
notify = ["incident_commander", "dba"]

[[plan.steps]]
number = 1
action = "Declare the incident and open the bridge"
role = "incident_commander"
estimate = "5m"
[[plan.steps]]
number = 2
action = "Find the last good restore point"
role = "dba"
estimate = "10m"
after = [1]
[[plan.steps]]
number = 3
action = "Check the data-loss window against the RPO"
role = "dba"
kind = "check_rpo"
policy = "app_files"
estimate = "1m"
after = [2]
[[plan.steps]]
number = 4
action = "Switch the application to the restored data"
role = "dba"
estimate = "15m"
after = [3]
"""


class FakeTime:
    """Drill time that moves only when the test sets it (waits sleep briefly in real time)."""

    def __init__(self):
        self.now = 0.0

    def clock(self, speed):
        from insite_console.dr.drill import DrillClock

        return DrillClock(speed, monotonic=lambda: self.now, sleep=lambda s: time.sleep(min(s, 0.02)))


@pytest.fixture
def fake_time(monkeypatch):
    from insite_console.tui.screens import drills

    fake = FakeTime()
    monkeypatch.setattr(drills, "make_clock", fake.clock)
    monkeypatch.setattr(drills, "operator", lambda: "alice@bastion-1")
    return fake


def _add_scenario(ws) -> None:
    folder = ws.config.base_dir / "dr"
    folder.mkdir(exist_ok=True)
    (folder / "tabletop_demo.toml").write_text(SCENARIO)


async def _until(pilot, predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def _status(screen, step: str) -> str | None:
    return (screen.snap or {}).get("steps", {}).get(step, {}).get("status")


async def _start_demo(pilot, choice: str = "tabletop") -> object:
    await pilot.press("5")
    await pilot.pause()
    await pilot.press("p")
    await pilot.pause()
    await pilot.click("#choice-tabletop_demo")
    await pilot.pause()
    screen = pilot.app.screen
    await pilot.press("s")
    await pilot.pause()
    await pilot.click(f"#choice-{choice}")
    await _until(pilot, lambda: _status(screen, "1") == "waiting", "step 1 to wait for the operator")
    return screen


async def _mark(pilot, screen, key: str, step: str, note: str) -> None:
    await _until(pilot, lambda: screen.selected_step() == step and _status(screen, step) == "waiting",
                 f"step {step} selected and waiting")
    await pilot.press(key)
    await pilot.pause()
    await pilot.press(*note, "enter")


async def test_manual_steps_marked_in_the_console_and_a_skip_is_incomplete(console_workspace, make_app, fake_time):
    _add_scenario(console_workspace)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _start_demo(pilot)
        fake_time.now = 240
        await _mark(pilot, screen, "d", "1", "bridge open")
        await _until(pilot, lambda: _status(screen, "2") == "waiting", "step 2 to wait")
        fake_time.now = 660  # over 10 minutes: escalation level 1
        await pilot.press("i")
        await pilot.pause()
        await pilot.press(*"the DBA is unreachable", "enter")
        await _until(pilot, lambda: any(e["type"] == "inject" for e in screen.events), "the inject")
        await _mark(pilot, screen, "k", "2", "no DBA")
        await _until(pilot, lambda: screen.record is not None, "the drill to end")
        record = screen.record
        summary = str(screen.query_one("#drill-summary").render())
    # step 2 skipped: 3 and 4 were never carried out, and the drill says so
    assert record["status"] == "incomplete"
    steps = {s["id"]: s for s in record["steps"]}
    assert steps["1"]["status"] == "done" and steps["1"]["by"] == "alice@bastion-1"
    assert steps["1"]["notes"] == "bridge open" and steps["1"]["seconds"] == 240
    assert steps["2"]["status"] == "skipped" and steps["2"]["notes"] == "no DBA"
    assert steps["3"]["status"] == "not run" and steps["4"]["status"] == "not run"
    assert record["max_level"] == 1
    assert any(e["type"] == "inject" and e["text"] == "the DBA is unreachable" and e["by"] == "alice@bastion-1"
               for e in record["events"])
    assert "◐ incomplete" in summary and "passed" not in summary
    assert "not carried out: step 2: skipped (no DBA)" in summary
    # kept in the catalog, so the playback and `drill show` have it
    assert console_workspace.catalog.drill(record["id"])["status"] == "incomplete"


async def test_a_drill_done_step_by_step_passes_only_when_every_step_is_carried_out(console_workspace, make_app,
                                                                                     fake_time):
    _add_scenario(console_workspace)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _start_demo(pilot)
        for step in ("1", "2", "4"):
            await _mark(pilot, screen, "d", step, f"step {step} done")
        await _until(pilot, lambda: screen.record is not None, "the drill to end")
        record = screen.record
        head = str(screen.query_one("#drill-head").render())
    assert record["status"] == "passed", record["missing"]
    assert [s["status"] for s in record["steps"]] == ["done", "done", "passed", "done"]
    assert "✓ passed" in head


async def test_findings_entered_during_and_after_a_drill_reach_its_record(console_workspace, make_app, fake_time):
    _add_scenario(console_workspace)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _start_demo(pilot)
        await pilot.press("a")
        await pilot.pause()
        await pilot.press(*"call list is out of date", "enter")
        await pilot.pause()
        await pilot.click("#choice-incident_commander")
        await _until(pilot, lambda: any(e["type"] == "finding" for e in screen.events), "the finding in the timeline")
        for step in ("1", "2", "4"):
            await _mark(pilot, screen, "d", step, "ok")
        await _until(pilot, lambda: screen.record is not None, "the drill to end")
        await pilot.press("a")  # after the drill, on its summary
        await pilot.pause()
        await pilot.press(*"rehearse the switch", "enter")
        await pilot.pause()
        await pilot.click("#choice-dba")
        await _until(pilot, lambda: len(screen.record.get("findings", [])) == 2, "the second finding")
        summary = str(screen.query_one("#drill-summary").render())
    stored = console_workspace.catalog.drill(screen.record["id"])["findings"]
    assert [(f["owner"], f["text"], f["by"], f["step"]) for f in stored] == [
        ("incident_commander", "call list is out of date", "alice@bastion-1", "1"),
        ("dba", "rehearse the switch", "alice@bastion-1", None)]
    assert "▸ incident_commander: call list is out of date (due " in summary and "▸ dba: rehearse the switch" in summary


async def test_read_only_console_cannot_start_or_mark(console_workspace, make_app):
    _add_scenario(console_workspace)
    app = make_app(read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        await pilot.pause()
        await pilot.press("s")
        await pilot.pause()
        assert type(app.screen).__name__ == "DrillsScreen" and app.screen.drill is None


async def test_the_scenario_shows_its_rto_trend_over_drills(console_workspace, make_app, monkeypatch):
    from insite_console import clock
    from insite_console.dr import drill

    _add_scenario(console_workspace)
    base = clock.now()
    scenario = drill.find(console_workspace, "tabletop_demo")
    for i, minutes in enumerate((5, 40, 10)):  # the first step took this long; the plan's other steps 25 minutes
        monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(base + clock.parse_duration(f"{i + 1}m")))
        fake = FakeTime()
        scenario.plan.steps[0].estimate_seconds = minutes * 60
        drill.Drill(console_workspace, scenario, auto=True,
                    drill_clock=drill.DrillClock(1, monotonic=lambda: fake.now,
                                                 sleep=lambda s: setattr(fake, "now", fake.now + s))).run()
    monkeypatch.delenv("INSITE_FAKE_NOW")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        await pilot.click("#choice-tabletop_demo")
        await pilot.pause()
        head = str(app.screen.query_one("#drill-head").render())
    assert "RTO trend ▄█▅ 30m ✓ (rehearsal) → 1h 5m ✗ (rehearsal) → 35m ✓ (rehearsal) (target 45m)" in head
    assert "1 of 3 missed" in head


async def test_a_read_only_console_watches_a_drill_another_process_runs(console_workspace, make_app):
    """`drill run` in another process, its operator answering on stdin; the read-only console
    follows it from the catalog on its refresh timer, without controls, to its honest end."""
    import subprocess
    import sys

    _add_scenario(console_workspace)
    other = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(console_workspace.config.path),
                              "drill", "run", "tabletop_demo", "--tabletop"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        app = make_app(read_only=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("5")
            screen = app.screen
            await _until(pilot, lambda: screen.watching is not None and _status(screen, "1") == "waiting",
                         "the console to follow the other process's drill")
            head = str(screen.query_one("#drill-head").render())
            assert "◉ watching tabletop run by" in head and "no controls here" in head
            assert not screen.can_run("start_drill") and not screen.can_run("mark_done")
            await pilot.press("d")  # no control: nothing is marked from here
            await pilot.pause()
            assert _status(screen, "1") == "waiting"
            other.stdin.write("d bridge open\n")
            other.stdin.flush()
            await _until(pilot, lambda: _status(screen, "1") == "done" and _status(screen, "2") == "waiting",
                         "step 1 done in the other process")
            other.stdin.write("s nobody could find the restore point\n")
            other.stdin.flush()
            await _until(pilot, lambda: screen.watching is None and screen.record is not None
                         and screen.record["status"] != "running", "the drill to end")
            summary = str(screen.query_one("#drill-summary").render())
            timeline = "\n".join(str(line.text) for line in screen.query_one("#drill-log").lines)
            record = screen.record
        assert other.wait(30) == 1  # incomplete: not passed
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert record["status"] == "incomplete"
    assert "◐ incomplete" in summary and "not carried out: step 2: skipped (nobody could find the restore point)" in summary
    assert "done 1 by" in timeline and "bridge open" in timeline and "drill INCOMPLETE" in timeline


# ----- snapshots -----------------------------------------------------------------------------

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_mid_drill(snap_compare, snapshot_workspace, fake_time, size):
    from insite_console.tui.app import InsiteApp

    _add_scenario(snapshot_workspace)
    app = InsiteApp(snapshot_workspace, theme="insite-dark", detach_jobs=False, poll_seconds=3600, alerts=False)

    async def run_before(pilot) -> None:
        screen = await _start_demo(pilot)
        fake_time.now = 500
        await _mark(pilot, screen, "d", "1", "bridge open on the phone")
        await _until(pilot, lambda: _status(screen, "2") == "waiting", "step 2 to wait")
        fake_time.now = 720
        await _until(pilot, lambda: screen.snap["level"] == 1, "escalation level 1")
        await pilot.press("i")
        await pilot.pause()
        await pilot.press(*"the newest backup fails verification", "enter")
        fake_time.now = 750
        await _until(pilot, lambda: any(e["type"] == "inject" for e in screen.events), "the inject")
        await pilot.pause(0.6)  # the screen's clock tick
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_playback(snap_compare, snapshot_workspace, size):
    from insite_console.dr import drill
    from insite_console.tui.app import InsiteApp

    _add_scenario(snapshot_workspace)
    now = [0.0]
    clock = drill.DrillClock(1, monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    record = drill.run(snapshot_workspace, "tabletop_demo", auto=True, drill_clock=clock)
    # the newest app_files backup (08:00) is 1h 30m old at 09:30, over its 1h RPO: the check fails
    assert record["status"] == "failed" and record["steps"][2]["status"] == "failed"
    app = InsiteApp(snapshot_workspace, theme="insite-dark", detach_jobs=False, poll_seconds=3600, alerts=False)

    async def run_before(pilot) -> None:
        await pilot.press("5")
        await pilot.pause()
        await pilot.press("h")
        await pilot.pause()
        await pilot.click(f"#choice-{record['id']}")
        await pilot.pause()
        for _ in range(7):  # playback starts paused: step through the first events by hand
            await pilot.press("n")
        await pilot.press("plus")
        await _settle(pilot)
        app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


async def test_a_watched_drill_not_heard_from_is_flagged(console_workspace, make_app, monkeypatch):
    """A drill another host runs publishes its record at least every 30 s; one not heard from
    for 10 minutes (its process died on a host we cannot check) says so, instead of a clock
    and projected RTO that keep growing as if it ran."""
    from insite_console import clock
    from insite_console.dr import drill as dr_drill

    _add_scenario(console_workspace)
    long_ago = clock.iso(clock.now() - clock.parse_duration("10m"))
    monkeypatch.setenv("INSITE_FAKE_NOW", long_ago)
    run = dr_drill.Drill(console_workspace, dr_drill.find(console_workspace, "tabletop_demo"), mode="tabletop")
    run._started_at, run._by = long_ago, "alice@bastion-2"
    run._process = {"host": "bastion-2", "pid": 4242, "process_start": None, "boot_id": None}
    run._publish()  # its last word, 10 minutes ago, from another host
    monkeypatch.delenv("INSITE_FAKE_NOW")
    app = make_app(read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        screen = app.screen
        await _until(pilot, lambda: screen.watching is not None, "the console to follow the drill")
        head = str(screen.query_one("#drill-head").render())
    assert "◉ watching tabletop run by alice@bastion-2" in head
    assert "not heard from for 10m" in head and "its process may be gone" in head
