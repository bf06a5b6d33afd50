"""Copy a backup to another storage (the off-site copy): same backup id, deduplicated there.

Each repository has its own keys and chunker seed, so content is re-chunked and re-encrypted
for the destination; what the destination already holds (earlier copies) is not uploaded
again. The manifest is written last, as in a backup, so an interrupted copy lists nothing.
"""

from __future__ import annotations

from typing import Any

from insite_console import clock
from insite_console.errors import Cancelled, RepositoryError, UsageError
from insite_console.events import CancelToken, ProgressCallback, ProgressReporter
from insite_console.redact import redact
from insite_console.repo.tree import TreeReader, TreeWriter


def run(ws, backup_id: str, to_storage: str, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None) -> dict[str, Any]:
    cancel = cancel or CancelToken()
    backup = ws.catalog.backup(backup_id)
    if backup is None:
        raise UsageError(f"no backup {backup_id!r} in the catalog (see `insite-console backups`)")
    if backup["status"] != "succeeded":
        raise UsageError(f"backup {backup['id']} is {backup['status']}; only a succeeded backup can be copied")
    source = ws.repository(ws.storage_for_backup(backup))
    destination = ws.repository(to_storage)
    if destination.id == source.id:
        raise RepositoryError(f"storage {to_storage} holds the same repository as the backup's; nothing to copy")
    from insite_console.events import catalog_writer

    # a run of its own, so Live jobs lists the copy (labelled, with its progress and who started it)
    run_id = clock.new_id()
    ws.catalog.start_run(run_id, "copy", f"{backup['id']} → {to_storage}")
    writer = catalog_writer(ws.catalog, run_id)

    def report(p) -> None:
        writer(p)
        if progress:
            progress(p)

    try:
        with source.lock(f"copy of {backup['id']}"), destination.lock(f"copy of {backup['id']}") as lock:
            result = _copy(ws, backup, source, destination, lock, to_storage, report, cancel)
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed"
        ws.catalog.finish_run(run_id, status, redact(str(exc)))
        raise
    ws.catalog.finish_run(run_id, "succeeded")
    return result


def _copy(ws, backup: dict, source, destination, lock, to_storage: str, progress,
          cancel: CancelToken) -> dict[str, Any]:
    manifest = source.load_manifest(backup["id"])
    reporter = ProgressReporter("copy", [progress])
    reporter.update(phase="copying", bytes_total=manifest.get("totals", {}).get("bytes_read"), force=True)
    stored_before = destination.stats["bytes_stored"]
    tree = TreeWriter()
    method = manifest.get("compression", "zstd")
    try:
        for entry in TreeReader(source, manifest["tree"]):
            cancel.check()
            if entry.type == "file":
                with source.open_chunks(entry.chunks or []) as stream:
                    entry.chunks = destination.save_stream(stream, method, on_bytes=lambda n: reporter.advance(n),
                                                           cancel=cancel)
                reporter.advance(files_done=1, current="/" + entry.path)
            tree.add(entry)
        destination.flush()
        copied = dict(manifest, tree=tree.save(destination, method),
                      copied_from={"storage": backup["storage"], "repository": source.id, "at": clock.iso(clock.now())})
        destination.flush()
        destination.commit_manifest(copied, lock)
    except BaseException:
        destination.abandon()
        raise
    ws.catalog.add_backup_storage(backup["id"], to_storage)
    ws.catalog.event(None, f"copied backup {backup['id']} to {to_storage}")
    reporter.update(phase="done", force=True)
    return {"backup_id": backup["id"], "storage": to_storage, "status": "succeeded",
            "bytes_stored": destination.stats["bytes_stored"] - stored_before,
            "storages": ws.catalog.backup_storages(backup["id"])}
