"""Crash safety: real CLI processes (backup, prune, copy) SIGKILLed right after each of their
storage writes in turn, every point from the same starting state (storage/local.py's test hook
INSITE_TEST_KILL_AFTER_WRITES). After each kill the repository and the catalog are consistent
(checks.assert_consistent), the operation run again succeeds, and what it made restores
byte-identical."""

from __future__ import annotations

import shutil

from insite_console import backup, copy, retention
from insite_console.workspace import Workspace
from tests.reliability.checks import (KILL_ENV, MIB, Snapshot, assert_consistent, assert_restores, killed,
                                      make_workspace, write_random)
from tests.reliability.conftest import LONG
from tests.treeutil import build_tree


def _kill_at_every_write(helper, args: list[str], after_kill, figures, name: str, stride: int = 1) -> int:
    """Run `insite-console ARGS` killed after its 1st, 2nd, … storage write (every `stride`-th
    in the short variant), each time from the snapshot taken now, until a run finishes before
    its kill point; `after_kill(n)` checks. Returns how many kill points were tried."""
    snapshot = Snapshot(helper.root, names=("repo", "offsite", "state"))
    point = tried = 0
    while True:
        point += 1 if LONG or tried == 0 else stride
        snapshot.put_back()
        result = helper.cli(*args, env={KILL_ENV: str(point)})
        if not killed(result):
            break
        tried += 1
        figures[f"{name} kill points"] += 1
        after_kill(point)
    assert result.returncode == 0, result.stderr
    return tried


def _after_killed_backup(helper, tmp_path) -> None:
    """Consistent; the backup run again succeeds and restores byte-identical."""
    assert_consistent(helper.config)
    ws = Workspace.load(helper.config)
    try:
        rerun = backup.run(ws, "tree")
        assert rerun["status"] == "succeeded"
        assert_restores(ws, rerun["id"], helper.source, tmp_path / "restored")
    finally:
        ws.close()


def test_kill_9_backup_after_each_storage_write(tmp_path, figures):
    helper = make_workspace(tmp_path / "ws")
    build_tree(helper.source, files=20)
    backup.run(helper.ws, "tree")  # a parent: the killed runs are incremental
    helper.close()
    for i in range(6 if LONG else 2):
        write_random(helper.source / f"new-{i}.bin", 3 * MIB // 2, seed=i)
    (helper.source / "name with spaces.txt").write_text("changed\n")

    points = _kill_at_every_write(helper, ["backup", "tree"], lambda _point: _after_killed_backup(helper, tmp_path),
                                  figures, "backup")
    assert points >= 8


def test_kill_9_prune_after_each_storage_write(tmp_path, figures):
    helper = make_workspace(tmp_path / "ws")
    build_tree(helper.source, files=20)
    expected = {}
    for i in range(4):  # keep_last = 2: the first two are forgotten, their big files' packs freed
        write_random(helper.source / f"big-{i}.bin", MIB + MIB // 4, seed=10 + i)
        (helper.source / f"big-{i - 1}.bin").unlink(missing_ok=True)
        (helper.source / "dir000" / f"small-{i}.txt").write_text(f"small {i}\n" * 50)
        backup_id = backup.run(helper.ws, "tree", "full")["id"]  # full: no parent chain keeps them
        expected[backup_id] = tmp_path / "expected" / backup_id
        shutil.copytree(helper.source, expected[backup_id], symlinks=True)
    helper.close()
    kept = list(expected)[2:]

    def after_kill(point: int) -> None:
        assert_consistent(helper.config)
        ws = Workspace.load(helper.config)
        try:
            done = retention.prune(ws)
            assert set(done["forgotten"]) <= set(list(expected)[:2])
            assert [r["id"] for r in ws.catalog.backups(status="succeeded")] == kept[::-1]
            for backup_id in kept:
                assert_restores(ws, backup_id, helper.source, tmp_path / "restored", expected=expected[backup_id])
        finally:
            ws.close()

    points = _kill_at_every_write(helper, ["prune"], after_kill, figures, "prune", stride=2)
    assert points >= 7


def test_kill_9_copy_after_each_storage_write(tmp_path, figures):
    helper = make_workspace(tmp_path / "ws", extra='\n[storage.offsite]\ntype = "local"\npath = "offsite"\n')
    helper.ws.init_repository("offsite")
    build_tree(helper.source, files=20)
    backup_id = backup.run(helper.ws, "tree")["id"]
    helper.close()

    def after_kill(point: int) -> None:
        assert_consistent(helper.config, storages=("local", "offsite"))
        ws = Workspace.load(helper.config)
        try:
            assert copy.run(ws, backup_id, "offsite")["status"] == "succeeded"
            assert_restores(ws, backup_id, helper.source, tmp_path / "restored", storage="offsite")
        finally:
            ws.close()

    points = _kill_at_every_write(helper, ["copy", backup_id, "--to", "offsite"], after_kill, figures, "copy",
                                  stride=3)
    assert points >= 4


def test_kill_9_backup_at_spread_times(tmp_path, figures):
    """Time-based kills land anywhere, also inside a write (a temp file half written) or while
    the catalog is being updated: same checks. One point here, ten in the long variant."""
    import subprocess
    import sys
    import time

    helper = make_workspace(tmp_path / "ws")
    build_tree(helper.source, files=20)
    for i in range(4):
        write_random(helper.source / f"large-{i}.bin", 4 * MIB, seed=20 + i)
    helper.close()
    (helper.root / "state").mkdir(exist_ok=True)  # the catalog is put back too (it is made at first use)
    snapshot = Snapshot(helper.root)
    started = time.monotonic()
    helper.cli("backup", "tree", check=True)
    full_run = time.monotonic() - started
    offsets = [0.35 + i * (full_run - 0.35) / 10 for i in range(10)] if LONG else [0.35 + (full_run - 0.35) / 2]
    while offsets:
        offset = offsets.pop(0)
        snapshot.put_back()
        proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(helper.config), "backup", "tree"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(offset)
        proc.kill()
        if proc.wait() != -9:  # finished before the kill (a run can be faster than the timed one): not a kill point
            if not LONG and not figures["timed kill points"] and offset > 0.05:
                offsets.append(offset / 2)  # the short variant needs one: earlier, then
            continue
        figures["timed kill points"] += 1
        figures["temp files left by a kill"] += len(list((helper.root / "repo").rglob("*.insite-tmp-*")))
        _after_killed_backup(helper, tmp_path)
    assert figures["timed kill points"] >= 1


def test_kill_9_repair_index_after_each_storage_write(tmp_path, figures):
    """`repair index` rewrites the whole index: killed after any of its writes, no index object
    names a missing pack, and run again it finishes the repair with every backup whole."""
    from insite_console.repo.packs import pack_id_from_key

    helper = make_workspace(tmp_path / "ws")
    build_tree(helper.source, files=20)
    kept = []
    for i in range(3):
        write_random(helper.source / f"big-{i}.bin", MIB, seed=40 + i)
        kept.append(backup.run(helper.ws, "tree", "full")["id"])
    helper.close()
    index_dir = helper.root / "repo" / "index"
    victim = sorted(index_dir.iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # the damage the repair is for
    victim.write_bytes(bytes(data))

    def after_kill(point: int) -> None:
        ws = Workspace.load(helper.config)
        try:
            repo = ws.repository("local")
            repo.reload_index()
            on_storage = {pack_id_from_key(info.key) for info in repo.storage.list("data/")}
            assert not set(repo.index.packs()) - on_storage, point
        finally:
            ws.close()
        rerun = helper.cli("repair", "index", "local", "--json")
        assert rerun.returncode == 0, rerun.stderr
        assert_consistent(helper.config)
        ws = Workspace.load(helper.config)
        try:
            assert_restores(ws, kept[-1], helper.source, tmp_path / "restored")
        finally:
            ws.close()

    points = _kill_at_every_write(helper, ["repair", "index", "local"], after_kill, figures, "repair",
                                  stride=2)
    assert points >= 2
