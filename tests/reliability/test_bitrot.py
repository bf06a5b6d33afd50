"""Bit rot: one byte flipped in a pack, an index object, a manifest or a key file, at spread
offsets, each from the same intact repository. Every flip is detected and the message names
the object (deep verify, restore or opening the repository); a restore never writes bytes that
differ from what was backed up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from insite_console import backup, restore, verify
from insite_console.errors import InsiteError
from insite_console.repo.packs import pack_id_from_key
from insite_console.workspace import Workspace
from tests.reliability.checks import MIB, Snapshot, make_workspace, write_random
from tests.reliability.conftest import LONG
from tests.treeutil import assert_same_tree, build_tree

OFFSETS = 9 if LONG else 3  # flips per object, spread from its first byte to its last


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01 << (at % 8)
    path.write_bytes(bytes(raw))


def _spread(size: int) -> list[int]:
    return sorted({round(i * (size - 1) / max(1, OFFSETS - 1)) for i in range(OFFSETS)})


def _in_key_metadata(snapshot, obj: Path, at: int) -> bool:
    """Whether offset `at` of the intact key file lies inside its label, host or created_at value."""
    text = (snapshot.saved / obj.relative_to(snapshot.root)).read_text()
    for field in ("label", "host", "created_at"):
        value = json.loads(text)[field]
        start = text.index(f'"{field}": "') + len(f'"{field}": "')
        if start <= at < start + len(value):
            return True
    return False


@pytest.fixture
def intact(tmp_path):
    """(helper, backup id, snapshot of the intact repository and state)."""
    helper = make_workspace(tmp_path / "ws")
    build_tree(helper.source, files=20)
    write_random(helper.source / "payload.bin", 2 * MIB, seed=7)
    backup_id = backup.run(helper.ws, "tree")["id"]
    helper.close()
    return helper, backup_id, Snapshot(helper.root)


def _objects(helper, prefix: str) -> list[Path]:
    return sorted(p for p in (helper.root / "repo" / prefix).rglob("*") if p.is_file())


def _restore_outcome(ws, helper, backup_id: str, target: Path) -> str | None:
    """The error a restore stops with, or None if it restored every byte as backed up."""
    shutil.rmtree(target, ignore_errors=True)
    try:
        restore.run(ws, backup_id, str(target))
    except InsiteError as exc:
        return str(exc)
    assert_same_tree(helper.source, helper.restored(target))  # never different bytes, silently
    return None


def test_flipped_bytes_in_packs_are_found_by_deep_verify_and_never_restored(intact, tmp_path, figures):
    helper, backup_id, snapshot = intact
    packs = _objects(helper, "data")
    assert len(packs) >= 3
    restores_stopped = 0
    for pack in packs:
        for at in _spread(pack.stat().st_size):
            snapshot.put_back()
            _flip(pack, at)
            figures["pack flips"] += 1
            ws = Workspace.load(helper.config)
            try:
                result = verify.run(ws, backup_id, deep=True)
                assert result["status"] == "failed", (pack.name, at)
                assert any(pack.name in problem for problem in result["problems"]), result["problems"]
                error = _restore_outcome(ws, helper, backup_id, tmp_path / "t")
                if error is not None:  # the flip hit a blob (not the header only the index rebuild reads)
                    restores_stopped += 1
                    assert pack_id_from_key(pack.name)[:16] in error, error
            finally:
                ws.close()
    assert restores_stopped >= len(packs)  # at least the flips inside blobs stopped the restore


def test_flipped_bytes_in_manifests_index_and_key_files_are_named(intact, tmp_path, figures):
    """Opened by a host without the index cached (a new host, `catalog rebuild`), and by the
    host that has it cached: there a deep verify names the rotten index object."""
    helper, backup_id, snapshot = intact
    targets = {"snapshots": _objects(helper, "snapshots"), "index": _objects(helper, "index"),
               "keys": _objects(helper, "keys")}
    assert all(targets.values()), targets
    cli_checked = set()
    for kind, objects in targets.items():
        for obj in objects:
            for at in _spread(obj.stat().st_size):
                name = f"{kind}/{obj.name}"
                with_cache = kind == "index" and (LONG or at == 0)  # the cached host: one flip per object
                for cached in (False, True) if with_cache else (False,):
                    snapshot.put_back()
                    if not cached:
                        shutil.rmtree(helper.root / "state" / "cache")
                    _flip(obj, at)
                    figures[f"{kind} flips"] += 1
                    ws = Workspace.load(helper.config)
                    try:
                        if cached:
                            result = verify.run(ws, backup_id, deep=True)
                            assert result["status"] == "failed" and any(name in p for p in result["problems"]), result
                            continue
                        if kind == "keys" and _in_key_metadata(snapshot, obj, at):
                            # label, host, created_at are not authenticated (RELIABILITY.md):
                            # the flip changes what `key list` shows, never the key or the data
                            ws.repository("local").load_manifest(backup_id)
                            figures["keys flips in unauthenticated labels"] += 1
                            continue
                        if kind == "index":
                            # skipped with a warning, never trusted: what it named is reported as
                            # missing, naming the damaged object
                            assert obj.name in ws.repository("local").damaged_indexes
                            with pytest.raises(InsiteError) as opened:
                                restore.run(ws, backup_id, str(tmp_path / "api"), yes=True)
                            assert not [p for p in (tmp_path / "api").rglob("*") if p.is_file()]
                        else:
                            with pytest.raises(InsiteError) as opened:
                                ws.repository("local").load_manifest(backup_id)
                        assert name in str(opened.value), (name, at, str(opened.value))
                    finally:
                        ws.close()
                    if kind not in cli_checked:  # the operator's view: one clear line, no traceback
                        cli_checked.add(kind)
                        result = helper.cli("restore", backup_id, "--target", str(tmp_path / "cli"))
                        assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
                        written = [p for p in (tmp_path / "cli").rglob("*") if p.is_file()]
                        assert name in result.stderr and not written, (result.stderr, written)
