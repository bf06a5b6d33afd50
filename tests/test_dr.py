"""DR drills: the strategy's scenarios as data, drills that really restore into scratch targets,
a drill clock with escalations, history kept in catalog and repository, the DR report."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from tests.conftest import WorkspaceHelper, write_config
from tests.pg_servers import *  # noqa: F403
from tests.redis_servers import *  # noqa: F403

FAST = ["--auto", "--speed", "1000000"]


def _workspace(tmp_path, extra: str = "", offsite: bool = False) -> WorkspaceHelper:
    source = tmp_path / "src"
    source.mkdir()
    (source / "orders.csv").write_text("id,amount\n" + "".join(f"{i},{i * 3}\n" for i in range(2000)))
    if offsite:
        extra += '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n'
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], extra=extra))
    helper.cli("init", check=True)
    return helper


def _damage_packs(repo_dir):
    for pack in (repo_dir / "data").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            raw[20] ^= 0xFF
            pack.write_bytes(bytes(raw))


def test_drill_list_has_the_strategy_scenarios_and_figures(tmp_path):
    helper = _workspace(tmp_path)
    scenarios = {s["id"]: s for s in json.loads(helper.cli("drill", "list", "--json", check=True).stdout)}
    assert set(scenarios) == {"database_failure", "datacenter_failure", "data_corruption"}
    assert [(s["probability"], s["cost"], s["tier"]) for s in scenarios.values()] == [
        (0.08, 75000, "tier_1"), (0.15, 50000, "tier_1"), (0.05, 250000, "tier_2")]
    dc = scenarios["datacenter_failure"]
    assert len(dc["plan"]["escalations"]) == 3 and dc["plan"]["rollback"] and dc["plan"]["post_recovery"]
    # a files-only config: the @postgresql check is dropped, its dependents wait on the restore
    corruption = {s["id"]: s for s in scenarios["data_corruption"]["plan"]["steps"]}
    assert corruption["4.tree"]["kind"] == "restore" and corruption["4.tree"]["after"] == ["3.tree"]
    assert corruption["7"]["after"] == ["5"]


def test_the_shipped_plans_hold_what_the_strategy_asks(tmp_path):
    """Each default (and the example) against the issue's model: every scenario field, tier
    ranges that hold its downtime, a plan with team, channels, three escalation levels,
    verification, rollback and post-recovery, steps owned by a team role."""
    from insite_console.dr import scenarios

    (tmp_path / "dr").mkdir()
    shutil.copy(scenarios.EXAMPLES / "security_breach.toml", tmp_path / "dr")
    helper = _workspace(tmp_path)
    for s in scenarios.load(helper.ws):
        low, high = scenarios.TIERS[s.tier]
        assert low <= s.downtime_seconds <= (high or float("inf")), (s.id, s.tier, s.downtime_seconds)
        assert set(s.impact) == set(scenarios.IMPACT_KEYS) and set(s.communication) == {
            "internal", "external", "stakeholders"}, s.id
        assert s.description and s.resources and s.policies, s.id
        plan = s.plan
        assert plan.team and plan.channels and plan.verification and plan.rollback and plan.post_recovery, s.id
        assert [e.level for e in plan.escalations] == [1, 2, 3], s.id
        assert all(step.role in plan.team for step in plan.steps), s.id


def test_files_drill_restores_for_real_and_keeps_history(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    result = helper.cli("drill", "run", "data_corruption", "--json", *FAST)
    assert result.returncode == 0, result.stderr
    drill = json.loads(result.stdout)
    assert drill["status"] == "passed" and drill["meets_rto"] and drill["meets_rpo"], drill["missing"]
    steps = {s["id"]: s for s in drill["steps"]}
    assert steps["4.tree"]["status"] == "passed"
    assert steps["4.tree"]["bytes_written"] == (tmp_path / "src" / "orders.csv").stat().st_size
    assert steps["3.tree"]["status"] == "passed" and "deep-verified" in steps["3.tree"]["notes"]
    # manual steps at their estimates on the critical path: 10 + 15 + 10 + 20 minutes
    assert 55 * 60 <= drill["recovery_seconds"] < 56 * 60
    assert not (tmp_path / "state" / "drills" / drill["id"]).exists() or \
        not any((tmp_path / "state" / "drills" / drill["id"]).iterdir())  # scratch removed
    assert drill["stored_in"]["repositories"] == ["local"]

    shown = json.loads(helper.cli("drill", "show", drill["id"], "--json", check=True).stdout)
    assert shown["events"] == drill["events"]
    replayed = [json.loads(line) for line in
                helper.cli("drill", "replay", drill["id"], "--speed", "1000000", "--json", check=True).stdout.splitlines()]
    assert replayed == drill["events"]
    assert [e["type"] for e in replayed][0] == "drill_started" and replayed[-1]["type"] == "drill_finished"

    # a lost catalog is rebuilt from the repository with the drill history
    (tmp_path / "state" / "catalog.sqlite").unlink()
    helper.cli("catalog", "rebuild", check=True)
    history = json.loads(helper.cli("drill", "list", "--history", "--json", check=True).stdout)
    assert [h["id"] for h in history] == [drill["id"]] and history[0]["status"] == "passed"
    again = json.loads(helper.cli("drill", "show", drill["id"], "--json", check=True).stdout)
    assert again["events"] == drill["events"]
    audit = json.loads(helper.cli("restores", "--json", check=True).stdout)
    kinds = {(e["kind"], e["origin"], e["status"]) for e in audit}
    assert ("drill", "drill", "passed") in kinds and ("restore", "drill", "succeeded") in kinds
    listed = next(e for e in audit if e["kind"] == "drill")
    assert listed["id"] == drill["id"] and listed["user"] and listed["host"]
    assert listed["what"]["scenario"] == "data_corruption" and listed["over_source"] is False


def test_a_drill_never_passes_on_a_restore_that_was_not_carried_out(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    result = helper.cli("drill", "run", "database_failure", "--json", *FAST)
    assert result.returncode == 1
    drill = json.loads(result.stdout)
    assert drill["status"] == "incomplete"
    assert any("step 4 (restore): no policy matches @databases" in m for m in drill["missing"])
    assert any("data loss not measured" in m for m in drill["missing"])


def test_operator_skipping_a_manual_step_makes_the_drill_incomplete(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    answers = "d declared\nd window found 02:10\nd replayed\ns reconciliation postponed\n"
    result = helper.cli("drill", "run", "data_corruption", "--json", "--speed", "1000000", input=answers)
    drill = json.loads(result.stdout)
    assert drill["status"] == "incomplete" and result.returncode == 1
    steps = {s["id"]: s for s in drill["steps"]}
    assert steps["1"]["status"] == "done" and steps["1"]["notes"] == "declared"
    assert steps["7"]["status"] == "skipped" and any("step 7: skipped" in m for m in drill["missing"])


def test_drill_fails_on_rpo_breach_and_on_missing_off_site_copy(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    late = helper.cli("drill", "run", "data_corruption", "--json", *FAST, env={"INSITE_FAKE_NOW": "2099-01-01T00:00:00Z"})
    assert late.returncode == 1
    drill = json.loads(late.stdout)
    assert drill["status"] == "failed" and drill["meets_rpo"] is False
    dc = json.loads(helper.cli("drill", "run", "datacenter_failure", "--json", *FAST).stdout)
    steps = {s["id"]: s for s in dc["steps"]}
    assert steps["3.tree"]["status"] == "failed" and "no copy off its own storage" in steps["3.tree"]["notes"]
    assert steps["6"]["status"] == "blocked" and dc["status"] == "failed"
    assert any(e["type"] == "escalation" and e["level"] == 3 for e in dc["events"])  # on failure


def test_datacenter_drill_restores_from_the_off_site_copy(tmp_path):
    helper = _workspace(tmp_path, offsite=True)
    backup = json.loads(helper.cli("backup", "tree", "--json", check=True).stdout)
    helper.cli("copy", backup["id"], "--to", "offsite", check=True)
    drill = json.loads(helper.cli("drill", "run", "datacenter_failure", "--json", *FAST, check=True).stdout)
    restore_step = next(s for s in drill["steps"] if s["kind"] == "restore")
    assert restore_step["status"] == "passed" and "from the copy on offsite" in restore_step["notes"]


def test_corrupted_backup_fails_the_drill_and_blocks_later_steps(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    _damage_packs(tmp_path / "repo")
    result = helper.cli("drill", "run", "data_corruption", "--json", *FAST)
    assert result.returncode == 1
    steps = {s["id"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["3.tree"]["status"] == "failed"
    assert steps["4.tree"]["status"] == "blocked"


# ----- the drill clock ---------------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_escalations_fire_at_their_elapsed_time_with_an_injected_clock(tmp_path):
    from insite_console.dr import drill

    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    fake = FakeTime()
    seen = []
    record = drill.run(helper.ws, "data_corruption", auto=True, drill_clock=drill.DrillClock(1.0, fake.monotonic, fake.sleep),
                       listener=lambda event, snap: seen.append((event, snap)))
    escalations = [e for e in record["events"] if e["type"] == "escalation"]
    # the plan ends at 55 minutes: its escalations at 1h and 2h are never reached, no step overran
    assert [e["level"] for e in escalations] == []
    assert record["recovery_seconds"] == 55 * 60 and record["status"] == "passed"
    projected = [snap["projected_rto_seconds"] for event, snap in seen if event["type"] == "step_finished"]
    # after the first step: the rest of the critical path at its estimates (15 + 5 + 20 + 10 + 20 minutes);
    # at the end, the actuals (verify and restore took no fake time)
    assert projected[0] == 80 * 60 and projected[-1] == 55 * 60

    # an operator who takes 70 minutes over the first step: level 1 (overrun) at 10m, level 2 at exactly 1h
    fake = FakeTime()
    clock = drill.DrillClock(1.0, fake.monotonic, fake.sleep)
    scenario = drill.find(helper.ws, "data_corruption")
    run = drill.Drill(helper.ws, scenario, auto=True, drill_clock=clock)
    scenario.plan.steps[0].estimate_seconds = 70 * 60  # the first step takes 70 minutes
    record = run.run()
    levels = {e["level"]: e["t"] for e in record["events"] if e["type"] == "escalation"}
    assert levels[2] == 3600.0 and 3 not in levels
    assert record["status"] == "failed" and not record["meets_rto"]  # 115 minutes against a 1h RTO


def test_a_rehearsal_records_auto_steps_at_their_estimate_however_late_the_loop_wakes(tmp_path):
    """At ×600 one poll of the drill loop is minutes of drill time: a step the rehearsal marks done
    after its estimate took its estimate, and is not reported over it."""
    from insite_console.dr import drill

    class LateWaking(FakeTime):
        def sleep(self, seconds):
            self.now += seconds + 90  # every wake-up 90 s of drill time late

    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    fake = LateWaking()
    record = drill.run(helper.ws, "data_corruption", auto=True, drill_clock=drill.DrillClock(1.0, fake.monotonic,
                                                                                             fake.sleep))
    finished = [e for e in record["events"] if e["type"] == "step_finished" and e.get("by") == "auto"]
    assert finished and not [e for e in finished if e["over_estimate"]], finished


def _operated_drill(ws, late: dict[str, float]):
    """data_corruption with an operator who marks each manual step done after its estimate,
    plus `late[step]` seconds; automated steps take no drill time."""
    from insite_console.dr import drill

    fake = FakeTime()

    def on_manual(run, step):
        fake.now += step.estimate_seconds + late.get(step.id, 0)
        run.mark(step.id, "done", "done", by="alice")

    return drill.Drill(ws, drill.find(ws, "data_corruption"), drill_clock=drill.DrillClock(1.0, fake.monotonic, fake.sleep),
                       on_manual=on_manual).run()


def test_rto_trend_and_improvement_plan_in_the_report(tmp_path, monkeypatch):
    from insite_console import clock

    helper = _workspace(tmp_path, extra='\n[dr]\ncadence = "30d"\nrpo = "1d"\n')
    helper.cli("backup", "tree", check=True)
    base = clock.now()
    records = []
    for hour, late in ((1, {}), (2, {"2": 1800}), (3, {"1": 120})):  # 55m, then 1h 25m, then 57m
        monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(base + clock.parse_duration(f"{hour}h")))
        records.append(_operated_drill(helper.ws, late))
    assert [r["status"] for r in records] == ["passed", "failed", "passed"]
    kinds = {(f["kind"], f["step"], f["owner"]) for f in records[1]["findings"]}
    assert ("over_estimate", "2", "application_owner") in kinds and ("missed_rto", None, "application_owner") in kinds
    assert ("escalation", None, "incident_commander") in kinds  # level 2 after 1h
    # the team's own finding, after the drill, on the failed one
    added = helper.cli("drill", "finding", records[1]["id"], "Keep a DBA on standby for drills", "--owner", "dba",
                       "--due", "2099-01-31", "--json", check=True)
    assert json.loads(added.stdout)["due"].startswith("2099-01-3")
    monkeypatch.setenv("INSITE_FAKE_NOW", clock.iso(base + clock.parse_duration("4h")))
    report = json.loads(helper.cli("drill", "report", "--format", "json", check=True).stdout)
    corruption = next(s for s in report["scenarios"] if s["id"] == "data_corruption")
    assert [(p["recovery_seconds"], p["meets_rto"]) for p in corruption["rto_trend"]] == [
        (3300, True), (5100, False), (3420, True)]
    assert [p["drill"] for p in corruption["rto_trend"]] == [r["id"] for r in records]
    plan = report["improvement_plan"]
    # the newest drill's findings (step 1 over its estimate) and the team's own; the older drill's
    # automatic findings are superseded by the newer drill
    assert [(f["kind"], f["step"], f["drill"]) for f in plan] == [
        ("over_estimate", "1", records[2]["id"]), ("operator", None, records[1]["id"])]
    assert plan[0]["owner"] == "application_owner" and plan[0]["due"] == clock.iso(
        base + clock.parse_duration("3h") + clock.parse_duration("30d"))
    assert "took 2h" not in plan[0]["text"] and "took 12m against its estimate of 10m" in plan[0]["text"]
    markdown = helper.cli("drill", "report", check=True).stdout
    assert "- **Data corruption**: `▆█▆` 55m ✓ → 1h 25m ✗ → 57m ✓ (target 1h)" in markdown
    assert "| dba | data_corruption | Keep a DBA on standby for drills | team: " in markdown
    # the finding is in the sealed record too: a rebuilt catalog keeps it
    shutil.rmtree(tmp_path / "state")
    helper.cli("catalog", "rebuild", check=True)
    shown = json.loads(helper.cli("drill", "show", records[1]["id"], "--json", check=True).stdout)
    assert [f["text"] for f in shown["findings"] if f["source"] == "operator"] == ["Keep a DBA on standby for drills"]


# ----- validation --------------------------------------------------------------------------

GOOD = """
[scenario]
id = "x"
name = "X"
type = "human_error"
probability = 0.1
tier = "tier_3"
cost = 1000
[plan.team.ops]
people = ["A"]
[[plan.steps]]
number = 1
action = "a"
role = "ops"
[[plan.steps]]
number = 2
action = "b"
role = "ops"
after = [1]
"""


@pytest.mark.parametrize("change, message", [
    (('cost = 1000', 'cost = 1000\ncolour = "red"'), "[scenario] colour: unknown key"),
    (('after = [1]', 'after = [3]'), "[plan.steps[1]] after: unknown dependency '3'"),
    (('action = "a"', 'action = "a"\nafter = [2]'), "dependency cycle between steps 1, 2"),
    (('action = "b"', 'action = "b"\nestimate = "soon"'), "[plan.steps[1]] estimate: bad duration"),
    (('action = "b"', 'action = "b"\nkind = "restore"\npolicy = "nope"'), "[plan.steps[1]] policy: unknown policy 'nope'"),
    (('role = "ops"\nafter', 'role = "dba"\nafter'), "[plan.steps[1]] role: unknown role 'dba'"),
    (('tier = "tier_3"', 'tier = "tier_9"'), "[scenario] tier: 'tier_9' is not one of"),
])
def test_scenario_files_are_validated_with_file_table_and_key(tmp_path, change, message):
    helper = _workspace(tmp_path)
    (tmp_path / "dr").mkdir()
    (tmp_path / "dr" / "x.toml").write_text(GOOD.replace(*change, 1))
    result = helper.cli("drill", "list")
    assert result.returncode == 2 and message in result.stderr and "dr/x.toml" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_dr_dir_adds_the_example_security_breach_and_old_scenarios_file_still_works(tmp_path):
    from insite_console.dr.scenarios import EXAMPLES

    (tmp_path / "plans").mkdir()
    shutil.copy(EXAMPLES / "security_breach.toml", tmp_path / "plans")
    (tmp_path / "scenarios.toml").write_text(textwrap.dedent("""
        [scenario.restore-test]
        name = "Restore test"
        description = "old format"
        policies = ["tree"]
        steps = [{ id = "r", title = "Restore", owner = "ops", kind = "restore", policy = "tree", expected_minutes = 3 }]
        """))
    helper = _workspace(tmp_path, extra='\n[dr]\ndir = "plans"\nscenarios_file = "scenarios.toml"\n')
    scenarios = {s["id"]: s for s in json.loads(helper.cli("drill", "list", "--json", check=True).stdout)}
    assert {"security_breach", "restore-test"} <= set(scenarios)
    assert scenarios["security_breach"]["plan"]["injects"][0]["at_seconds"] == 1800
    assert scenarios["restore-test"]["plan"]["steps"][0]["estimate_seconds"] == 180


def test_dr_report_figures_and_overdue_drills(tmp_path):
    helper = _workspace(tmp_path, extra='\n[dr]\ncadence = "30d"\n')
    helper.cli("backup", "tree", check=True)
    helper.cli("drill", "run", "data_corruption", *FAST, check=True)
    report = json.loads(helper.cli("drill", "report", "--format", "json", check=True).stdout)
    assert report["total_annual_risk"] == pytest.approx(0.15 * 50000 + 0.05 * 250000 + 0.08 * 75000)
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert tiers["tier_1"] == {"tier": "tier_1", "scenarios": 2, "total_cost": 125000,
                               "average_downtime_seconds": 3 * 3600}  # (2h + 4h) / 2
    assert tiers["tier_2"]["scenarios"] == 1 and tiers["tier_2"]["average_downtime_seconds"] == 8 * 3600
    assert tiers["tier_3"]["scenarios"] == tiers["tier_4"]["scenarios"] == 0
    assert [r["id"] for r in report["top_risks"]] == ["datacenter_failure", "database_failure", "data_corruption"]
    assert report["overdue"] == ["database_failure", "datacenter_failure"]
    last = next(s for s in report["scenarios"] if s["id"] == "data_corruption")["last_drill"]
    assert last["status"] == "passed" and last["meets_rto"] and last["meets_rpo"]
    later = helper.cli("drill", "report", check=True, env={"INSITE_FAKE_NOW": "2099-01-01T00:00:00Z"}).stdout
    assert "**Total annual risk** (Σ probability × cost): **26,000**" in later
    assert "## Overdue drills (cadence 30d)" in later and "- data_corruption" in later


# ----- real servers ------------------------------------------------------------------------

def _db_config(tmp_path, pg_dsn: str, redis_url: str) -> WorkspaceHelper:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"
        [encryption]
        passphrase_env = "INSITE_PASSPHRASE"
        [storage.local]
        type = "local"
        path = "repo"
        [source.db]
        type = "postgresql"
        dsn = "{pg_dsn}"
        [source.cache]
        type = "redis"
        url = "{redis_url}"
        [policy.db]
        source = "db"
        storage = "local"
        type = "full"
        [policy.cache]
        source = "cache"
        storage = "local"
        type = "full"
        """))
    helper = WorkspaceHelper(tmp_path, tmp_path, config)
    helper.cli("init", check=True)
    return helper


@pytest.mark.postgres
@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(180)
def test_database_failure_drill_restores_postgres_and_redis_into_scratch_and_cleans_up(tmp_path, pg_cluster,
                                                                                      redis_server):
    pg_cluster.sql("CREATE DATABASE drillsrc")
    pg_cluster.sql("CREATE TABLE orders (id int PRIMARY KEY, amount int); "
                   "INSERT INTO orders SELECT g, g * 3 FROM generate_series(1, 500) g", dbname="drillsrc")
    client = redis_server.client()
    for i in range(40):
        client.set(f"session:{i}", "x" * i)
    helper = _db_config(tmp_path, pg_cluster.dsn_for("drillsrc"), redis_server.url)
    helper.cli("backup", "db", check=True)
    helper.cli("backup", "cache", check=True)
    result = helper.cli("drill", "run", "database_failure", "--json", *FAST)
    drill = json.loads(result.stdout)
    steps = {s["id"]: s for s in drill["steps"]}
    assert drill["status"] == "passed", (drill["missing"], {k: (s["status"], s["notes"]) for k, s in steps.items()})
    assert steps["5.db"]["status"] == "passed" and "1 tables match the backup (500 rows)" in steps["5.db"]["notes"]
    assert steps["6.cache"]["status"] == "passed" and "(40 keys)" in steps["6.cache"]["notes"]
    assert "scratch redis-server on 127.0.0.1:" in steps["4.cache"]["scratch"]
    assert drill["cleanup_problems"] == []
    names = [r[0] for r in pg_cluster.sql("SELECT datname FROM pg_database")]
    assert not [n for n in names if n.startswith("insite_drill_")]  # the scratch database was dropped
    port = int(steps["4.cache"]["scratch"].rsplit(":", 1)[1])
    import socket
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # the scratch redis is stopped

    # the backup's data damaged: the drill fails at the restore, never passes
    _damage_packs(tmp_path / "repo")
    drill = json.loads(helper.cli("drill", "run", "database_failure", "--json", *FAST).stdout)
    steps = {s["id"]: s for s in drill["steps"]}
    assert drill["status"] == "failed"
    assert steps["3.db"]["status"] == "failed" and steps["5.db"]["status"] == "blocked"
    assert not [r for r in pg_cluster.sql("SELECT datname FROM pg_database") if r[0].startswith("insite_drill_")]


PHYSICAL_SCENARIO = """
[scenario]
id = "physical_check"
name = "Physical restore check"
type = "hardware_failure"
probability = 0.1
tier = "tier_1"
cost = 1000
policies = ["db"]
rpo = "1d"
[[plan.steps]]
number = 1
action = "Restore the base backup and replay the archived WAL into a scratch PGDATA"
role = "dba"
kind = "restore"
policy = "db"
[[plan.steps]]
number = 2
action = "The rows written after the base backup are there"
role = "dba"
kind = "sql_check"
policy = "db"
query = "SELECT count(*), max(batch) FROM t"
expect = "200|1"
after = [1]
"""


@pytest.mark.postgres
@needs_pg  # noqa: F405
@pytest.mark.timeout(300)
def test_a_drill_restores_a_physical_backup_and_its_wal_into_a_scratch_pgdata(pg_factory):
    import os
    import socket
    from pathlib import Path

    from tests.pg_servers import PG_USER
    from tests.test_postgresql import _wait_archived, archiving_cluster, run_as_postgres

    wsdir = Path(pg_factory.make_dir("drill-physical"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY, batch int)")
    run_as_postgres(config, "backup", "db", "--json")
    cluster.sql("INSERT INTO t SELECT g, 1 FROM generate_series(1, 200) g")  # after the base backup: only in WAL
    _wait_archived(cluster)
    (wsdir / "dr").mkdir()
    (wsdir / "dr" / "physical_check.toml").write_text(PHYSICAL_SCENARIO)
    for path in (wsdir / "dr", wsdir / "dr" / "physical_check.toml"):
        os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
    result = run_as_postgres(config, "drill", "run", "physical_check", "--json", *FAST, check=False)
    drill = json.loads(result.stdout)
    steps = {s["id"]: s for s in drill["steps"]}
    assert drill["status"] == "passed", (drill["missing"], {k: (s["status"], s["notes"]) for k, s in steps.items()})
    assert "scratch PGDATA" in steps["1"]["scratch"] and steps["2"]["notes"] == \
        "'SELECT count(*), max(batch) FROM t' returned '200|1'"
    port = int(steps["1"]["scratch"].rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # the scratch server is stopped
    assert drill["cleanup_problems"] == [] and not (wsdir / "state" / "drills" / drill["id"]).exists()
    # the shipped database_failure on a physical source: its count check compares with the row
    # counts taken at the base backup, which the WAL replayed after it changed (0 rows then, 200
    # now): skipped with the reason, the drill incomplete, not failed on a sound restore
    drill = json.loads(run_as_postgres(config, "drill", "run", "database_failure", "--json", *FAST,
                                       check=False).stdout)
    steps = {s["id"]: s for s in drill["steps"]}
    assert steps["4.db"]["status"] == "passed" and steps["5.db"]["status"] == "skipped", steps["5.db"]["notes"]
    assert "replayed the archived WAL past its base backup" in steps["5.db"]["notes"] and drill["status"] == "incomplete"


def test_an_incomplete_drill_keeps_what_was_not_carried_out_in_its_findings():
    """A drill incomplete only because a restore step was dropped (no policy matched) and no data
    loss was measured, every step passed: its findings name both, so as the newest drill it does
    not wipe the improvement plan clean (derive() returned [] here)."""
    from insite_console.dr import findings

    record = {"id": "d1", "status": "incomplete", "started_at": "2026-12-01T10:00:00Z", "meets_rto": True,
              "meets_rpo": None, "events": [],
              "steps": [{"id": "1", "action": "assess", "role": "dba", "status": "done", "seconds": 60,
                         "estimate_seconds": 300}],
              "missing": ["step 2 (restore): no policy matches @databases",
                          "data loss not measured: no restore or check_rpo step was carried out"]}
    found = findings.derive(record, 90 * 86400)
    assert [(f["kind"], f["owner"]) for f in found] == [("not_carried_out", "dba"), ("not_carried_out", "dba")]
    assert found[0]["text"].startswith("step 2 (restore): no policy matches @databases")
    assert "data loss not measured" in found[1]["text"]


def test_a_step_that_stops_on_a_bug_fails_itself_and_a_drill_that_measured_nothing_still_shows(tmp_path,
                                                                                              monkeypatch):
    from insite_console.dr import actions, drill, report

    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)

    def broken(ctx, step):
        raise ValueError("bad value(s) in fds_to_keep")

    monkeypatch.setitem(actions._KINDS, "restore", broken)
    fake = FakeTime()
    record = drill.run(helper.ws, "data_corruption", auto=True,
                       drill_clock=drill.DrillClock(1.0, fake.monotonic, fake.sleep))
    restores = [s for s in record["steps"] if s["kind"] == "restore"]
    assert record["status"] == "failed" and record["recovery_seconds"] is not None
    assert restores and all(s["status"] in ("failed", "not run") for s in restores)
    assert not [s for s in record["steps"] if s["status"] == "running"]
    notes = json.dumps(record["events"])
    assert "the step stopped on an unexpected error: ValueError: bad value(s) in fds_to_keep" in notes

    # a record from a drill that stopped before measuring (as one a bug ended is kept)
    stopped = {**record, "id": "0123456789abcdef", "recovery_seconds": None, "meets_rto": None}
    helper.ws.catalog.insert_drill(stopped)
    points = report.trend([record, stopped])  # newest first, as the catalog lists them
    assert report.sparkline(points)[0] == "·" and report.trend_text(points).startswith("not measured ✗")
    shown = helper.cli("drill", "show", stopped["id"])
    assert shown.returncode == 0, shown.stderr
    assert "recovery time not measured against RTO 1h: not measured" in shown.stdout
