"""Repair a damaged repository, in restic's three steps.

- `index`: rebuild the index from the packs' own headers (packs describe themselves), then
  delete the old index objects; a damaged index object is reported, never fatal.
- `packs`: deep-check every indexed pack; the good blobs of a damaged pack are moved into a
  new pack, the damaged pack is deleted and its bad blobs leave the index, so deduplication
  stops trusting them and the next backup uploads that content again. Files whose data is
  gone are named.
- `snapshots`: rewrite each manifest whose files are no longer readable without them, marked
  `repaired` in the manifest and the catalog, so the rest of the backup restores.

Rewriting the index takes the exclusive lock (nothing may deduplicate against it meanwhile);
each step writes the new objects before deleting the old ones, so a crash leaves the
repository as it was or repaired, never with an index naming missing data.
"""

from __future__ import annotations

from typing import Any

from insite_console import clock
from insite_console.errors import InsiteError, IntegrityError, ObjectNotFound, UsageError
from insite_console.repo.packs import pack_id_from_key, pack_key
from insite_console.repo.repository import INDEX, Repository
from insite_console.repo.tree import TreeReader, TreeWriter
from insite_console.verify import damaged_blobs, files_with_blobs, name_files

INDEX_BATCH_PACKS = 1000  # packs per rewritten index object (~1 MB of JSON at 8 blobs a pack)
ACTIONS = ("index", "packs", "snapshots")


def run(ws, action: str, storage: str, dry_run: bool = False) -> dict[str, Any]:
    """One repair step on one storage; the result says what was found and done."""
    if action not in ACTIONS:
        raise UsageError(f"repair {action!r}: choose one of {', '.join(ACTIONS)}")
    repo = ws.repository(storage)
    exclusive = action != "snapshots"  # snapshots only adds objects, as a backup does
    result: dict[str, Any] = {"storage": storage, "action": action, "dry_run": dry_run, "problems": [],
                              "started_at": clock.iso(clock.now())}
    with repo.lock(f"repair {action}", exclusive=exclusive):
        repo.sync_index()
        {"index": _repair_index, "packs": _repair_packs, "snapshots": _repair_snapshots}[action](
            ws, repo, result, dry_run)
    result["status"] = _status(result, dry_run)
    result["finished_at"] = clock.iso(clock.now())
    ws.catalog.event(None, f"repair {action} on {storage}{' (dry run)' if dry_run else ''}: {result['status']}"
                     + (f"; {result['problems'][0]}" if result["problems"] else ""),
                     level="info" if result["status"] in ("clean", "repaired") else "error")
    return result


def _status(result: dict, dry_run: bool) -> str:
    """clean: nothing was damaged; repaired: damage fixed, nothing lost (or, for snapshots, the
    manifests no longer name lost data); data lost: the damage is gone but chunks went with it
    (the files are named); damaged: found and not (yet) repaired, or left for another step."""
    if not result["problems"] and not result.get("repairs"):
        return "clean"
    if dry_run or result.get("unrepairable") or result.get("remaining"):
        return "damaged"
    return "data lost" if result.get("lost_chunks") else "repaired"


# ----- index -------------------------------------------------------------------------------


def _repair_index(ws, repo: Repository, result: dict, dry_run: bool, exclude: set[str] = frozenset()) -> None:
    """Rebuild the index from every pack header; a pack whose header is unreadable keeps the
    entries the old index had for it (`repair packs` then rewrites it)."""
    old_indexes = sorted(info.key[len(INDEX):] for info in repo.storage.list(INDEX))
    cached = repo.index.packs()
    listed = {pack_id_from_key(info.key): info.size for info in repo.storage.list("data/")}
    repairs = result.setdefault("repairs", [])
    for index_id, reason in sorted(repo.damaged_indexes.items()):
        result["problems"].append(reason)
        repairs.append(f"replace damaged index object {INDEX}{index_id}")
    missing = sorted(set(cached) - set(listed))
    for pack_id in missing:
        result["problems"].append(f"pack {pack_key(pack_id)} is listed in the index but missing from storage")
    if missing:
        repairs.append(f"drop {len(missing)} missing pack(s) from the index")
        result["lost_chunks"] = result.get("lost_chunks", 0) + sum(len(repo.index.blobs_in_pack(p)) for p in missing)
    packs, unindexed = [], 0
    for pack_id, size in sorted(listed.items()):
        if pack_id in exclude:
            continue
        try:
            packs.append(repo.read_pack_header(pack_id, size))
        except (IntegrityError, ObjectNotFound) as exc:
            blobs = repo.index.blobs_in_pack(pack_id) if cached.get(pack_id) == size else []
            if blobs:
                packs.append({"id": pack_id, "size": size, "blobs": [
                    [bid.hex(), loc.type, loc.offset, loc.length, loc.plain_length] for bid, loc in blobs]})
                result["problems"].append(f"{exc}; kept its entries from the old index "
                                          f"(run `insite-console repair packs {repo.storage.name}`)")
                result.setdefault("remaining", []).append(pack_key(pack_id))
            else:
                result["problems"].append(f"{exc}; its data cannot be located and is not indexed")
                result.setdefault("unrepairable", []).append(pack_key(pack_id))
            continue
        if pack_id not in cached:
            unindexed += 1
    if unindexed:
        repairs.append(f"index {unindexed} pack(s) no index object listed")
    result.update(packs=len(packs), index_objects_before=len(old_indexes))
    if dry_run:
        return
    written = [repo.write_index(packs[i:i + INDEX_BATCH_PACKS]) for i in range(0, len(packs), INDEX_BATCH_PACKS)]
    stale = [INDEX + index_id for index_id in old_indexes if index_id not in written]
    repo.storage.delete(stale)
    repo.index.clear()  # start again from what is on storage now
    repo.damaged_indexes.clear()
    repo.sync_index()
    result.update(index_objects_written=len(written), index_objects_deleted=len(stale))


# ----- packs -------------------------------------------------------------------------------


def _repair_packs(ws, repo: Repository, result: dict, dry_run: bool) -> None:
    """Deep-check every indexed pack; salvage the good blobs of damaged ones, drop the bad."""
    sizes = repo.index.packs()
    damaged: dict[str, set[bytes]] = {}
    checked_bytes = 0
    for pack_id, size in sorted(sizes.items()):
        read, problem = repo.check_pack(pack_id, size)
        checked_bytes += read
        if problem is None:
            continue
        bad, data = damaged_blobs(repo, pack_id)
        damaged[pack_id] = bad
        result["problems"].append(f"{problem} ({len(bad)} damaged chunk(s))")
        if not dry_run and data is not None:
            for blob_id, loc in repo.index.blobs_in_pack(pack_id):
                if blob_id not in bad:
                    repo.copy_sealed_blob(loc.type, blob_id, data[loc.offset:loc.offset + loc.length],
                                          loc.plain_length)
    result.update(packs_checked=len(sizes), bytes_checked=checked_bytes, damaged_packs=[pack_key(p) for p in damaged])
    lost = set().union(*damaged.values()) if damaged else set()
    result["lost_chunks"] = len(lost)
    result["lost_files"] = _files_using(repo, lost) if lost else []
    result["repairs"] = [f"rewrite {len(damaged)} damaged pack(s) without their {len(lost)} damaged chunk(s)"] \
        if damaged else []
    if dry_run or not damaged:
        return
    repo.flush()  # the salvaged blobs are in new packs, and indexed, before anything is deleted
    _repair_index(ws, repo, {"problems": []}, dry_run=False, exclude=set(damaged))
    repo.storage.delete([pack_key(p) for p in damaged])


def _files_using(repo: Repository, lost: set[bytes]) -> list[dict]:
    """Every backup file (and listing) whose data includes a lost chunk."""
    found = []
    for backup_id in sorted(repo.list_manifest_ids()):
        try:
            manifest = repo.load_manifest(backup_id)
        except InsiteError:
            continue  # an unreadable manifest is reported by verify and repair snapshots
        names, listing = files_with_blobs(repo, manifest, lost)
        found.extend({"backup_id": backup_id, "path": name} for name in names)
        if listing:
            found.append({"backup_id": backup_id, "path": None, "problem": listing})
    return found


# ----- snapshots ---------------------------------------------------------------------------


def _repair_snapshots(ws, repo: Repository, result: dict, dry_run: bool) -> None:
    """Rewrite every manifest that names data the index no longer has, without those files."""
    present = {pack_id_from_key(info.key) for info in repo.storage.list("data/")}

    def readable(chunks) -> bool:
        for chunk_id, _ in chunks or []:
            location = repo.index.lookup(bytes.fromhex(chunk_id))
            if location is None or location.pack not in present:
                return False
        return True

    rewritten, lost_files = [], []
    for backup_id in sorted(repo.list_manifest_ids()):
        try:
            manifest = repo.load_manifest(backup_id)
        except InsiteError as exc:
            result["problems"].append(f"{exc}: cannot be repaired (no other copy of it here)")
            result.setdefault("unrepairable", []).append(backup_id)
            continue
        kept, removed, truncated = [], [], None
        try:
            if not readable(manifest["tree"]):
                raise IntegrityError("its file listing is missing from the repository")
            for entry in TreeReader(repo, manifest["tree"]):
                (kept if entry.type != "file" or readable(entry.chunks) else removed).append(entry)
        except InsiteError as exc:
            truncated = str(exc)
        if not removed and truncated is None:
            continue
        names = ["/" + entry.path for entry in removed]
        lost_files.extend({"backup_id": backup_id, "path": name} for name in names)
        what = f"backup {backup_id}: {len(removed)} file(s) with unreadable data" + (
            f", listing cut short ({truncated})" if truncated else "") + (f": {name_files(names)}" if names else "")
        result["problems"].append(what)
        rewritten.append(backup_id)
        if not dry_run:
            _rewrite_manifest(ws, repo, manifest, kept, names, truncated)
    result.update(repairs=[f"rewrite {len(rewritten)} manifest(s) without them"] if rewritten else [],
                  rewritten=rewritten,
                  lost_files=lost_files)


def _rewrite_manifest(ws, repo: Repository, manifest: dict, kept: list, removed: list[str],
                      truncated: str | None) -> None:
    """Store the shortened listing, then replace the manifest (one atomic put): a crash before
    leaves the original, a crash after leaves the repaired one."""
    writer = TreeWriter()
    try:
        for entry in kept:
            writer.add(entry)
        tree = writer.save(repo, manifest.get("compression", "zstd"))
    finally:
        writer.close()
    repo.flush()  # the new listing is on storage and indexed before a manifest names it
    mark = {"at": clock.iso(clock.now()), "removed_files": len(removed), "removed": removed[:100],
            "listing_cut_short": truncated}
    totals = dict(manifest.get("totals") or {})
    totals["files"] = sum(1 for entry in kept if entry.type == "file")
    note = f"repaired: {len(removed)} unreadable file(s) removed" + (" (listing cut short)" if truncated else "")
    repaired = {**manifest, "tree": tree, "totals": totals, "repaired": [*manifest.get("repaired", []), mark],
                "warnings": [*manifest["warnings"], note]}
    repo.save_manifest(repaired)
    row = ws.catalog.backup(manifest["id"])
    if row is not None and row["id"] == manifest["id"]:
        info = {**row["info"], "repaired": repaired["repaired"], "totals": totals,
                "warnings": [*row["info"].get("warnings", []), note][-20:]}
        ws.catalog.update_backup(manifest["id"], files=totals["files"], info=info)
    ws.catalog.event(None, f"backup {manifest['id']} on {repo.storage.name}: {note}", level="warning")


def summary(result: dict) -> list[str]:
    """Lines for the CLI."""
    verb = "would " if result["dry_run"] else ""
    lines = [f"repair {result['action']} on {result['storage']}: {result['status']}"]
    lines += [f"  problem: {p}" for p in result["problems"]]
    lines += [f"  {verb}{r}" for r in result.get("repairs", [])]
    label = "removed from" if result["action"] == "snapshots" else "data lost:"
    for item in result.get("lost_files", []):
        lines.append(f"  {label} backup {item['backup_id']}: " + (item["path"] or item.get("problem", "")))
    if result["action"] == "index" and not result["dry_run"]:
        lines.append(f"  {result['packs']} pack(s) indexed in {result['index_objects_written']} index object(s); "
                     f"{result['index_objects_deleted']} old index object(s) deleted")
    return lines

