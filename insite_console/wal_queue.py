"""Parallel archive-push: one `wal-push` pushes the asked WAL file and the others PostgreSQL has
marked ready, several at a time, as pgBackRest's asynchronous archive-push does.

    archive_command = 'insite-console -c CONFIG wal-push main_db %p --parallel 4'

PostgreSQL calls archive_command one file at a time, in order, and each call opens the
repository (key derivation, an index listing): during a bulk load the archive falls behind at
a few segments a second. With `--parallel N` (or `archive_push_parallel = N` on the source) a
call that finds other `.ready` files in pg_wal/archive_status pushes up to 2N-1 of them
alongside its own, N at a time, and leaves a receipt for each in
pg_wal/.insite-wal-pushed/NAME (the SHA-256 of what was stored, written only once the store
succeeded). When PostgreSQL then calls wal-push for one of those, the file's SHA-256 is
compared with its receipt: equal, it exits 0 at once without opening the repository; else it
is pushed as usual (and a different content under an archived name is refused, as always).

Only the asked file decides the exit status: a file pushed ahead that failed is left without a
receipt and pushed again (and reported) when PostgreSQL asks for it. Receipts of files no
longer in pg_wal are removed.
"""

from __future__ import annotations

import hashlib
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
    if pushed_ahead(path):
        return 0
    ahead = _ready_files(pg_wal, name, receipts)[:max(0, 2 * parallel - 1)]
    if not ahead:
        return wal.push(ws, source, path)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="wal-push") as pool:
        own = pool.submit(wal.push_file, ws, source, path)
        queued = {other: pool.submit(_push_ahead, ws, source, os.path.join(pg_wal, other), receipts)
                  for other in ahead}
        own.result()  # raises: PostgreSQL keeps %p and retries
        failed = [other for other, future in queued.items() if not future.result()]
    pushed = len(ahead) - len(failed)
    print(f"insite-console wal-push: {name} archived, and {pushed} ready file(s) ahead of PostgreSQL's calls"
          + (f" ({len(failed)} failed, left for PostgreSQL to retry: {', '.join(failed[:3])})" if failed else ""),
          file=sys.stderr)
    _drop_stale_receipts(receipts, pg_wal)
    return 0


def _ready_files(pg_wal: str, name: str, receipts: str) -> list[str]:
    """WAL files PostgreSQL has marked ready, other than `name` and those with a receipt:
    history files first (PostgreSQL archives them first), then by name (WAL order)."""
    from insite_console import wal

    try:
        listed = os.listdir(os.path.join(pg_wal, "archive_status"))
    except OSError:
        return []
    names = [entry[:-len(READY_SUFFIX)] for entry in listed if entry.endswith(READY_SUFFIX)]
    names = [n for n in names if n != name and wal._ARCHIVE_NAME.match(n)
             and not os.path.exists(os.path.join(receipts, n)) and os.path.isfile(os.path.join(pg_wal, n))]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def _push_ahead(ws, source: str, path: str, receipts: str) -> bool:
    from insite_console import wal

    try:
        result: dict[str, Any] = wal.push_file(ws, source, path)
    except Exception as exc:  # noqa: BLE001 - pushed (and reported) again when PostgreSQL asks
        print(f"insite-console wal-push: {os.path.basename(path)} (ahead): {exc}", file=sys.stderr)
        return False
    _write_receipt(receipts, os.path.basename(path), result["sha256"])
    return True


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_receipt(receipts: str, name: str, digest: str) -> None:
    os.makedirs(receipts, mode=0o700, exist_ok=True)
    temp = os.path.join(receipts, f".{name}.tmp")
    with open(temp, "w") as handle:
        handle.write(digest + "\n")
    os.replace(temp, os.path.join(receipts, name))


def pushed_ahead(path: str) -> bool:
    """%p was stored by an earlier call, with exactly this content: remove its receipt, True.
    Checked before anything else (no config, no repository): that is the speed-up."""
    receipt = os.path.join(os.path.dirname(os.path.abspath(path)), RECEIPTS_DIR_NAME, os.path.basename(path))
    try:
        with open(receipt) as handle:
            stored = handle.read().strip()
    except OSError:
        return False
    try:
        same = _sha256(path) == stored
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
