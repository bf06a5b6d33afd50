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
