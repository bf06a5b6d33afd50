"""Parallel archive-push: one `wal-push` pushes the asked WAL file and the others PostgreSQL has
marked ready, several at a time, as pgBackRest's asynchronous archive-push does.

    archive_command = 'insite-console -c CONFIG wal-push main_db %p --parallel 4'

PostgreSQL calls archive_command one file at a time, in order, and each call opens the
repository (key derivation, an index listing): during a bulk load the archive falls behind at
a few segments a second. With `--parallel N` (or `archive_push_parallel = N` on the source) a
call that finds other `.ready` files in pg_wal/archive_status pushes up to 2N-1 of them
alongside its own, N at a time, and leaves a receipt for each in
pg_wal/.insite-wal-pushed/NAME, written only once the store succeeded. A receipt records what
it vouches for: the SHA-256 of what was stored, the source, the storage name, the config's
realpath and a digest of that storage's settings. When PostgreSQL then calls wal-push for one
of those, the config is parsed (cheap) and the receipt trusted only when all of these match
the call and the file: then it exits 0 at once without opening the repository. A receipt
written for another source, storage or config (another archive_command pushing the same
pg_wal elsewhere) is ignored and left for that one; the file is pushed as usual (and a
different content under an archived name is refused, as always).

Only the asked file decides the exit status: a file pushed ahead that failed is left without a
receipt and pushed again (and reported) when PostgreSQL asks for it. Receipts of files no
longer in pg_wal are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

RECEIPTS_DIR_NAME = ".insite-wal-pushed"
READY_SUFFIX = ".ready"


def push(ws, source: str, path: str, parallel: int) -> int:
    """`wal-push SOURCE %p --parallel N`: 0 once %p is stored (now or by an earlier call's queue)."""
    from concurrent.futures import ThreadPoolExecutor

    from insite_console import wal

    name = os.path.basename(path)
    pg_wal = os.path.dirname(os.path.abspath(path))
    receipts = os.path.join(pg_wal, RECEIPTS_DIR_NAME)
    if pushed_ahead(ws, source, path):
        return 0
    vouch = _vouch(ws, source)
    ahead = _ready_files(pg_wal, name, receipts, vouch)[:max(0, 2 * parallel - 1)]
    if not ahead:
        return wal.push(ws, source, path)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="wal-push") as pool:
        own = pool.submit(wal.push_file, ws, source, path)
        queued = {other: pool.submit(_push_ahead, ws, source, os.path.join(pg_wal, other), receipts, vouch)
                  for other in ahead}
        own.result()  # raises: PostgreSQL keeps %p and retries
        failed = [other for other, future in queued.items() if not future.result()]
    pushed = len(ahead) - len(failed)
    print(f"insite-console wal-push: {name} archived, and {pushed} ready file(s) ahead of PostgreSQL's calls"
          + (f" ({len(failed)} failed, left for PostgreSQL to retry: {', '.join(failed[:3])})" if failed else ""),
          file=sys.stderr)
    _drop_stale_receipts(receipts, pg_wal)
    return 0


def _ready_files(pg_wal: str, name: str, receipts: str, vouch: dict[str, str]) -> list[str]:
    """WAL files PostgreSQL has marked ready, other than `name` and those with a receipt for
    this call (`vouch`): history files first (PostgreSQL archives them first), then by name."""
    from insite_console import wal

    try:
        listed = os.listdir(os.path.join(pg_wal, "archive_status"))
    except OSError:
        return []
    names = [entry[:-len(READY_SUFFIX)] for entry in listed if entry.endswith(READY_SUFFIX)]
    names = [n for n in names if n != name and wal._ARCHIVE_NAME.match(n)
             and not _for_this_call(_read_receipt(os.path.join(receipts, n)), vouch)
             and os.path.isfile(os.path.join(pg_wal, n))]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def _push_ahead(ws, source: str, path: str, receipts: str, vouch: dict[str, str]) -> bool:
    from insite_console import wal

    try:
        result: dict[str, Any] = wal.push_file(ws, source, path)
    except Exception as exc:  # noqa: BLE001 - pushed (and reported) again when PostgreSQL asks
        print(f"insite-console wal-push: {os.path.basename(path)} (ahead): {exc}", file=sys.stderr)
        return False
    _write_receipt(receipts, os.path.basename(path), {**vouch, "sha256": result["sha256"]})
    return True


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _vouch(ws, source: str) -> dict[str, str]:
    """What a receipt written by (or checked for) this call vouches for, besides the content:
    from the config only (the source's WAL storage, its settings), never the repository."""
    from insite_console import wal

    storage = wal.storage_for_source(ws, source)  # raises for an unknown source
    settings = json.dumps(ws.config.storages.get(storage, {}), sort_keys=True, default=str)
    return {"source": source, "storage": storage, "config": os.path.realpath(ws.config.path),
            "storage_settings": hashlib.sha256(settings.encode()).hexdigest()}


def _write_receipt(receipts: str, name: str, receipt: dict[str, str]) -> None:
    os.makedirs(receipts, mode=0o700, exist_ok=True)
    temp = os.path.join(receipts, f".{name}.tmp")
    with open(temp, "w") as handle:
        handle.write(json.dumps(receipt, sort_keys=True) + "\n")
    os.replace(temp, os.path.join(receipts, name))


def _read_receipt(receipt: str) -> dict[str, Any] | None:
    """The receipt's fields; {} for one that is there but unreadable or of another format
    (an earlier version's bare SHA-256); None when there is none."""
    try:
        with open(receipt) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _for_this_call(fields: dict[str, Any] | None, vouch: dict[str, str]) -> bool:
    """The receipt was written for this source, storage, config and storage settings."""
    return bool(fields) and all(fields.get(key) == value for key, value in vouch.items())


def pushed_ahead(ws, source: str, path: str) -> bool:
    """%p was stored by an earlier call for this source, storage and config, with exactly this
    content: remove its receipt, True. Reads the config only, never the repository: that is the
    speed-up. A receipt written for another source, storage or config is left for that one; one
    for this call that does not match the file, or that cannot be read, is removed."""
    receipt = os.path.join(os.path.dirname(os.path.abspath(path)), RECEIPTS_DIR_NAME, os.path.basename(path))
    fields = _read_receipt(receipt)
    if fields is None:
        return False
    if fields and not _for_this_call(fields, _vouch(ws, source)):
        return False  # another archive's receipt: not ours to use or to drop
    try:
        same = bool(fields.get("sha256")) and _sha256(path) == fields["sha256"]
    except OSError:
        same = False
    try:
        os.unlink(receipt)
    except OSError:
        pass
    return same


def _drop_stale_receipts(receipts: str, pg_wal: str) -> None:
    try:
        names = os.listdir(receipts)
    except OSError:
        return
    for name in names:
        if not name.startswith(".") and not os.path.exists(os.path.join(pg_wal, name)):
            try:
                os.unlink(os.path.join(receipts, name))
            except OSError:
                pass
