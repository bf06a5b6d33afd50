"""Retention, copies, order of backups, and one catalog per host learning from storage."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from insite_console import backup, retention, scheduler
from insite_console.catalog.db import Catalog
from tests.conftest import WorkspaceHelper, write_config
from tests.treeutil import assert_same_tree

OFFSITE = '\n[storage.offsite]\ntype = "local"\npath = "offsite"\n'


def _helper(tmp_path, extra: str = "", policy_extra: str = "") -> WorkspaceHelper:
    source = tmp_path / "src"
    source.mkdir()
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], extra=extra,
                                                            policy_extra=policy_extra))
    for name in helper.ws.config.storages:
        helper.ws.init_repository(name)
    return helper


def _row(backup_id: str, started: str, host: str | None = None) -> dict:
    return {"id": backup_id, "policy": "tree", "source": "tree", "source_type": "files", "storage": "local",
            "type": "incremental", "status": "succeeded", "started_at": started, "host": host}


def test_keep_last_forgets_incrementals_whose_children_are_kept(workspace, tmp_path):
    """An incremental's parent is the previous backup; every manifest restores alone, so
    keep_last = 2 of 5 incrementals forgets 3 (it used to keep all five as "parents")."""
    ids = []
    for i in range(5):
        (workspace.source / f"f{i}.txt").write_text(f"version {i}\n" * 1000)
        ids.append(backup.run(workspace.ws, "tree")["id"])
    assert workspace.ws.catalog.backup(ids[-1])["parent_id"] == ids[-2]
    result = retention.prune(workspace.ws)
    assert sorted(result["forgotten"]) == sorted(ids[:3])
    assert [row["id"] for row in workspace.ws.catalog.backups()] == [ids[4], ids[3]]
    target = tmp_path / "restored"
    workspace.cli("restore", ids[4], "--target", str(target), check=True)
    assert_same_tree(workspace.source, workspace.restored(target))


def test_daily_buckets_follow_the_configured_time_zone(tmp_path):
    """22:30 and 23:30 UTC are one day in UTC, two days in Berlin (UTC+1 in March)."""
    times = ["2026-03-09T12:00:00Z", "2026-03-10T22:30:00Z", "2026-03-10T23:30:00Z"]
    kept = {}
    for zone in ("UTC", "Europe/Berlin"):
        root = tmp_path / zone.replace("/", "-")
        root.mkdir()
        helper = _helper(root, extra=f'\n[engine]\ntimezone = "{zone}"\n')
        for i, started in enumerate(times):
            helper.ws.catalog.insert_backup(_row(f"b{i}", started))
        rules = {"keep_daily": 2}
        helper.ws.config.policies["tree"]["retention"] = rules
        kept[zone] = sorted(d["id"] for d in retention.plan(helper.ws) if d["action"] == "keep")
        helper.close()
    assert kept == {"UTC": ["b0", "b2"], "Europe/Berlin": ["b1", "b2"]}


def test_an_unknown_time_zone_is_a_config_error(tmp_path):
    config = write_config(tmp_path, [str(tmp_path)], extra='\n[engine]\ntimezone = "Mars/Olympus"\n')
    result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), "backups"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "engine.timezone: expected an IANA time zone name" in result.stderr and "Mars/Olympus" in result.stderr


def test_keep_within_counts_from_the_newest_backup_not_from_now(workspace):
    """Backups that stopped a year ago are not all forgotten by keep_within = "7d"."""
    for i, started in enumerate(["2025-01-01T00:00:00Z", "2025-01-05T00:00:00Z", "2025-01-20T00:00:00Z"]):
        workspace.ws.catalog.insert_backup(_row(f"b{i}", started))
    workspace.ws.config.policies["tree"]["retention"] = {"keep_within": "7d"}
    actions = {d["id"]: d["action"] for d in retention.plan(workspace.ws)}
    assert actions == {"b2": "keep", "b1": "forget", "b0": "forget"}


def test_each_host_keeps_its_own_last_backups(workspace):
    """Two hosts sharing a config (and its policy names): keep_last applies per host."""
    for i, (started, host) in enumerate([("2026-01-01T00:00:00Z", "a"), ("2026-01-02T00:00:00Z", "a"),
                                         ("2026-01-03T00:00:00Z", "a"), ("2026-01-01T12:00:00Z", "b")]):
        workspace.ws.catalog.insert_backup(_row(f"b{i}", started, host))
    actions = {d["id"]: d["action"] for d in retention.plan(workspace.ws)}
    assert actions == {"b0": "forget", "b1": "keep", "b2": "keep", "b3": "keep"}


def test_prune_forgets_copies_and_rebuild_does_not_bring_them_back(tmp_path):
    helper = _helper(tmp_path, extra=OFFSITE, policy_extra='copy_to = ["offsite"]')
    ids = []
    for i in range(3):
        (helper.source / f"f{i}.bin").write_bytes(os.urandom(200_000))
        ids.append(backup.run(helper.ws, "tree", "full")["id"])
        os.unlink(helper.source / f"f{i}.bin")
    assert helper.ws.catalog.backup_storages(ids[0]) == ["local", "offsite"]
    result = retention.prune(helper.ws)
    assert result["forgotten"] == [ids[0]]
    assert result["bytes_freed"] > 2 * 200_000  # the first file's data went from both storages
    for storage in ("repo", "offsite"):
        assert sorted(os.listdir(tmp_path / storage / "snapshots")) == sorted(ids[1:])
    helper.close()
    # a lost catalog: rebuild reads the storages, the copy no longer lists the forgotten one
    os.unlink(tmp_path / "state" / "catalog.sqlite")
    helper.cli("catalog", "rebuild", check=True)
    listed = json.loads(helper.cli("backups", "--json", check=True).stdout)
    assert sorted(row["id"] for row in listed) == sorted(ids[1:])
    assert all(row["storages"] == ["local", "offsite"] for row in listed)


def test_sync_never_resurrects_a_forgotten_backup(tmp_path):
    """A stray manifest (say, a storage snapshot put back) of a backup this catalog forgot."""
    helper = _helper(tmp_path)
    ids = [backup.run(helper.ws, "tree", "full")["id"] for _ in range(3)]
    saved = (tmp_path / "repo" / "snapshots" / ids[0]).read_bytes()
    retention.prune(helper.ws)
    (tmp_path / "repo" / "snapshots" / ids[0]).write_bytes(saved)
    helper.close()
    result = json.loads(helper.cli("catalog", "sync", "--json", check=True).stdout)
    assert result["skipped_forgotten"] == [ids[0]] and result["added"] == []
    listed = json.loads(helper.cli("backups", "--json", check=True).stdout)
    assert sorted(row["id"] for row in listed) == sorted(ids[1:])


def test_catalog_sync_learns_other_hosts_backups_and_their_prune(tmp_path):
    """Two hosts, one repository, a catalog each: sync adds the other's backups, and drops
    the ones the other host's prune forgot."""
    shared = tmp_path / "shared"
    hosts = []
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "src").mkdir(parents=True)
        (root / "src" / "f.txt").write_text(f"host {name}\n")
        hosts.append(WorkspaceHelper(root, root / "src", write_config(root, [str(root / "src")],
                                                                     storage_path=str(shared))))
    a, b = hosts
    a.ws.init_repository("local")
    a_ids = [backup.run(a.ws, "tree", "full")["id"] for _ in range(3)]
    b_id = backup.run(b.ws, "tree", "full")["id"]
    result = json.loads(b.cli("catalog", "sync", "--json", check=True).stdout)
    assert sorted(result["added"]) == sorted(a_ids) and result["removed"] == []
    assert b.cli("catalog", "sync", "--json", check=True).stdout.count('"added": []') == 1  # idempotent
    retention.prune(a.ws)  # host a's catalog knows only its own three: it forgets the oldest
    result = json.loads(b.cli("catalog", "sync", "--json", check=True).stdout)
    assert result["removed"] == [a_ids[0]] and result["added"] == []
    listed = {row["id"] for row in json.loads(b.cli("backups", "--json", check=True).stdout)}
    assert listed == {b_id, *a_ids[1:]}
    target = tmp_path / "restored"
    b.cli("restore", a_ids[2], "--target", str(target), check=True)
    assert (target / str(a.source).lstrip("/") / "f.txt").read_text() == "host a\n"
    for helper in hosts:
        helper.close()


def test_order_within_one_second_survives_a_rebuild(workspace):
    """Two backups started in the same second, the newer with the smaller id: after a
    rebuild keep_last = 1 used to keep whichever the rowid order put first."""
    (workspace.source / "a").write_text("x")
    while True:
        while time.time() % 1 > 0.3:  # start both early in a second
            time.sleep(0.05)
        first = backup.run(workspace.ws, "tree", "full")
        second = backup.run(workspace.ws, "tree", "full")
        if first["started_at"] == second["started_at"] and second["id"] < first["id"]:
            break
    workspace.close()
    os.unlink(workspace.root / "state" / "catalog.sqlite")
    workspace.cli("catalog", "rebuild", check=True)
    listed = json.loads(workspace.cli("backups", "--json", check=True).stdout)
    assert [row["id"] for row in listed][:2] == [second["id"], first["id"]]
    workspace.ws.config.policies["tree"]["retention"] = {"keep_last": 1}
    kept = [d["id"] for d in retention.plan(workspace.ws) if d["action"] == "keep"]
    assert kept == [second["id"]]


def _running_backup(catalog: Catalog, run_id: str, pid: int, started: str) -> None:
    catalog.db.execute("INSERT INTO runs (id, kind, subject, status, pid, host, started_at) "
                       "VALUES (?, 'backup', 'tree', 'running', ?, ?, ?)", (run_id, pid, socket.gethostname(), started))
    catalog.insert_backup({**_row(run_id, started), "status": "running", "run_id": run_id})


def test_a_run_whose_pid_now_belongs_to_another_process_is_reaped(workspace):
    """pid reuse: the pid is alive, but that process started after the run did."""
    catalog = workspace.ws.catalog
    other = subprocess.Popen(["sleep", "60"])
    try:
        _running_backup(catalog, "deadrun0000000001", other.pid, "2026-01-01T00:00:00.000000Z")
        assert scheduler.due_policies(workspace.ws) == []  # skipped while "running"
        assert Catalog(catalog.path).reap_dead_runs() == ["deadrun0000000001"]
        row = catalog.backup("deadrun0000000001")
        assert row["status"] == "failed" and "its pid now belongs to another process" in row["error"]
        assert scheduler.due_policies(workspace.ws) == ["tree"]
    finally:
        other.kill()
        other.wait()


def test_a_run_from_before_a_reboot_is_reaped_and_a_live_one_is_not(workspace):
    if not os.path.exists("/proc/sys/kernel/random/boot_id"):
        pytest.skip("no boot id on this system")
    catalog = workspace.ws.catalog
    catalog.start_run("liverun", "backup", "tree")  # this very process: alive
    catalog.start_run("oldboot", "backup", "tree")
    catalog.db.execute("UPDATE runs SET boot_id = 'another-boot' WHERE id = 'oldboot'")
    assert Catalog(catalog.path).reap_dead_runs() == ["oldboot"]
    assert "host restarted" in catalog.run("oldboot")["error"]
    assert catalog.run("liverun")["status"] == "running"


def test_a_dr_host_without_the_source_paths_can_list_and_restore(tmp_path):
    """The production config on a DR host: the source paths are not there."""
    helper = _helper(tmp_path)
    (helper.source / "a.txt").write_text("precious\n")
    backup_id = backup.run(helper.ws, "tree")["id"]
    helper.close()
    shutil.rmtree(helper.source)
    listed = helper.cli("backups", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [backup_id]
    target = tmp_path / "restored"
    helper.cli("restore", backup_id, "--target", str(target), check=True)
    assert (target / str(helper.source).lstrip("/") / "a.txt").read_text() == "precious\n"
    # the one command that needs them says so, and the failed run is on record
    result = helper.cli("backup", "tree")
    assert result.returncode == 2
    assert f"source.tree.paths[0]: path {helper.source} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    newest = json.loads(helper.cli("backups", "--json", check=True).stdout)[0]
    assert newest["status"] == "failed" and "does not exist" in newest["error"]
