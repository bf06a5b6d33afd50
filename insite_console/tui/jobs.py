"""Starting jobs so that they outlive the console.

Backups and restores started from the console run as a detached child process
(`python -m insite_console -c CONFIG backup POLICY --json`) in a new session: closing the
terminal or dropping the SSH connection sends SIGHUP to the console's session only, so the
job runs to completion and records its result in the catalog, where the console (this one,
or the next one the operator opens) reads it. The engine mirrors each run's progress into the
catalog `runs` table about once a second, so a detached job is watched exactly like one the
scheduler or a cron CLI run started. Its stdout (the JSON result) and stderr go to
`<state dir>/console-jobs/`.

Cancelling sends SIGINT to the job's process (the engine then records it as cancelled);
a job of another host is not signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insite_console import clock
from insite_console.events import CancelToken, Progress


@dataclass
class ConsoleJob:
    """A job this console started, in a worker thread or as a detached process."""

    key: str
    kind: str  # backup | restore | verify
    subject: str  # policy, or backup id
    detached: bool
    cancel: CancelToken = field(default_factory=CancelToken)
    run_id: str | None = None
    pid: int | None = None
    status: str = "running"
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: clock.iso(clock.now()))
    log_path: Path | None = None


def job_dir(ws) -> Path:
    path = ws.config.state_dir / "console-jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def spawn(ws, args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
    """Start `insite-console ARGS` detached from this terminal; returns the process and its log."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = job_dir(ws) / f"{stamp}-{name}-{os.getpid()}"
    out_path, err_path = base.with_suffix(".json"), base.with_suffix(".log")
    command = [sys.executable, "-m", "insite_console", "-c", str(ws.config.path.resolve()), *args]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True, close_fds=True, cwd=str(ws.config.base_dir),
                                   env={**os.environ, "INSITE_ORIGIN": "console"})
    return process, base


def read_outcome(base: Path, returncode: int) -> tuple[dict | None, str | None]:
    """The JSON result of a finished detached job, or its error message (last stderr lines)."""
    import json

    result = None
    try:
        text = base.with_suffix(".json").read_text().strip()
        if text:
            result = json.loads(text.splitlines()[-1] if not text.startswith("{") else text)
    except (OSError, ValueError):
        result = None
    if returncode == 0 and result is not None:
        return result, None
    try:
        lines = [line for line in base.with_suffix(".log").read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    message = " ".join(lines[-3:]) if lines else f"the job exited with status {returncode}"
    if result and result.get("error"):
        message = result["error"]
    return result, message


def interrupt(pid: int) -> bool:
    """Ask a job process to stop (SIGINT: the engine cleans up and records `cancelled`)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGINT)
        return True
    except (ProcessLookupError, PermissionError):
        return False
