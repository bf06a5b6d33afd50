"""File-tree backups round-trip byte for byte, with metadata, through every backup type."""

from __future__ import annotations

import os
import shutil

import pytest

from insite_console import backup, restore
from insite_console.errors import RestoreRefused
from tests.treeutil import assert_same_tree, build_tree


def test_ten_thousand_files_round_trip_through_full_incremental_differential(workspace, tmp_path):
    build_tree(workspace.source, files=10_000)
    ws = workspace.ws
    full = backup.run(ws, "tree", "full")
    assert full["status"] == "succeeded" and full["type"] == "full"
    assert full["files"] >= 10_000

    # change a few files, add one, delete one
    (workspace.source / "big.bin").write_bytes(os.urandom(1024 * 1024))
    (workspace.source / "added.txt").write_text("new file\n")
    (workspace.source / "name with spaces.txt").write_text("changed content\n")
    os.unlink(workspace.source / "new\nline.txt")
    incremental = backup.run(ws, "tree", "incremental")
    assert incremental["parent_id"] == full["id"]
    # only the changed files are read again
    assert incremental["bytes_read"] < 2 * 1024 * 1024
    target = tmp_path / "restore-incremental"
    restore.run(ws, incremental["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))

    (workspace.source / "after-incremental.txt").write_text("more\n")
    differential = backup.run(ws, "tree", "differential")
    assert differential["parent_id"] == full["id"]
    target = tmp_path / "restore-differential"
    restore.run(ws, differential["id"], str(target))
    assert_same_tree(workspace.source, workspace.restored(target))

    # the full backup restores the tree as it was then
    target = tmp_path / "restore-full"
    restore.run(ws, full["id"], str(target))
    restored = workspace.restored(target)
    assert (restored / "new\nline.txt").read_text() == "newline in name\n"
    assert not (restored / "added.txt").exists()


def test_second_full_backup_of_unchanged_tree_stores_almost_nothing(workspace):
    build_tree(workspace.source, files=300)
    first = backup.run(workspace.ws, "tree", "full")
    second = backup.run(workspace.ws, "tree", "full")
    assert second["bytes_read"] == first["bytes_read"]  # a full backup reads everything again
    assert second["bytes_stored"] < first["bytes_stored"] * 0.02


def test_excludes_and_symlinks_are_stored_not_followed(tmp_path):
    from tests.conftest import WorkspaceHelper, write_config

    source = tmp_path / "src"
    (source / "cache" / "__pycache__").mkdir(parents=True)
    (source / "cache" / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    (source / "keep.txt").write_text("keep")
    (source / "skip.tmp").write_text("skip")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("must not be backed up through a link")
    (source / "linkdir").symlink_to(outside)
    helper = WorkspaceHelper(tmp_path, source, write_config(tmp_path, [str(source)], exclude=["*.tmp", "**/__pycache__"]))
    helper.ws.init_repository("local")
    result = backup.run(helper.ws, "tree", "full")
    target = tmp_path / "restored"
    restore.run(helper.ws, result["id"], str(target))
    restored = helper.restored(target)
    assert (restored / "keep.txt").read_text() == "keep"
    assert not (restored / "skip.tmp").exists()
    assert not (restored / "cache" / "__pycache__").exists()
    assert (restored / "linkdir").is_symlink() and os.readlink(restored / "linkdir") == str(outside)
    helper.close()


def test_restore_include_globs_select_part_of_the_tree(workspace, tmp_path):
    (workspace.source / "config").mkdir()
    (workspace.source / "config" / "app.toml").write_text("a = 1\n")
    (workspace.source / "data").mkdir()
    (workspace.source / "data" / "big.csv").write_text("x\n" * 1000)
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "partial"
    restore.run(workspace.ws, result["id"], str(target), includes=[f"{workspace.source}/config/**"])
    restored = workspace.restored(target)
    assert (restored / "config" / "app.toml").read_text() == "a = 1\n"
    assert not (restored / "data" / "big.csv").exists()


def test_restore_is_restartable_and_refuses_to_overwrite_without_yes(workspace, tmp_path):
    build_tree(workspace.source, files=100)
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    first = restore.run(workspace.ws, result["id"], str(target))
    assert first["bytes_written"] > 3 * 1024 * 1024

    # An interrupted restore left one file missing: running again fetches only that one.
    restored = workspace.restored(target)
    os.unlink(restored / "big.bin")
    again = restore.run(workspace.ws, result["id"], str(target))
    assert again["files"] == 1 and again["bytes_written"] == 3 * 1024 * 1024
    assert_same_tree(workspace.source, restored)

    # A changed file is only overwritten with yes.
    (restored / "name with spaces.txt").write_text("local edit\n")
    with pytest.raises(RestoreRefused, match="refusing to overwrite 1 existing"):
        restore.run(workspace.ws, result["id"], str(target))
    assert (restored / "name with spaces.txt").read_text() == "local edit\n"
    restore.run(workspace.ws, result["id"], str(target), yes=True)
    assert (restored / "name with spaces.txt").read_text() == "spaces\n"


def test_dry_run_plans_and_writes_nothing(workspace, tmp_path):
    (workspace.source / "a.txt").write_text("a" * 100)
    (workspace.source / "b.txt").write_text("b" * 50)
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    restored = workspace.restored(target)
    restored.mkdir(parents=True)
    (restored / "a.txt").write_text("different")
    plan = restore.run(workspace.ws, result["id"], str(target), dry_run=True)
    actions = {item["path"].rsplit("/", 1)[-1]: item["action"] for item in plan["plan"]}
    assert actions["a.txt"] == "overwrite" and actions["b.txt"] == "create"
    assert plan["summary"]["to_overwrite"] == 1 and plan["summary"]["bytes_to_write"] == 150
    assert plan["status"] == "planned"
    assert (restored / "a.txt").read_text() == "different"
    assert not (restored / "b.txt").exists()
    assert workspace.ws.catalog.restores() == []


def test_cancelled_backup_is_not_a_restore_point(workspace):
    from insite_console.errors import Cancelled
    from insite_console.events import CancelToken

    build_tree(workspace.source, files=50)
    token = CancelToken()
    calls = []

    def progress(p):
        calls.append(p)
        if p.phase == "reading":
            token.cancel()

    with pytest.raises(Cancelled):
        backup.run(workspace.ws, "tree", "full", progress=progress, cancel=token)
    rows = workspace.ws.catalog.backups()
    assert rows[0]["status"] == "cancelled"
    with pytest.raises(RestoreRefused, match="not a restore point"):
        restore.run(workspace.ws, rows[0]["id"], str(workspace.root / "t"))
    assert workspace.ws.repository("local").list_manifest_ids() == []


def test_progress_is_throttled_and_reaches_done(workspace):
    build_tree(workspace.source, files=2000)
    events = []
    backup.run(workspace.ws, "tree", "full", progress=events.append)
    assert events[-1].phase == "done"
    assert events[-1].files_done >= 2000
    # ~10 a second at most (plus phase changes), not one per file
    assert len(events) < 200


def test_files_that_vanish_or_change_while_read_are_reported(workspace, monkeypatch):
    import contextlib

    from insite_console.sources import files as files_source

    (workspace.source / "stable.txt").write_text("stable")
    (workspace.source / "vanishing.txt").write_text("gone soon")
    (workspace.source / "growing.log").write_text("first line\n")
    original = files_source._open_regular

    @contextlib.contextmanager
    def racing_open(path, entry):
        if path.endswith("vanishing.txt"):
            os.unlink(path)  # deleted between the scan and the read
        with original(path, entry) as handle:
            if path.endswith("growing.log"):
                with open(path, "a") as writer:  # appended to while being read
                    writer.write("second line\n")
            yield handle

    monkeypatch.setattr(files_source, "_open_regular", racing_open)
    result = backup.run(workspace.ws, "tree", "full")
    assert result["status"] == "succeeded"
    assert any("vanishing.txt: vanished before it could be read" in w for w in result["warnings"])
    assert any("growing.log: changed while being read" in w for w in result["warnings"])
    events = [e["message"] for e in workspace.ws.catalog.events(result["id"])]
    assert any("vanishing.txt" in message for message in events)
    target = workspace.root / "t"
    restore.run(workspace.ws, result["id"], str(target))
    restored = workspace.restored(target)
    assert (restored / "stable.txt").read_text() == "stable"
    assert not (restored / "vanishing.txt").exists()
    assert (restored / "growing.log").read_text().startswith("first line\n")
