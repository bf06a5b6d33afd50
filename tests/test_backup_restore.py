"""File-tree backups round-trip byte for byte, with metadata, through every backup type."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat

import pytest

from insite_console import backup, restore
from insite_console.errors import RestoreRefused
from tests.treeutil import assert_same_tree, build_tree


def test_ten_thousand_files_round_trip_through_full_incremental_differential(workspace, tmp_path, monkeypatch):
    from insite_console.sources import files as files_source

    # build_tree puts mtimes back, so every ctime is fresh: racy (re-read) unless the window is shut
    monkeypatch.setattr(files_source, "RACY_NS", 0)
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
    # a cancel is not an error: Recent events marks it as a warning
    assert [e["level"] for e in workspace.ws.catalog.events(rows[0]["id"]) if "cancelled" in e["message"]] \
        == ["warning"]
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


def test_an_incremental_backups_progress_counts_reused_files_and_reaches_its_total(workspace, monkeypatch):
    from insite_console.sources import files as files_source

    monkeypatch.setattr(files_source, "RACY_NS", 0)  # build_tree's files are fresh: reuse them anyway
    build_tree(workspace.source, files=500)
    backup.run(workspace.ws, "tree", "full")
    (workspace.source / "added.txt").write_text("one new file\n")
    events = []
    result = backup.run(workspace.ws, "tree", "incremental", progress=events.append)
    reading = [e for e in events if e.phase == "finishing"][0]
    totals = workspace.ws.repository("local").load_manifest(result["id"])["totals"]
    assert totals["bytes_reused"] > 3 * 1024 * 1024  # big.bin among them
    # done is every byte of the tree, read or reused, not only the few read (a bar stuck near 0 %)
    assert reading.bytes_done == totals["bytes_read"] + totals["bytes_reused"]
    assert reading.bytes_total is not None and reading.bytes_done >= 0.99 * reading.bytes_total


def test_an_incremental_of_a_tree_that_grew_never_shows_more_done_than_its_total(workspace, monkeypatch):
    # the total is the parent's size: past it the bar sat at "100 %, ETA 0s" while reading went on
    from insite_console.sources import files as files_source

    monkeypatch.setattr(files_source, "RACY_NS", 0)
    build_tree(workspace.source, files=50)
    backup.run(workspace.ws, "tree", "full")
    (workspace.source / "grown.bin").write_bytes(os.urandom(4 * 1024 * 1024))  # more than the tree was
    events = []
    backup.run(workspace.ws, "tree", "incremental", progress=events.append)
    assert all(e.bytes_total is None or e.bytes_done <= e.bytes_total for e in events)
    finishing = [e for e in events if e.phase == "finishing"][0]
    assert finishing.bytes_total == finishing.bytes_done  # known once all is read: the bar ends full

    # what the bar is told between two reports: past the estimate, the total is unknown
    from insite_console.events import ProgressReporter

    reporter = ProgressReporter("backup", rate=1e9)
    reporter.update(bytes_total=100)
    reporter.advance(80)
    assert reporter.current.bytes_total == 100
    reporter.advance(40)
    assert reporter.current.bytes_done == 120 and reporter.current.bytes_total is None


def test_files_that_vanish_or_change_while_read_are_reported(workspace, monkeypatch):
    import contextlib

    from insite_console.sources import files as files_source

    (workspace.source / "stable.txt").write_text("stable")
    (workspace.source / "vanishing.txt").write_text("gone soon")
    (workspace.source / "growing.log").write_text("first line\n")
    original = files_source.open_regular

    @contextlib.contextmanager
    def racing_open(path, entry):
        if path.endswith("vanishing.txt"):
            os.unlink(path)  # deleted between the scan and the read
        with original(path, entry) as handle:
            if path.endswith("growing.log"):
                with open(path, "a") as writer:  # appended to while being read
                    writer.write("second line\n")
            yield handle

    monkeypatch.setattr(files_source, "open_regular", racing_open)
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


# ----- fidelity: what tar and restic keep ----------------------------------------------

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


def _round_trip(workspace, tmp_path, name: str = "target", **kwargs):
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / name
    outcome = restore.run(workspace.ws, result["id"], str(target), **kwargs)
    return result, outcome, workspace.restored(target)


def test_a_restore_counts_files_as_its_backup_does_and_its_plan_says_the_same(workspace, tmp_path):
    src = workspace.source
    (src / "docs").mkdir()
    (src / "docs" / "a.txt").write_text("a\n")
    (src / "b.txt").write_text("b\n")
    os.link(src / "b.txt", src / "docs" / "b-again.txt")
    os.symlink("a.txt", src / "docs" / "latest")
    os.mkfifo(src / "queue")
    result = backup.run(workspace.ws, "tree", "full")
    assert result["files"] == 3  # regular files, the hard link included

    plan = restore.run(workspace.ws, result["id"], str(tmp_path / "t"), dry_run=True)
    seen = []
    outcome = restore.run(workspace.ws, result["id"], str(tmp_path / "t"), progress=seen.append)
    assert plan["files"] == outcome["files"] == result["files"]
    assert outcome["symlinks"] == 1 and outcome["special"] == 1
    last = seen[-1]
    assert last.files_done == last.files_total == 3  # the bar ends full, hard link included
    assert_same_tree(src, workspace.restored(tmp_path / "t"))


def test_hard_links_come_back_as_hard_links(workspace, tmp_path):
    src = workspace.source
    (src / "a").mkdir()
    (src / "b").mkdir()
    (src / "a" / "one.bin").write_bytes(os.urandom(300_000))
    os.setxattr(src / "a" / "one.bin", "user.origin", b"the group's")
    os.link(src / "a" / "one.bin", src / "a" / "two.bin")  # same folder
    os.link(src / "a" / "one.bin", src / "b" / "three.bin")  # another folder
    (src / "b" / "x.txt").write_text("second group")
    os.link(src / "b" / "x.txt", src / "y.txt")
    result, _, restored = _round_trip(workspace, tmp_path)
    assert result["bytes_read"] == 300_000 + len("second group")  # each group's content read once
    assert_same_tree(src, restored)  # compares hard-link groups too
    assert os.stat(restored / "a" / "one.bin").st_nlink == 3
    assert os.stat(restored / "b" / "three.bin").st_ino == os.stat(restored / "a" / "two.bin").st_ino

    # an incremental stores the groups by path, not by inode numbers of another backup
    os.unlink(src / "a" / "one.bin")  # the group's first path goes; the others stay linked
    incremental = backup.run(workspace.ws, "tree", "incremental")
    target = tmp_path / "incremental"
    restore.run(workspace.ws, incremental["id"], str(target))
    assert_same_tree(src, workspace.restored(target))
    # a restore of part of a group: the selected members keep the content and stay linked
    target = tmp_path / "partial"
    restore.run(workspace.ws, result["id"], str(target), includes=[f"{src}/b/**"])
    part = workspace.restored(target)
    assert (part / "b" / "three.bin").read_bytes() == (src / "b" / "three.bin").read_bytes()
    assert os.getxattr(part / "b" / "three.bin", "user.origin") == b"the group's"
    assert not (part / "a").exists()


def test_sparse_files_come_back_sparse_and_dense_ones_dense(workspace, tmp_path):
    sparse = workspace.source / "disk.img"
    with open(sparse, "wb") as handle:
        handle.truncate(3 * 1024 * 1024)
        handle.seek(1024 * 1024)
        handle.write(os.urandom(4096))
    assert os.stat(sparse).st_blocks * 512 <= 16 * 1024  # the filesystem keeps holes
    (workspace.source / "zeros.bin").write_bytes(bytes(1024 * 1024))  # dense zeros stay dense
    _, _, restored = _round_trip(workspace, tmp_path)
    assert (restored / "disk.img").read_bytes() == sparse.read_bytes()
    assert os.stat(restored / "disk.img").st_size == 3 * 1024 * 1024
    assert os.stat(restored / "disk.img").st_blocks * 512 <= 64 * 1024
    assert os.stat(restored / "zeros.bin").st_blocks * 512 >= 1024 * 1024


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in system.posix_acl_* (version 2, tag/perm/id)."""
    import struct

    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid & 0xFFFFFFFF)
                                           for tag, perm, uid in entries)


@needs_root
def test_xattrs_acls_capabilities_and_labels_round_trip(workspace, tmp_path):
    import struct

    src = workspace.source
    tool = src / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.setxattr(tool, "user.comment", b"kept")
    os.setxattr(tool, "trusted.origin", b"\x00\x01binary")
    os.setxattr(tool, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))
    os.setxattr(tool, "security.selinux", b"system_u:object_r:bin_t:s0\x00")
    os.setxattr(tool, "system.posix_acl_access", _acl((1, 7, -1), (2, 5, 1234), (4, 5, -1), (0x10, 5, -1), (0x20, 0, -1)))
    shared = src / "shared"
    shared.mkdir()
    os.setxattr(shared, "system.posix_acl_default", _acl((1, 7, -1), (4, 5, -1), (8, 7, 4321), (0x10, 7, -1), (0x20, 0, -1)))
    (src / "link").symlink_to("tool")
    os.setxattr(src / "link", "trusted.on-link", b"yes", follow_symlinks=False)
    _, _, restored = _round_trip(workspace, tmp_path)
    assert os.getxattr(restored / "tool", "security.capability") == os.getxattr(tool, "security.capability")
    assert os.getxattr(restored / "link", "trusted.on-link", follow_symlinks=False) == b"yes"
    assert_same_tree(src, restored)  # every xattr of every node, ACLs included


def test_fifos_and_devices_are_recreated_and_sockets_skipped_by_name(workspace, tmp_path, monkeypatch):
    import socket

    src = workspace.source
    os.mkfifo(src / "queue", 0o620)
    if ROOT:
        os.mknod(src / "null", 0o666 | 0o020000, os.makedev(1, 3))
    monkeypatch.chdir(src)  # a short relative name: socket paths are limited to 108 bytes
    listener = socket.socket(socket.AF_UNIX)
    listener.bind("app.sock")
    try:
        result, _, restored = _round_trip(workspace, tmp_path)
    finally:
        listener.close()
    assert any(w.endswith("app.sock: skipped: a socket (sockets are not backed up, as with tar)")
               for w in result["warnings"]), result["warnings"]
    assert os.path.exists(src / "app.sock") and not os.path.lexists(restored / "app.sock")
    os.unlink(src / "app.sock")
    assert_same_tree(src, restored)  # type, mode and device numbers
    import stat

    assert stat.S_ISFIFO(os.lstat(restored / "queue").st_mode)
    if ROOT:
        assert os.lstat(restored / "null").st_rdev == os.makedev(1, 3)


def test_incremental_rereads_a_change_that_puts_the_mtime_back(workspace, tmp_path):
    path = workspace.source / "config.ini"
    path.write_text("mode = safe\n")
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    backup.run(workspace.ws, "tree", "full")
    path.write_text("mode = evil\n")  # same size, and the mtime put back (as tar -x, rsync -t, cp -p)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    incremental = backup.run(workspace.ws, "tree", "incremental")
    assert incremental["bytes_read"] == len("mode = evil\n")
    target = tmp_path / "target"
    restore.run(workspace.ws, incremental["id"], str(target))
    assert (workspace.restored(target) / "config.ini").read_text() == "mode = evil\n"
    os.setxattr(path, "user.note", b"only an attribute changed")  # changes the ctime, not the mtime
    third = backup.run(workspace.ws, "tree", "incremental")
    target = tmp_path / "third"
    restore.run(workspace.ws, third["id"], str(target))
    assert os.getxattr(workspace.restored(target) / "config.ini", "user.note") == b"only an attribute changed"


def test_a_file_modified_just_before_the_scan_is_read_again_next_time(workspace, monkeypatch):
    import time

    from insite_console.sources import files as files_source

    monkeypatch.setattr(files_source, "RACY_NS", 300_000_000)  # a shorter racy window, to wait it out
    old = workspace.source / "old.txt"
    old.write_text("settled")
    os.utime(old, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    time.sleep(0.5)  # old.txt's ctime (set by the utime) leaves the racy window
    (workspace.source / "fresh.txt").write_text("just written")  # may change again within its mtime's tick
    backup.run(workspace.ws, "tree", "full")
    incremental = backup.run(workspace.ws, "tree", "incremental")
    assert incremental["bytes_read"] == len("just written")  # fresh.txt read again, old.txt reused


def test_a_file_whose_ctime_is_within_the_racy_window_is_read_again_next_time(workspace):
    """Change detection compares the ctime, so its tick is as racy as the mtime's: a file
    rewritten with its mtime put back (rsync -t, cp -p) just before the scan can be rewritten
    again within the same ctime tick after it is read, and neither size, mtime nor ctime show it."""
    path = workspace.source / "config.ini"
    path.write_text("mode = safe\n")
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))  # old mtime, fresh ctime
    backup.run(workspace.ws, "tree", "full")
    incremental = backup.run(workspace.ws, "tree", "incremental")
    assert incremental["bytes_read"] == len("mode = safe\n")  # not trusted from the racy full backup


@needs_root
def test_a_restore_over_a_tampered_identical_tree_repairs_its_metadata(workspace, tmp_path):
    src = workspace.source
    (src / "app.conf").write_text("secret = 1\n")
    os.chmod(src / "app.conf", 0o640)
    os.chown(src / "app.conf", 1234, 5678)
    os.setxattr(src / "app.conf", "user.kept", b"v")
    (src / "bin").mkdir()
    (src / "bin" / "run").write_text("#!/bin/sh\n")
    os.chmod(src / "bin" / "run", 0o755)
    (src / "current").symlink_to("app.conf")
    os.chown(src / "current", 1234, 5678, follow_symlinks=False)
    result, _, restored = _round_trip(workspace, tmp_path)
    assert_same_tree(src, restored)
    os.chmod(restored / "app.conf", 0o666)
    os.chown(restored / "app.conf", 65534, 65534)
    os.removexattr(restored / "app.conf", "user.kept")
    os.setxattr(restored / "bin" / "run", "security.capability", bytes.fromhex("0100000200100000000000000000000000000000"))
    os.chmod(restored / "bin" / "run", 0o4755)
    os.chown(restored / "current", 65534, 65534, follow_symlinks=False)
    os.utime(restored / "bin" / "run")
    planned = restore.run(workspace.ws, result["id"], str(tmp_path / "target"), dry_run=True)
    assert planned["summary"]["to_repair"] == 3 and planned["summary"]["to_overwrite"] == 0
    assert sorted(item["path"].rsplit("/", 1)[-1] for item in planned["plan"] if item["action"] == "repair") == \
        ["app.conf", "current", "run"]
    with pytest.raises(RestoreRefused, match="change the mode, owner, times or attributes of 3 identical item"):
        restore.run(workspace.ws, result["id"], str(tmp_path / "target"))  # without --yes: nothing changes
    assert stat.S_IMODE(os.stat(restored / "app.conf").st_mode) == 0o666
    again = restore.run(workspace.ws, result["id"], str(tmp_path / "target"), yes=True)
    assert again["files"] == 0 and again["skipped_identical"] >= 3  # no content written
    assert again["metadata_repaired"] == 3
    assert_same_tree(src, restored)  # modes, owners, times and xattrs as backed up
    assert os.listxattr(restored / "bin" / "run") == []


@needs_root
def test_a_root_restore_applies_root_owner_and_symlink_owners(workspace, tmp_path):
    src = workspace.source
    (src / "owned-by-root").write_text("root:root")
    (src / "link").symlink_to("owned-by-root")
    os.chown(src / "link", 1234, 4321, follow_symlinks=False)
    target = tmp_path / "target"
    target.mkdir()
    os.chown(target, 0, 65534)
    os.chmod(target, 0o2775)  # setgid: new files would take the folder's group
    _, _, restored = _round_trip(workspace, tmp_path)
    st = os.stat(restored / "owned-by-root")
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.lstat(restored / "link")
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert_same_tree(src, restored)


def test_a_fifo_swapped_in_after_the_scan_does_not_block_the_backup(workspace, monkeypatch):
    import contextlib
    import threading

    from insite_console.sources import files as files_source

    (workspace.source / "kept.txt").write_text("kept")
    swapped = workspace.source / "swapped.txt"
    swapped.write_text("a file at scan time")
    original = files_source.open_regular
    blocked = []

    def unblock() -> None:  # on failure: open the FIFO's other end so the test ends
        blocked.append(True)
        with contextlib.suppress(OSError):
            os.close(os.open(swapped, os.O_WRONLY | os.O_NONBLOCK))

    @contextlib.contextmanager
    def swapping_open(path, entry):
        if path.endswith("swapped.txt"):
            os.unlink(path)
            os.mkfifo(path)
        with original(path, entry) as handle:
            yield handle

    monkeypatch.setattr(files_source, "open_regular", swapping_open)
    timer = threading.Timer(10, unblock)
    timer.start()
    try:
        result = backup.run(workspace.ws, "tree", "full")
    finally:
        timer.cancel()
    assert not blocked, "the backup blocked opening a FIFO"
    assert any("swapped.txt" in w and "no longer a regular file" in w for w in result["warnings"]), result["warnings"]
    target = workspace.root / "t"
    restore.run(workspace.ws, result["id"], str(target))
    assert (workspace.restored(target) / "kept.txt").read_text() == "kept"
    assert not os.path.lexists(workspace.restored(target) / "swapped.txt")


def test_restored_files_are_flushed_to_disk_before_the_restore_is_done(workspace, tmp_path, monkeypatch):
    (workspace.source / "data.txt").write_text("durable")
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    flushed = []
    real = restore.flush_to_disk

    def recording_flush(fd):
        flushed.append(os.path.samestat(os.fstat(fd), os.stat(target))
                       and (workspace.restored(target) / "data.txt").read_text() == "durable")
        real(fd)

    monkeypatch.setattr(restore, "flush_to_disk", recording_flush)
    outcome = restore.run(workspace.ws, result["id"], str(target))
    assert flushed == [True]  # once, on the target's filesystem, after everything was written
    assert outcome["verified"] is True and "syncfs" in outcome["verification"]


def test_a_hard_link_group_whose_first_file_vanishes_before_its_read_keeps_its_other_links(workspace, tmp_path,
                                                                                           monkeypatch):
    """Log rotation and the like unlink one name of a group while its other names keep the
    content: the group's first name vanishing between the scan and its read must not lose them."""
    import contextlib

    from insite_console.sources import files as files_source

    src = workspace.source
    content = os.urandom(100_000)
    (src / "a.log").write_bytes(content)
    os.link(src / "a.log", src / "b.log")
    os.link(src / "a.log", src / "c.log")
    original = files_source.open_regular

    @contextlib.contextmanager
    def racing_open(path, entry):
        if path.endswith("a.log"):
            os.unlink(path)  # deleted between the scan and the read
        with original(path, entry) as handle:
            yield handle

    monkeypatch.setattr(files_source, "open_regular", racing_open)
    result, outcome, restored = _round_trip(workspace, tmp_path)
    assert any("a.log: vanished before it could be read" in w for w in result["warnings"]), result["warnings"]
    assert result["bytes_read"] == len(content) and result["files"] == 2  # b.log read once, c.log linked to it
    assert not os.path.lexists(restored / "a.log")
    assert (restored / "b.log").read_bytes() == content and (restored / "c.log").read_bytes() == content
    assert os.stat(restored / "b.log").st_ino == os.stat(restored / "c.log").st_ino
    assert not outcome.get("warnings"), outcome.get("warnings")


@contextlib.contextmanager
def _mounted_tmpfs(path):
    """A tmpfs mounted at path (another filesystem inside a restore target), unmounted after."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@needs_root
def test_a_hard_link_group_split_across_filesystems_of_the_target_is_restored_as_copies(workspace, tmp_path):
    src = workspace.source
    (src / "a").mkdir()
    (src / "b").mkdir()
    content = os.urandom(50_000)
    (src / "a" / "one.bin").write_bytes(content)
    os.link(src / "a" / "one.bin", src / "b" / "two.bin")
    os.setxattr(src / "a" / "one.bin", "user.origin", b"group attribute")
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    with _mounted_tmpfs(workspace.restored(target) / "b"):  # b is another filesystem in the target
        outcome = restore.run(workspace.ws, result["id"], str(target))
        restored = workspace.restored(target)
        assert (restored / "a" / "one.bin").read_bytes() == content
        assert (restored / "b" / "two.bin").read_bytes() == content
        assert os.stat(restored / "b" / "two.bin").st_mode == os.stat(src / "b" / "two.bin").st_mode
        assert os.getxattr(restored / "b" / "two.bin", "user.origin") == b"group attribute"  # the group's
        assert any("two.bin" in w and "another filesystem" in w for w in outcome["warnings"]), outcome.get("warnings")


@needs_root
def test_a_restore_flushes_every_filesystem_of_the_target_it_wrote_to(workspace, tmp_path, monkeypatch):
    (workspace.source / "top.txt").write_text("on the target's filesystem")
    (workspace.source / "var").mkdir()
    (workspace.source / "var" / "data.txt").write_text("on a filesystem mounted inside the target")
    result = backup.run(workspace.ws, "tree", "full")
    target = tmp_path / "target"
    flushed = []
    real = restore.flush_to_disk

    def recording_flush(fd):
        flushed.append(os.fstat(fd).st_dev)
        real(fd)

    monkeypatch.setattr(restore, "flush_to_disk", recording_flush)
    with _mounted_tmpfs(workspace.restored(target) / "var") as mounted:
        outcome = restore.run(workspace.ws, result["id"], str(target))
        assert (mounted / "data.txt").read_text() == "on a filesystem mounted inside the target"
        assert sorted(flushed) == sorted({os.stat(target).st_dev, os.stat(mounted).st_dev}), flushed
    assert outcome["verified"] is True


def test_flushing_along_flushes_while_the_block_runs_and_stops_after_it(tmp_path, monkeypatch):
    """A restore flushes as it goes (the final flush then has little left); the thread doing it
    flushes the target's filesystem, on a descriptor of its own, and ends with the block."""
    import time

    from insite_console import durable

    calls = []
    monkeypatch.setattr(durable, "flush_to_disk", lambda fd: calls.append(os.path.samestat(os.fstat(fd),
                                                                                             os.stat(tmp_path))))
    with durable.flushing_along(str(tmp_path), every=0.02):
        (tmp_path / "f").write_bytes(b"x" * 100_000)
        time.sleep(0.3)
    during = len(calls)
    time.sleep(0.1)
    assert during >= 3 and all(calls) and len(calls) == during
