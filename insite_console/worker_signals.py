"""Imported by the workers' forkserver as it starts (`workers.Batches` preloads it), never by a
run: the worker processes it forks are then born ignoring Ctrl-C and SIGTERM.

A terminal sends Ctrl-C to every process of its group. The run cancels on it and stops its
workers once they have answered their batch; a worker the signal reached itself, even while it
was starting, died mid-batch with a traceback on the operator's screen, and the run failed as
"a worker process died" instead of ending cancelled. The forkserver imports its preloads before
it takes the signal dispositions it gives every child, so this is set before any worker exists.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
