"""Who started a run: the OS user, the host, and where from (console, cli, scheduler, drill),
so Live jobs, the catalog and a cancel say who acted, not just that something did."""

from __future__ import annotations

import contextvars
import getpass
import os
import socket
from contextlib import contextmanager
from typing import Iterator

ORIGINS = ("console", "cli", "scheduler", "drill")
_origin: contextvars.ContextVar[str | None] = contextvars.ContextVar("insite_origin", default=None)


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the uid still says who
        return str(os.getuid())


def me() -> str:
    """'USER@HOST' of this process."""
    return f"{user()}@{socket.gethostname()}"


def origin() -> str:
    """Where the current run was started from: set by `acting_as`, else $INSITE_ORIGIN (the
    console passes it to the job processes it starts), else the CLI."""
    return _origin.get() or os.environ.get("INSITE_ORIGIN") or "cli"


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Runs started in this block (this thread) record `name` as their origin."""
    token = _origin.set(name)
    try:
        yield
    finally:
        _origin.reset(token)
