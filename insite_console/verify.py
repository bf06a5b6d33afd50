"""Verify backups. Quick: every pack a backup needs is on storage with the size the index
says. Deep: every pack is read back, its SHA-256 checked against its name, and every blob
decrypted, decompressed and checked against its keyed hash. Problems name the object and
the files affected."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from insite_console import clock
from insite_console.errors import InsiteError, IntegrityError, ObjectNotFound, StorageError, UsageError
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


def damaged_blobs(repo: Repository, pack_id: str) -> tuple[set[bytes], bytes | None]:
    """The blobs of one pack, where the index places them, that fail authentication (all of
    them if the pack is missing), and the pack's bytes: after a damaged pack is found, this
    names exactly which chunks are lost."""
    blobs = repo.index.blobs_in_pack(pack_id)
    try:
        data = repo.storage.get(pack_key(pack_id))
    except ObjectNotFound:
        return {blob_id for blob_id, _ in blobs}, None
    bad = set()
    for blob_id, loc in blobs:
        try:
            repo.open_blob(blob_id, data[loc.offset:loc.offset + loc.length], "chunk")
        except IntegrityError:
            bad.add(blob_id)
    return bad, data


def files_with_blobs(repo: Repository, manifest: dict, blobs: set[bytes]) -> tuple[list[str], str | None]:
    """The files of a backup whose content uses any of `blobs`, and why the listing itself
    could not be read (None if it could)."""
    names: list[str] = []
    if any(bytes.fromhex(chunk_id) in blobs for chunk_id, _ in manifest["tree"]):
        return names, f"the file listing of backup {manifest['id']} is damaged"
    try:
        for entry in TreeReader(repo, manifest["tree"]):
            if any(bytes.fromhex(chunk_id) in blobs for chunk_id, _ in entry.chunks or []):
                names.append("/" + entry.path)
    except InsiteError as exc:
        return names, f"the file listing of backup {manifest['id']} is unreadable: {exc}"
    return names, None


def name_files(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
        for _, reason in sorted(repo.damaged_indexes.items()):
            problems.append(f"{reason}: it was skipped; run `insite-console repair index {storage_name}`")
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
            lost: set[bytes] = set()
            for pack_id in sorted(bad):
                blobs, data = damaged_blobs(repo, pack_id) if deep else ({b for b, _ in repo.index.blobs_in_pack(pack_id)}, None)
                lost |= blobs & needed[pack_id]
                if data is not None and blobs:  # (a missing pack, or a quick verify's, is named above)
                    ids = sorted(b.hex()[:16] for b in blobs)
                    problems.append(f"pack {pack_key(pack_id)}: {len(ids)} chunk(s) fail authentication: "
                                    + ", ".join(ids[:10]) + (" …" if len(ids) > 10 else ""))
                elif data is not None:
                    problems.append(f"pack {pack_key(pack_id)}: every chunk still authenticates (only its header or "
                                    f"padding is damaged); `insite-console repair packs {storage_name}` rewrites it")
            affected, listing = files_with_blobs(repo, manifest, lost)
            if listing:
                problems.append(listing)
            if affected:
                problems.append(f"files of backup {manifest['id']} affected ({len(affected)}): {name_files(affected)}")
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


def physical_sources(ws) -> list[str]:
    """Sources whose WAL is archived (physical PostgreSQL backed up by a policy), by name."""
    backed_up = {policy.get("source") for policy in ws.config.policies.values()}
    return sorted(name for name, source in ws.config.sources.items()
                  if name in backed_up and source.get("type") == "postgresql" and source.get("mode") == "physical")


def run_wal(ws, source: str, deep: bool = False) -> dict[str, Any]:
    """Verify a source's WAL archive (wal.archive_check: continuity per timeline from each kept base
    backup's start; `deep`: every segment read back and authenticated). The result has the shape
    of a backup's verification with `backup_id` null and `wal_source` set; an event records it."""
    from insite_console import wal

    started = clock.now()
    check = wal.archive_check(ws, source, deep=deep)
    status = "ok" if check["status"] == "ok" else check["status"]
    result = {
        "id": clock.new_id(), "backup_id": None, "wal_source": source, "storage": check["storage"], "deep": deep,
        "status": status, "objects": check["segments"], "bytes": check["bytes"], "problems": check["problems"],
        "gaps": check["gaps"], "timelines": check["timelines"],
        "started_at": clock.iso(started), "finished_at": clock.iso(clock.now()),
    }
    ws.catalog.event(None, f"{'deep' if deep else 'quick'} verify of the WAL archive of {source} on "
                     f"{check['storage']}: " + ("ok" if status == "ok" else f"{status}: {check['problems'][0]}"),
                     level="info" if status == "ok" else "error")
    return result
