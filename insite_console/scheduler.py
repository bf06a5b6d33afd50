"""The scheduler: runs each policy when its cron schedule is due, with the policy's retries.

State is the catalog itself: a policy is due when its schedule fired since its last run
started, so a restarted scheduler neither skips nor repeats a run.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from insite_console import backup, clock, who
from insite_console.errors import InsiteError


def due_policies(ws, now: datetime | None = None) -> list[str]:
    from croniter import croniter

    now = now or clock.now()
    due = []
    for name, policy in sorted(ws.config.policies.items()):
        if not policy.get("schedule"):
            continue
        last_fire = croniter(policy["schedule"], now).get_prev(datetime)
        runs = ws.catalog.backups(policy=name, limit=1)
        if runs and runs[0]["status"] == "running":
            continue
        if not runs or clock.parse_iso(runs[0]["started_at"]) < last_fire:
            due.append(name)
    return due


def run_due(ws, now: datetime | None = None, log=print) -> list[dict]:
    results = []
    for name in due_policies(ws, now):
        try:
            with who.acting_as("scheduler"):
                result = backup.run_with_retries(ws, name)
            log(f"{name}: backup {result['id']} succeeded")
        except InsiteError as exc:
            result = {"policy": name, "status": "failed", "error": str(exc)}
            log(f"{name}: backup failed: {exc}")
        results.append(result)
    return results


def beat_once(ws) -> None:
    """A one-shot run (`schedule --once`, from cron) leaves a heartbeat with no interval."""
    now = clock.iso(clock.now())
    ws.catalog.scheduler_beat(now, None, stopped=True)


def _heartbeat(ws, started_at: str, interval: float, stop: threading.Event) -> None:
    """Beat every `interval` seconds from a thread of its own, so a long backup in the loop
    never makes a live scheduler look dead."""
    while not stop.wait(interval):
        try:
            ws.catalog.scheduler_beat(started_at, interval)
        except Exception:  # a locked catalog: the next beat tries again
            pass


def loop(ws, interval: float = 30.0, log=print) -> None:
    """Run forever (until interrupted), checking every `interval` seconds; heartbeats in the
    catalog (host, pid, last tick) let the console and `status` tell whether it runs."""
    log(f"scheduler started for {ws.config.path}; {len(ws.config.policies)} policies")
    started_at = clock.iso(clock.now())
    ws.catalog.scheduler_beat(started_at, interval)
    stop = threading.Event()
    beats = threading.Thread(target=_heartbeat, args=(ws, started_at, interval, stop), daemon=True,
                             name="scheduler-heartbeat")
    beats.start()
    try:
        while True:
            run_due(ws, log=log)
            ws.catalog.scheduler_beat(started_at, interval)
            time.sleep(interval)
    finally:
        stop.set()
        ws.catalog.scheduler_beat(started_at, interval, stopped=True)
