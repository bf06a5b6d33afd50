"""Progress reporting and cancellation shared by every engine operation.

The engine reports through a `ProgressReporter`, which throttles to about ten updates a second
so neither the TUI's message queue nor the catalog is flooded (see STYLE.md: an unthrottled
stream of 200k events took Textual 99 s to absorb). Phase changes are always delivered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from insite_console.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """A snapshot of one operation's progress; immutable so it can cross threads safely."""

    operation: str  # backup | restore | verify | prune | copy | ...
    phase: str  # scanning | reading | uploading | finishing | done | ...
    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    run_id: str | None = None
    message: str = ""

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_done / self.elapsed

    @property
    def fraction(self) -> float | None:
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.files_total:
            return min(1.0, self.files_done / self.files_total)
        return None

    @property
    def eta_seconds(self) -> float | None:
        fraction = self.fraction
        if not fraction or fraction <= 0 or fraction >= 1:
            return None
        return self.elapsed * (1 - fraction) / fraction


ProgressCallback = Callable[[Progress], None]


class ProgressReporter:
    """Holds the current Progress and forwards it to callbacks at most `rate` times a second.

    Changes between two reports are kept in a dict and folded into a new Progress only when
    one is read or sent: a backup advances once per file, tens of thousands of times."""

    def __init__(self, operation: str, callbacks: list[ProgressCallback | None] | None = None, rate: float = 10.0):
        self._callbacks = [cb for cb in (callbacks or []) if cb is not None]
        self._interval = 1.0 / rate
        self._last_sent = 0.0
        self._lock = threading.Lock()
        self._snapshot = Progress(operation=operation, phase="starting")
        self._changes: dict = {}

    def add_callback(self, callback: ProgressCallback) -> None:
        self._callbacks.append(callback)

    @property
    def current(self) -> Progress:
        with self._lock:
            return self._fold()

    def _fold(self) -> Progress:
        if self._changes:
            self._snapshot = replace(self._snapshot, **self._changes)
            self._changes = {}
        return self._snapshot

    def _due(self, force: bool) -> Progress | None:
        """The snapshot to send now, or None (holding the lock)."""
        now = time.monotonic()
        if not force and now - self._last_sent < self._interval:
            return None
        self._last_sent = now
        return self._fold()

    def _send(self, snapshot: Progress | None) -> None:
        if snapshot is not None:
            for callback in self._callbacks:
                callback(snapshot)

    def update(self, force: bool = False, **changes) -> None:
        with self._lock:
            if "phase" in changes and changes["phase"] != self._changes.get("phase", self._snapshot.phase):
                force = True
            self._changes.update(changes)
            snapshot = self._due(force)
        self._send(snapshot)

    def advance(self, bytes_done: int = 0, files_done: int = 0, current: str | None = None) -> None:
        """Add to the counters (thread-safe) and maybe report."""
        with self._lock:
            changes = self._changes
            if bytes_done:
                done = changes["bytes_done"] = changes.get("bytes_done", self._snapshot.bytes_done) + bytes_done
                total = changes.get("bytes_total", self._snapshot.bytes_total)
                if total is not None and done > total:
                    changes["bytes_total"] = None  # an estimate passed (a tree grew): not "100 %, ETA 0s"
            if files_done:
                changes["files_done"] = changes.get("files_done", self._snapshot.files_done) + files_done
            if current is not None:
                changes["current"] = current
            snapshot = self._due(False)
        self._send(snapshot)


class CancelToken:
    """Set by the operator (TUI button, SIGINT); engine loops call `check()` between units of work."""

    def __init__(self, parent: "CancelToken | None" = None) -> None:
        self._event = threading.Event()
        self._parent = parent
        self.reason = "cancelled by the operator"

    def child(self) -> "CancelToken":
        """A token cancelled with this one, that can also be cancelled on its own (to stop
        helper threads when an operation fails without the operator cancelling it)."""
        return CancelToken(parent=self)

    def cancel(self, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.cancelled)

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)
        if self._parent is not None:
            self._parent.check()


class Budget:
    """Bounds an amount in flight between a producer and its workers (bytes of chunks being
    stored, chunks of files queued for restore threads), so memory is set here and not by the
    data. One request larger than the whole budget still goes through, alone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int, cancel: CancelToken | None = None) -> None:
        with self._cond:
            while self.used > 0 and self.used + amount > self.limit:
                self._cond.wait(0.2)
                if cancel is not None:
                    cancel.check()
            self.used += amount

    def release(self, amount: int) -> None:
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


def catalog_writer(catalog, run_id: str, interval: float = 1.0) -> ProgressCallback:
    """Mirror progress into the catalog about once a second, so other processes (the console,
    `status`) can watch a run they did not start."""
    last = [0.0, ""]

    def write(progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase == last[1] and now - last[0] < interval:
            return
        last[0], last[1] = now, progress.phase
        catalog.update_run(run_id, phase=progress.phase, bytes_done=progress.bytes_done,
                           bytes_total=progress.bytes_total, files_done=progress.files_done,
                           files_total=progress.files_total, current=progress.current[-500:])
    return write
