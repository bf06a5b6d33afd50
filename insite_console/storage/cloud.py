"""What the object-store backends (S3, GCS, Azure) share: keys under a prefix, paginated
listing, batched deletes, part uploads, checksums and the bandwidth limit.

Each backend supplies the SDK calls (`_list_page`, `_delete_batch`, ...); the loops and the
bookkeeping live here once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

from insite_console.errors import StorageError
from insite_console.storage import ratelimit
from insite_console.storage.base import ObjectInfo, Storage
from insite_console.storage.retry import Retrier

MIB = 1024 * 1024


def crc32c_hex(data) -> str | None:
    """CRC32C of `data` (hardware-accelerated, several GB/s), or None without google-crc32c."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.Checksum(bytes(data) if isinstance(data, memoryview) else data).digest().hex()


def upload_body(data):
    """What to hand an SDK as a request body: the bytes themselves when no upload limit is in
    force (no per-read overhead), else a reader that charges the upload bucket."""
    if ratelimit.is_limited(ratelimit.UPLOAD) or not isinstance(data, (bytes, bytearray)):
        return ratelimit.ThrottledReader(data)
    return data


def check_key(storage: Storage, key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise StorageError(f"storage {storage.name}: invalid object key {key!r}")


def read_exact(fileobj: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        block = fileobj.read(min(left, 8 * MIB))
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def part_plan(size: int, part_size: int, max_parts: int) -> int:
    """The part size to use: the configured one, grown (to whole MiB) if the object would
    need more than `max_parts` parts."""
    if -(-size // part_size) <= max_parts:
        return part_size
    needed = -(-size // max_parts)
    return -(-needed // MIB) * MIB


def upload_parts(fileobj: BinaryIO, size: int, part_size: int, concurrency: int, upload_one, describe_key) -> list:
    """Read `fileobj` part by part on this thread and upload up to `concurrency` parts at once
    with `upload_one(number, data) -> result`; returns the results in part order.

    At most `concurrency + 1` parts are held in memory. The first failure cancels the rest."""
    count = max(1, -(-size // part_size))
    results: list = [None] * count
    slots = threading.BoundedSemaphore(concurrency + 1)
    failed = threading.Event()

    def run(number: int, data: bytes):
        try:
            if failed.is_set():
                return
            results[number - 1] = upload_one(number, data)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()

    futures = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="insite-part") as pool:
        try:
            for number in range(1, count + 1):
                slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                want = min(part_size, size - (number - 1) * part_size)
                data = read_exact(fileobj, want)
                if len(data) != want:
                    slots.release()
                    raise StorageError(
                        f"{describe_key}: the source ended after {(number - 1) * part_size + len(data)} "
                        f"of {size} bytes (was it changed while being uploaded?)"
                    )
                futures.append(pool.submit(run, number, data))
        except BaseException:
            failed.set()
            for future in futures:
                future.cancel()
            raise
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()
    return results


class CloudStorage(Storage):
    """Base of the object-store backends."""

    #: URL scheme for messages: s3, gs, azure
    scheme = ""
    #: keys per list request; tests may lower it
    list_page_size = 1000
    #: keys per batch delete request (the API's limit)
    delete_batch = 1000

    def _setup(self, name: str, settings: dict, container: str, part_size: int) -> None:
        """The settings every backend reads the same way; call first in __init__."""
        self.name = name
        self.settings = dict(settings)
        self.container_name = container
        self.prefix = (settings.get("prefix") or "").strip("/")
        self.part_size = part_size
        self.concurrency = max(1, int(settings.get("concurrency") or 4))
        self._retry = Retrier.from_settings(name, self.describe(), self._classify, self.settings)
        ratelimit.register(self, settings.get("limit_upload"), settings.get("limit_download"))

    def describe(self) -> str:
        where = f"{self.scheme}://{self.container_name}"
        return f"{where}/{self.prefix}" if self.prefix else where

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _classify(self, exc: BaseException):
        raise NotImplementedError

    def _list_page(self, full_prefix: str, token: str | None) -> tuple[list[tuple[str, int]], str | None]:
        """One page of (full key, size) and the token of the next page (None: the last)."""
        raise NotImplementedError

    def _delete_batch(self, batch: list[str]) -> None:
        raise NotImplementedError

    def put_file(self, key: str, fileobj: BinaryIO, size: int) -> None:
        """Small objects in one request; larger ones through the backend's parts/blocks/chunks."""
        check_key(self, key)
        if size > self.part_size:
            self._put_large(key, fileobj, size)
            return
        data = read_exact(fileobj, size)
        if len(data) != size:
            raise StorageError(
                f"storage {self.name} ({self.describe()}): cannot upload {key}: the source ended "
                f"after {len(data)} of {size} bytes"
            )
        self.put(key, data)

    def _put_large(self, key: str, fileobj: BinaryIO, size: int) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._full(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        token = None
        while True:
            items, token = self._retry.call("list", prefix or "(all)",
                                            lambda token=token: self._list_page(full, token))
            for name, size, modified in items:
                yield ObjectInfo(self._strip(name), int(size or 0), epoch(modified))
            if not token:
                return

    def delete(self, keys: list[str]) -> None:
        keys = list(keys)
        for key in keys:
            check_key(self, key)
        for start in range(0, len(keys), self.delete_batch):
            self._delete_batch(keys[start : start + self.delete_batch])

    def close(self) -> None:
        ratelimit.unregister(self)


def epoch(modified) -> float | None:
    """A backend's last-modified datetime as epoch seconds (the storage's clock)."""
    return modified.timestamp() if modified is not None else None
