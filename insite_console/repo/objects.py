"""Decoders for the objects read back from storage: config, index objects, manifests, tree lines.

Whoever can write to the storage can put anything there, and a bit flip can hit any byte, so
nothing decoded from storage is trusted for its shape: each decoder checks types and ranges and
raises IntegrityError (or RepositoryError for the plain config) with the object's name, never
a KeyError or TypeError deep inside a backup. Authentication (AES-GCM) happens before these run;
they guard what authentication cannot: a swapped name, a writer's bug, a hostile plain file.
"""

from __future__ import annotations

import base64

import hashlib
import json
import re
from typing import Any

from insite_console.errors import IntegrityError, RepositoryError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
MAX_OBJECT_SIZE = 2**32  # a stored length, offset or size beyond this is not ours


def _json(data: bytes, what: str, error=IntegrityError) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise error(f"{what} is not valid JSON") from None


def _int(value: Any, low: int = 0, high: int = MAX_OBJECT_SIZE) -> bool:
    return type(value) is int and low <= value <= high


def decode_config(data: bytes, where: str, format_name: str) -> dict:
    """The repository's plain `config`: its id names a cache folder, so it must be plain hex."""
    config = _json(data, f"{where}: repository config", RepositoryError)
    if not isinstance(config, dict) or config.get("format") != format_name:
        raise RepositoryError(f"{where} does not hold an insite-console repository")
    if not isinstance(config.get("id"), str) or not _HEX32.fullmatch(config["id"]):
        raise RepositoryError(f"{where}: repository config has an invalid id {str(config.get('id'))[:40]!r} "
                              "(expected 32 hex digits)")
    if not _int(config.get("version"), 1, 2**31):
        raise RepositoryError(f"{where}: repository config has an invalid version {config.get('version')!r}")
    chunker = config.get("chunker")
    if not isinstance(chunker, dict) or not all(_int(chunker.get(k), 64, 1 << 26) for k in ("min", "avg", "max")) \
            or not chunker["min"] <= chunker["avg"] <= chunker["max"]:
        raise RepositoryError(f"{where}: repository config has invalid chunker sizes {chunker!r:.100}")
    return config


def decode_index(index_id: str, plain: bytes, what: str) -> list[dict]:
    """The packs an index object lists. Its name is the SHA-256 of its plain JSON, so an index
    object copied under another name (swapped) is refused."""
    if hashlib.sha256(plain).hexdigest() != index_id:
        raise IntegrityError(f"{what} does not match its name (swapped or corrupted)")
    body = _json(plain, what)
    packs = body.get("packs") if isinstance(body, dict) else None
    if not isinstance(packs, list):
        raise IntegrityError(f"{what} is malformed: no list of packs")
    for pack in packs:
        if not (isinstance(pack, dict) and isinstance(pack.get("id"), str) and _HEX64.fullmatch(pack["id"])
                and _int(pack.get("size")) and isinstance(pack.get("blobs"), list)):
            raise IntegrityError(f"{what} is malformed: bad pack entry {str(pack)[:80]}")
        for blob in pack["blobs"]:
            if not (isinstance(blob, list) and len(blob) == 5 and isinstance(blob[0], str)
                    and _HEX64.fullmatch(blob[0]) and blob[1] in (0, 1) and type(blob[1]) is int
                    and all(_int(v) for v in blob[2:]) and blob[2] + blob[3] <= pack["size"]):
                raise IntegrityError(f"{what} is malformed: bad blob entry {str(blob)[:80]} in pack {pack['id'][:16]}")
    return packs


def _chunk_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and _HEX64.fullmatch(c[0]) and _int(c[1])
        for c in value)


_MANIFEST_FIELDS = {"policy": str, "source": str, "source_type": str, "type": str, "started_at": str,
                    "finished_at": str, "tree": list, "totals": dict, "warnings": list}


def decode_manifest(backup_id: str, plain: bytes, what: str) -> dict:
    """A manifest, checked to be the one its name says and shaped as FORMAT.md describes."""
    manifest = _json(plain, what)
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    if not _int(manifest.get("version"), 1, 2**31):
        raise IntegrityError(f"{what} has an invalid version {str(manifest.get('version'))[:40]!r}")
    if manifest.get("id") != backup_id:
        raise IntegrityError(f"{what} names backup {str(manifest.get('id'))[:40]!r}, not {backup_id} (swapped)")
    for field, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(field), kind):
            raise IntegrityError(f"{what} is malformed: {field} is not a {kind.__name__}")
    if manifest.get("parent_id") is not None and not isinstance(manifest["parent_id"], str):
        raise IntegrityError(f"{what} is malformed: parent_id is not a string")
    if not _chunk_list(manifest["tree"]):
        raise IntegrityError(f"{what} is malformed: tree is not a list of [chunk id, length]")
    return manifest


_ENTRY_TYPES = {"file", "dir", "symlink", "fifo", "chardev", "blockdev"}


def _is_base64(value: Any) -> bool:
    try:
        base64.b64decode(value, validate=True)
        return isinstance(value, str)
    except (ValueError, TypeError):
        return False


def decode_tree_line(line: bytes, what: str) -> dict:
    """One line of a stored file listing, as a dict for Entry.from_json."""
    entry = _json(line, what)
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry.get("type") in _ENTRY_TYPES):
        raise IntegrityError(f"{what} holds a malformed entry {line[:80]!r}")
    bad = next((field for field in ("mode", "uid", "gid", "mtime_ns", "size", "inode", "ctime_ns")
                if field in entry and type(entry[field]) is not int), None)
    bad = bad or next((field for field in ("racy", "sparse") if field in entry and type(entry[field]) is not bool), None)
    if entry.get("hardlink") is not None and not isinstance(entry["hardlink"], str):
        bad = "hardlink"
    rdev = entry.get("rdev")
    if rdev is not None and not (isinstance(rdev, list) and len(rdev) == 2 and all(_int(n, 0, 2**32) for n in rdev)):
        bad = "rdev"
    xattrs = entry.get("xattrs")
    if xattrs is not None and not (isinstance(xattrs, dict) and all(_is_base64(v) for v in xattrs.values())):
        bad = "xattrs"
    if bad:
        raise IntegrityError(f"{what}: entry {entry['path'][:80]!r} has a bad {bad}")
    if entry.get("chunks") is not None and not _chunk_list(entry["chunks"]):
        raise IntegrityError(f"{what}: entry {entry['path'][:80]!r} has a bad chunk list")
    if entry.get("target") is not None and not isinstance(entry["target"], str):
        raise IntegrityError(f"{what}: entry {entry['path'][:80]!r} has a bad symlink target")
    return entry
