"""Messages that carry job state from worker threads to the UI.

Workers never touch widgets: they `post_message` these to the app. Progress messages define
`can_replace`, so a burst of them collapses to the newest one in the queue (as toolong does).
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from insite_console.events import Progress


class JobProgress(Message):
    """A job of this console made progress (about ten a second at most, from the engine)."""

    def __init__(self, key: str, progress: Progress) -> None:
        super().__init__()
        self.key = key
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.key == self.key


class JobFinished(Message):
    """A job of this console ended: `result` on success, else `error` (a plain message)."""

    def __init__(self, key: str, result: dict[str, Any] | None = None, error: str | None = None,
                 status: str = "succeeded") -> None:
        super().__init__()
        self.key = key
        self.result = result
        self.error = error
        self.status = status


class DetailLoaded(Message):
    """A worker read a backup's manifest (or failed to)."""

    def __init__(self, backup_id: str, manifest: dict | None, error: str | None = None) -> None:
        super().__init__()
        self.backup_id = backup_id
        self.manifest = manifest
        self.error = error


class TreeLoaded(Message):
    """A worker read (part of) a stored tree."""

    def __init__(self, backup_id: str, entries: list, truncated: bool, error: str | None = None) -> None:
        super().__init__()
        self.backup_id = backup_id
        self.entries = entries
        self.truncated = truncated
        self.error = error


class PlanReady(Message):
    """The restore wizard's dry run finished."""

    def __init__(self, plan: dict | None, error: str | None = None, checks: list | None = None,
                 token: tuple | None = None) -> None:
        super().__init__()
        self.token = token  # the choices it was made for
        self.plan = plan
        self.error = error
        self.checks = checks or []


class DrillEvent(Message):
    """An event of the drill this console runs (from the drill's worker thread), with the
    drill's snapshot at that moment (elapsed time, escalation level, projected RTO)."""

    def __init__(self, event: dict[str, Any], snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.event = event
        self.snapshot = snapshot


class DrillDone(Message):
    """The drill ended: its stored `record`, or `error` (a plain message) when it could not run."""

    def __init__(self, record: dict[str, Any] | None = None, error: str | None = None) -> None:
        super().__init__()
        self.record = record
        self.error = error
