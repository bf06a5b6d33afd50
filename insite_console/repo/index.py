"""The chunk index: which pack holds each blob, kept on disk in SQLite, never all in RAM.

The storage holds the truth as `index/<id>` objects (each lists some packs and their blobs,
sealed). This local SQLite file is a cache of them: on open, index objects not yet loaded are
merged in. Memory stays bounded however large the repository grows (restic users hit OOM on
small hosts when a shared repository grew).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, plain_length INTEGER NOT NULL, type INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS packs (id TEXT PRIMARY KEY, size INTEGER NOT NULL, index_id TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loaded_indexes (id TEXT PRIMARY KEY) WITHOUT ROWID;
"""


#: how long to wait for another process on this host that writes the same cache (a prune's
#: reload, a large merge) before giving up; sqlite3's default of 5 s failed real backups
BUSY_TIMEOUT = 600


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
    return conn


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    offset: int
    length: int
    plain_length: int
    type: int


class IndexCache:
    """A thread-safe SQLite cache of the repository's index objects."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one writer; lookups use a connection per thread
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []

    def _reader(self) -> sqlite3.Connection:
        """A read connection for this thread: restore threads look blobs up without a lock
        (WAL mode lets readers run beside the writer)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._readers.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
            self._db.close()

    def loaded_index_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM loaded_indexes")}

    def add_index(self, index_id: str, packs: list[dict]) -> None:
        """Merge one index object (already decoded) in a single transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for pack in packs:
                    self._db.execute("INSERT OR REPLACE INTO packs VALUES (?, ?, ?)", (pack["id"], pack["size"], index_id))
                    self._db.executemany(
                        "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                        ((bytes.fromhex(b[0]), pack["id"], b[2], b[3], b[4], b[1]) for b in pack["blobs"]),
                    )
                self._db.execute("INSERT OR IGNORE INTO loaded_indexes VALUES (?)", (index_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def replace_loaded(self, old_ids: list[str], new_ids: list[str]) -> None:
        """After prune replaced the index on storage: the cache's rows already match it."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM loaded_indexes WHERE id = ?", ((i,) for i in old_ids))
            self._db.executemany("INSERT OR IGNORE INTO loaded_indexes VALUES (?)", ((i,) for i in new_ids))
            self._db.execute("COMMIT")

    def drop_packs(self, pack_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for pack_id in pack_ids:
                self._db.execute("DELETE FROM blobs WHERE pack = ?", (pack_id,))
                self._db.execute("DELETE FROM packs WHERE id = ?", (pack_id,))
            self._db.execute("COMMIT")

    def clear(self) -> None:
        with self._lock:
            self._db.executescript("DELETE FROM blobs; DELETE FROM packs; DELETE FROM loaded_indexes;")

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        row = self._reader().execute(
            "SELECT pack, offset, length, plain_length, type FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        return BlobLocation(*row) if row else None

    def has(self, blob_id: bytes) -> bool:
        return self._reader().execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is not None

    def has_many(self, blob_ids) -> set[bytes]:
        """Which of `blob_ids` are indexed: one query per 500, in key order."""
        return {row[0] for row in self._rows_of("id", blob_ids)}

    def lookup_many(self, blob_ids) -> dict[bytes, BlobLocation]:
        """Where each of `blob_ids` that is indexed lies: one query per 500."""
        return {row[0]: BlobLocation(*row[1:]) for row in
                self._rows_of("id, pack, offset, length, plain_length, type", blob_ids)}

    def _rows_of(self, columns: str, blob_ids) -> Iterator[tuple]:
        ids = sorted(set(blob_ids))
        conn = self._reader()
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            yield from conn.execute(f"SELECT {columns} FROM blobs WHERE id IN ({','.join('?' * len(part))})", part)

    def packs(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT id, size FROM packs"))

    def blobs_in_pack(self, pack_id: str) -> list[tuple[bytes, BlobLocation]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, pack, offset, length, plain_length, type FROM blobs WHERE pack = ? ORDER BY offset",
                (pack_id,),
            ).fetchall()
        return [(row[0], BlobLocation(*row[1:])) for row in rows]

    def pack_sizes_for(self, blob_ids) -> dict[str, int]:
        """The packs holding the given blobs, with their sizes (for quick verify)."""
        result: dict[str, int] = {}
        with self._lock:
            for blob_id in blob_ids:
                row = self._db.execute(
                    "SELECT b.pack, p.size FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?", (blob_id,)
                ).fetchone()
                if row:
                    result[row[0]] = row[1]
        return result
