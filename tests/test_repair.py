"""Repair: a damaged index, pack or manifest is named, worked around and repaired, and no
command reports success over data that is gone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from insite_console import backup, repair, restore, verify
from insite_console.errors import InsiteError
from insite_console.repo.packs import pack_key
from insite_console.repo.tree import TreeReader
from tests.treeutil import assert_same_tree


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _fresh_cache(workspace):
    """Another host's view: no index cache, everything read back from storage."""
    workspace.close()
    shutil.rmtree(workspace.root / "state" / "cache")
    return workspace.ws


def _index_objects(workspace) -> list[Path]:
    return sorted((workspace.root / "repo" / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)


def _two_backups(workspace):
    (workspace.source / "a.bin").write_bytes(os.urandom(100_000))
    first = backup.run(workspace.ws, "tree", "full")
    (workspace.source / "b.bin").write_bytes(os.urandom(100_000))
    second = backup.run(workspace.ws, "tree", "full")
    return first, second


def test_a_damaged_index_object_is_skipped_so_backup_and_restore_still_work(workspace, tmp_path):
    first, second = _two_backups(workspace)
    damaged = _index_objects(workspace)[-1]  # the second backup's
    _flip(damaged, 40)
    _fresh_cache(workspace)
    # restore of the first backup needs only the other index object
    restore.run(workspace.ws, first["id"], str(tmp_path / "one"))
    assert (workspace.restored(tmp_path / "one") / "a.bin").read_bytes() == (workspace.source / "a.bin").read_bytes()
    assert damaged.name in next(iter(workspace.ws.repository("local").damaged_indexes.values()))
    # verify names the damaged object rather than reporting ok
    check = verify.run(workspace.ws, second["id"])
    assert check["status"] == "failed" and any(damaged.name in p for p in check["problems"])
    workspace.close()
    # a backup works too: the packs the damaged object listed are found and indexed again
    result = workspace.cli("backup", "tree", "--json")
    assert result.returncode == 0, result.stderr
    assert f"index/{damaged.name}" in result.stderr and "repair index" in result.stderr
    restore.run(workspace.ws, second["id"], str(tmp_path / "two"))
    assert_same_tree(workspace.source, workspace.restored(tmp_path / "two"))


def test_repair_index_rebuilds_from_pack_headers(workspace, tmp_path):
    first, second = _two_backups(workspace)
    damaged = _index_objects(workspace)[-1]
    _flip(damaged, 40)
    before = {p.name: p.read_bytes() for p in _index_objects(workspace)}
    _fresh_cache(workspace)

    dry = json.loads(workspace.cli("repair", "index", "local", "--dry-run", "--json").stdout)
    assert dry["status"] == "damaged" and any(damaged.name in p for p in dry["problems"])
    assert {p.name: p.read_bytes() for p in _index_objects(workspace)} == before  # nothing changed

    cli = workspace.cli("repair", "index", "local", "--json")
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert result["status"] == "repaired" and result["index_objects_deleted"] == len(before)
    assert not (workspace.root / "repo" / "index" / damaged.name).exists()
    repo = _fresh_cache(workspace).repository("local")
    assert repo.damaged_indexes == {}  # every index object on storage now authenticates
    assert repo.index.packs() == {p.name: p.stat().st_size for p in (workspace.root / "repo" / "data").rglob("*")
                                  if p.is_file()}
    restore.run(workspace.ws, second["id"], str(tmp_path / "two"))
    assert_same_tree(workspace.source, workspace.restored(tmp_path / "two"))
    again = json.loads(workspace.cli("repair", "index", "local", "--json").stdout)
    assert again["status"] == "clean" and again["problems"] == []


def _chunk_location(workspace, backup_id: str, name: str):
    repo = workspace.ws.repository("local")
    entry = next(e for e in TreeReader(repo, repo.load_manifest(backup_id)["tree"]) if e.path.endswith(name))
    return repo.index.lookup(bytes.fromhex(entry.chunks[0][0]))


def test_damaged_chunk_is_named_dropped_and_uploaded_again(workspace, tmp_path):
    (workspace.source / "a.bin").write_bytes(os.urandom(100_000))
    (workspace.source / "b.bin").write_bytes(os.urandom(100_000))
    first = backup.run(workspace.ws, "tree", "full")
    location = _chunk_location(workspace, first["id"], "b.bin")
    pack = workspace.root / "repo" / pack_key(location.pack)
    _flip(pack, location.offset + 100)

    deep = verify.run(workspace.ws, first["id"], deep=True)
    assert deep["status"] == "failed"
    assert any(pack.name in p for p in deep["problems"])
    affected = [p for p in deep["problems"] if p.startswith("files of backup")]
    assert len(affected) == 1 and "/b.bin" in affected[0] and "a.bin" not in affected[0]

    result = repair.run(workspace.ws, "packs", "local")
    assert result["status"] == "data lost" and result["damaged_packs"] == [pack_key(location.pack)]
    assert [f["path"].rsplit("/", 1)[-1] for f in result["lost_files"]] == ["b.bin"]
    assert not pack.exists()  # its good chunks were moved to a new pack first

    # repair snapshots: the first backup restores without the lost file, and says so
    snap = workspace.cli("repair", "snapshots", "local", "--json")
    assert snap.returncode == 0, snap.stderr
    assert [f["path"].rsplit("/", 1)[-1] for f in json.loads(snap.stdout)["lost_files"]] == ["b.bin"]
    manifest = workspace.ws.repository("local").load_manifest(first["id"])
    assert manifest["repaired"][0]["removed_files"] == 1 and manifest["totals"]["files"] == 1
    assert workspace.ws.catalog.backup(first["id"])["info"]["repaired"][0]["removed"][0].endswith("/b.bin")
    restore.run(workspace.ws, first["id"], str(tmp_path / "repaired"))
    assert sorted(p.name for p in workspace.restored(tmp_path / "repaired").iterdir()) == ["a.bin"]

    # the next backup uploads b.bin again instead of trusting the damaged chunk
    second = backup.run(workspace.ws, "tree", "incremental")
    assert second["bytes_stored"] > 100_000
    restore.run(workspace.ws, second["id"], str(tmp_path / "b"))
    assert_same_tree(workspace.source, workspace.restored(tmp_path / "b"))
    assert verify.run(workspace.ws, second["id"], deep=True)["status"] == "ok"
    assert json.loads(workspace.cli("repair", "packs", "local", "--json").stdout)["status"] == "clean"


def test_repair_snapshots_of_a_missing_pack_keeps_the_original_on_dry_run(workspace, tmp_path):
    first, second = _two_backups(workspace)
    location = _chunk_location(workspace, second["id"], "b.bin")
    (workspace.root / "repo" / pack_key(location.pack)).unlink()
    manifest_path = workspace.root / "repo" / "snapshots" / second["id"]
    original = manifest_path.read_bytes()
    dry = workspace.cli("repair", "snapshots", "local", "--dry-run")
    assert dry.returncode == 1 and "b.bin" in dry.stdout and "damaged" in dry.stdout
    assert manifest_path.read_bytes() == original
    with pytest.raises(InsiteError, match="does not exist"):
        restore.run(workspace.ws, second["id"], str(tmp_path / "before"))
    result = repair.run(workspace.ws, "snapshots", "local")
    assert result["rewritten"] == [second["id"]] and result["status"] == "repaired"
    restore.run(workspace.ws, second["id"], str(tmp_path / "after"))
    assert sorted(p.name for p in workspace.restored(tmp_path / "after").iterdir()) == ["a.bin"]


def test_a_pack_with_a_damaged_header_keeps_its_index_entries_and_is_rewritten(workspace, tmp_path):
    (workspace.source / "a.bin").write_bytes(os.urandom(100_000))
    first = backup.run(workspace.ws, "tree", "full")
    location = _chunk_location(workspace, first["id"], "a.bin")
    pack = workspace.root / "repo" / pack_key(location.pack)
    _flip(pack, pack.stat().st_size - 10)  # inside the sealed header: the chunks are intact
    index = repair.run(workspace.ws, "index", "local")
    assert index["status"] == "damaged" and any("header" in p and "repair packs" in p for p in index["problems"])
    packs = repair.run(workspace.ws, "packs", "local")
    assert packs["status"] == "repaired" and packs["lost_files"] == [] and not pack.exists()
    assert json.loads(workspace.cli("repair", "index", "local", "--json").stdout)["status"] == "clean"
    restore.run(workspace.ws, first["id"], str(tmp_path / "t"))
    assert_same_tree(workspace.source, workspace.restored(tmp_path / "t"))
