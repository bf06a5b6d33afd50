"""DR drills: scenarios played back against a real repository and judged against RTO/RPO."""

from __future__ import annotations

import json

from tests.conftest import WorkspaceHelper, write_config


def _workspace(tmp_path, extra: str = "", offsite: bool = False) -> WorkspaceHelper:
    source = tmp_path / "src"
    source.mkdir()
    (source / "orders.csv").write_text("id,amount\n" + "".join(f"{i},{i * 3}\n" for i in range(2000)))
    if offsite:
        extra += '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n'
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], extra=extra))
    helper.cli("init", check=True)
    return helper


def test_drill_list_shows_plans_with_owners_and_dependencies(tmp_path):
    helper = _workspace(tmp_path)
    scenarios = json.loads(helper.cli("drill", "list", "--json", check=True).stdout)
    assert {s["id"] for s in scenarios} == {"database-failure", "datacenter-failure", "data-corruption"}
    corruption = next(s for s in scenarios if s["id"] == "data-corruption")
    kinds = [step["kind"] for step in corruption["steps"]]
    assert kinds == ["manual", "check_rpo", "verify", "restore", "manual"]
    assert all(step["owner"] and step["escalation"] for step in corruption["steps"])
    assert corruption["steps"][3]["depends_on"] == ["verify-tree"]


def test_drill_restores_for_real_and_meets_rto_and_rpo(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    result = helper.cli("drill", "run", "data-corruption", "--json")
    assert result.returncode == 0, result.stderr
    drill = json.loads(result.stdout)
    assert drill["status"] == "passed" and drill["meets_rto"] and drill["meets_rpo"]
    steps = {s["id"]: s for s in drill["steps"]}
    assert steps["restore-tree"]["status"] == "passed"
    assert steps["restore-tree"]["bytes_written"] == (tmp_path / "src" / "orders.csv").stat().st_size
    assert steps["verify-tree"]["status"] == "passed"
    # manual steps count with their expected time: 15 + 20 minutes on the critical path
    assert 35 * 60 <= drill["recovery_seconds"] < 36 * 60
    assert not (tmp_path / "state" / "drills" / drill["id"] / "tree").exists()  # scratch removed
    report = json.loads(helper.cli("drill", "report", "--json", check=True).stdout)
    last = next(s for s in report["scenarios"] if s["id"] == "data-corruption")["last_drill"]
    assert last["id"] == drill["id"] and last["status"] == "passed"
    assert report["policies"][0]["tier"] == "tier 1 (RPO ≤ 15m)"
    assert any("no off-site copy" in r["risk"] for r in report["risks"])


def test_drill_fails_on_rpo_breach_and_on_missing_off_site_copy(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    late = helper.cli("drill", "run", "database-failure", "--json", env={"INSITE_FAKE_NOW": "2099-01-01T00:00:00Z"})
    assert late.returncode == 1
    drill = json.loads(late.stdout)
    assert drill["status"] == "failed" and not drill["meets_rpo"]
    dc = json.loads(helper.cli("drill", "run", "datacenter-failure", "--json").stdout)
    restore_step = next(s for s in dc["steps"] if s["kind"] == "restore")
    assert restore_step["status"] == "failed" and "no copy off its own storage" in restore_step["notes"]
    failover = next(s for s in dc["steps"] if s["id"] == "failover")
    assert failover["status"] == "blocked"


def test_datacenter_drill_restores_from_the_off_site_copy(tmp_path):
    helper = _workspace(tmp_path, offsite=True)
    backup = json.loads(helper.cli("backup", "tree", "--json", check=True).stdout)
    helper.cli("copy", backup["id"], "--to", "offsite", check=True)
    drill = json.loads(helper.cli("drill", "run", "datacenter-failure", "--json", check=True).stdout)
    restore_step = next(s for s in drill["steps"] if s["kind"] == "restore")
    assert restore_step["status"] == "passed" and "from the copy on offsite" in restore_step["notes"]


def test_corrupted_backup_fails_the_drill_and_blocks_later_steps(tmp_path):
    helper = _workspace(tmp_path)
    helper.cli("backup", "tree", check=True)
    for pack in (tmp_path / "repo" / "data").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            raw[20] ^= 0xFF
            pack.write_bytes(bytes(raw))
    result = helper.cli("drill", "run", "data-corruption", "--json")
    assert result.returncode == 1
    steps = {s["id"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["verify-tree"]["status"] == "failed"
    assert steps["restore-tree"]["status"] == "blocked"


def test_custom_scenarios_file_is_validated(tmp_path):
    (tmp_path / "scenarios.toml").write_text("""
[scenario.cyclic]
name = "Cyclic"
description = "steps that wait on each other"
policies = ["tree"]
steps = [
  { id = "a", title = "A", owner = "ops", depends_on = ["b"] },
  { id = "b", title = "B", owner = "ops", depends_on = ["a"] },
]
""")
    helper = _workspace(tmp_path, extra='\n[dr]\nscenarios_file = "scenarios.toml"\n')
    result = helper.cli("drill", "list")
    assert result.returncode == 2 and "depend on each other" in result.stderr
