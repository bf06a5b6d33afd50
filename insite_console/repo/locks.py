"""Repository locks: many backups, restores and verifies at once; prune and repair alone.

Prune deletes packs that no manifest references. A backup running at the same time may just
have decided to reuse a blob in such a pack, so prune must not run beside it (restic has the
same rule). The whole model is in docs/FORMAT.md ("Concurrency"); in short:

- a lock is an object `locks/<id>`, re-put every minute so that its storage modification time
  advances; its age is judged by the storage's clock (our own fresh lock's mtime minus its
  mtime), never by comparing another host's clock with ours;
- a lock written on this machine (its machine id, not its host name) whose process is gone
  (or written before this boot) is stale at once, so a killed process never blocks the
  repository for long; one from another machine only by the storage's clock;
- the holder tracks its last successful refresh and `check()`s before committing anything: a
  process that was suspended, or could not refresh, past the safe limit has lost its lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

from insite_console import clock, process, who
from insite_console.errors import InsiteError, ObjectNotFound, PolicyBusy, RepositoryError
from insite_console.storage.base import ObjectInfo, Storage

LOCKS = "locks/"
STALE_AFTER = 30 * 60
REFRESH_EVERY = 60
#: a holder stops trusting its lock this long before others may call it stale
SAFETY_MARGIN = 5 * 60


class LockLost(RepositoryError):
    """The lock this process held may have been taken over: nothing may be committed."""


def _same_machine(lock: dict) -> bool:
    """Whether a lock was written on this machine. A host name is not a machine (cloned VMs,
    containers with a fixed host name on several nodes): locks record the machine id; a lock
    from before that (no `machine_id`) goes by its host name, as then."""
    if "machine_id" in lock:
        mine = process.machine_id()
        return bool(mine) and lock["machine_id"] == mine
    return lock.get("host") == socket.gethostname()


def _process_gone(lock: dict) -> bool:
    """Whether the process of a lock from this machine, this boot and this pid namespace has
    ended: its pid is not running, or now belongs to a process started at another time."""
    try:
        pid = int(lock.get("pid", 0))
    except (TypeError, ValueError):
        return True
    if pid <= 0 or not process.pid_alive(pid):
        return True
    ticks = lock.get("process_start")
    now = process.start_ticks(pid) if ticks else None
    return now is not None and now != str(ticks)


def is_stale(lock: dict, info: ObjectInfo, storage_now: float | None, stale_after: float = STALE_AFTER) -> bool:
    """Whether a lock may be removed: its process is gone (this machine: another boot, or the
    pid no longer runs that process), or it was not refreshed for `stale_after` by the storage's
    clock (`storage_now` is our own fresh lock's mtime)."""
    if _same_machine(lock):
        if lock.get("boot_id") and lock.get("boot_id") != (process.boot_id() or ""):
            return True
        # a pid means something only in its own boot and pid namespace (containers share a boot)
        comparable = "machine_id" not in lock or (lock.get("boot_id") == (process.boot_id() or "")
                                                  and lock.get("pid_ns") == (process.pid_namespace() or ""))
        if comparable and _process_gone(lock):
            return True
    if storage_now is not None and info.mtime is not None:
        return storage_now - info.mtime > stale_after
    return False  # no storage time to judge by: only its own machine can declare it dead


class RepositoryLock:
    """A context manager holding a shared or exclusive lock on one repository.

    `on_acquired` runs once the lock is held (the repository re-syncs its index there)."""

    prefix = LOCKS

    def __init__(self, storage: Storage, purpose: str, exclusive: bool = False, on_acquired=None):
        self.storage = storage
        self.purpose = purpose
        self.exclusive = exclusive
        self.key = f"{self.prefix}{os.urandom(8).hex()}"
        self._on_acquired = on_acquired
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0  # time.monotonic() of the last successful put
        self._refresh_error: str | None = None
        self.stale_after = STALE_AFTER
        self.safety_margin = SAFETY_MARGIN
        self._since = clock.iso(clock.now())  # when it was taken: refreshes keep it

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "machine_id": process.machine_id() or "",
                           "boot_id": process.boot_id() or "", "pid_ns": process.pid_namespace() or "",
                           "pid": os.getpid(), "process_start": process.start_ticks(os.getpid()) or "",
                           "user": who.user(), "time": time.time(), "exclusive": self.exclusive,
                           "purpose": self.purpose, "since": self._since}).encode()

    def _put(self) -> None:
        started = time.monotonic()
        self.storage.put(self.key, self._body())
        self._last_refresh = started

    def _others(self) -> list[dict]:
        """Live locks other than ours; stale ones are deleted on the way."""
        infos = list(self.storage.list(self.prefix))
        mine = next((info for info in infos if info.key == self.key), None)
        storage_now = mine.mtime if mine is not None else None
        found = []
        for info in infos:
            if info.key == self.key:
                continue
            try:
                lock = json.loads(self.storage.get(info.key))
                if not isinstance(lock, dict):
                    raise ValueError("not an object")
            except ObjectNotFound:
                continue
            except ValueError:
                lock = {"purpose": f"unreadable lock {info.key}"}
            if is_stale(lock, info, storage_now, self.stale_after):
                self.storage.delete([info.key])
            else:
                found.append(lock)
        return found

    def _conflict(self) -> dict | None:
        for lock in self._others():
            if self.exclusive or lock.get("exclusive"):
                return lock
        return None

    def __enter__(self) -> "RepositoryLock":
        self._put()
        conflict = self._conflict()  # ours is on storage first: a simultaneous locker sees it too
        if conflict is not None:
            self.storage.delete([self.key])
            raise self._refusal(conflict)
        self._thread = threading.Thread(target=self._refresh, name="insite-lock", daemon=True)
        self._thread.start()
        try:
            if self._on_acquired is not None:
                self._on_acquired()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _refusal(self, conflict: dict) -> InsiteError:
        return RepositoryError(
            f"repository on storage {self.storage.name} is locked by {conflict.get('purpose')} "
            f"(host {conflict.get('host')}, pid {conflict.get('pid')}, since {conflict.get('since')}); "
            f"{self.purpose} needs it {'alone' if self.exclusive else 'without a prune running'} — try again "
            "when it has finished")

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self._put()
                self._refresh_error = None
            except Exception as exc:  # kept for check(): the holder decides, before it commits
                self._refresh_error = str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}"

    def check(self) -> None:
        """Raise LockLost unless this lock is certainly still ours: refreshed recently enough by
        our own monotonic clock that nobody may yet call it stale, and still on storage."""
        age = time.monotonic() - self._last_refresh
        limit = self.stale_after - self.safety_margin
        where = f"repository on storage {self.storage.name}"
        if age > limit:
            why = f"; the last refresh failed: {self._refresh_error}" if self._refresh_error else \
                " (the process was suspended or stalled)"
            raise LockLost(f"{self.purpose} lost its lock on the {where}: not refreshed for {int(age)}s, more than "
                           f"the {int(limit)}s after which another host may take it over{why}; nothing was committed")
        try:
            self.storage.stat(self.key)
        except ObjectNotFound:
            raise LockLost(f"{self.purpose} lost its lock on the {where}: another process removed it as stale; "
                           "nothing was committed") from None

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        try:
            self.storage.delete([self.key])
        except Exception:
            pass


POLICY_LOCKS = "policy-locks/"


class PolicyLock(RepositoryLock):
    """One run of a job (a policy's backup, its scheduled verify) at a time across every host
    using the repository, whatever their catalogs say: an exclusive lock of its own under
    `policy-locks/<job hash>/`, apart from `locks/`, so it never holds up a prune, a restore or
    another policy. Liveness and takeover are those of the repository lock (above)."""

    def __init__(self, storage: Storage, job: str, purpose: str):
        self.prefix = f"{POLICY_LOCKS}{hashlib.sha256(job.encode()).hexdigest()[:16]}/"
        super().__init__(storage, purpose, exclusive=True)

    def _refusal(self, conflict: dict) -> InsiteError:
        try:
            age = clock.human_duration(max(0.0, (clock.now() - clock.parse_iso(conflict["since"])).total_seconds()))
        except (KeyError, TypeError, ValueError):
            age = "an unknown time"
        return PolicyBusy(f"{conflict.get('purpose') or self.purpose} is already running: pid {conflict.get('pid')} on "
                          f"host {conflict.get('host')}, user {conflict.get('user')}, for {age} (lock on storage "
                          f"{self.storage.name}); not starting another")
