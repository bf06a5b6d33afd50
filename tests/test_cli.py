"""The CLI's outside contract: JSON shapes, exit codes, catalog rebuild, prune, status, schedule."""

from __future__ import annotations

import json
import os
import re

from tests.treeutil import build_tree

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
BACKUP_KEYS = {"id", "policy", "source", "storage", "type", "status", "started_at", "finished_at",
               "bytes_read", "bytes_stored", "files", "parent_id", "error"}


def test_backup_and_backups_json_follow_the_contract(workspace):
    (workspace.source / "a.txt").write_text("hello")
    one = json.loads(workspace.cli("backup", "tree", "--type", "full", "--json", check=True).stdout)
    assert BACKUP_KEYS <= set(one)
    assert one["status"] == "succeeded" and one["type"] == "full" and one["error"] is None
    assert ISO_Z.match(one["started_at"]) and ISO_Z.match(one["finished_at"])
    assert one["files"] == 1 and one["bytes_read"] == 5 and one["storages"] == ["local"]
    two = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    assert two["type"] == "incremental" and two["parent_id"] == one["id"]
    listed = json.loads(workspace.cli("backups", "--json", check=True).stdout)
    assert [row["id"] for row in listed] == [two["id"], one["id"]]
    shown = json.loads(workspace.cli("show", one["id"], "--json", check=True).stdout)
    assert shown["id"] == one["id"] and shown["info"]["totals"]["files"] == 1


def test_restore_json_and_dry_run_plan(workspace, tmp_path):
    (workspace.source / "a.txt").write_text("hello")
    one = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    target = tmp_path / "t"
    plan = json.loads(workspace.cli("restore", one["id"], "--target", str(target), "--dry-run", "--json",
                                    check=True).stdout)
    assert {"id", "backup_id", "status", "target", "files", "bytes_written", "started_at", "finished_at",
            "error", "plan"} <= set(plan)
    assert not target.exists()
    done = json.loads(workspace.cli("restore", one["id"], "--target", str(target), "--json", check=True).stdout)
    assert done["status"] == "succeeded" and done["bytes_written"] == 5
    assert workspace.restored(target).joinpath("a.txt").read_text() == "hello"


def test_unknown_backup_and_policy_are_usage_errors(workspace):
    result = workspace.cli("restore", "deadbeef", "--target", "/tmp/x")
    assert result.returncode == 2 and "no backup 'deadbeef'" in result.stderr
    result = workspace.cli("backup", "nope")
    assert result.returncode == 2 and "no policy named 'nope'" in result.stderr


def test_wal_fetch_called_wrongly_stops_recovery(workspace, tmp_path):
    """PostgreSQL reads a restore_command status of 125 or less as "not archived" and ends
    recovery there: argparse's usage error (2) or a bad option must exit above 125."""
    from insite_console.cli import main

    for args in (["wal-fetch", "db"], ["wal-fetch", "db", "000000010000000000000001", str(tmp_path / "x"), "--bogus"],
                 ["wal-fetch", "--limit-download", "lots", "db", "000000010000000000000001", str(tmp_path / "x")]):
        assert main(["-c", str(workspace.config), *args]) == 200, args


def test_catalog_rebuild_recreates_the_catalog_from_storage(workspace):
    (workspace.source / "a.txt").write_text("hello")
    ids = [json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)["id"] for _ in range(2)]
    os.unlink(workspace.root / "state" / "catalog.sqlite")
    assert json.loads(workspace.cli("backups", "--json", check=True).stdout) == []
    workspace.cli("catalog", "rebuild", check=True)
    listed = json.loads(workspace.cli("backups", "--json", check=True).stdout)
    assert sorted(row["id"] for row in listed) == sorted(ids)
    assert all(row["status"] == "succeeded" for row in listed)
    restored = workspace.cli("restore", ids[0], "--target", str(workspace.root / "t"), check=True)
    assert "succeeded" in restored.stdout


def test_prune_keeps_what_retention_says_and_frees_space(workspace):
    for i in range(4):
        (workspace.source / f"f{i}.bin").write_bytes(os.urandom(300_000))
        workspace.cli("backup", "tree", "--type", "full", check=True)
        os.unlink(workspace.source / f"f{i}.bin")
    plan = json.loads(workspace.cli("prune", "--dry-run", "--json", check=True).stdout)
    assert [d["action"] for d in plan["backups"]] == ["keep", "keep", "forget", "forget"]
    done = json.loads(workspace.cli("prune", "--json", check=True).stdout)
    assert len(done["forgotten"]) == 2 and done["bytes_freed"] > 500_000
    listed = json.loads(workspace.cli("backups", "--json", check=True).stdout)
    assert len(listed) == 2
    assert workspace.cli("verify", "--all", "--deep").returncode == 0
    for row in listed:
        workspace.cli("restore", row["id"], "--target", str(workspace.root / f"t-{row['id']}"), check=True)


def test_status_reports_rpo_health(workspace):
    never = workspace.cli("status", "--json")
    assert never.returncode == 2 and json.loads(never.stdout)[0]["health"] == "never"  # CRITICAL
    workspace.cli("backup", "tree", check=True)
    rows = json.loads(workspace.cli("status", "--json", check=True).stdout)
    assert rows[0]["health"] == "ok" and rows[0]["rpo_seconds"] == 900
    late = workspace.cli("status", "--json", env={"INSITE_FAKE_NOW": "2099-01-01T00:00:00Z"})
    assert late.returncode == 2 and json.loads(late.stdout)[0]["health"] == "breach"
    assert "RPO BREACH" in workspace.cli("status", env={"INSITE_FAKE_NOW": "2099-01-01T00:00:00Z"}).stdout


def test_schedule_once_runs_what_is_due(workspace):
    build_tree(workspace.source, files=5)
    first = workspace.cli("schedule", "--once", "--json", check=True)
    assert json.loads(first.stdout)[0]["status"] == "succeeded"
    second = workspace.cli("schedule", "--once", "--json", check=True)
    assert json.loads(second.stdout) == []  # not due again within the same 15 minutes


def test_demo_creates_a_workspace_with_backups(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "insite_console", "demo", "--dir", str(tmp_path / "demo"),
                             "--no-tui"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = result.stdout.strip()
    listed = subprocess.run([sys.executable, "-m", "insite_console", "-c", config, "backups", "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(listed.stdout)
    assert len(rows) == 3 and all(row["status"] == "succeeded" for row in rows)


def test_copy_to_a_second_storage_is_deduplicated_and_restorable(tmp_path):
    from tests.conftest import WorkspaceHelper, write_config

    source = tmp_path / "src"
    build_tree(source, files=50)
    extra = '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n'
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], extra=extra))
    helper.cli("init", check=True)
    one = json.loads(helper.cli("backup", "tree", "--json", check=True).stdout)
    first = json.loads(helper.cli("copy", one["id"], "--to", "offsite", "--json", check=True).stdout)
    assert first["storages"] == ["local", "offsite"] and first["bytes_stored"] > 3_000_000
    (source / "small-change.txt").write_text("x")
    two = json.loads(helper.cli("backup", "tree", "--json", check=True).stdout)
    second = json.loads(helper.cli("copy", two["id"], "--to", "offsite", "--json", check=True).stdout)
    assert second["bytes_stored"] < first["bytes_stored"] * 0.05  # only the change travels
    verified = helper.ws.catalog and __import__("insite_console.verify", fromlist=["run"]).run(
        helper.ws, two["id"], deep=True, storage="offsite")
    assert verified["status"] == "ok"
    # restore from the copy alone
    import shutil

    shutil.rmtree(tmp_path / "repo")
    helper.close()
    target = tmp_path / "from-offsite"
    helper.cli("restore", two["id"], "--target", str(target), check=True)
    from tests.treeutil import assert_same_tree

    assert_same_tree(source, helper.restored(target))


def test_prune_refuses_to_run_beside_a_backup(workspace):
    """A backup holds a shared lock; prune needs the repository alone."""
    import pytest

    from insite_console import retention
    from insite_console.errors import RepositoryError

    (workspace.source / "a").write_text("x")
    workspace.cli("backup", "tree", check=True)
    repo = workspace.ws.repository("local")
    with repo.lock("backup of tree"):
        with pytest.raises(RepositoryError, match="locked by backup of tree"):
            retention.prune(workspace.ws)
        result = workspace.cli("prune")
        assert result.returncode == 1 and "locked by backup of tree" in result.stderr
    assert workspace.cli("prune").returncode == 0  # released


def test_a_dead_process_lock_is_ignored(workspace):
    import json as _json
    import socket

    (workspace.source / "a").write_text("x")
    lock_dir = workspace.root / "repo" / "locks"
    lock_dir.mkdir(exist_ok=True)
    (lock_dir / "deadbeefdeadbeef").write_text(_json.dumps(
        {"host": socket.gethostname(), "pid": 2**22 + 12345, "time": 9e18, "exclusive": True, "purpose": "prune"}))
    assert workspace.cli("backup", "tree").returncode == 0
    assert not (lock_dir / "deadbeefdeadbeef").exists()


def test_policy_verify_and_copy_to_run_after_each_backup(tmp_path):
    from tests.conftest import WorkspaceHelper, write_config

    source = tmp_path / "src"
    build_tree(source, files=20)
    extra = '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n'
    helper = WorkspaceHelper(tmp_path, source, write_config(
        tmp_path, [str(source)], extra=extra, policy_extra='verify = true\ncopy_to = ["offsite"]'))
    helper.cli("init", check=True)
    result = json.loads(helper.cli("backup", "tree", "--json", check=True).stdout)
    assert result["verification"]["status"] == "ok"
    assert result["storages"] == ["local", "offsite"] and result["warnings"] == []
    # the off-site storage is unusable: the backup is still a restore point, with a warning
    import shutil

    shutil.rmtree(tmp_path / "offsite")
    (tmp_path / "offsite").write_text("not a folder")
    second = helper.cli("backup", "tree", "--json")
    assert second.returncode == 0, second.stderr
    output = json.loads(second.stdout)
    assert output["status"] == "succeeded" and output["storages"] == ["local"]
    assert any(w.startswith("copy to offsite failed") for w in output["warnings"])


def test_restore_at_takes_relative_and_local_times_and_explains_a_bad_one(workspace, tmp_path):
    (workspace.source / "a.txt").write_text("hello")
    early = json.loads(workspace.cli("backup", "tree", "--json", check=True,
                                     env={"INSITE_FAKE_NOW": "2030-01-01T10:00:00Z"}).stdout)
    workspace.cli("backup", "tree", "--json", check=True, env={"INSITE_FAKE_NOW": "2030-01-01T13:00:00Z"})
    later = {"INSITE_FAKE_NOW": "2030-01-01T13:30:00Z", "TZ": "Europe/Paris"}
    for at in ("-2h", "12:00", "2030-01-01 11:05"):  # 11:30Z; 12:00 Paris = 11:00Z; 10:05Z
        plan = json.loads(workspace.cli("restore", "tree", "--at", at, "--target", str(tmp_path / "t"),
                                        "--dry-run", "--json", check=True, env=later).stdout)
        assert plan["backup_id"] == early["id"], at
    bad = workspace.cli("restore", "tree", "--at", "half past two", "--target", str(tmp_path / "t"), env=later)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "isoformat" not in bad.stderr
    assert "use one of" in bad.stderr and "-2h" in bad.stderr and "yesterday 14:00" in bad.stderr


def test_a_cancelled_backup_json_still_prints_its_object(workspace):
    """Found by a tmux walk: `backup --json` stopped by SIGTERM printed nothing (exit 130), so a
    script read no status at all; it prints the run as recorded, `cancelled`, with its error."""
    import signal
    import subprocess
    import sys
    import time

    with open(workspace.source / "large.bin", "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(8 << 20))
    workspace.close()
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config), "backup", "tree",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data_dir, deadline = workspace.root / "repo" / "data", time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.is_file() for p in data_dir.rglob("*")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    printed = json.loads(out)
    assert BACKUP_KEYS <= set(printed) and printed["status"] == "cancelled", printed
    assert "SIGTERM" in printed["error"] and printed["finished_at"]
    assert json.loads(workspace.cli("backups", "--json", check=True).stdout)[0] == printed


def test_a_failed_restore_json_prints_its_object_with_the_error(workspace, tmp_path):
    (workspace.source / "a.bin").write_bytes(os.urandom(300_000))
    made = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    for pack in (workspace.root / "repo" / "data").rglob("*"):
        if pack.is_file():
            pack.unlink()
    result = workspace.cli("restore", made["id"], "--target", str(tmp_path / "t"), "--json")
    assert result.returncode != 0
    printed = json.loads(result.stdout)
    assert printed["status"] == "failed" and printed["backup_id"] == made["id"] and printed["error"]
    assert printed["error"].splitlines()[0] in result.stderr
