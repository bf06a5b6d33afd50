"""Durability of restored data: a restore is over when what it wrote is on disk, not when the
last write() returned (a crash after `succeeded` must not leave zeroed or missing files)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Iterator

from insite_console.errors import InsiteError


def flush_to_disk(fd: int) -> None:
    """Make restored files and folders durable: one syncfs of the filesystem `fd` is on
    (an fsync per file costs ~3 ms each here, a minute for 20,000 files); os.sync elsewhere."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise InsiteError(f"restored files could not be flushed to disk: {os.strerror(code)}")


@contextlib.contextmanager
def flushing_along(path: str, every: float = 1.0) -> Iterator[None]:
    """Flush the filesystem of `path` every `every` seconds while the block writes to it. The
    kernel starts writing dirty pages back on its own only past a share of memory (gigabytes
    on a large machine), so a restore's final flush had everything left to write (~0.7 s of a
    4.7 s cold restore of the bench's tree); flushing along overlaps that with the work (4.7
    -> 4.3 s). On a descriptor of its own: a write error it meets is still reported to the
    final flush (syncfs reports an error once per open file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield  # the final flush names the problem
        return
    stop = threading.Event()

    def flush() -> None:
        while not stop.wait(every):
            try:
                flush_to_disk(fd)
            except InsiteError:
                return

    thread = threading.Thread(target=flush, name="insite-flush-along", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        os.close(fd)
