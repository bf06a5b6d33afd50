"""Repository locks: many backups, restores and verifies at once; prune alone.

Prune deletes packs that no manifest references. A backup running at the same time may just
have decided to reuse a blob in such a pack, so prune must not run beside it (restic has the
same rule). Locks are small objects `locks/<id>` with host, pid and a time refreshed every
minute; a lock whose process is gone (same host) or that was not refreshed for 30 minutes is
stale and ignored, so a killed process never blocks the repository for good.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from insite_console import clock
from insite_console.errors import ObjectNotFound, RepositoryError
from insite_console.storage.base import Storage

LOCKS = "locks/"
STALE_AFTER = 30 * 60
REFRESH_EVERY = 60


def _alive(lock: dict) -> bool:
    if time.time() - lock.get("time", 0) > STALE_AFTER:
        return False
    if lock.get("host") == socket.gethostname():
        try:
            os.kill(int(lock.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
    return True


class RepositoryLock:
    """A context manager holding a shared or exclusive lock on one repository."""

    def __init__(self, storage: Storage, purpose: str, exclusive: bool = False):
        self.storage = storage
        self.purpose = purpose
        self.exclusive = exclusive
        self.key = f"{LOCKS}{os.urandom(8).hex()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                           "exclusive": self.exclusive, "purpose": self.purpose,
                           "since": clock.iso(clock.now())}).encode()

    def _others(self) -> list[dict]:
        found = []
        for info in self.storage.list(LOCKS):
            if info.key == self.key:
                continue
            try:
                lock = json.loads(self.storage.get(info.key))
            except (ObjectNotFound, ValueError):
                continue
            if _alive(lock):
                found.append(lock)
            else:
                self.storage.delete([info.key])  # stale: its process is gone
        return found

    def _conflict(self) -> dict | None:
        for lock in self._others():
            if self.exclusive or lock.get("exclusive"):
                return lock
        return None

    def __enter__(self) -> "RepositoryLock":
        conflict = self._conflict()
        if conflict is None:
            self.storage.put(self.key, self._body())
            conflict = self._conflict()  # someone may have locked at the same moment
            if conflict is not None:
                self.storage.delete([self.key])
        if conflict is not None:
            raise RepositoryError(
                f"repository on storage {self.storage.name} is locked by {conflict.get('purpose')} "
                f"(host {conflict.get('host')}, pid {conflict.get('pid')}, since {conflict.get('since')}); "
                f"{self.purpose} needs it {'alone' if self.exclusive else 'without a prune running'} — try again "
                "when it has finished")
        self._thread = threading.Thread(target=self._refresh, name="insite-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self.storage.put(self.key, self._body())
            except Exception:
                pass  # the next refresh tries again; the lock only goes stale after 30 minutes

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        try:
            self.storage.delete([self.key])
        except Exception:
            pass
