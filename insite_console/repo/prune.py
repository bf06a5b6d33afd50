"""Pack garbage collection: delete packs nothing references, repack mostly-unused ones, and
replace the whole index so that no index object ever names a deleted pack.

The caller holds the repository's exclusive lock (docs/FORMAT.md, "Concurrency" → "Prune").
What is referenced is decided from every manifest on storage, whichever host wrote it; the
set of used blobs lives in a temporary SQLite file, so memory stays bounded at any number of
blobs.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from typing import Callable, Iterator

from insite_console.errors import IntegrityError, RepositoryError
from insite_console.repo.packs import PackBuilder, pack_key
from insite_console.repo.repository import INDEX, Repository
from insite_console.repo.tree import TreeReader

MAX_UNUSED = 0.05  # a pack whose unused share is above this is repacked (restic's default)
INDEX_BATCH_BLOBS = 50_000  # blobs per index object written by prune
_MARK_BATCH = 10_000


class UsedBlobs:
    """The set of referenced blob ids, on disk beside the index cache."""

    def __init__(self, repo: Repository):
        self.path = repo.index.path.with_name(f"prune-{os.getpid()}-{os.urandom(4).hex()}.sqlite")
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE used (id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._batch: list[tuple[bytes]] = []
        self.count = 0

    def add(self, chunk_id_hex: str) -> None:
        self._batch.append((bytes.fromhex(chunk_id_hex),))
        if len(self._batch) >= _MARK_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO used VALUES (?)", self._batch)
            self.db.execute("COMMIT")
            self._batch.clear()

    def has(self, blob_id: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM used WHERE id = ?", (blob_id,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass


def mark_used(repo: Repository, used: UsedBlobs) -> int:
    """Mark every blob of every manifest on storage; returns how many manifests. A manifest
    that cannot be read stops prune: what it references is unknown, so nothing may go."""
    manifests = 0
    trees_read: set[bytes] = set()  # a file list identical to one already read adds nothing
    for backup_id in repo.list_manifest_ids():
        try:
            manifest = repo.load_manifest(backup_id)
            for chunk_id, _ in manifest["tree"]:
                used.add(chunk_id)
            manifests += 1
            tree = hashlib.sha256("".join(chunk_id for chunk_id, _ in manifest["tree"]).encode()).digest()
            if tree in trees_read:
                continue
            trees_read.add(tree)
            for entry in TreeReader(repo, manifest["tree"]):
                for chunk_id, _ in entry.chunks or []:
                    used.add(chunk_id)
        except (IntegrityError, RepositoryError) as exc:
            raise RepositoryError(
                f"prune stopped before deleting anything: backup {backup_id} cannot be read ({exc}), so the data "
                "it references is unknown; run `insite-console verify --deep` and `repair snapshots` first") from None
    used.flush()
    return manifests


def collect(repo: Repository, lock, max_unused: float = MAX_UNUSED,
            event: Callable[[str], None] = lambda message: None) -> dict:
    """Delete and repack packs under the held exclusive `lock`; returns what was done."""
    repo.reload_index()  # from storage, not from what this host cached
    if repo.damaged_indexes:  # the packs they name look unreferenced: nothing may be judged unused
        raise RepositoryError(
            f"prune stopped before deleting anything: {len(repo.damaged_indexes)} index object(s) on storage "
            f"{repo.storage.name} cannot be read ({next(iter(repo.damaged_indexes.values()))}); run "
            f"`insite-console repair index {repo.storage.name}` first")
    recovered, unreadable = repo.recover_unindexed_packs(delete_unreadable=True)
    if recovered:
        event(f"indexed {recovered} pack(s) left by interrupted runs")
    if unreadable:
        event(f"deleted {len(unreadable)} unreadable pack(s) that no index named: {', '.join(unreadable[:5])}")
    old_index_ids = sorted(repo.index.loaded_index_ids())
    used = UsedBlobs(repo)
    try:
        manifests = mark_used(repo, used)
        delete, repack, keep, freed = _classify(repo, used, max_unused)
        gone = [pack_id for pack_id, _size in delete + repack]
        repo.index.drop_packs([pack_id for pack_id, _size in delete])  # the cache forgets first: at worst
        # a blob is uploaded again; repacked packs are forgotten as their blobs are copied
        written = _write_index(repo, _described(repo, keep), register=False)
        new_packs: list[tuple[str, int]] = []
        written += _write_index(repo, _repack(repo, used, repack, new_packs), register=True)
    finally:
        used.close()
    lock.check()  # from here on, deletions: the lock must still be ours
    new_ids = set(written)
    repo.storage.delete([INDEX + index_id for index_id in old_index_ids if index_id not in new_ids])
    repo.storage.delete([pack_key(pack_id) for pack_id in gone])
    repo.index.replace_loaded(old_index_ids, written)
    repacked_bytes = sum(size for _pack, size in repack)
    new_bytes = sum(size for _pack, size in new_packs)
    result = {"manifests": manifests, "packs_deleted": len(delete), "packs_repacked": len(repack),
              "packs_written": len(new_packs), "index_objects": len(written),
              "bytes_freed": freed + repacked_bytes - new_bytes}
    if gone:
        event(f"prune: deleted {len(delete)} unreferenced pack(s), repacked {len(repack)} into {len(new_packs)}, "
              f"freed {result['bytes_freed']} bytes")
    return result


def _classify(repo: Repository, used: UsedBlobs, max_unused: float):
    """(delete, repack, keep, bytes freed by deletes): lists of (pack id, size)."""
    delete, repack, keep, freed = [], [], [], 0
    for pack_id, size in sorted(repo.index.packs().items()):
        used_bytes = unused_bytes = 0  # of blobs; the header is overhead, not waste
        for blob_id, loc in repo.index.blobs_in_pack(pack_id):
            if used.has(blob_id):
                used_bytes += loc.length
            else:
                unused_bytes += loc.length
        if used_bytes == 0:
            delete.append((pack_id, size))
            freed += size
        elif unused_bytes / size > max_unused:
            repack.append((pack_id, size))
        else:
            keep.append((pack_id, size))
    return delete, repack, keep, freed


def _repack(repo: Repository, used: UsedBlobs, packs: list[tuple[str, int]],
            written: list[tuple[str, int]]) -> Iterator[dict]:
    """Copy the used blobs of `packs`, still sealed and checked, into new packs (each new
    pack's id and size is appended to `written`)."""
    builder = PackBuilder()
    for pack_id, _size in packs:
        blobs = repo.index.blobs_in_pack(pack_id)
        repo.index.drop_packs([pack_id])  # so the new pack's rows replace these in the cache
        for blob_id, loc in blobs:
            if not used.has(blob_id):
                continue
            builder.add(loc.type, blob_id, repo.read_sealed_blob(blob_id, loc), loc.plain_length)
            if builder.size >= repo.pack_size:
                yield _uploaded(repo, builder, written)
                builder = PackBuilder()
    if builder.entries:
        yield _uploaded(repo, builder, written)


def _uploaded(repo: Repository, builder: PackBuilder, written: list[tuple[str, int]]) -> dict:
    pack = repo.write_pack(builder)
    written.append((pack["id"], pack["size"]))
    return pack


def _write_index(repo: Repository, packs: Iterator[dict], register: bool) -> list[str]:
    """Index objects for `packs`, in batches (memory holds one batch); with `register` their
    rows go into the cache too (kept packs' rows are there already)."""
    ids: list[str] = []
    batch: list[dict] = []
    blobs = 0
    for pack in itertools.chain(packs, [None]):
        if pack is not None:
            batch.append(pack)
            blobs += len(pack["blobs"])
        if batch and (pack is None or blobs >= INDEX_BATCH_BLOBS):
            index_id = repo.write_index_object(batch)
            if register:
                repo.index.add_index(index_id, batch)
            ids.append(index_id)
            batch, blobs = [], 0
    return ids


def _described(repo: Repository, packs: list[tuple[str, int]]) -> Iterator[dict]:
    for pack_id, size in packs:
        yield {"id": pack_id, "size": size,
               "blobs": [[blob_id.hex(), loc.type, loc.offset, loc.length, loc.plain_length]
                         for blob_id, loc in repo.index.blobs_in_pack(pack_id)]}
