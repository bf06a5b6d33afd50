"""The repository on storage: content-addressed, deduplicated, compressed, encrypted.

Objects (see docs/FORMAT.md):
  config               plain JSON: format, version, repository id, chunker sizes
  keys/<id>            the master key wrapped by one passphrase (keys.py)
  data/<xx>/<pack id>  packs of sealed blobs (packs.py)
  index/<id>           sealed list of packs and the blobs in each
  snapshots/<id>       sealed manifest of one backup
  sealed/<name>        standalone sealed objects (e.g. PostgreSQL WAL segments)

Writes go in the order packs → index → manifest, each object atomic, so whatever moment a
process dies at, every manifest on storage refers only to data that is there; packs a dead
run uploaded without an index are found and indexed by the next writer (`recover_unindexed_packs`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from pyfastcdc import FastCDC

from insite_console import clock
from insite_console.errors import IntegrityError, ObjectNotFound, RepositoryError
from insite_console.events import Budget, CancelToken
from insite_console.repo import compression, keys, objects
from insite_console.repo.crypto import Cipher
from insite_console.repo.index import BlobLocation, IndexCache
from insite_console.repo.packs import DATA, PackBuilder, pack_id_from_key, pack_key, read_header
from insite_console.storage.base import Storage

FORMAT_NAME = "insite-repository"
FORMAT_VERSION = 1
MANIFEST_VERSION = 1
CONFIG_KEY = "config"
SNAPSHOTS = "snapshots/"
INDEX = "index/"
SEALED = "sealed/"

# FastCDC emits chunks of avg_size + min_size on average: ~1 MiB here.
CHUNK_MIN = 256 * 1024
CHUNK_AVG = 768 * 1024
CHUNK_MAX = 4 * 1024 * 1024
PACK_TARGET = 8 * 1024 * 1024
READ_BLOCK = 4 * 1024 * 1024
INDEX_CHECKPOINT_PACKS = 64
_SYNC_ATTEMPTS = 10  # listings of index/ tried while a prune elsewhere replaces the index

log = logging.getLogger("insite_console.repo")


class PendingStream:
    """A content stream whose chunks are still being processed by the workers."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.size = 0

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> list[tuple[str, int]]:
        return [f.result() for f in self.futures]


class Repository:
    """An unlocked repository. Thread-safe for concurrent writers within one process."""

    def __init__(self, storage: Storage, config: dict, master: keys.MasterKey, key_id: str, cache_dir: Path,
                 threads: int | None = None, memory_limit: int = 8 * 1024 * 1024, pack_size: int = PACK_TARGET):
        self.storage = storage
        self.config = config
        self.id = config["id"]
        self.key_id = key_id
        self._master = master
        self._cipher = Cipher(master.encryption_key)
        self._mac_key = master.mac_key
        chunker = config["chunker"]
        self._chunker_args = dict(avg_size=chunker["avg"], min_size=chunker["min"], max_size=chunker["max"],
                                  seed=master.chunker_seed % (2**31))
        self._index_path = Path(cache_dir) / self.id / "index.sqlite"
        self._index: IndexCache | None = None
        self._index_open_lock = threading.Lock()
        self.index_synced = False
        self._threads = threads or max(2, os.cpu_count() or 2)
        self._memory_limit = memory_limit
        self._pack_size = pack_size
        self._workers: ThreadPoolExecutor | None = None
        self._uploaders: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._budget = Budget(memory_limit)
        self._upload_slots = threading.BoundedSemaphore(storage.upload_slots)
        self._state_lock = threading.Lock()
        self._pack_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._claimed: set[bytes] = set()
        self._pending: dict[bytes, BlobLocation] = {}  # uploaded, not yet in an index object
        self._pending_packs: list[dict] = []
        self._builder = PackBuilder()
        self._upload_futures: list[Future] = []
        self._upload_error: BaseException | None = None
        self.damaged_indexes: dict[str, str] = {}  # index id -> why sync_index skipped it
        self.stats = {"blobs_new": 0, "bytes_new": 0, "bytes_stored": 0, "packs_written": 0}

    # ----- lifecycle -------------------------------------------------------------------

    @classmethod
    def init(cls, storage: Storage, passphrase: str, cache_dir: Path, **options) -> "Repository":
        try:
            storage.stat(CONFIG_KEY)
            raise RepositoryError(f"storage {storage.name} ({storage.describe()}) already holds a repository")
        except ObjectNotFound:
            pass
        config = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "id": os.urandom(16).hex(),
            "created_at": clock.iso(clock.now()),
            "chunker": {"algorithm": "fastcdc2020", "min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX},
        }
        master = keys.MasterKey.generate()
        key_id = keys.add_key(storage, master, passphrase, label="initial")
        storage.put(CONFIG_KEY, json.dumps(config, indent=1).encode())
        return cls(storage, config, master, key_id, cache_dir, **options)

    @classmethod
    def open(cls, storage: Storage, passphrase: str, cache_dir: Path, sync_index: bool = True,
             **options) -> "Repository":
        """Unlock the repository; `sync_index=False` for callers that only read and write sealed
        objects (wal-push, wal-fetch): they never list index/ nor open the index cache."""
        config = read_config(storage)
        master, key_id = keys.unlock(storage, passphrase)
        repo = cls(storage, config, master, key_id, cache_dir, **options)
        if sync_index:
            repo.sync_index()
        return repo

    def close(self) -> None:
        for pool in (self._workers, self._uploaders, self._readers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._workers = self._uploaders = self._readers = None
        if self._index is not None:
            self._index.close()

    @property
    def index(self) -> IndexCache:
        """The local cache of the index objects, opened on first use."""
        if self._index is None:
            with self._index_open_lock:
                if self._index is None:
                    self._index = IndexCache(self._index_path)
        return self._index

    @property
    def master(self) -> keys.MasterKey:
        return self._master

    # ----- index -----------------------------------------------------------------------

    def reload_index(self) -> None:
        """Rebuild the cache from every index object on storage (prune trusts nothing cached)."""
        self.index.clear()
        self.sync_index()

    def sync_index(self) -> int:
        """Load index objects written since the cache last looked (by any process or host).

        A damaged index object is skipped, not fatal: it is kept in `damaged_indexes` and
        logged, the packs it named are found again as unindexed packs by the next writer,
        and `repair index` replaces it.

        Without a lock (as on open) a prune elsewhere may replace the index between our listing
        and our reads: an index object listed but gone when read means just that, so the cache
        is rebuilt from a new listing (under a lock this cannot happen; see Concurrency)."""
        attempt = 0
        while True:
            try:
                return self._sync_index_once()
            except ObjectNotFound:
                attempt += 1
                if attempt == _SYNC_ATTEMPTS:
                    raise
                self.index.clear()
                time.sleep(0.05 * attempt)

    def _sync_index_once(self) -> int:
        loaded = self.index.loaded_index_ids()
        on_storage = {info.key[len(INDEX):] for info in self.storage.list(INDEX)}
        for index_id in set(self.damaged_indexes) - on_storage:
            del self.damaged_indexes[index_id]  # replaced (repair index, prune)
        gone = loaded - on_storage
        if gone:  # a prune rewrote the index elsewhere: start again from storage
            self.index.clear()
        todo = on_storage if gone else on_storage - loaded
        # An index object is trusted only for the packs that are on storage: one put back by
        # someone (replayed: authentic, correctly named, but older than a prune) would otherwise
        # make backups deduplicate against deleted data. Many objects: one listing; few: a stat each.
        present = None if len(todo) <= 8 else {pack_id_from_key(i.key) for i in self.storage.list("data/")}
        for index_id in sorted(todo):
            try:
                packs = self._read_index_object(index_id)
            except IntegrityError as exc:
                if index_id not in self.damaged_indexes:
                    log.warning("skipping %s (run `insite-console repair index %s`)", exc, self.storage.name)
                self.damaged_indexes[index_id] = str(exc)
                continue
            self.damaged_indexes.pop(index_id, None)
            missing = {p["id"] for p in packs
                       if (p["id"] not in present if present is not None else not self.storage.exists(pack_key(p["id"])))}
            if missing:
                log.warning("index object %s%s on storage %s names %d pack(s) that are not on storage (an index object "
                            "put back from before a prune?); they are not used", INDEX, index_id, self.storage.name,
                            len(missing))
                packs = [p for p in packs if p["id"] not in missing]
            self.index.add_index(index_id, packs)
        self.index_synced = True
        return len(on_storage - loaded)

    def _read_index_object(self, index_id: str) -> list[dict]:
        key = INDEX + index_id
        plain = self.get_sealed_object(key, aad=b"index")
        return objects.decode_index(index_id, plain, f"index object {key} on storage {self.storage.name}")

    def write_index(self, packs: list[dict]) -> str:
        index_id = self.write_index_object(packs)
        self.index.add_index(index_id, packs)
        return index_id

    def write_index_object(self, packs: list[dict]) -> str:
        """Put one index object on storage (the cache is the caller's business)."""
        data = json.dumps({"packs": packs}, separators=(",", ":")).encode()
        index_id = hashlib.sha256(data).hexdigest()
        self.put_sealed_object(INDEX + index_id, data, aad=b"index")
        self.damaged_indexes.pop(index_id, None)  # rewritten whole (e.g. by recover_unindexed_packs)
        return index_id

    def known(self, blob_id: bytes) -> bool:
        return blob_id in self._pending or self.index.has(blob_id)

    def locate_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """Where each blob lies, in a few index queries; one not found is left out (`locate`
        says why)."""
        ids = set(blob_ids)
        found = {blob_id: self._pending[blob_id] for blob_id in ids if blob_id in self._pending}
        found.update(self.index.lookup_many(ids - found.keys()))
        return found

    def locate(self, blob_id: bytes) -> BlobLocation:
        location = self._pending.get(blob_id) or self.index.lookup(blob_id)
        if location is None:
            why = "missing data"
            if self.damaged_indexes:  # most likely named by one of them
                why = (f"{len(self.damaged_indexes)} damaged index object(s) could not be read: "
                       f"{', '.join(INDEX + i for i in sorted(self.damaged_indexes)[:3])}; run `insite-console "
                       f"repair index {self.storage.name}`")
            raise IntegrityError(f"chunk {blob_id.hex()[:16]} is not in the repository index ({why})")
        return location

    def recover_unindexed_packs(self, delete_unreadable: bool = False) -> tuple[int, list[str]]:
        """Index packs that a killed run uploaded but never indexed, so their data is reused:
        (packs indexed, keys of packs that fail their check). Those are deleted only with
        `delete_unreadable`, which only a holder of the exclusive lock may ask: under a shared
        lock nothing is deleted (docs/FORMAT.md, "Concurrency")."""
        known = self.index.packs()
        with self._state_lock:
            pending = {p["id"] for p in self._pending_packs}
        orphans = [info for info in self.storage.list("data/")
                   if pack_id_from_key(info.key) not in known and pack_id_from_key(info.key) not in pending]
        packs, unreadable = [], []
        for info in orphans:
            pack_id = pack_id_from_key(info.key)
            # read whole and checked: a pack is trusted for deduplication only once every blob in
            # it authenticates (a flipped byte in a dead run's pack must not be reused)
            _read, problem = self.check_pack(pack_id, info.size)
            if problem is None:
                try:
                    packs.append(self._describe_pack(pack_id, info.size))
                    continue
                except IntegrityError:
                    pass
            unreadable.append(info.key)
        if unreadable and delete_unreadable:
            self.storage.delete(unreadable)  # torn or foreign: nothing references it
        if packs:
            self.write_index(packs)
        return len(packs), unreadable

    def _describe_pack(self, pack_id: str, size: int) -> dict:
        what = f"pack {pack_id[:16]}"
        tail = self.storage.get(pack_key(pack_id), max(0, size - 65536), min(size, 65536))
        try:
            entries = read_header(self._cipher, tail, size, what)
        except IntegrityError:
            entries = read_header(self._cipher, self.storage.get(pack_key(pack_id)), size, what)
        return {"id": pack_id, "size": size,
                "blobs": [[bid.hex(), t, off, length, plain] for t, bid, off, length, plain in entries]}

    def read_pack_header(self, pack_id: str, size: int) -> dict:
        return self._describe_pack(pack_id, size)

    def check_pack(self, pack_id: str, expected_size: int) -> tuple[int, str | None]:
        """Deep check of one pack: (bytes read, problem or None). Reads the whole pack, checks
        its SHA-256 name, then decrypts every blob and checks it against its keyed id."""
        key = pack_key(pack_id)
        what = f"pack {key}"
        try:
            data = self.storage.get(key)
        except ObjectNotFound:
            return 0, f"{what} is missing"
        if len(data) != expected_size:
            return len(data), f"{what} is {len(data)} bytes, the index says {expected_size} (truncated or replaced)"
        if hashlib.sha256(data).hexdigest() != pack_id:
            return len(data), f"{what} does not match its SHA-256 name (corrupted on storage)"
        try:
            for _type, blob_id, offset, length, _plain in read_header(self._cipher, data, len(data), what):
                self.open_blob(blob_id, data[offset:offset + length], f"{what} blob {blob_id.hex()[:16]}")
        except IntegrityError as exc:
            return len(data), str(exc)
        return len(data), None

    def open_blob(self, blob_id: bytes, sealed: bytes | memoryview, what: str) -> bytes:
        """A sealed blob's plain bytes, authenticated, decompressed and checked against its id."""
        plain = compression.decompress(self._cipher.open(sealed, blob_id, what=what), what)
        if not hmac.compare_digest(self.blob_id(plain), blob_id):
            raise IntegrityError(f"{what}: content does not match its id")
        return plain

    # ----- writing ---------------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self._mac_key, data, "sha256")

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._workers is None:
            self._workers = ThreadPoolExecutor(self._threads, thread_name_prefix="insite-chunk")
            self._uploaders = ThreadPoolExecutor(3, thread_name_prefix="insite-upload")
        return self._workers, self._uploaders

    def chunker(self) -> FastCDC:
        return FastCDC(**self._chunker_args)

    def _cut(self, fileobj: BinaryIO, block: int = READ_BLOCK) -> Iterator[memoryview]:
        """Content-defined chunks of a stream, read in large blocks.

        pyfastcdc's own cut_stream allocates a large buffer per call, which made small files
        ten times slower; cutting blocks with cut_buf and carrying the last (possibly
        truncated) chunk over to the next block gives the same boundaries.
        """
        cutter = self.chunker()
        carry = b""
        try:  # a regular file's size saves allocating a whole block for a small file
            size = os.fstat(fileobj.fileno()).st_size
            first = min(block, size + 1)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            first = block
        while True:
            data = fileobj.read(first)
            first = block
            eof = not data
            buffer = carry + data if carry else data
            if not buffer:
                return
            if not eof and len(buffer) < CHUNK_MAX:
                carry = buffer
                continue
            chunks = list(cutter.cut_buf(buffer))
            last = len(chunks) if eof else len(chunks) - 1
            view = memoryview(buffer)
            for chunk in chunks[:last]:  # views, not copies: the block lives until its chunks are stored
                yield view[chunk.offset:chunk.offset + chunk.length]
            carry = b"" if eof else bytes(view[chunks[-1].offset:])
            del chunks, view
            if eof:
                return

    def submit_stream(self, fileobj: BinaryIO, method: str = "zstd", blob_type: int = DATA,
                      on_bytes: Callable[[int], None] | None = None, cancel: CancelToken | None = None) -> PendingStream:
        """Chunk a stream in this thread; hash, compress, encrypt and pack in the workers."""
        workers, _ = self._pools()
        pending = PendingStream()
        for data in self._cut(fileobj):
            if cancel is not None:
                cancel.check()
            self._raise_upload_error()
            self._budget.acquire(len(data), cancel)
            pending.futures.append(workers.submit(self._store_chunk, data, method, blob_type))
            pending.size += len(data)
            if on_bytes is not None:
                on_bytes(len(data))
        return pending

    def save_stream(self, fileobj: BinaryIO, method: str = "zstd", blob_type: int = DATA,
                    on_bytes: Callable[[int], None] | None = None, cancel: CancelToken | None = None) -> list[tuple[str, int]]:
        return self.submit_stream(fileobj, method, blob_type, on_bytes, cancel).result()

    def save_bytes(self, data: bytes, method: str = "zstd", blob_type: int = DATA) -> list[tuple[str, int]]:
        return self.save_stream(io.BytesIO(data), method, blob_type)

    def _store_chunk(self, data: bytes, method: str, blob_type: int) -> tuple[str, int]:
        try:
            blob_id = self.blob_id(data)
            if self._claim(blob_id):
                self._add_to_pack(blob_type, blob_id, seal_blob(self._cipher, blob_id, data, method), len(data))
            return blob_id.hex(), len(data)
        finally:
            self._budget.release(len(data))

    def _claim(self, blob_id: bytes, indexed: bool | None = None) -> bool:
        """True if this run is the one to store `blob_id` (not indexed, not claimed already);
        `indexed`: what the index answered the caller, None to ask it here."""
        with self._state_lock:
            if blob_id in self._claimed or blob_id in self._pending:
                return False
            if self.index.has(blob_id) if indexed is None else indexed:
                return False
            self._claimed.add(blob_id)
            return True

    def sealing_keys(self) -> dict[str, bytes]:
        """What a worker process needs to cut, hash and seal chunks as this repository does."""
        return {"mac_key": self._mac_key, "encryption_key": self._master.encryption_key}

    def store_sealed(self, chunks: list[tuple[bytes, int, bytes]], blob_type: int = DATA) -> None:
        """Chunks workers hashed and sealed (`seal_blob`), as (id, plain length, sealed): each
        packed unless this run or the index has it already. The index is asked once for them
        all: a query per chunk was a sixth of a first backup's parent thread."""
        indexed = self.index.has_many(blob_id for blob_id, _, _ in chunks)
        for blob_id, plain_length, sealed in chunks:
            if self._claim(blob_id, indexed=blob_id in indexed):
                self._raise_upload_error()
                self._add_to_pack(blob_type, blob_id, sealed, plain_length)

    def copy_sealed_blob(self, blob_type: int, blob_id: bytes, sealed: bytes, plain_length: int) -> None:
        """Add a blob the caller has already authenticated, as sealed: `repair packs` moves
        the good blobs of a damaged pack into new packs without re-encrypting them."""
        self._add_to_pack(blob_type, blob_id, sealed, plain_length)

    def _add_to_pack(self, blob_type: int, blob_id: bytes, sealed: bytes, plain_length: int) -> None:
        with self._pack_lock:
            self._builder.add(blob_type, blob_id, sealed, plain_length)
            self.stats["blobs_new"] += 1
            self.stats["bytes_new"] += plain_length
            if self._builder.size < self._pack_size:
                return
            full, self._builder = self._builder, PackBuilder()
        self._upload(full)

    def _upload(self, builder: PackBuilder) -> None:
        pack_id, data = builder.finish(self._cipher)
        _, uploaders = self._pools()
        self._upload_slots.acquire()
        future = uploaders.submit(self._upload_pack, pack_id, data, builder.entries)
        with self._pack_lock:
            self._upload_futures.append(future)

    def _upload_pack(self, pack_id: str, data: bytes, entries) -> None:
        try:
            self.storage.put_batched(pack_key(pack_id), data)
            blobs = [[bid.hex(), t, off, length, plain] for t, bid, off, length, plain in entries]
            with self._state_lock:
                for t, bid, off, length, plain in entries:
                    self._pending[bid] = BlobLocation(pack_id, off, length, plain, t)
                    self._claimed.discard(bid)
                self._pending_packs.append({"id": pack_id, "size": len(data), "blobs": blobs})
                self.stats["bytes_stored"] += len(data)
                self.stats["packs_written"] += 1
                checkpoint = len(self._pending_packs) >= INDEX_CHECKPOINT_PACKS
            if checkpoint:
                self._write_pending_index()
        except BaseException as exc:  # surfaced to the writer on its next call
            self._upload_error = exc
            raise
        finally:
            self._upload_slots.release()

    def _raise_upload_error(self) -> None:
        if self._upload_error is not None:
            raise self._upload_error

    def _write_pending_index(self) -> None:
        with self._index_lock:
            with self._state_lock:
                packs, self._pending_packs = self._pending_packs, []
            if not packs:
                return
            try:
                self.storage.sync()  # packs durable before an index names them
                self.write_index(packs)
            except BaseException:
                with self._state_lock:
                    self._pending_packs = packs + self._pending_packs
                raise
            with self._state_lock:
                for pack in packs:
                    for blob in pack["blobs"]:
                        self._pending.pop(bytes.fromhex(blob[0]), None)

    def flush(self) -> None:
        """Upload the open pack, wait for every upload and write the index: after this, every
        chunk returned so far is durably on storage and findable."""
        with self._pack_lock:
            builder, self._builder = self._builder, PackBuilder()
        if builder.entries:
            self._upload(builder)
        with self._pack_lock:
            futures, self._upload_futures = self._upload_futures, []
        for future in futures:
            future.result()
        self._raise_upload_error()
        self._write_pending_index()

    def abandon(self) -> None:
        """After a failed or cancelled run: drop what was not uploaded, index what was."""
        with self._pack_lock:
            self._builder = PackBuilder()
            futures, self._upload_futures = self._upload_futures, []
        for future in futures:
            try:
                future.result()
            except BaseException:
                pass
        self._upload_error = None
        with self._state_lock:
            self._claimed.clear()
        try:
            self._write_pending_index()
        except BaseException:
            pass  # the next run's recover_unindexed_packs will index them

    # ----- sealed standalone objects ---------------------------------------------------

    def put_sealed_object(self, key: str, data: bytes, aad: bytes, method: str = "zstd") -> None:
        self.storage.put(key, self._cipher.seal(compression.compress(data, method), aad))

    def get_sealed_object(self, key: str, aad: bytes) -> bytes:
        what = f"object {key} on storage {self.storage.name}"
        return compression.decompress(self._cipher.open(self.storage.get(key), aad, what=what), what)

    def put_sealed(self, name: str, data: bytes, method: str = "zstd") -> None:
        self.put_sealed_object(SEALED + name, data, aad=b"sealed:" + name.encode(), method=method)

    def get_sealed(self, name: str) -> bytes:
        return self.get_sealed_object(SEALED + name, aad=b"sealed:" + name.encode())

    # ----- reading ---------------------------------------------------------------------

    def read_sealed_blob(self, blob_id: bytes, location: BlobLocation) -> bytes:
        """A blob as stored (sealed), after checking it authenticates: for repacking."""
        what = f"chunk {blob_id.hex()[:16]} in pack {location.pack[:16]}"
        sealed = self.storage.get(pack_key(location.pack), location.offset, location.length)
        if len(sealed) != location.length:
            raise IntegrityError(f"{what} is truncated ({len(sealed)} of {location.length} bytes)")
        self._cipher.open(sealed, blob_id, what=what)
        return sealed

    def write_pack(self, builder: PackBuilder) -> dict:
        """Close and upload a pack built outside the backup pipeline (prune's repack); returns
        its index entry. Not indexed here: the caller writes the index after all its packs."""
        pack_id, data = builder.finish(self._cipher)
        self.storage.put(pack_key(pack_id), data)
        return {"id": pack_id, "size": len(data),
                "blobs": [[bid.hex(), t, off, length, plain] for t, bid, off, length, plain in builder.entries]}

    @property
    def pack_size(self) -> int:
        return self._pack_size

    def read_blob(self, blob_id_hex: str, location: BlobLocation | None = None) -> bytes:
        blob_id = bytes.fromhex(blob_id_hex)
        location = location or self.locate(blob_id)
        return open_sealed_blob(self._cipher, blob_id, location, self.read_sealed(location))

    def read_sealed(self, location: BlobLocation) -> bytes:
        """A blob's bytes as stored in its pack (not yet checked)."""
        return self.storage.get(pack_key(location.pack), location.offset, location.length)

    def iter_chunks(self, chunks: Iterable[tuple[str, int]], prefetch: int = 4,
                    located: dict[bytes, BlobLocation] | None = None) -> Iterator[bytes]:
        """Each chunk's plain bytes in order, fetching a few ahead in parallel; `located`: where
        the caller has found them already (else each is looked up in the index)."""
        chunks = list(chunks)
        located = located or {}

        def read(chunk_id: str) -> bytes:
            return self.read_blob(chunk_id, located.get(bytes.fromhex(chunk_id)))

        if len(chunks) <= 1:  # small files: no thread hand-off
            for chunk_id, _length in chunks:
                yield read(chunk_id)
            return
        with self._pack_lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(4, thread_name_prefix="insite-read")
        workers = self._readers
        queue: list[Future] = []
        iterator = iter(chunks)
        for chunk_id, _length in iterator:
            queue.append(workers.submit(read, chunk_id))
            if len(queue) >= prefetch:
                break
        while queue:
            data = queue.pop(0).result()
            nxt = next(iterator, None)
            if nxt is not None:
                queue.append(workers.submit(read, nxt[0]))
            yield data

    def open_chunks(self, chunks: Iterable[tuple[str, int]]) -> BinaryIO:
        return io.BufferedReader(_ChunkStream(self.iter_chunks(chunks)), buffer_size=1 << 20)

    # ----- manifests ---------------------------------------------------------------------

    def save_manifest(self, manifest: dict) -> None:
        data = json.dumps(manifest, separators=(",", ":")).encode()
        self.put_sealed_object(SNAPSHOTS + manifest["id"], data, aad=b"manifest:" + manifest["id"].encode())

    def load_manifest(self, backup_id: str) -> dict:
        try:
            data = self.get_sealed_object(SNAPSHOTS + backup_id, aad=b"manifest:" + backup_id.encode())
        except ObjectNotFound:
            raise RepositoryError(
                f"backup {backup_id} has no manifest on storage {self.storage.name} ({self.storage.describe()})"
            ) from None
        manifest = objects.decode_manifest(backup_id, data, f"manifest {SNAPSHOTS}{backup_id} on storage {self.storage.name}")
        if manifest["version"] > MANIFEST_VERSION:
            raise RepositoryError(
                f"backup {backup_id} was written in manifest format version {manifest['version']}, newer than "
                f"this insite-console reads ({MANIFEST_VERSION}); upgrade insite-console to restore it"
            )
        return manifest

    def lock(self, purpose: str, exclusive: bool = False):
        """Shared for backups, restores and verifies; exclusive for prune (see locks.py). The
        index is re-synced once the lock is held, so what this process deduplicates against is
        never older than the lock (docs/FORMAT.md, "Concurrency")."""
        from insite_console.repo.locks import RepositoryLock

        return RepositoryLock(self.storage, purpose, exclusive, on_acquired=self.sync_index)

    def commit_manifest(self, manifest: dict, lock) -> None:
        """Write a backup's manifest only while it is certain to name data that is there: the
        lock is still ours and the index was not replaced (or, if it was, everything the
        manifest references survived). Checked again after the write, since a prune could only
        have slipped in beside us if our lock was lost: then the manifest is taken back."""
        lock.check()
        self._check_references(manifest)
        self.save_manifest(manifest)
        try:
            lock.check()
            self._check_references(manifest)
        except BaseException:
            self.delete_manifest(manifest["id"])
            raise

    def index_replaced(self) -> bool:
        """Whether an index object this cache loaded is gone from storage: only prune and
        repair delete index objects, so this is how a writer learns one ran since its sync."""
        listed = {info.key[len(INDEX):] for info in self.storage.list(INDEX)}
        return bool(self.index.loaded_index_ids() - listed)

    def _check_references(self, manifest: dict) -> None:
        if not self.index_replaced():
            return  # invariants 1 and 2 hold: every blob we used is in an index object still there
        from insite_console.repo.tree import TreeReader

        self.sync_index()
        packs: dict[str, str] = {}  # pack id -> what it holds data of (one per pack: bounded)
        for chunk_id, _ in manifest["tree"]:
            packs.setdefault(self._pack_of(chunk_id, "the backup's file list"), "the backup's file list")
        for entry in TreeReader(self, manifest["tree"]):
            for chunk_id, _ in entry.chunks or []:
                packs.setdefault(self._pack_of(chunk_id, "/" + entry.path), "/" + entry.path)
        present = {pack_id_from_key(info.key) for info in self.storage.list("data/")}
        for pack_id, what in packs.items():
            if pack_id not in present:
                raise RepositoryError(
                    f"backup {manifest['id']}: pack {pack_id[:16]} (holding data of {what}) was deleted by a prune "
                    "or repair that ran while this backup's lock was lost; the backup is not a restore point — run it "
                    "again")

    def _pack_of(self, chunk_id: str, what: str) -> str:
        location = self.index.lookup(bytes.fromhex(chunk_id))
        if location is None:
            raise RepositoryError(
                f"chunk {chunk_id[:16]} of {what} is no longer in the repository index: a prune or repair replaced "
                "the index while this backup's lock was lost; the backup is not a restore point — run it again")
        return location.pack

    def list_manifest_ids(self) -> list[str]:
        return [info.key[len(SNAPSHOTS):] for info in self.storage.list(SNAPSHOTS)]

    def delete_manifest(self, backup_id: str) -> None:
        self.storage.delete([SNAPSHOTS + backup_id])


def seal_blob(cipher: Cipher, blob_id: bytes, data: bytes | memoryview, method: str) -> bytes:
    """A chunk as stored in a pack: compressed, then encrypted with its id as associated data."""
    return cipher.seal(compression.compress(data, method), blob_id)


def open_sealed_blob(cipher: Cipher, blob_id: bytes, location: BlobLocation, sealed: bytes) -> bytes:
    """A blob's plain bytes from what its pack holds at `location`: checked for length,
    authenticated and decompressed. AES-GCM with the blob id as associated data authenticates
    the blob and binds it to its id, so a tampered, truncated or swapped blob fails here;
    re-hashing the plain bytes (what a deep verify does) would add nothing but CPU on the
    restore path."""
    what = f"chunk {blob_id.hex()[:16]} in pack {location.pack[:16]}"
    if len(sealed) != location.length:
        raise IntegrityError(f"{what} is truncated ({len(sealed)} of {location.length} bytes)")
    return compression.decompress(cipher.open(sealed, blob_id, what=what), what)


class _ChunkStream(io.RawIOBase):
    """A read-only raw stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._current:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._current = memoryview(nxt)
        count = min(len(buffer), len(self._current))
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def read_config(storage: Storage) -> dict:
    """The repository's plain config; checks the format version before any key is tried."""
    try:
        data = storage.get(CONFIG_KEY)
    except ObjectNotFound:
        raise RepositoryError(
            f"no repository on storage {storage.name} ({storage.describe()}): run `insite-console init {storage.name}`"
        ) from None
    config = objects.decode_config(data, f"storage {storage.name} ({storage.describe()})", FORMAT_NAME)
    if config["version"] > FORMAT_VERSION:
        raise RepositoryError(
            f"repository on storage {storage.name} is format version {config['version']}, newer than this "
            f"insite-console supports ({FORMAT_VERSION}); upgrade insite-console"
        )
    return config


