"""Verify backups. Quick: every pack a backup needs is on storage with the size the index
says. Deep: every pack is read back, its SHA-256 checked against its name, and every blob
decrypted, decompressed and checked against its keyed hash. Problems name the object and
the files affected."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from insite_console import clock
from insite_console.errors import InsiteError, IntegrityError, StorageError, UsageError
from insite_console.events import CancelToken, ProgressCallback, ProgressReporter
from insite_console.repo.packs import pack_key
from insite_console.repo.repository import INDEX, Repository
from insite_console.repo.tree import TreeReader


def _needed_packs(repo: Repository, manifest: dict, problems: list[str]) -> dict[str, set[bytes]]:
    """pack id -> blob ids this backup needs from it."""
    needed: dict[str, set[bytes]] = {}

    def need(chunk_id: str, what: str) -> None:
        blob = bytes.fromhex(chunk_id)
        location = repo.index.lookup(blob)
        if location is None:
            problems.append(f"{what}: chunk {chunk_id[:16]} is not in the index (missing data)")
            return
        needed.setdefault(location.pack, set()).add(blob)

    for chunk_id, _ in manifest["tree"]:
        need(chunk_id, "file listing")
    try:
        for entry in TreeReader(repo, manifest["tree"]):
            for chunk_id, _ in entry.chunks or []:
                need(chunk_id, "/" + entry.path)
    except InsiteError as exc:
        problems.append(f"file listing of backup {manifest['id']} is unreadable: {exc}")
    return needed


def _files_in_packs(repo: Repository, manifest: dict, bad_packs: set[str], limit: int = 10) -> list[str]:
    names: list[str] = []
    try:
        for entry in TreeReader(repo, manifest["tree"]):
            for chunk_id, _ in entry.chunks or []:
                location = repo.index.lookup(bytes.fromhex(chunk_id))
                if location is not None and location.pack in bad_packs:
                    names.append("/" + entry.path)
                    break
            if len(names) >= limit:
                break
    except InsiteError:
        pass
    return names


def _check_index_objects(repo: Repository, problems: list[str]) -> None:
    """Authenticate every index object: this host reads them only once into its cache, so rot
    after that would surface only on another host, in `catalog rebuild` or in prune."""
    for info in repo.storage.list(INDEX):
        try:
            repo.get_sealed_object(info.key, aad=b"index")
        except IntegrityError as exc:
            problems.append(f"{exc} (the index cache of this host still holds a good copy of it)")


def run(ws, backup_id: str, deep: bool = False, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None, storage: str | None = None) -> dict[str, Any]:
    """Verify one backup on its storage (or on `storage`, for a copy); records the result."""
    cancel = cancel or CancelToken()
    backup = ws.catalog.backup(backup_id)
    if backup is None:
        raise UsageError(f"no backup {backup_id!r} in the catalog (see `insite-console backups`)")
    storage_name = storage or ws.storage_for_backup(backup)
    started = clock.now()
    reporter = ProgressReporter("verify", [progress])
    reporter.update(phase="listing", force=True)
    problems: list[str] = []
    objects = checked_bytes = 0
    held = contextlib.ExitStack()
    try:
        repo = ws.repository(storage_name)
        held.enter_context(repo.lock(f"verify of {backup['id']}"))
        manifest = repo.load_manifest(backup["id"])
        needed = _needed_packs(repo, manifest, problems)
        listed = {info.key: info.size for info in repo.storage.list("data/")}
        sizes = repo.index.packs()
        bad: set[str] = set()
        for pack_id in needed:
            key = pack_key(pack_id)
            if key not in listed:
                problems.append(f"pack {key} is missing from storage {storage_name}")
                bad.add(pack_id)
            elif listed[key] != sizes.get(pack_id):
                problems.append(f"pack {key} is {listed[key]} bytes, the index says {sizes.get(pack_id)} "
                                "(truncated or replaced)")
                bad.add(pack_id)
        objects = len(needed)
        if deep:
            reporter.update(phase="reading", files_total=len(needed), bytes_total=sum(sizes.get(p, 0) for p in needed),
                            force=True)
            todo = [p for p in needed if p not in bad]
            with ThreadPoolExecutor(4, thread_name_prefix="insite-verify") as pool:
                for pack_id, (size, problem) in zip(todo, pool.map(lambda p: repo.check_pack(p, sizes.get(p, -1)), todo)):
                    cancel.check()
                    checked_bytes += size
                    reporter.advance(bytes_done=size, files_done=1, current=pack_id[:16])
                    if problem:
                        problems.append(problem)
                        bad.add(pack_id)
            _check_index_objects(repo, problems)
        if bad:
            affected = _files_in_packs(repo, manifest, bad)
            if affected:
                problems.append("files affected: " + ", ".join(affected))
    except (StorageError, IntegrityError) as exc:
        problems.append(str(exc))
    finally:
        held.close()
    result = {
        "id": clock.new_id(), "backup_id": backup["id"], "storage": storage_name, "deep": deep,
        "status": "ok" if not problems else "failed", "objects": objects, "bytes": checked_bytes,
        "problems": problems, "started_at": clock.iso(started), "finished_at": clock.iso(clock.now()),
    }
    ws.catalog.insert_verification(result)
    ws.catalog.event(None, f"{'deep' if deep else 'quick'} verify of {backup['id']} on {storage_name}: "
                     + ("ok" if not problems else f"{len(problems)} problem(s): {problems[0]}"),
                     level="info" if not problems else "error")
    reporter.update(phase="done", force=True)
    return result
