"""The scheduler: runs each policy when its cron schedule is due, with the policy's retries.

State is the catalog itself: a policy is due when its schedule fired since its last run
started, so a restarted scheduler neither skips nor repeats a run.
"""

from __future__ import annotations

import time
from datetime import datetime

from insite_console import backup, clock
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
            result = backup.run_with_retries(ws, name)
            log(f"{name}: backup {result['id']} succeeded")
        except InsiteError as exc:
            result = {"policy": name, "status": "failed", "error": str(exc)}
            log(f"{name}: backup failed: {exc}")
        results.append(result)
    return results


def loop(ws, interval: float = 30.0, log=print) -> None:
    """Run forever (until interrupted), checking every `interval` seconds."""
    log(f"scheduler started for {ws.config.path}; {len(ws.config.policies)} policies")
    while True:
        run_due(ws, log=log)
        time.sleep(interval)
