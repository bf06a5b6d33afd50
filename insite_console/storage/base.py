"""The storage interface: the few operations a repository needs from any backend.

Keys are '/'-separated relative names ("data/ab/abcdef…", "snapshots/…"). Every backend
applies its own prefix. `put` is atomic: a reader sees the whole object or nothing, never a
partial one, which is what makes a backup crash-safe (see docs/FORMAT.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    #: when the storage last wrote the object, in seconds since the epoch by the storage's own
    #: clock (None where a backend cannot tell): lock ages are judged by it, never by host clocks
    mtime: float | None = field(default=None, compare=False)


class Storage(ABC):
    """One place where a repository lives. Implementations must be safe to call from threads."""

    #: the name of the storage in config.toml, used in every error message
    name: str = "storage"
    #: files a restore writes at once by default: object stores need many requests in flight
    #: to hide their latency; a local disk is fastest with one writer (Python threads only add
    #: lock contention there, measured in bench/bench_files.py)
    restore_threads: int = 8
    #: packs uploaded at once (each holds a whole pack in memory while it uploads)
    upload_slots: int = 3

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store `data` under `key` atomically, replacing any object there."""

    def put_batched(self, key: str, data: bytes | memoryview) -> None:
        """Like put (atomic), but durability may wait until the next `sync()`: a backend that
        pays per flush (a local disk's fsync) can then flush many objects at once."""
        self.put(key, data)

    def sync(self) -> None:
        """Make every object written with put_batched durable."""

    def put_file(self, key: str, fileobj: BinaryIO, size: int) -> None:
        """Store a large object from a file; backends override this to stream or go multipart."""
        self.put(key, fileobj.read())

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes, or `length` bytes from `offset`. Raises ObjectNotFound."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, following pagination to the end."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete the objects; a key that is already gone is not an error."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of one object. Raises ObjectNotFound."""

    def exists(self, key: str) -> bool:
        from insite_console.errors import ObjectNotFound

        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def describe(self) -> str:
        """Where this storage points, for messages: 'local:/srv/backups', 's3://bucket/prefix'."""
        return self.name

    def close(self) -> None:
        """Release connections and thread pools."""
