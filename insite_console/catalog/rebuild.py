"""Rebuild the catalog from the repositories: the storage is the source of truth."""

from __future__ import annotations

from insite_console.errors import InsiteError


def rebuild(ws, storage: str | None = None) -> dict:
    names = [storage] if storage else sorted(ws.config.storages)
    found, problems = 0, []
    for name in names:
        try:
            repo = ws.repository(name)
            repo.sync_index()
            ids = repo.list_manifest_ids()
        except InsiteError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for backup_id in ids:
            try:
                manifest = repo.load_manifest(backup_id)
            except InsiteError as exc:
                problems.append(f"{name}: backup {backup_id}: {exc}")
                continue
            existing = ws.catalog.backup(backup_id)
            if existing is None or existing["id"] != backup_id:
                totals = manifest.get("totals", {})
                ws.catalog.insert_backup({
                    "id": backup_id, "policy": manifest["policy"], "source": manifest["source"],
                    "source_type": manifest["source_type"], "storage": name, "type": manifest["type"],
                    "status": "succeeded", "started_at": manifest["started_at"],
                    "finished_at": manifest["finished_at"], "bytes_read": totals.get("bytes_read", 0),
                    "bytes_stored": totals.get("bytes_stored", 0), "files": totals.get("files", 0),
                    "parent_id": manifest.get("parent_id"), "repo_id": repo.id, "run_id": None,
                    "info": {"totals": totals, "warnings": manifest.get("warnings", [])[:20],
                             "source_info": manifest.get("source_info", {}), "rebuilt": True},
                })
            elif existing["status"] != "succeeded":
                ws.catalog.update_backup(backup_id, status="succeeded", error=None)
            ws.catalog.add_backup_storage(backup_id, name)
            found += 1
    # rows whose manifest is gone from every storage checked are no longer restore points
    removed = 0
    for row in ws.catalog.backups(status="succeeded"):
        if row["storage"] in names and row["storage"] not in [p.split(":")[0] for p in problems]:
            if not ws.repository(row["storage"]).storage.exists(f"snapshots/{row['id']}"):
                ws.catalog.update_backup(row["id"], status="failed", error="manifest missing from storage")
                removed += 1
    ws.catalog.event(None, f"catalog rebuilt from {', '.join(names)}: {found} backup(s)")
    return {"storages": names, "backups": found, "marked_missing": removed, "problems": problems}
