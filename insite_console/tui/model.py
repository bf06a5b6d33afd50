"""What the screens show, computed from the workspace without any Textual import.

Kept apart from the widgets so it can be tested (and benchmarked) without a terminal, and so
every screen words a status the same way: a symbol and a word, never only a colour.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from insite_console import clock
from insite_console.errors import InsiteError

# status -> (symbol, word, theme role). The role names a Textual theme colour.
STATUS = {
    "succeeded": ("✓", "ok", "success"),
    "ok": ("✓", "ok", "success"),
    "planned": ("✓", "planned", "success"),
    "failed": ("✗", "failed", "error"),
    "running": ("▶", "running", "primary"),
    "cancelled": ("■", "cancelled", "warning"),
    "late": ("▲", "late", "warning"),
    "stale": ("✗", "stale", "error"),
    "failing": ("✗", "failing", "error"),
    "unknown": ("?", "unknown", "secondary"),
    "norpo": ("·", "no RPO", "secondary"),
    # DR drills and their steps: only a drill whose every step was carried out is "passed"
    "passed": ("✓", "passed", "success"),
    "done": ("✓", "done", "success"),
    "incomplete": ("◐", "incomplete", "warning"),
    "partial": ("◐", "partial", "warning"),  # a platform recovery that brought back only some components
    "skipped": ("○", "skipped", "warning"),
    "not run": ("○", "not run", "warning"),
    "blocked": ("✗", "blocked", "error"),
    "waiting": ("◆", "waiting", "accent"),
    "pending": ("·", "pending", "secondary"),
}


def status_label(status: str | None) -> tuple[str, str]:
    """('✓ ok', 'success'): the text to show and the theme role to colour it with."""
    symbol, word, role = STATUS.get(status or "unknown", ("?", status or "unknown", "secondary"))
    return f"{symbol} {word}", role


def statuses_shown_as(search: str) -> list[str]:
    """The statuses whose displayed text ("✓ ok", "✗ failed") contains `search`, so a filter
    matches what the screen shows: `ok` finds succeeded backups."""
    needle = search.strip().lower()
    if not needle:
        return []
    return sorted(status for status, (symbol, word, _role) in STATUS.items()
                  if needle in f"{symbol} {word}".lower())


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return clock.parse_iso(text)
    except ValueError:
        return None


def short_time(text: str | None) -> str:
    """'2026-11-27 02:00' (UTC); an operator compares it with the scheduler's cron lines."""
    value = parse_time(text)
    return value.strftime("%Y-%m-%d %H:%M") if value else "—"


def short_clock(text: str | None) -> str:
    """'19:00' for a time today (UTC), else '11-27 19:00': a scheduled fire time, short."""
    value = parse_time(text)
    if value is None:
        return "—"
    return f"{value:%H:%M}" if value.date() == clock.now().date() else f"{value:%m-%d %H:%M}"


def age_text(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "—"
    now = now or clock.now()
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return "in " + clock.human_duration(-seconds)
    return clock.human_duration(seconds) + " ago"


def duration_text(started: str | None, finished: str | None) -> str:
    start, end = parse_time(started), parse_time(finished)
    if start is None or end is None:
        return "—"
    return clock.human_duration((end - start).total_seconds())


def size_text(count: int | None) -> str:
    return clock.human_bytes(count) if count else "0 B"


def text_bar(fraction: float | None, width: int = 12) -> str:
    """A progress bar made of characters, so it reads the same in 16 colours or none."""
    if fraction is None:
        return "░" * width
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


# ----- dashboard -------------------------------------------------------------------------


HEALTH = {  # status.policy_health's words -> the STATUS key shown
    "ok": "ok", "warning": "late", "breach": "breach", "never": "never", "wal_gap": "wal_gap",
}
STATUS.update({"breach": ("✗", "RPO breach", "error"), "never": ("✗", "never run", "error"),
               "late": ("▲", "near RPO", "warning"), "wal_gap": ("✗", "WAL gap", "error")})


def policy_health(ws, now: datetime | None = None) -> list[dict[str, Any]]:
    """The engine's health per policy (the same as `insite-console status`), plus display fields."""
    from insite_console import status

    now = now or clock.now()
    rows = []
    try:
        scheduler = status.scheduler_state(ws, now)
    except (TypeError, ValueError) as exc:
        scheduler = {"running": None, "last_tick": None, "text": f"unknown: {exc}"}
    for name in sorted(ws.config.policies):
        try:
            row = status.policy_health(ws, name, now)
            row["missed_run"] = status.missed_run(ws, name, scheduler, now)
        except (TypeError, ValueError) as exc:  # an odd catalog row: show the policy, say why
            policy = ws.config.policies[name]
            row = {"policy": name, "source": policy["source"], "storage": policy["storage"], "health": "unknown",
                   "rpo_seconds": None, "last_success_at": None, "age_seconds": None, "last_failure_at": None,
                   "last_failure_error": f"cannot compute health: {exc}", "failing": False, "running": None,
                   "next_run_at": None, "schedule": policy.get("schedule"), "missed_run": None}
        shown = HEALTH.get(row["health"], "unknown")
        if row["failing"] and shown == "ok":
            shown = "failing"
        row = dict(row, shown=shown, scheduler=scheduler)
        age = row["age_seconds"]
        rpo = row["rpo_seconds"]
        shown_age = clock.human_duration(age) if age is not None else None
        if age is not None and row.get("rpo_basis") == "wal_archive_lag":
            # as status judges it: a physical source loses at most its archive lag, not the base backup's age
            shown_age = f"WAL {clock.human_duration(row['data_loss_seconds'])}"
        if age is None:
            row["age_vs_rpo"] = "—"
        elif rpo:
            row["age_vs_rpo"] = f"{shown_age} / {clock.human_duration(rpo)}"
        else:
            row["age_vs_rpo"] = f"{shown_age} (no RPO)"
        rows.append(row)
    return rows


def rpo_age_series(ws, policy: str, now: datetime | None = None, hours: float = 24, points: int = 48) -> dict:
    """The age of the policy's newest restore point at `points` moments over the last `hours`
    (oldest first), as `status` computes it (now − the newest success's end), from the restore
    points the catalog still has (a forgotten one no longer counts). None: no restore point
    existed yet at that moment."""
    now = now or clock.now()
    rpo = ws.config.policies[policy].get("rpo")
    rpo_seconds = clock.parse_duration(rpo).total_seconds() if rpo else None
    ends = sorted(clock.parse_iso(b["finished_at"] or b["started_at"])
                  for b in ws.catalog.backups(policy=policy, status="succeeded", limit=2000))
    step = hours * 3600 / max(1, points - 1)
    ages: list[float | None] = []
    index = 0
    newest = None
    for i in range(points):
        at = now - timedelta(seconds=(points - 1 - i) * step)
        while index < len(ends) and ends[index] <= at:
            newest = ends[index]
            index += 1
        ages.append(None if newest is None else (at - newest).total_seconds())
    over = [a is None or (rpo_seconds is not None and a > rpo_seconds) for a in ages]
    return {"ages": ages, "rpo_seconds": rpo_seconds, "step_seconds": step,
            "over_rpo": sum(over) if rpo_seconds is not None else None,
            "max_age": max((a for a in ages if a is not None), default=None), "unknown": ages.count(None)}


def run_series(ws, policy: str, runs: int = 30) -> list[dict]:
    """The last `runs` succeeded backups of the policy, oldest first: stored and read bytes,
    duration (None when a start or end is not recorded)."""
    rows = ws.catalog.backups(policy=policy, status="succeeded", limit=runs)[::-1]
    series = []
    for row in rows:
        start, end = parse_time(row["started_at"]), parse_time(row.get("finished_at"))
        series.append({"id": row["id"], "type": row["type"], "bytes_stored": row["bytes_stored"] or 0,
                       "bytes_read": row["bytes_read"] or 0,
                       "seconds": (end - start).total_seconds() if start and end else None})
    return series


def storage_usage(ws) -> list[dict[str, Any]]:
    """Per storage: backups and bytes the catalog knows about; free space for local disks.

    Read from the catalog (one aggregate query) rather than listing the storage, which on an
    object store is slow and costs requests."""
    rows = {name: {"name": name, "type": settings["type"], "backups": 0, "bytes_stored": 0, "bytes_read": 0,
                   "free": None, "where": settings.get("path") or settings.get("bucket") or settings.get("container")}
            for name, settings in sorted(ws.config.storages.items())}
    for row in ws.catalog.db.execute(
            "SELECT storage, COUNT(*), COALESCE(SUM(bytes_stored), 0), COALESCE(SUM(bytes_read), 0) "
            "FROM backups WHERE status = 'succeeded' GROUP BY storage"):
        entry = rows.setdefault(row[0], {"name": row[0], "type": "?", "free": None, "where": None})
        entry.update(backups=row[1], bytes_stored=row[2], bytes_read=row[3])
    for entry in rows.values():
        if entry["type"] == "local" and entry["where"]:
            try:
                entry["free"] = shutil.disk_usage(entry["where"]).free
            except OSError:
                entry["free"] = None
    return list(rows.values())


# ----- jobs -------------------------------------------------------------------------------

HOST = socket.gethostname()


@dataclass
class JobView:
    """One row of Live jobs: a catalog run (any process) or a job of this console."""

    id: str
    kind: str
    subject: str
    status: str
    phase: str = ""
    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    current: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    origin: str = "other process"
    started_by: str = ""  # 'USER@HOST · console', from the run's record
    cancelled_by: str | None = None
    run_origin: str | None = None  # console / cli / scheduler / drill, as the run recorded it
    bytes_per_second: float | None = None
    files_per_second: float | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def status_text(self) -> tuple[str, str]:
        """Like status_label; a cancel names who asked for it ('■ cancelled by USER@HOST')."""
        label, role = status_label(self.status)
        if self.status == "cancelled" and self.cancelled_by:
            label += f" by {self.cancelled_by}"
        return label, role

    @property
    def fraction(self) -> float | None:
        if self.status == "succeeded":
            return 1.0
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.files_total:
            return min(1.0, self.files_done / self.files_total)
        return None

    @property
    def eta_seconds(self) -> float | None:
        if not self.running or not self.bytes_total or not self.bytes_per_second:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_second)

    def sample(self, at: float | None = None) -> None:
        """Record a (time, bytes, files) sample and update the rates from the last few seconds."""
        at = time.monotonic() if at is None else at
        if self.samples and self.samples[-1][1:] == (self.bytes_done, self.files_done) and self.running:
            return
        self.samples.append((at, self.bytes_done, self.files_done))
        self.samples = [s for s in self.samples if at - s[0] <= 5.0][-20:]
        if len(self.samples) >= 2:
            (t0, b0, f0), (t1, b1, f1) = self.samples[0], self.samples[-1]
            if t1 > t0:
                self.bytes_per_second = (b1 - b0) / (t1 - t0)
                self.files_per_second = (f1 - f0) / (t1 - t0)

    def rate_text(self) -> str:
        if self.bytes_per_second is None or not self.running:
            return "—"
        return f"{clock.human_bytes(self.bytes_per_second)}/s"

    def files_rate_text(self) -> str:
        if self.files_per_second is None or not self.running:
            return "—"
        return f"{self.files_per_second:.0f} files/s"

    def eta_text(self) -> str:
        eta = self.eta_seconds
        return clock.human_duration(eta) if eta is not None else "—"

    def progress_text(self) -> str:
        """A bar while it runs; once done, what it came to (a failed or cancelled run: how far it got)."""
        if not self.running:
            return self.totals_text()
        fraction = self.fraction
        percent = f"{fraction * 100:3.0f}%" if fraction is not None else "  ?%"
        return f"{text_bar(fraction, 10)} {percent}"

    def totals_text(self) -> str:
        if not self.files_done and not self.bytes_done:
            return "—"
        return f"{self.files_done:,} files · {size_text(self.bytes_done)}"

    def kind_text(self) -> str:
        """The Job column: a drill, an off-site copy, and what a drill ran, say so."""
        text = {"drill": "DR drill", "copy": "copy"}.get(self.kind, self.kind)
        if self.run_origin == "drill" and self.kind != "drill":
            text += " (drill)"
        return text

    def duration_seconds(self, now: datetime | None = None) -> float | None:
        start = parse_time(self.started_at)
        if start is None:
            return None
        end = (now or clock.now()) if self.running else parse_time(self.finished_at)
        return None if end is None else max(0.0, (end - start).total_seconds())

    def duration_text(self, now: datetime | None = None) -> str:
        seconds = self.duration_seconds(now)
        return "—" if seconds is None else clock.human_duration(seconds)


def job_from_run(row: dict, own_pids: set[int]) -> JobView:
    origin = "other process"
    if row.get("host") and row["host"] != HOST:
        origin = f"host {row['host']}"
    elif row.get("pid") == os.getpid():
        origin = "this console"
    elif row.get("pid") in own_pids:
        origin = "this console (detached)"
    return JobView(
        id=row["id"], kind=row["kind"], subject=row["subject"], status=row["status"], phase=row.get("phase") or "",
        bytes_done=row.get("bytes_done") or 0, bytes_total=row.get("bytes_total"),
        files_done=row.get("files_done") or 0, files_total=row.get("files_total"),
        current=row.get("current") or "", started_at=row.get("started_at"), finished_at=row.get("finished_at"),
        error=row.get("error"), pid=row.get("pid"), host=row.get("host"), origin=origin,
        started_by=started_by(row), cancelled_by=row.get("cancelled_by"), run_origin=row.get("origin"),
    )


def started_by(row: dict) -> str:
    """'USER@HOST · console' for a run; runs recorded before who-ran-what was kept say so."""
    if not row.get("user"):
        return "unrecorded"
    return f"{row['user']}@{row.get('host') or '?'} · {row.get('origin') or '?'}"


def plain_error(exc: BaseException) -> str:
    """What the operator reads: the engine's message, or the exception's type and text."""
    if isinstance(exc, InsiteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
