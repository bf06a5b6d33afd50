"""Worker processes for the per-file work of file-tree backups and restores (docs/PARALLEL.md).

Why processes: a tree of 24,000 small files costs more in Python per file (and in handing the
GIL between threads: a third of the CPU time was futex wake-ups) than in hashing, compressing
and encrypting, and a restore's file creation is kernel work that threads serialize behind the
GIL. Small files are therefore sent in batches to processes with their own interpreters; large
files stay in the threads, where the work per byte runs in C without the GIL.

Workers are started by `forkserver`, not `fork`: the parent has threads (the lock refresher,
uploaders) whose locks a fork would copy in whatever state they are in. Keys reach a worker as
initializer arguments, through the forkserver's pipe: never in argv, the environment or a file.
The pool starts only once a run has seen `START_AFTER` small files, so small trees (and most
tests) never pay its start-up. A worker that dies breaks the pool: every result still pending
raises `WorkerDied`, and the run fails; nothing a dead worker did is counted.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import fcntl
import os
import select
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from insite_console.errors import InsiteError

#: files up to this size are one chunk (the chunker's minimum), so a worker handles each whole
SMALL_FILE = 256 * 1024
BATCH_FILES = 32
BATCH_BYTES = 256 * 1024
#: batches sent and not yet answered, per worker
IN_FLIGHT_PER_PROCESS = 2
#: the pipe that carries batches to the workers holds every batch the pool queues (one per
#: worker, one more) whole: a worker that dies mid-read must not leave the pool's feeder thread
#: blocked on a full pipe nobody reads, which made the pool's own threads wait forever (3.11)
PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.h (Linux)
#: small files a run sees before it starts workers; below this, start-up would cost more
START_AFTER = 256
#: what a worker was started with (keys, settings); set by `_init` in the worker
state: dict[str, Any] = {}


class WorkerDied(InsiteError):
    """A worker process ended without answering (killed, out of memory, crashed)."""


def process_count(engine: dict) -> int:
    """`[engine] processes`: worker processes for small files; default one per core, none on
    a single core (0 turns them off)."""
    configured = engine.get("processes")
    if configured is not None:
        return int(configured)
    cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


def _init(run: int, initial: dict[str, Any]) -> None:
    state.clear()
    state.update(initial)
    threading.Thread(target=_exit_when_gone, args=(run,), name="insite-watch-run", daemon=True).start()


def _exit_when_gone(run: int) -> None:
    """End this worker once the run that started it has ended. Its parent is the forkserver,
    so nothing else would: a killed run's workers waited forever on their call queue, holding
    its keys and its stdout (a pipeline from `backup --json` never ended)."""
    try:
        handle = os.pidfd_open(run)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3), or the run has ended already
        while _alive(run):
            time.sleep(1)
    else:
        select.select([handle], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Batches:
    """Small jobs grouped into batches for a worker pool, results taken in submission order.

    `add` returns a handle whose `result()` is the worker's answer for that one job. At most
    `IN_FLIGHT_PER_PROCESS × processes` batches are in flight, so memory holds a few MiB of jobs
    whatever the tree. `what` names the run in the error when a worker dies ("backup",
    "restore"). `bulky`: jobs carry content (a restore's from an object store), so the call
    pipe must be widened (PIPE_BYTES); where it cannot be, the jobs stay in the threads."""

    def __init__(self, processes: int, function: Callable, what: str, initial: dict[str, Any] | None = None,
                 bulky: bool = False):
        if processes > 0 and (not _stderr_has_descriptor() or bulky and not _pipes_widen()):
            processes = 0
        self._function = function
        self._what = what
        self._processes = processes
        self._initial = initial or {}
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: list = []
        self._handles: list[_Handle] = []
        self._bytes = 0
        self._in_flight: collections.deque[Future] = collections.deque()
        self.seen = 0

    def wanted(self, size: int) -> bool:
        """Whether a job of `size` bytes should go to the workers: counts small jobs until
        there are enough to pay for starting them."""
        if self._processes <= 0 or size > SMALL_FILE:
            return False
        self.seen += 1
        return self.seen > START_AFTER or self._pool is not None

    def add(self, job, size: int) -> "_Handle":
        if self._jobs and self._bytes + size > BATCH_BYTES:
            self.flush()  # a batch stays within BATCH_BYTES (or one file): see PIPE_BYTES
        handle = _Handle(self, len(self._jobs))
        self._jobs.append(job)
        self._handles.append(handle)
        self._bytes += size
        if len(self._jobs) >= BATCH_FILES:
            self.flush()
        return handle

    def flush(self) -> None:
        """Send the open batch (a handle waited on calls this itself)."""
        if not self._jobs:
            return
        if self._pool is None:
            _give_back_free_memory()
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([self._function.__module__])
            self._pool = ProcessPoolExecutor(self._processes, mp_context=context, initializer=_init,
                                             initargs=(os.getpid(), self._initial))
            _widen_pipe(self._pool)
        while len(self._in_flight) >= IN_FLIGHT_PER_PROCESS * self._processes:
            oldest = self._in_flight.popleft()
            self._wait(oldest)
        jobs, handles = self._jobs, self._handles
        self._jobs, self._handles, self._bytes = [], [], 0
        try:
            future = self._pool.submit(self._function, jobs)
        except BrokenProcessPool:
            self.close(cancel=True)
            raise self._died() from None
        self._in_flight.append(future)
        for handle in handles:
            handle.future = future

    def _wait(self, future: Future) -> list:
        try:
            return future.result()
        except BrokenProcessPool:
            self.close(cancel=True)
            raise self._died() from None

    def _died(self) -> WorkerDied:
        return WorkerDied(f"a {self._what} worker process died before it finished (killed, or out of memory); "
                          f"the {self._what} is not complete")

    def close(self, cancel: bool = False) -> None:
        """Stop the workers: after the batches sent, or with cancel (a cancelled or failed run)
        after the batches they are at, the others dropped. Never mid-batch: a worker stopped
        while writing a restored file would leave its temporary file in the target."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=cancel)


def _give_back_free_memory() -> None:
    """Return the heap the parent freed (read blocks of large files) to the system before the
    workers add theirs: glibc keeps it otherwise (peak memory of a backup's process tree)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _stderr_has_descriptor() -> bool:
    """Whether sys.stderr is a real descriptor, which multiprocessing hands to the processes it
    starts: inside the console, Textual's capture has none (`fileno()` is -1) and starting a
    pool fails ("bad value(s) in fds_to_keep"), so work run in the console's process (a
    drill's restore) stays in the threads."""
    try:
        return sys.stderr is not None and sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _pipes_widen() -> bool:
    """Whether this process may make a pipe hold PIPE_BYTES (`/proc/sys/fs/pipe-max-size`)."""
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, _F_SETPIPE_SZ, PIPE_BYTES)
        return True
    except OSError:
        return False
    finally:
        os.close(read)
        os.close(write)


def _widen_pipe(pool: ProcessPoolExecutor) -> None:
    """Make the pool's call and result pipes hold PIPE_BYTES; a no-op where that cannot be set."""
    for end in (lambda: pool._call_queue._writer, lambda: pool._result_queue._reader):
        try:
            fcntl.fcntl(end().fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
        except (AttributeError, OSError):
            pass


class _Handle:
    """One job's place in a batch."""

    def __init__(self, batches: Batches, position: int):
        self._batches = batches
        self._position = position
        self.future: Future | None = None

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def send(self) -> None:
        """Send this job's batch now if it is still open."""
        if self.future is None:
            self._batches.flush()

    def wait(self) -> None:
        """Until the worker has answered this job's batch (sending it if still open)."""
        self.send()
        self._batches._wait(self.future)

    def result(self):
        """The worker's answer, taken once: its slot in the batch is cleared, so a batch's
        content is freed file by file as the answers are taken."""
        self.send()
        answers = self._batches._wait(self.future)
        answer, answers[self._position] = answers[self._position], None
        return answer
