"""The shortcuts taken for speed keep their promises: a restore keeps only some folders open
and must still land every file in the right one; wal-push never touches the chunk index."""

from __future__ import annotations

import os
import threading
import time

from insite_console import backup, restore, wal
from insite_console.storage.local import LocalStorage
from tests.conftest import WorkspaceHelper, write_config
from tests.treeutil import assert_same_tree, build_tree


def test_restore_with_more_folders_than_it_keeps_open(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(restore, "_DIR_CACHE", 3)  # evicted and reopened all the time
    build_tree(workspace.source, files=600)
    for i in range(12):  # deep and wide: a kept ancestor is reused, a dropped one reopened
        deep = workspace.source / f"w{i}" / "a" / "b" / f"c{i % 3}"
        deep.mkdir(parents=True)
        (deep / "leaf.txt").write_text(f"leaf {i}\n")
        os.chmod(deep.parent, 0o750)
    done = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "out"
    restore.run(workspace.ws, done["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))
    (workspace.restored(target) / "w5" / "a" / "b" / "c2" / "leaf.txt").write_text("tampered\n")
    restore.run(workspace.ws, done["id"], str(target), yes=True)
    assert (workspace.restored(target) / "w5" / "a" / "b" / "c2" / "leaf.txt").read_text() == "leaf 5\n"


def test_wal_push_reads_no_index_object(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    config = write_config(tmp_path, [str(source)], extra=(
        '\n[source.db]\ntype = "postgresql"\ndsn = "postgresql://backup@127.0.0.1:1/app"\nmode = "physical"\n'
        '[policy.db]\nsource = "db"\nstorage = "local"\n'))
    helper = WorkspaceHelper(tmp_path, source, config)
    helper.ws.init_repository("local")
    (source / "f.txt").write_text("a file, so the repository has an index object\n")
    backup.run(helper.ws, "tree", "full")
    helper.close()
    touched: list[str] = []
    real_get, real_list = LocalStorage.get, LocalStorage.list
    monkeypatch.setattr(LocalStorage, "get", lambda self, key, *a, **k: touched.append(key) or real_get(self, key, *a, **k))
    monkeypatch.setattr(LocalStorage, "list", lambda self, prefix="": touched.append(prefix) or real_list(self, prefix))
    segment = tmp_path / "pg_wal" / "000000010000000000000001"
    segment.parent.mkdir()
    segment.write_bytes(os.urandom(64 * 1024))
    result = wal.push_file(helper.reopen(), "db", str(segment))
    assert result["status"] == "archived"
    assert not [key for key in touched if key.startswith(("index", "data"))], touched
    assert helper.ws.repository("local").get_sealed(wal.wal_key("db", segment.name)) == segment.read_bytes()
    helper.close()


def test_incremental_reuses_across_index_lookup_blocks_and_rereads_what_the_index_lost(workspace, monkeypatch):
    from insite_console.backup import KnownAhead
    from insite_console.sources import files as files_source

    monkeypatch.setattr(files_source, "RACY_NS", 0)  # the utimes below leave fresh ctimes: not racy here

    with open(workspace.config, "a") as handle:
        handle.write('\n[engine]\npack_size = "16KiB"\n')  # many packs: losing one loses a few files
    workspace.reopen()
    files = 3 * KnownAhead.BLOCK + 17
    for i in range(files):
        folder = workspace.source / f"d{i % 7}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{i:05d}.txt"
        path.write_text(f"content of file {i}\n" * (1 + i % 5))
        os.utime(path, (1_700_000_000, 1_700_000_000))
    backup.run(workspace.ws, "tree", "full")
    second = backup.run(workspace.ws, "tree", "incremental")
    totals = workspace.ws.catalog.backup(second["id"])["info"]["totals"]
    assert totals["files_reused"] == files
    repo = workspace.ws.repository("local")
    lost = next(p for p in sorted(repo.index.packs()) if any(
        t == 0 for _, loc in repo.index.blobs_in_pack(p) for t in [loc.type]))
    repo.index.drop_packs([lost])  # this host's index no longer has those chunks: they must be read again
    third = backup.run(workspace.ws, "tree", "incremental")
    totals = workspace.ws.catalog.backup(third["id"])["info"]["totals"]
    assert 0 < files - totals["files_reused"] < files
    target = workspace.root / "out"
    restore.run(workspace.ws, third["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))


def test_large_files_queued_for_the_restore_threads_are_bounded_by_their_chunks(workspace, tmp_path, monkeypatch):
    """The tree goes on past large files while the threads write them, but the files it queues
    hold their chunk lists: at most LARGE_QUEUED chunks' worth wait, however many files."""
    for i in range(10):
        (workspace.source / f"big{i:02}.bin").write_bytes(os.urandom(2 * 1024 * 1024))  # 2+ chunks each
    os.symlink("big00.bin", workspace.source / "zz-link")  # made by the walk itself, after the files
    done = backup.run(workspace.ws, "tree", "full")
    monkeypatch.setattr(restore, "LARGE_QUEUED", 6)
    release, submitted = threading.Event(), []
    original = restore._restore_file

    def held(ctx, target, entry, *rest):
        submitted.append(entry.path)
        assert release.wait(30)
        return original(ctx, target, entry, *rest)

    monkeypatch.setattr(restore, "_restore_file", held)
    target = tmp_path / "out"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(restore.run(workspace.ws, done["id"], str(target))))
    runner.start()
    time.sleep(2)  # the walk queues what the budget lets it, then waits for the held threads
    walked_past = os.path.islink(workspace.restored(target) / "zz-link")
    release.set()
    runner.join(60)
    assert submitted and not walked_past  # each file weighs 1 + its 2 or more chunks: two fit in 6, not ten
    assert result["status"] == "succeeded"
    assert_same_tree(workspace.source, workspace.restored(target))
