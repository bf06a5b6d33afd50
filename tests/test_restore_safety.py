"""A restore never writes outside its target, whatever a manifest says."""

from __future__ import annotations

import os

import pytest

from insite_console import backup, clock, restore
from insite_console.errors import RestoreRefused
from insite_console.repo.repository import MANIFEST_VERSION
from insite_console.repo.tree import TreeWriter
from insite_console.sources.base import Entry


def _forge_backup(ws, entries: list[Entry]) -> str:
    """Store a manifest with the given entries, as a tampered or hostile repository might."""
    repo = ws.repository("local")
    tree = TreeWriter()
    for entry in entries:
        if entry.type == "file":
            entry.chunks = repo.save_bytes(b"evil content")
            entry.size = len(b"evil content")
        tree.add(entry)
    chunks = tree.save(repo)
    repo.flush()
    backup_id = clock.new_id()
    now = clock.iso(clock.now())
    repo.save_manifest({"version": MANIFEST_VERSION, "id": backup_id, "policy": "tree", "source": "tree",
                        "source_type": "files", "type": "full", "parent_id": None, "started_at": now,
                        "finished_at": now, "tree": chunks, "totals": {}, "source_info": {}, "warnings": []})
    ws.catalog.insert_backup({"id": backup_id, "policy": "tree", "source": "tree", "source_type": "files",
                              "storage": "local", "type": "full", "status": "succeeded", "started_at": now,
                              "finished_at": now})
    return backup_id


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt", "a//b", "./x"])
def test_paths_that_escape_are_refused(workspace, tmp_path, path):
    backup_id = _forge_backup(workspace.ws, [Entry(path=path, type="file", mode=0o644)])
    target = tmp_path / "target"
    with pytest.raises(RestoreRefused, match="refusing stored path"):
        restore.run(workspace.ws, backup_id, str(target))
    assert not (tmp_path / "escape.txt").exists()
    assert not list(tmp_path.rglob("escape.txt"))


def test_writing_through_a_stored_symlink_is_refused(workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    backup_id = _forge_backup(workspace.ws, [
        Entry(path="sub", type="symlink", target=str(outside)),
        Entry(path="sub/planted.txt", type="file", mode=0o644),
    ])
    with pytest.raises(RestoreRefused, match="refusing to write through .*sub: it is a symlink"):
        restore.run(workspace.ws, backup_id, str(tmp_path / "target"), yes=True)
    assert not (outside / "planted.txt").exists()


def test_writing_through_a_symlink_already_in_the_target_is_refused(workspace, tmp_path):
    (workspace.source / "dir").mkdir()
    (workspace.source / "dir" / "file.txt").write_text("content")
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    restored_parent = workspace.restored(target)
    restored_parent.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (restored_parent / "dir").symlink_to(outside)
    with pytest.raises(RestoreRefused):
        restore.run(workspace.ws, result["id"], str(target), yes=True)
    assert not (outside / "file.txt").exists()


def test_restored_symlink_is_not_followed_when_writing_later_entries(workspace, tmp_path):
    (workspace.source / "link").symlink_to("/etc")
    (workspace.source / "zfile").write_text("after the link")
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    restore.run(workspace.ws, result["id"], str(target))
    restored = workspace.restored(target)
    assert os.readlink(restored / "link") == "/etc"
    assert (restored / "zfile").read_text() == "after the link"


def test_a_hard_link_to_a_path_outside_the_tree_is_not_made(workspace, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not to be linked into the target")
    backup_id = _forge_backup(workspace.ws, [
        Entry(path="inside.txt", type="file", mode=0o644),
        Entry(path="linked.txt", type="file", mode=0o644, hardlink="../outside.txt"),
    ])
    target = tmp_path / "target"
    result = restore.run(workspace.ws, backup_id, str(target))
    assert (target / "inside.txt").read_bytes() == b"evil content"
    assert not os.path.lexists(target / "linked.txt")
    assert os.stat(outside).st_nlink == 1
    assert result["warnings"] == ["/linked.txt: not restored: a hard link whose first file could not be read "
                                  "when backed up"]


def test_delta_refuses_unarchived_wal_and_moves_the_old_pg_wal_aside(tmp_path):
    """A --delta over a PGDATA whose pg_wal holds segments marked .ready (never archived) is
    refused, naming them and how to push them; once archived it goes on, and the old pg_wal
    is moved aside, never deleted."""
    from insite_console.sources import pg_restore_physical as physical

    data = tmp_path / "pgdata"
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    segment = data / "pg_wal" / "000000010000000000000007"
    segment.write_bytes(b"last transactions" * 100)
    (data / "pg_wal" / "archive_status" / "000000010000000000000006.done").write_text("")
    (data / "pg_wal" / "archive_status" / "000000010000000000000007.ready").write_text("")
    problems = physical._delta_problems(str(data), lambda name: False, "db")
    assert len(problems) == 1 and "000000010000000000000007" in problems[0], problems
    assert "000000010000000000000006" not in problems[0]
    assert f"insite-console wal-push db {data}/pg_wal/NAME" in problems[0]
    assert physical._delta_problems(str(data), lambda name: name == "000000010000000000000007", "db") == []

    aside = physical._move_old_wal(str(data))
    assert aside and os.path.basename(aside).startswith("pg_wal.insite-old-") and not segment.exists()
    (data / "pg_wal").mkdir()  # what the base backup lays out
    assert physical._remove_not_in_backup(str(data), {"PG_VERSION", "pg_wal"}) == 0
    kept = os.path.join(aside, "000000010000000000000007")
    assert open(kept, "rb").read() == b"last transactions" * 100


@pytest.mark.parametrize("name, make", [("small.txt", lambda p: p.write_text("x")),
                                        ("large.bin", lambda p: p.write_bytes(os.urandom(600_000))),
                                        ("link", lambda p: p.symlink_to("small.txt"))])
def test_a_folder_where_the_backup_has_a_file_is_never_replaced(workspace, tmp_path, name, make):
    make(workspace.source / name)
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    folder = workspace.restored(target) / name
    folder.mkdir(parents=True)
    (folder / "kept.txt").write_text("the operator's")
    with pytest.raises(RestoreRefused, match=f"{folder} is a directory; not replacing it with a"):
        restore.run(workspace.ws, result["id"], str(target), yes=True)
    assert (folder / "kept.txt").read_text() == "the operator's"
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".insite-restore-")] == []
