"""Rebuild or sync the catalog from the repositories: the storage is the source of truth.

`catalog rebuild` is for a lost or damaged catalog, `catalog sync` for a host learning what
other hosts wrote to a shared repository; both do the same: add the backups whose manifests
are on storage and not in the catalog, record every storage holding a copy, and drop rows
whose manifest is gone from every storage that held it (another host's prune forgot them).
Neither brings back a backup this catalog forgot: its tombstone outranks a stray manifest.
"""

from __future__ import annotations

import json

from insite_console.errors import InsiteError

#: the histories sealed into every repository: (kind, prefix there, the catalog's ids, its insert)
RECORDS = (("drills", "drills/", "drill_ids", "insert_drill"),
           ("restores", "restores/", "restore_ids", "insert_restore"),
           ("recoveries", "recoveries/", "recovery_ids", "insert_recovery"),
           ("group_points", "groups/", "group_point_ids", "insert_group_point"))


def sync(ws, storage: str | None = None) -> dict:
    names = [storage] if storage else sorted(ws.config.storages)
    catalog = ws.catalog
    forgotten = catalog.forgotten_ids()
    known = catalog.backup_statuses()
    found, added, problems = 0, [], []
    records: dict[str, list[str]] = {kind: [] for kind, _, _, _ in RECORDS}
    skipped: set[str] = set()
    on_storage: dict[str, set[str]] = {}
    for name in names:
        try:
            repo = ws.repository(name)
            repo.sync_index()
            ids = set(repo.list_manifest_ids())
        except InsiteError as exc:
            problems.append(f"{name}: {exc}")
            continue
        on_storage[name] = ids
        for kind, prefix, known_ids, insert in RECORDS:
            try:
                records[kind] += sync_sealed(repo, prefix, getattr(catalog, known_ids)(), getattr(catalog, insert))
            except (InsiteError, ValueError) as exc:
                problems.append(f"{name}: {kind.replace('_', ' ')} history: {exc}")
        for backup_id in sorted(ids):
            if backup_id in forgotten:
                skipped.add(backup_id)
                continue
            if backup_id not in known:
                try:
                    manifest = repo.load_manifest(backup_id)
                except InsiteError as exc:
                    problems.append(f"{name}: backup {backup_id}: {exc}")
                    continue
                catalog.insert_backup(_row(ws, manifest, name, repo.id))
                known[backup_id] = "succeeded"
                added.append(backup_id)
            elif known[backup_id] not in ("succeeded", "running") and not _last_verification_failed(catalog, backup_id):
                # its manifest is there: the run died after committing it (a verification that
                # found its data damaged or missing keeps it failed)
                catalog.update_backup(backup_id, status="succeeded", error=None)
                known[backup_id] = "succeeded"
            catalog.add_backup_storage(backup_id, name)
            found += 1
    removed = []
    for row in catalog.backups(status="succeeded"):
        holders = catalog.backup_storages(row["id"]) or [row["storage"]]
        gone = [s for s in holders if s in on_storage and row["id"] not in on_storage[s]]
        for name in gone:
            catalog.remove_backup_storage(row["id"], name)
        if gone and len(gone) == len(holders):
            catalog.delete_backup(row["id"], reason=f"manifest gone from {', '.join(gone)}")
            catalog.event(None, f"backup {row['id']} of {row['policy']} is no longer on storage "
                                f"({', '.join(gone)}): removed from the catalog", level="warning")
            removed.append(row["id"])
    catalog.event(None, f"catalog synced from {', '.join(names)}: {found} backup(s), {len(added)} added, "
                        f"{len(removed)} removed")
    return {"storages": names, "backups": found, "added": added, "removed": removed,
            "marked_missing": len(removed), "skipped_forgotten": sorted(skipped), "problems": problems,
            "drills_added": records["drills"], "restores_added": records["restores"],
            "recoveries_added": records["recoveries"],
            "group_points_added": records["group_points"]}


def sync_sealed(repo, prefix: str, known: set[str], insert) -> list[str]:
    """Records sealed under `prefix` in `repo` (drills, restores, recoveries, group points) that the
    catalog lacks, inserted; their ids. A rebuilt catalog keeps the history this way."""
    from insite_console.repo.repository import SEALED

    added = []
    for info in repo.storage.list(SEALED + prefix):
        record_id = info.key[len(SEALED + prefix):]
        if record_id in known:
            continue
        insert(json.loads(repo.get_sealed(prefix + record_id)))
        known.add(record_id)
        added.append(record_id)
    return added


def _last_verification_failed(catalog, backup_id: str) -> bool:
    latest = catalog.verifications(backup_id, limit=1)
    return bool(latest) and latest[0]["status"] != "ok"


def _row(ws, manifest: dict, storage: str, repo_id: str) -> dict:
    """A catalog row from a manifest; a copy is listed under the storage it was written to."""
    totals = manifest.get("totals", {})
    origin = (manifest.get("copied_from") or {}).get("storage")
    return {
        "id": manifest["id"], "policy": manifest["policy"], "source": manifest["source"],
        "source_type": manifest["source_type"],
        "storage": origin if origin in ws.config.storages else storage, "type": manifest["type"],
        "status": "succeeded", "started_at": manifest["started_at"],
        "started_at_precise": manifest.get("started_at_precise"), "host": manifest.get("hostname"),
        "finished_at": manifest["finished_at"], "bytes_read": totals.get("bytes_read", 0),
        "bytes_stored": totals.get("bytes_stored", 0), "files": totals.get("files", 0),
        "parent_id": manifest.get("parent_id"), "repo_id": repo_id, "run_id": None,
        "info": {"totals": totals, "warnings": manifest.get("warnings", [])[:20],
                 "source_info": manifest.get("source_info", {}), "rebuilt": True},
    }
