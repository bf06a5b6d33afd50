"""Local directory storage: atomic writes by temp file + fsync + rename."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

from insite_console.errors import ObjectNotFound, StorageError
from insite_console.storage.base import ObjectInfo, Storage

_TEMP_MARK = ".insite-tmp-"
_KILL_AFTER_ENV = "INSITE_TEST_KILL_AFTER_WRITES"
_mutations = [0]
_mutations_lock = threading.Lock()


def _crash_point() -> None:
    """Test-only crash injection, inert unless INSITE_TEST_KILL_AFTER_WRITES=N is set: the
    process SIGKILLs itself right after its Nth completed put or deleted key, so the
    reliability suite (tests/reliability) can kill real runs between any two storage writes."""
    limit = os.environ.get(_KILL_AFTER_ENV)
    if not limit:
        return
    with _mutations_lock:
        _mutations[0] += 1
        if _mutations[0] >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)


class OpenObjects:
    """Reads ranges of objects, keeping the last few opened: a restore worker reading one
    small file's chunk at a time from its pack pays one pread, not open, pread and close."""

    def __init__(self, storage: "LocalStorage", keep: int = 8):
        self.storage = storage
        self._keep = keep
        self._fds: dict[str, int] = {}  # oldest first

    def get(self, key: str, offset: int, length: int) -> bytes:
        fd = self._fds.pop(key, None)
        try:
            if fd is None:
                fd = os.open(self.storage._path(key), os.O_RDONLY | os.O_CLOEXEC)
                if len(self._fds) >= self._keep:
                    os.close(self._fds.pop(next(iter(self._fds))))
            data = os.pread(fd, length, offset)
        except OSError:
            if fd is not None:
                os.close(fd)
            return self.storage.get(key, offset, length)  # which names what failed
        self._fds[key] = fd
        return data if len(data) == length else self.storage.get(key, offset, length)


class LocalStorage(Storage):
    restore_threads = 2  # large files written at once, beside the small files' worker processes
    upload_slots = 1  # a local write takes milliseconds: more would only hold packs in memory

    def __init__(self, name: str, path: str | os.PathLike):
        self.name = name
        self.root = Path(path)
        self._unsynced: set[str] = set()
        self._unsynced_lock = threading.Lock()

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"storage {self.name}: invalid object key {key!r}")
        return self.root / key

    def _fail(self, action: str, key: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on device"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = f"not writable ({exc.strerror})"
        return StorageError(f"storage {self.name} ({self.root}): cannot {action} {key}: {reason}")

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._write(key, lambda handle: handle.write(data))

    def put_batched(self, key: str, data: bytes | memoryview) -> None:
        self._write(key, lambda handle: handle.write(data), durable=False)
        with self._unsynced_lock:
            self._unsynced.add(key)

    def sync(self) -> None:
        """fsync what put_batched wrote, several files at once, then their folders."""
        with self._unsynced_lock:
            keys, self._unsynced = self._unsynced, set()
        if not keys:
            return
        from concurrent.futures import ThreadPoolExecutor

        def fsync_file(key: str) -> None:
            path = self._path(key)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(fsync_file, sorted(keys)))
            for folder in sorted({self._path(key).parent for key in keys}):
                _fsync_dir(folder)
        except OSError as exc:
            raise self._fail("sync", "data", exc) from exc

    def put_file(self, key: str, fileobj: BinaryIO, size: int) -> None:
        def copy(handle):
            while block := fileobj.read(4 << 20):
                handle.write(block)

        self._write(key, copy)

    def _write(self, key: str, writer, durable: bool = True) -> None:
        path = self._path(key)
        temp = path.with_name(path.name + _TEMP_MARK + secrets.token_hex(4))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                writer(handle)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(temp, path)
            if durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            try:
                temp.unlink()
            except OSError:
                pass
            raise self._fail("write", key, exc) from exc
        _crash_point()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if length is None:
                    length = max(0, os.fstat(fd).st_size - offset)
                parts, done = [], 0
                while done < length:  # pread may return less than asked; stop at end of file
                    part = os.pread(fd, length - done, offset + done)
                    if not part:
                        break
                    parts.append(part)
                    done += len(part)
                return parts[0] if len(parts) == 1 else b"".join(parts)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ObjectNotFound(f"storage {self.name} ({self.root}): object {key} does not exist") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix points into, then filter on the full key.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / directory if directory else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for filename in sorted(filenames):
                if _TEMP_MARK in filename:
                    continue
                key = filename if rel_dir == "." else f"{rel_dir}/{filename}".replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._fail("delete", key, exc) from exc
            _crash_point()

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
            return ObjectInfo(key, st.st_size, st.st_mtime)
        except FileNotFoundError:
            raise ObjectNotFound(f"storage {self.name} ({self.root}): object {key} does not exist") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from exc

    def remove_stale_temp_files(self) -> int:
        """Delete temp files a killed writer left behind; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for dirpath, _dirs, filenames in os.walk(self.root):
            for filename in filenames:
                if _TEMP_MARK in filename:
                    try:
                        os.unlink(os.path.join(dirpath, filename))
                        removed += 1
                    except OSError:
                        pass
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
