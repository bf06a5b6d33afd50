"""Worker processes for the per-file work of file-tree backups and restores (docs/PARALLEL.md).

Why processes: a tree of 24,000 small files costs more in Python per file (and in handing the
GIL between threads: a third of the CPU time was futex wake-ups) than in hashing, compressing
and encrypting, and a restore's file creation is kernel work that threads serialize behind the
GIL. Small files are therefore sent in batches to processes with their own interpreters; large
files stay in the threads, where the work per byte runs in C without the GIL.

Workers are started by `forkserver`, not `fork`: the parent has threads (the lock refresher,
uploaders) whose locks a fork would copy in whatever state they are in. Keys reach a worker as
arguments of its process, through the forkserver's socket: never in argv, the environment or a
file. Each worker has a pipe of jobs and a pipe of answers, both used by the run's own thread:
no helper thread stands between them (a process pool's feeder and manager threads had to take
the parent's interpreter lock at each hand-off, four thread switches a batch).
Workers start only once a run has seen `START_AFTER` small files, so small trees (and most
tests) never pay their start-up. A worker that dies ends its pipe: every batch it had not
answered raises `WorkerDied`, and the run fails; nothing a dead worker did is counted. Workers
are born ignoring Ctrl-C and SIGTERM (`worker_signals`): the run cancels on them and stops its
workers between batches.
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
from typing import Any, Callable

from insite_console.errors import InsiteError

#: files up to this size are one chunk (the chunker's minimum), so a worker handles each whole
SMALL_FILE = 256 * 1024
BATCH_FILES = 32
BATCH_BYTES = 256 * 1024
#: batches sent and not yet answered, per worker
IN_FLIGHT_PER_PROCESS = 2
#: each pipe (jobs, answers) holds the batches in flight of its worker whole: the run never
#: blocks sending jobs to a worker that is itself blocked sending an answer the run has not read
#: yet, and a worker writes a batch's sealed chunks in one write
PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.h (Linux)
#: small files a run sees before it starts workers; below this, start-up would cost more
START_AFTER = 256
#: what a worker was started with (keys, settings); set by `_serve` in the worker
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


def _serve(jobs, answers, function: Callable, run: int, initial: dict[str, Any]) -> None:
    """A worker's life: answer each batch of jobs in order, until told to stop (None) or the
    run's end of the pipe closes."""
    state.clear()
    state.update(initial)
    threading.Thread(target=_exit_when_gone, args=(run,), name="insite-watch-run", daemon=True).start()
    while True:
        try:
            batch = jobs.recv()
        except EOFError:
            return
        if batch is None:
            return
        try:
            answer = ("answered", function(batch))
        except Exception as exc:  # a bug, not a file's problem (those are answers): the run fails with it
            answer = ("raised", InsiteError(f"a worker process failed: {type(exc).__name__}: {exc}"))
        try:
            answers.send(answer)
        except OSError:  # the run is gone
            return


def _exit_when_gone(run: int) -> None:
    """End this worker once the run that started it has ended. Its parent is the forkserver,
    so nothing else would: a killed run's workers waited forever for jobs, holding
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
    """Small jobs grouped into batches for worker processes, results taken in submission order.

    `add` returns a handle whose `result()` is the worker's answer for that one job. At most
    `IN_FLIGHT_PER_PROCESS × processes` batches are in flight, so memory holds a few MiB of jobs
    whatever the tree. `what` names the run in the error when a worker dies ("backup",
    "restore"). `bulky`: jobs carry content (a restore's from an object store), so the pipes
    must be widened (PIPE_BYTES); where they cannot be, the jobs stay in the threads. Used by one
    thread (the run's), which sends the batches and reads the answers itself."""

    def __init__(self, processes: int, function: Callable, what: str, initial: dict[str, Any] | None = None,
                 bulky: bool = False):
        if processes > 0 and (not _stderr_has_descriptor() or bulky and not _pipes_widen()):
            processes = 0
        self._function = function
        self._what = what
        self._processes = processes
        self._initial = initial or {}
        self._pool: list[_Worker] | None = None
        self._jobs: list = []
        self._handles: list[_Handle] = []
        self._bytes = 0
        self._in_flight: collections.deque[_Sent] = collections.deque()
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
            # worker_signals first (see there); the main script too: each worker imported it (and
            # the CLI) again, privately (restore of the bench tree: 27 -> 24 MiB RSS, 12 -> 10
            # MiB PSS a worker)
            context.set_forkserver_preload(["insite_console.worker_signals", "__main__",
                                            self._function.__module__])
            self._pool = [_Worker(context, self._function, self._initial) for _ in range(self._processes)]
        while len(self._in_flight) >= IN_FLIGHT_PER_PROCESS * self._processes:
            self._wait(self._in_flight.popleft())
        jobs, handles = self._jobs, self._handles
        self._jobs, self._handles, self._bytes = [], [], 0
        sent = min(self._pool, key=lambda worker: len(worker.sent)).send(jobs)
        if sent.died:
            self._wait(sent)  # raises: the worker is gone
        self._in_flight.append(sent)
        for handle in handles:
            handle.sent = sent

    def _wait(self, sent: "_Sent") -> list:
        sent.wait()
        if sent.died:
            self.close()
            raise self._died()
        return sent.result()

    def _died(self) -> WorkerDied:
        return WorkerDied(f"a {self._what} worker process died before it finished (killed, or out of memory); "
                          f"the {self._what} is not complete")

    def close(self) -> None:
        """Stop the workers once they have answered the batches sent (at most
        IN_FLIGHT_PER_PROCESS each: a few milliseconds), a cancelled or failed run's too. Never
        mid-batch: a worker stopped while writing a restored file would leave its temporary
        file in the target."""
        pool, self._pool = self._pool, None
        for worker in pool or []:
            worker.ask_to_stop()
        for worker in pool or []:
            worker.stop()


class _Worker:
    """One worker process and its two pipes (jobs in, answers out): it answers the batches in
    the order they were sent."""

    def __init__(self, context, function: Callable, initial: dict[str, Any]):
        jobs_end, self._jobs = context.Pipe(duplex=False)
        self._answers, answers_end = context.Pipe(duplex=False)
        for end in (self._jobs, self._answers):
            _widen(end.fileno())
        self.process = context.Process(target=_serve, args=(jobs_end, answers_end, function, os.getpid(), initial),
                                       name="insite-worker", daemon=True)
        self.process.start()
        jobs_end.close()
        answers_end.close()
        self.sent: collections.deque[_Sent] = collections.deque()  # not answered yet, in order

    def send(self, batch: list) -> "_Sent":
        sent = _Sent(self)
        self.sent.append(sent)
        try:
            self._jobs.send(batch)
        except OSError:  # the worker is gone
            self._gone()
        return sent

    def take(self, block: bool) -> bool:
        """Take the next answer into its batch: waiting for it, or only if one is there."""
        try:
            if not self.sent or not block and not self._answers.poll():
                return False
            kind, value = self._answers.recv()
        except (EOFError, OSError):  # the worker is gone (killed, out of memory)
            self._gone()
            return False
        self.sent.popleft().answer = (kind, value)
        return True

    def _gone(self) -> None:
        while self.sent:
            self.sent.popleft().died = True

    def ask_to_stop(self) -> None:
        try:
            self._jobs.send(None)
        except OSError:
            pass

    def stop(self) -> None:
        """After ask_to_stop: read (and drop) what the worker still answers until it ends, so
        it is never left blocked on a full pipe, then reap it."""
        try:
            while True:
                self._answers.recv_bytes()
        except (EOFError, OSError):
            pass
        self.process.join()
        self._gone()
        self._jobs.close()
        self._answers.close()


class _Sent:
    """A batch sent to a worker, until its answer is taken."""

    def __init__(self, worker: _Worker):
        self._worker = worker
        self.answer: tuple[str, Any] | None = None
        self.died = False

    def done(self) -> bool:
        while self.answer is None and not self.died and self._worker.take(block=False):
            pass
        return self.answer is not None or self.died

    def wait(self) -> None:
        while self.answer is None and not self.died:
            self._worker.take(block=True)

    def result(self) -> list:
        kind, value = self.answer
        if kind == "raised":
            raise value
        return value


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


def _widen(fd: int) -> None:
    """Make a pipe hold PIPE_BYTES; a no-op where that cannot be set (see `Batches`' bulky)."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass


class _Handle:
    """One job's place in a batch."""

    def __init__(self, batches: Batches, position: int):
        self._batches = batches
        self._position = position
        self.sent: _Sent | None = None

    def done(self) -> bool:
        return self.sent is not None and self.sent.done()

    def send(self) -> None:
        """Send this job's batch now if it is still open."""
        if self.sent is None:
            self._batches.flush()

    def wait(self) -> None:
        """Until the worker has answered this job's batch (sending it if still open)."""
        self.send()
        self._batches._wait(self.sent)

    def result(self):
        """The worker's answer, taken once: its slot in the batch is cleared, so a batch's
        content is freed file by file as the answers are taken."""
        self.send()
        answers = self._batches._wait(self.sent)
        answer, answers[self._position] = answers[self._position], None
        return answer
