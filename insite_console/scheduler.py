"""The scheduler: runs each enabled policy when its cron schedule is due, in `[scheduler]
timezone`, up to `max_parallel` policies at a time, each job in a workspace of its own.

Retries are scheduled, not slept: a failed attempt frees its slot and the policy comes back
after `retry_delay` x 2^(attempt-1), so one policy's retries never delay another's run.
State is the catalog: a policy is due when its schedule fired since its last run started, so
a scheduler that was down runs a missed slot once at start (`catch_up`, the default) rather
than once per missed slot, and a restart never repeats a run. One run per policy at a time
holds across processes and hosts (backup.run's policy locks, in the catalog and in the
repository): a second scheduler, or a `backup` from cron, is refused while one runs, and this
scheduler then skips that slot. The regular tests (regular.py: `verify_schedule`,
`restore_test_schedule`) are jobs in the same slots, due the same way from their own runs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Callable

from insite_console import alerts, backup, clock, group, regular, status, who
from insite_console.cron import last_fire, next_fire, timezone
from insite_console.errors import Cancelled, InsiteError, PolicyBusy
from insite_console.events import CancelToken

DEFAULT_MAX_PARALLEL = 2
DEFAULT_TICK_SECONDS = 30.0


def fired_since(schedule: str, last, now: datetime, tz, since: datetime | None) -> bool:
    """Whether a job is due: its schedule fired since its last run started (`last`: the newest
    run's row with `status` and `started_at`, or None), that run is not still running, and with
    `since` (the scheduler's start when `catch_up = false`) the slot fired after it."""
    fired = last_fire(schedule, now, tz)
    if since is not None and fired < since:
        return False
    if last and last["status"] == "running":
        return False
    return not last or clock.parse_iso(last["started_at"]) < fired


def due_policies(ws, now: datetime | None = None, since: datetime | None = None) -> list[str]:
    """Enabled policies whose schedule fired since their last run started."""
    now, tz = now or clock.now(), timezone(ws)
    return [name for name, policy in sorted(ws.config.policies.items())
            if policy.get("schedule") and policy.get("enabled", True)
            and fired_since(policy["schedule"], (ws.catalog.backups(policy=name, limit=1) or [None])[0], now, tz, since)]


def due_tests(ws, now: datetime | None = None, since: datetime | None = None) -> list[tuple[str, str]]:
    """(kind, policy) of the regular tests (regular.KINDS) whose schedule fired since the last
    one started, for enabled policies that have a backup to test."""
    now, tz = now or clock.now(), timezone(ws)
    return [(kind, name) for name, policy in sorted(ws.config.policies.items()) if policy.get("enabled", True)
            for kind, key in regular.KINDS.items()
            if policy.get(key) and fired_since(policy[key], ws.catalog.last_run(kind, name), now, tz, since)
            and ws.catalog.last_backup(name)]


GROUP_JOB = "group:"  # a group backup's job name: "group:NAME" (a policy's is its name)


def due_groups(ws, now: datetime | None = None, since: datetime | None = None) -> list[str]:
    """Enabled `[group.NAME]`s whose schedule fired since their last group backup started."""
    now, tz = now or clock.now(), timezone(ws)
    return [name for name, settings in sorted(ws.config.groups.items())
            if settings.get("schedule") and settings.get("enabled", True)
            and fired_since(settings["schedule"], (ws.catalog.group_points(group=name, limit=1) or [None])[0],
                            now, tz, since)]


def retry_delay(policy: dict, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: `retry_delay`, doubled after each failed attempt."""
    return clock.parse_duration(policy.get("retry_delay", "1m")).total_seconds() * 2 ** (attempt - 1)


def schedule_list(ws, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every policy's schedule (the strategy's get_schedule_status): enabled, last run, next
    run (none when disabled), retries and retry delay; `tests`: its regular tests' schedules."""
    now = now or clock.now()
    tz = timezone(ws)
    rows = []
    for name, policy in sorted(ws.config.policies.items()):
        last = ws.catalog.backups(policy=name, limit=1)
        enabled = policy.get("enabled", True)
        upcoming = next_fire(policy.get("schedule"), now, tz) if enabled else None
        rows.append({
            "policy": name, "enabled": enabled, "schedule": policy.get("schedule"), "timezone": tz.key,
            "last_run_at": last[0]["started_at"] if last else None,
            "last_run_status": last[0]["status"] if last else None,
            "next_run_at": clock.iso(upcoming), "retries": policy.get("retries", 0),
            "retry_delay": policy.get("retry_delay", "1m"), "tests": [],
        })
        for kind, key in regular.KINDS.items():
            if policy.get(key):
                test = ws.catalog.last_run(kind, name)
                rows[-1]["tests"].append({
                    "kind": kind, "schedule": policy[key], "last_run_at": test["started_at"] if test else None,
                    "last_run_status": test["status"] if test else None,
                    "next_run_at": clock.iso(next_fire(policy[key], now, tz)) if enabled else None})
    for name, settings in sorted(ws.config.groups.items()):
        last = ws.catalog.group_points(group=name, limit=1)
        upcoming = next_fire(settings.get("schedule"), now, tz) if settings.get("enabled", True) else None
        rows.append({
            "policy": GROUP_JOB + name, "enabled": settings.get("enabled", True), "schedule": settings.get("schedule"),
            "timezone": tz.key, "last_run_at": last[0]["started_at"] if last else None,
            "last_run_status": last[0]["status"] if last else None, "next_run_at": clock.iso(upcoming),
            "retries": 0, "retry_delay": "-", "members": settings["policies"],
        })
    return rows


class Scheduler:
    """The jobs of one scheduler process. `tick()` is one pass of the loop (collect finished
    jobs, start what is due and what is to be retried, announce breaches); `loop()` ticks until
    `stop()`; `run_once()` ticks until nothing is running or waiting for a retry."""

    def __init__(self, ws, log: Callable[[str], None] = print, now: Callable[[], datetime] = clock.now,
                 max_parallel: int | None = None):
        settings = ws.config.scheduler
        self.ws, self.log, self.now = ws, log, now
        self.max_parallel = max_parallel or settings.get("max_parallel", DEFAULT_MAX_PARALLEL)
        self.started_at = now()
        self.since = None if settings.get("catch_up", True) else self.started_at
        self.cancel = CancelToken()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="insite-job")
        # policy (a backup) or (kind, policy) (a regular test) -> (its job, its attempt number)
        self.jobs: dict[str | tuple[str, str], tuple[Future, int]] = {}
        self.retries: dict[str, tuple[int, datetime]] = {}  # policy -> (next attempt, not before)
        self.results: list[dict[str, Any]] = []  # each policy's final outcome, in finishing order

    # ----- one pass ------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        now = now or self.now()
        self._collect(now)
        if self.stopping.is_set():
            return
        self._start_retries(now)
        for name in due_policies(self.ws, now, self.since):
            if name not in self.jobs and name not in self.retries:
                self._start(name, 1)
        for kind, name in due_tests(self.ws, now, self.since):
            if (kind, name) not in self.jobs:
                self._start((kind, name), 1)
        for name in due_groups(self.ws, now, self.since):
            if GROUP_JOB + name not in self.jobs:
                self._start(GROUP_JOB + name, 1)
        try:
            alerts.watch(self.ws, status.overview(self.ws, now, check_storage=True))
        except Exception as exc:  # a status that cannot be computed must not stop the backups
            self.log(f"cannot check RPO and storages for alerts: {exc}")
        try:
            alerts.watch_drills(self.ws, now)
        except Exception as exc:  # a DR file that does not load must not stop the backups
            self.log(f"cannot check DR drills against [dr] cadence for alerts: {exc}")

    def busy(self) -> bool:
        return bool(self.jobs or self.retries)

    def next_wakeup(self, now: datetime, interval: float) -> float:
        """Seconds to sleep: the tick interval, or less when a retry is due sooner."""
        waits = [interval] + [(at - now).total_seconds() for _, at in self.retries.values()]
        return max(0.05, min(waits))

    # ----- running ---------------------------------------------------------------------------

    def loop(self, interval: float | None = None) -> None:
        """Run until stopped; heartbeats in the catalog (host, pid, last tick) let the console
        and `status` tell whether a scheduler runs."""
        interval = interval or self.ws.config.scheduler.get("tick_seconds", DEFAULT_TICK_SECONDS)
        self.log(f"scheduler started for {self.ws.config.path}: {len(self.ws.config.policies)} policies, "
                 f"up to {self.max_parallel} at a time, cron times in {timezone(self.ws).key}")
        started_at = clock.iso(clock.now())
        self.ws.catalog.scheduler_beat(started_at, interval)
        beats_stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(self.ws, started_at, interval, beats_stop), daemon=True,
                         name="scheduler-heartbeat").start()
        try:
            while not self.stopping.is_set():
                self.tick()
                self.stopping.wait(self.next_wakeup(self.now(), interval))
            self.shutdown()
        finally:
            beats_stop.set()
            self.ws.catalog.scheduler_beat(started_at, interval, stopped=True)

    def run_once(self, poll: float = 0.2) -> list[dict[str, Any]]:
        """What is due now, with its retries, then return the outcomes (`schedule --once`);
        leaves a heartbeat with no interval (the cron period is not known here)."""
        self.ws.catalog.scheduler_beat(clock.iso(clock.now()), None, stopped=True)
        return self._run_once(poll)

    def _run_once(self, poll: float) -> list[dict[str, Any]]:
        self.tick()
        while self.busy() and not self.stopping.is_set():
            time.sleep(min(poll, self.next_wakeup(self.now(), poll)))
            now = self.now()
            self._collect(now)
            self._start_retries(now)
        self.shutdown()
        return self.results

    def stop(self, reason: str, cancel_running: bool | None = None) -> None:
        """Stop starting jobs; running ones finish, or are cancelled cleanly (`on_stop`)."""
        if cancel_running is None:
            cancel_running = self.ws.config.scheduler.get("on_stop", "cancel") == "cancel"
        self.log(f"scheduler stopping ({reason}); " + (f"cancelling {len(self.jobs)} running job(s)"
                                                        if cancel_running and self.jobs else
                                                        f"waiting for {len(self.jobs)} running job(s)"))
        self.stopping.set()
        if cancel_running:
            self.cancel.cancel(reason)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)
        self._collect(self.now())
        for name in sorted(self.retries):
            self.log(f"{name}: retry dropped, the scheduler stopped")
        self.retries.clear()

    def _start_retries(self, now: datetime) -> None:
        for name, (attempt, at) in sorted(self.retries.items()):
            if at <= now and name not in self.jobs:
                del self.retries[name]
                self._start(name, attempt)

    def _start(self, job: str | tuple[str, str], attempt: int) -> None:
        self.jobs[job] = (self.pool.submit(self._attempt, job), attempt)

    def _attempt(self, job: str | tuple[str, str]) -> dict[str, Any]:
        """One job in a thread, with a workspace of its own (its own catalog connection and
        repository objects: two jobs never share a half-written pack): a policy's backup (its
        name), a group's (GROUP_JOB + name) or a regular test ((kind, policy))."""
        from insite_console.workspace import Workspace

        job_ws = Workspace(self.ws.config)
        try:
            with who.acting_as("scheduler"):
                if isinstance(job, tuple):
                    return regular.run(job_ws, *job, cancel=self.cancel)
                if job.startswith(GROUP_JOB):
                    return group.run(job_ws, job[len(GROUP_JOB):], cancel=self.cancel)
                return backup.run(job_ws, job, cancel=self.cancel)
        finally:
            job_ws.close()

    def _collect(self, now: datetime) -> None:
        for key, (future, attempt) in list(self.jobs.items()):
            if future.done():
                del self.jobs[key]
                if isinstance(key, tuple):
                    self._test_finished(*key, future)
                elif key.startswith(GROUP_JOB):
                    self._group_finished(key, future)
                else:
                    self._finished(key, future, attempt, now)

    def _test_finished(self, kind: str, name: str, future: Future) -> None:
        """A regular test is not retried: its outcome is on record for `status` either way."""
        what = f"{name}: {regular.WORDS[kind]}"
        try:
            result = future.result()
        except PolicyBusy as exc:
            self.log(f"{what} skipped: {exc}")
            return
        except Cancelled as exc:
            self.log(f"{what} cancelled: {exc}")
            return
        except Exception as exc:  # (regular.run records its own failures; this is one before the run)
            self.log(f"{what} could not start: {exc}")
            return
        self.log(f"{what} of backup {result['backup_id']} {result['status']}"
                 + (f": {result['error']}" if result["error"] else ""))
        self.results.append(result)

    def _group_finished(self, name: str, future: Future) -> None:
        """A group backup is not retried: its next slot takes a new group restore point."""
        try:
            record = future.result()
        except Exception as exc:  # the group's record could not be made at all
            error = str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}"
            self.log(f"{name}: group backup failed: {error}")
            self.results.append({"policy": name, "status": "failed", "error": error})
            return
        if record["status"] == "succeeded":
            self.log(f"{name}: group restore point {record['id']} at {record['point_at']} "
                     f"({len(record['members'])} members within {record['skew_seconds'] * 1000:.1f} ms)")
        else:
            self.log(f"{name}: group backup {record['id']} {record['status']}: {record['error']}")
        group.announce(self.ws, record)
        self.results.append({**record, "policy": name})

    def _finished(self, name: str, future: Future, attempt: int, now: datetime) -> None:
        policy = self.ws.config.policy(name)
        try:
            result = future.result()
        except PolicyBusy as exc:
            self.log(f"{name}: skipped: {exc}")
            return
        except Cancelled as exc:
            self.log(f"{name}: cancelled: {exc}")
            self.results.append({"policy": name, "status": "cancelled", "error": str(exc)})
            return
        except InsiteError as exc:
            result, error = None, str(exc)
        except Exception as exc:  # a bug: reported like a failure, so it reaches a person
            result, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = None if result["status"] == "succeeded" else result.get("error")
        if error is None:
            self.log(f"{name}: backup {result['id']} succeeded" + (f" (attempt {attempt})" if attempt > 1 else ""))
            self.results.append(result)
            alerts.backup_outcome(self.ws, name, result)
            return
        attempts = 1 + int(policy.get("retries", 0))
        if attempt < attempts and not self.stopping.is_set():
            delay = retry_delay(policy, attempt)
            at = now + timedelta(seconds=delay)
            message = (f"{name}: attempt {attempt} of {attempts} failed ({error}); retrying in "
                       f"{clock.human_duration(delay)} ({int(delay)}s, at {clock.iso(at)})")
            self.log(message)
            self.ws.catalog.event(None, message, level="warning")
            self.retries[name] = (attempt + 1, at)
            return
        self.log(f"{name}: backup failed" + (f" after {attempt} attempts" if attempt > 1 else "") + f": {error}")
        self.results.append(result or {"policy": name, "status": "failed", "error": error})
        alerts.backup_outcome(self.ws, name, result, error if result is None else None)


def _heartbeat(ws, started_at: str, interval: float, stop: threading.Event) -> None:
    """Beat every `interval` seconds from a thread of its own, so a long backup never makes a
    live scheduler look dead."""
    while not stop.wait(interval):
        try:
            ws.catalog.scheduler_beat(started_at, interval)
        except Exception:  # a locked catalog: the next beat tries again
            pass
