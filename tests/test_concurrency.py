"""Several processes and hosts on one repository (docs/FORMAT.md, "Concurrency"): each test is
a way the repository could list a backup as succeeded while its data is gone."""

from __future__ import annotations

import json
import os
import sqlite3
import socket
import threading
import time
from pathlib import Path

import pytest

from insite_console import backup, restore, retention
from insite_console.catalog.rebuild import sync as catalog_sync
from insite_console.errors import RepositoryError
from insite_console.repo import locks
from insite_console.repo.packs import pack_id_from_key
from insite_console.repo.repository import INDEX
from insite_console.storage.base import ObjectInfo
from tests.conftest import WorkspaceHelper, write_config
from tests.treeutil import assert_same_tree


def _write_random(path: Path, size: int, seed: int) -> None:
    import random

    path.write_bytes(random.Random(seed).randbytes(size))


def _other_host(workspace, tmp_path: Path, name: str = "host-b") -> WorkspaceHelper:
    """A second host: its own config, catalog and index cache, the same repository."""
    root = tmp_path / name
    root.mkdir()
    config = write_config(root, [str(workspace.source)], storage_path=str(workspace.root / "repo"),
                          policy_extra="")
    return WorkspaceHelper(root, workspace.source, config)


def _index_objects(repo) -> dict[str, list[dict]]:
    return {info.key[len(INDEX):]: repo._read_index_object(info.key[len(INDEX):]) for info in repo.storage.list(INDEX)}


def _packs_on_storage(repo) -> set[str]:
    return {pack_id_from_key(info.key) for info in repo.storage.list("data/")}


# ----- locks ---------------------------------------------------------------------------


def _foreign_lock(storage_root: Path, body: dict, age_by_storage: float) -> Path:
    path = storage_root / "locks" / os.urandom(8).hex()
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(body))
    stamp = time.time() - age_by_storage
    os.utime(path, (stamp, stamp))
    return path


def test_lock_age_is_judged_by_storage_time_not_host_clocks(workspace):
    repo = workspace.ws.repository("local")
    root = workspace.root / "repo"
    # Another host whose clock runs two hours fast wrote this lock 31 minutes ago (storage time):
    # it is stale, whatever its own timestamp says.
    fast = _foreign_lock(root, {"host": "host-fast", "pid": 1, "time": time.time() + 7200, "exclusive": True,
                                "purpose": "prune"}, age_by_storage=31 * 60)
    with repo.lock("backup of tree"):
        pass
    assert not fast.exists()
    # Another host whose clock runs two hours slow refreshed this lock a minute ago: it is alive.
    slow = _foreign_lock(root, {"host": "host-slow", "pid": 1, "time": time.time() - 7200, "exclusive": False,
                                "purpose": "backup of tree"}, age_by_storage=60)
    with pytest.raises(RepositoryError, match="locked by backup of tree \\(host host-slow"):
        with repo.lock("prune", exclusive=True):
            pass
    assert slow.exists()


def test_a_lock_from_an_earlier_boot_of_this_host_is_stale(workspace):
    import socket

    repo = workspace.ws.repository("local")
    old = _foreign_lock(workspace.root / "repo", {"host": socket.gethostname(), "boot_id": "an-earlier-boot",
                                                  "pid": os.getpid(), "exclusive": True, "purpose": "prune"}, 5)
    with repo.lock("backup of tree"):  # the pid is alive (it is ours), but the boot is not
        pass
    assert not old.exists()


def test_a_lock_that_could_not_be_refreshed_is_lost_and_says_why(workspace, monkeypatch):
    repo = workspace.ws.repository("local")
    monkeypatch.setattr(locks, "REFRESH_EVERY", 0.05)
    with repo.lock("backup of tree") as lock:
        lock.check()  # fresh: ours
        real_put = repo.storage.put

        def failing_put(key, data):
            if key.startswith("locks/"):
                raise OSError("disk quota exceeded")
            return real_put(key, data)

        monkeypatch.setattr(repo.storage, "put", failing_put)
        deadline = time.time() + 5
        while lock._refresh_error is None and time.time() < deadline:
            time.sleep(0.05)
        lock._last_refresh -= 26 * 60  # as if 26 minutes went by without a successful refresh
        with pytest.raises(locks.LockLost, match="not refreshed for .*disk quota exceeded"):
            lock.check()


def test_a_backup_whose_lock_was_taken_over_commits_nothing(workspace):
    _write_random(workspace.source / "data.bin", 3 * 1024 * 1024, seed=1)
    backup.run(workspace.ws, "tree", "full")
    (workspace.source / "new.txt").write_text("written after the first backup")
    lock_dir = workspace.root / "repo" / "locks"

    def another_host_breaks_our_lock(progress):
        if progress.phase == "finishing":  # as a prune elsewhere would after our process stalled
            for path in lock_dir.iterdir():
                path.unlink()

    with pytest.raises(locks.LockLost, match="another process removed it as stale"):
        backup.run(workspace.ws, "tree", "incremental", progress=another_host_breaks_our_lock)
    ws = workspace.reopen()
    assert len(ws.repository("local").list_manifest_ids()) == 1
    statuses = sorted(b["status"] for b in ws.catalog.backups(policy="tree"))
    assert statuses == ["failed", "succeeded"]


def test_a_backup_whose_verification_finds_data_missing_is_not_a_restore_point(tmp_path):
    """verify = true on the policy: a pack lost between the commit and the verification (another
    host's prune after a lost lock, a storage admin) fails the backup, not a warning."""
    source = tmp_path / "src"
    source.mkdir()
    _write_random(source / "x.bin", 1024 * 1024, seed=5)
    config = write_config(tmp_path, [str(source)], policy_extra="verify = true")
    helper = WorkspaceHelper(tmp_path, source, config)
    helper.ws.init_repository("local")
    data = tmp_path / "repo" / "data"

    def lose_a_pack(progress):
        if progress.phase == "done":
            max(data.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1).unlink()

    result = backup.run(helper.ws, "tree", "full", progress=lose_a_pack)
    assert result["status"] == "failed"
    assert result["error"].startswith("verify after backup failed: pack data/")
    assert helper.ws.catalog.last_backup("tree") is None  # never offered as a restore point
    catalog_sync(helper.ws)  # its manifest is on storage, but its verification failed
    assert helper.ws.catalog.last_backup("tree") is None
    helper.close()


# ----- prune and the index ---------------------------------------------------------------


def test_prune_elsewhere_between_runs_of_a_long_lived_process(workspace, tmp_path, monkeypatch):
    """Host A keeps its repository open (the scheduler, the console); host B prunes between two
    of its runs. A's next backup must not deduplicate against packs B deleted."""
    ws_a = workspace.ws
    _write_random(workspace.source / "x.bin", 2 * 1024 * 1024, seed=7)
    monkeypatch.setenv("INSITE_FAKE_NOW", "2026-12-01T10:00:00Z")
    backup.run(ws_a, "tree", "full")  # a1 holds x.bin
    x = (workspace.source / "x.bin").read_bytes()
    (workspace.source / "x.bin").unlink()
    _write_random(workspace.source / "y.bin", 64 * 1024, seed=8)
    monkeypatch.setenv("INSITE_FAKE_NOW", "2026-12-01T10:15:00Z")
    backup.run(ws_a, "tree", "full")
    monkeypatch.setenv("INSITE_FAKE_NOW", "2026-12-01T10:30:00Z")
    backup.run(ws_a, "tree", "full")  # keep_last = 2: a1 is outside retention
    monkeypatch.delenv("INSITE_FAKE_NOW")

    host_b = _other_host(workspace, tmp_path)
    catalog_sync(host_b.ws)
    done = retention.prune(host_b.ws)
    assert len(done["forgotten"]) == 1 and done["packs_deleted"] >= 1, done
    host_b.close()

    (workspace.source / "x.bin").write_bytes(x)  # the same content comes back on host A
    result = backup.run(ws_a, "tree", "incremental")
    assert result["status"] == "succeeded"
    assert result["bytes_stored"] >= 2 * 1024 * 1024 * 0.9  # uploaded again, not deduplicated against deleted packs
    target = tmp_path / "restored"
    restore.run(ws_a, result["id"], str(target), yes=True)
    assert (workspace.restored(target) / "x.bin").read_bytes() == x


def test_prune_leaves_no_index_object_naming_a_deleted_pack(workspace, tmp_path):
    """Two index objects may name one pack (two backups indexing a dead run's packs at once);
    prune must not leave either naming it once it is deleted."""
    ws = workspace.ws
    _write_random(workspace.source / "x.bin", 2 * 1024 * 1024, seed=3)
    backup.run(ws, "tree", "full")
    repo = ws.repository("local")
    first_packs = _packs_on_storage(repo)
    repo.write_index([repo.read_pack_header(p, repo.index.packs()[p]) for p in first_packs])  # a second owner
    assert sum(p["id"] in first_packs for packs in _index_objects(repo).values() for p in packs) == 2 * len(first_packs)
    x = (workspace.source / "x.bin").read_bytes()
    (workspace.source / "x.bin").unlink()
    (workspace.source / "small.txt").write_text("a new file")
    backup.run(ws, "tree", "full")
    backup.run(ws, "tree", "full")
    done = retention.prune(ws)
    assert done["packs_deleted"] >= len(first_packs)

    on_storage = _packs_on_storage(repo)
    for index_id, packs in _index_objects(repo).items():
        missing = [p["id"][:16] for p in packs if p["id"] not in on_storage]
        assert not missing, f"index object {index_id[:16]} names deleted packs {missing}"

    # A host with a fresh cache backs the same content up again: it must really store it.
    host_b = _other_host(workspace, tmp_path)
    (workspace.source / "x.bin").write_bytes(x)
    result = backup.run(host_b.ws, "tree", "full")
    target = tmp_path / "restored"
    restore.run(host_b.ws, result["id"], str(target), yes=True)
    assert (workspace.restored(target) / "x.bin").read_bytes() == x
    host_b.close()


def test_prune_repacks_packs_that_are_mostly_unused(workspace, tmp_path):
    ws = workspace.ws
    for i in range(40):  # 40 single-chunk files share one pack
        _write_random(workspace.source / f"f{i:02}.bin", 100 * 1024, seed=100 + i)
    backup.run(ws, "tree", "full")
    repo = ws.repository("local")
    assert len(_packs_on_storage(repo)) == 2  # one pack of file data, one of the file list
    for i in range(30):
        (workspace.source / f"f{i:02}.bin").unlink()
    kept = backup.run(ws, "tree", "full")
    backup.run(ws, "tree", "full")  # the first backup falls outside keep_last = 2

    def stored() -> int:
        return sum(info.size for info in repo.storage.list("data/"))

    before = stored()
    done = retention.prune(ws)
    assert done["packs_repacked"] == 1  # the data pack; the first backup's file list is deleted
    assert stored() < before * 0.35  # three quarters of the pack was unused
    target = tmp_path / "restored"
    restore.run(ws, kept["id"], str(target), yes=True)
    assert_same_tree(workspace.source, workspace.restored(target))
    from insite_console import verify

    assert verify.run(ws, kept["id"], deep=True)["status"] == "ok"
    host_b = _other_host(workspace, tmp_path)  # a fresh cache reads the index prune wrote
    catalog_sync(host_b.ws)
    restore.run(host_b.ws, kept["id"], str(tmp_path / "restored-b"), yes=True)
    assert_same_tree(workspace.source, workspace.restored(tmp_path / "restored-b"))
    host_b.close()


def test_unreadable_packs_are_deleted_only_under_the_exclusive_lock(workspace):
    ws = workspace.ws
    (workspace.source / "a.txt").write_text("hello")
    backup.run(ws, "tree", "full")
    repo = ws.repository("local")
    junk = workspace.root / "repo" / "data" / "ab" / ("ab" + "0" * 62)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(os.urandom(5000))
    with repo.lock("backup of tree"):
        recovered, unreadable = repo.recover_unindexed_packs()
    assert recovered == 0 and unreadable == ["data/ab/" + junk.name] and junk.exists()
    retention.prune(ws)
    assert not junk.exists()


def test_the_index_cache_waits_for_another_process_writing_it(workspace):
    """Two processes on one host share the index cache: a long write by one must not fail the
    other's backup with `database is locked` after sqlite's default 5 seconds."""
    ws = workspace.ws
    repo = ws.repository("local")
    (workspace.source / "a.txt").write_text("hello")
    other = sqlite3.connect(repo.index.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO loaded_indexes VALUES ('held-by-another-process')")
    released = threading.Timer(6.5, lambda: other.execute("ROLLBACK"))
    released.start()
    try:
        # a write (recovered packs, the new index) must wait for the other writer
        repo.write_index([])
        result = backup.run(ws, "tree", "full")
    finally:
        released.join()
        other.close()
    assert result["status"] == "succeeded"


# ----- bounded memory -------------------------------------------------------------------


def test_entries_queued_behind_a_slow_file_are_bounded(workspace, monkeypatch):
    """A file that reads slowly must not let the scan queue every unchanged file behind it:
    the queue of entries is bounded (backup.ENTRIES_IN_FLIGHT), whatever the tree's size."""
    (workspace.source / "aaa-slow.bin").write_bytes(b"first version")
    for i in range(1500):
        (workspace.source / f"f{i:04}.txt").write_text(f"unchanged file {i}")
    backup.run(workspace.ws, "tree", "full")
    (workspace.source / "aaa-slow.bin").write_bytes(b"second version, read slowly")

    scanned = [0]
    seen_while_slow = []
    release = threading.Event()
    real_make_source, real_submit = backup.make_source, workspace.ws.repository("local").submit_stream

    def counting_source(name, settings):
        source = real_make_source(name, settings)
        real_scan = source.scan

        def scan(ctx):
            for item in real_scan(ctx):
                scanned[0] += 1
                yield item
        source.scan = scan
        return source

    def slow_submit(handle, *args, **kwargs):
        if os.readlink(f"/proc/self/fd/{handle.fileno()}").endswith("aaa-slow.bin"):
            time.sleep(1.0)  # the scan runs on meanwhile: this is how far it gets
            seen_while_slow.append(scanned[0])
            release.set()
        return real_submit(handle, *args, **kwargs)

    monkeypatch.setattr(backup, "make_source", counting_source)
    monkeypatch.setattr(workspace.ws.repository("local"), "submit_stream", slow_submit)
    result = backup.run(workspace.ws, "tree", "incremental")
    assert result["status"] == "succeeded" and result["files"] == 1501
    assert seen_while_slow and seen_while_slow[0] <= backup.ENTRIES_IN_FLIGHT + 16, seen_while_slow


def test_prune_refuses_while_an_index_object_is_damaged(workspace):
    """The packs a damaged index object names look unindexed, so unreferenced: prune must not
    judge them until `repair index` has rebuilt the index from the packs."""
    from insite_console import repair

    ws = workspace.ws
    _write_random(workspace.source / "x.bin", 1024 * 1024, seed=11)
    first = backup.run(ws, "tree", "full")
    index_file = next((workspace.root / "repo" / "index").iterdir())
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    index_file.write_bytes(bytes(data))
    ws = workspace.reopen()
    packs_before = _packs_on_storage(ws.repository("local"))
    with pytest.raises(RepositoryError, match="prune stopped before deleting anything: 1 index object.*repair index local"):
        retention.prune(ws)
    assert _packs_on_storage(ws.repository("local")) == packs_before
    assert repair.run(ws, "index", "local")["status"] == "repaired"
    retention.prune(ws)
    target = workspace.root / "restored"
    restore.run(ws, first["id"], str(target), yes=True)
    assert (workspace.restored(target) / "x.bin").read_bytes() == (workspace.source / "x.bin").read_bytes()


def test_a_dead_runs_pack_with_a_damaged_blob_is_not_trusted(workspace):
    """Packs no index names are checked blob by blob before they are indexed for reuse."""
    ws = workspace.ws
    _write_random(workspace.source / "x.bin", 1024 * 1024, seed=12)
    backup.run(ws, "tree", "full")
    repo = ws.repository("local")
    for info in list(repo.storage.list(INDEX)):  # as if the run died before writing its index
        repo.storage.delete([info.key])
    pack = max((workspace.root / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x01  # inside the first blob, not the header
    pack.write_bytes(bytes(data))
    repo.reload_index()
    with repo.lock("backup of tree"):
        recovered, unreadable = repo.recover_unindexed_packs()
    assert "data/" + pack.parent.name + "/" + pack.name in unreadable
    assert not repo.index.packs().get(pack.name)


def test_an_index_object_put_back_after_a_prune_is_not_trusted(workspace, tmp_path, monkeypatch):
    """A replayed index object is authentic and correctly named, but names packs a prune deleted:
    a host syncing it must not deduplicate against them."""
    ws = workspace.ws
    _write_random(workspace.source / "x.bin", 2 * 1024 * 1024, seed=21)
    monkeypatch.setenv("INSITE_FAKE_NOW", "2026-12-01T10:00:00Z")
    backup.run(ws, "tree", "full")
    saved = {p.name: p.read_bytes() for p in (workspace.root / "repo" / "index").iterdir()}
    x = (workspace.source / "x.bin").read_bytes()
    (workspace.source / "x.bin").unlink()
    (workspace.source / "small.txt").write_text("new")
    for stamp in ("2026-12-01T10:15:00Z", "2026-12-01T10:30:00Z"):
        monkeypatch.setenv("INSITE_FAKE_NOW", stamp)
        backup.run(ws, "tree", "full")
    monkeypatch.delenv("INSITE_FAKE_NOW")
    assert retention.prune(ws)["packs_deleted"] >= 1
    for name, data in saved.items():  # someone puts the old index objects back
        (workspace.root / "repo" / "index" / name).write_bytes(data)

    host_b = _other_host(workspace, tmp_path)
    (workspace.source / "x.bin").write_bytes(x)
    result = backup.run(host_b.ws, "tree", "full")
    assert result["bytes_stored"] >= 2 * 1024 * 1024 * 0.9  # stored again, not deduplicated against nothing
    restore.run(host_b.ws, result["id"], str(tmp_path / "restored"), yes=True)
    assert (workspace.restored(tmp_path / "restored") / "x.bin").read_bytes() == x
    host_b.close()


def _this_machine_lock(**fields) -> dict:
    """A lock as this process writes it, with some fields changed."""
    from insite_console import process

    lock = {"host": socket.gethostname(), "machine_id": process.machine_id() or "",
            "boot_id": process.boot_id() or "", "pid_ns": process.pid_namespace() or "", "pid": os.getpid(),
            "process_start": process.start_ticks(os.getpid()) or ""}
    return {**lock, **fields}


def test_a_fresh_lock_from_another_machine_with_the_same_host_name_is_not_stale():
    # cloned VMs, containers with a fixed host name on several nodes: another boot id, another
    # pid space; only the storage's clock may call their lock stale
    lock = _this_machine_lock(machine_id="another-machine", boot_id="another-machine-boot", pid=2**22 + 7)
    assert not locks.is_stale(lock, ObjectInfo("locks/x", 0, mtime=1000), 1000.0)
    assert locks.is_stale(lock, ObjectInfo("locks/x", 0, mtime=1000), 1000.0 + locks.STALE_AFTER + 1)


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/random/boot_id"), reason="no boot id (not Linux)")
def test_a_lock_from_this_machine_and_another_boot_is_stale():
    lock = _this_machine_lock(boot_id="an-earlier-boot")
    assert locks.is_stale(lock, ObjectInfo("locks/x", 0, mtime=1000), 1000.0)
    assert not locks.is_stale(_this_machine_lock(), ObjectInfo("locks/x", 0, mtime=1000), 1000.0)


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="no /proc (not Linux)")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale():
    # our pid is alive, but the lock's process started at another time: the pid was reused
    lock = _this_machine_lock(process_start=str(int(_this_machine_lock()["process_start"]) + 1))
    assert locks.is_stale(lock, ObjectInfo("locks/x", 0, mtime=1000), 1000.0)


def test_a_lock_from_another_pid_namespace_of_this_machine_is_judged_by_storage_time():
    # another container on this node: same machine and boot, but its pid is not ours to look up
    lock = _this_machine_lock(pid_ns="pid:[1]", pid=2**22 + 7)
    assert not locks.is_stale(lock, ObjectInfo("locks/x", 0, mtime=1000), 1000.0)
    assert locks.is_stale(_this_machine_lock(pid=2**22 + 7), ObjectInfo("locks/x", 0, mtime=1000), 1000.0)


def test_a_lock_written_by_a_repository_lock_records_the_machine_and_process(workspace):
    from insite_console import process

    repo = workspace.ws.repository("local")
    with repo.lock("backup of tree") as lock:
        written = json.loads(repo.storage.get(lock.key))
    assert written["machine_id"] == (process.machine_id() or "")
    assert written["process_start"] == (process.start_ticks(os.getpid()) or "")
    assert written["pid_ns"] == (process.pid_namespace() or "")
