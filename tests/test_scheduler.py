"""The scheduler: decisions with an injected clock (due, catch-up, DST, disabled), retries that
never hold up another policy, one run per policy across processes, `schedule --list`, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zoneinfo
from datetime import datetime

import pytest

from insite_console import clock, cron, scheduler, status
from insite_console.errors import ConfigError
from tests.conftest import write_config

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def _at(text: str) -> datetime:
    return clock.parse_iso(text)


def _ran(workspace, started: str) -> None:
    """A finished backup of policy tree that started at `started`."""
    workspace.ws.catalog.insert_backup({
        "id": clock.new_id(), "policy": "tree", "source": "tree", "source_type": "files", "storage": "local",
        "type": "full", "status": "succeeded", "started_at": started, "finished_at": started})


def _configure(workspace, policy_extra: str = "", extra: str = "") -> None:
    write_config(workspace.root, [str(workspace.source)], extra=extra, policy_extra=policy_extra)
    workspace.reopen()


def test_due_not_due_catch_up_once_and_disabled(workspace):
    ws = workspace.ws
    assert scheduler.due_policies(ws, _at("2026-03-01T10:07:00Z")) == ["tree"]  # never ran
    _ran(workspace, "2026-03-01T10:00:05Z")
    assert scheduler.due_policies(ws, _at("2026-03-01T10:14:59Z")) == []
    assert scheduler.due_policies(ws, _at("2026-03-01T10:15:00Z")) == ["tree"]
    # down for a day: 96 slots missed, one run at start, and then nothing until the next slot
    later = _at("2026-03-02T10:07:00Z")
    assert scheduler.due_policies(ws, later) == ["tree"]
    _ran(workspace, "2026-03-02T10:07:01Z")
    assert scheduler.due_policies(ws, later) == []
    # catch_up = false: a slot missed while the scheduler was down is not run at its start
    assert scheduler.due_policies(ws, _at("2026-03-03T10:07:00Z"), since=_at("2026-03-03T10:06:00Z")) == []
    assert scheduler.due_policies(ws, _at("2026-03-03T10:15:00Z"), since=_at("2026-03-03T10:06:00Z")) == ["tree"]
    _configure(workspace, policy_extra="enabled = false")
    assert scheduler.due_policies(workspace.ws, _at("2026-03-03T10:15:00Z")) == []


def test_status_reads_schedules_in_the_schedulers_time_zone(workspace):
    """`0 2 * * *` in New York is 07:00 UTC in winter: status said 02:00 UTC (its own cron math
    in UTC), so a run due at 07:00 that never started went unreported as missed."""
    _configure(workspace, extra='\n[scheduler]\ntimezone = "America/New_York"\n')
    workspace.config.write_text(workspace.config.read_text().replace('schedule = "*/15 * * * *"', 'schedule = "0 2 * * *"'))
    workspace.reopen()
    _ran(workspace, "2026-12-02T03:00:00Z")
    now = _at("2026-12-02T08:00:00Z")
    [row] = status.overview(workspace.ws, now)
    assert row["next_run_at"] == "2026-12-03T07:00:00Z"
    assert row["missed_run"] is not None and row["missed_run"]["at"].startswith("2026-12-02T07:00:00")
    assert scheduler.due_policies(workspace.ws, now) == ["tree"]  # the scheduler agrees


def test_bad_cron_expressions_and_scheduler_keys_are_config_errors(workspace):
    with pytest.raises(ConfigError) as caught:
        _configure(workspace, extra='\n[scheduler]\nmax_parallel = 0\ntimezone = "Mars/Olympus"\n')
    text = str(caught.value)
    assert "scheduler.max_parallel: expected a positive integer" in text
    assert "scheduler.timezone: expected an IANA time zone name" in text
    config = workspace.config.read_text().replace('schedule = "*/15 * * * *"', 'schedule = "61 * * * *"')
    workspace.config.write_text(config)
    result = workspace.cli("schedule", "--list")
    assert result.returncode == 2 and "policy.tree.schedule: expected a valid 5-field cron expression" in result.stderr


def test_cron_in_the_scheduler_timezone_across_dst():
    # spring forward (Berlin, 2026-03-29): 02:30 does not exist; the job runs once, at 03:00 CEST
    assert cron.last_fire("30 2 * * *", _at("2026-03-29T01:05:00Z"), BERLIN) == _at("2026-03-29T01:00:00Z")
    # fall back (2026-10-25): 02:30 comes twice; a daily job's slot is the first one only
    first = _at("2026-10-25T00:30:00Z")
    assert cron.last_fire("30 2 * * *", _at("2026-10-25T00:45:00Z"), BERLIN) == first
    assert cron.last_fire("30 2 * * *", _at("2026-10-25T01:45:00Z"), BERLIN) == first
    # an hourly job runs in both 02:xx hours
    assert cron.last_fire("30 * * * *", _at("2026-10-25T01:45:00Z"), BERLIN) == _at("2026-10-25T01:30:00Z")
    # the wall clock, not UTC: 02:00 in Berlin is 01:00Z in winter
    assert cron.last_fire("0 2 * * *", _at("2026-01-10T12:00:00Z"), BERLIN) == _at("2026-01-10T01:00:00Z")


def _settle(jobs: scheduler.Scheduler, now: datetime) -> None:
    deadline = time.monotonic() + 60
    while jobs.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
        jobs.tick(now)
    assert not jobs.jobs


def test_a_failing_policy_with_retries_never_delays_a_healthy_one(workspace, tmp_path):
    (workspace.source / "a.txt").write_text("hello")
    _configure(workspace, extra=textwrap.dedent(f"""
        [scheduler]
        max_parallel = 1

        [source.broken]
        type = "files"
        paths = ["{tmp_path / 'missing'}"]

        [policy.broken]
        source = "broken"
        storage = "local"
        schedule = "0 0 1 1 *"
        retries = 2
        retry_delay = "1h"
        """), policy_extra="")
    config = workspace.config.read_text().replace('schedule = "*/15 * * * *"', 'schedule = "0 0 1 1 *"')
    workspace.config.write_text(config)
    logs: list[str] = []
    t0 = clock.now()
    jobs = scheduler.Scheduler(workspace.reopen(), log=logs.append, now=lambda: t0)
    jobs.tick(t0)  # both due (never ran); one slot: the failure frees it at once, no sleeping
    _settle(jobs, t0)
    assert [r["policy"] for r in jobs.results] == ["tree"] and jobs.results[0]["status"] == "succeeded"
    assert jobs.retries["broken"] == (2, t0 + clock.parse_duration("1h"))
    assert any(line.startswith("broken: attempt 1 of 3 failed (") and "retrying in 1h (3600s, at" in line
               for line in logs)
    jobs.tick(t0 + clock.parse_duration("59m"))
    assert not jobs.jobs  # not yet
    t1 = t0 + clock.parse_duration("1h")
    jobs.tick(t1)
    _settle(jobs, t1)
    assert jobs.retries["broken"] == (3, t1 + clock.parse_duration("2h"))  # doubled
    assert any("attempt 2 of 3 failed" in line and "retrying in 2h (7200s" in line for line in logs)
    t2 = t1 + clock.parse_duration("2h")
    jobs.tick(t2)
    _settle(jobs, t2)
    assert not jobs.busy()
    assert jobs.results[-1]["policy"] == "broken" and jobs.results[-1]["status"] == "failed"
    assert "does not exist" in jobs.results[-1]["error"] and "broken: backup failed after 3 attempts" in logs[-1]
    jobs.shutdown()


HOLD = """
import sys, time
from insite_console.catalog.db import Catalog
assert Catalog(sys.argv[1]).claim_policy("tree", "holder-run-000001") is None
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_backup_of_a_running_policy_is_refused_and_a_dead_holder_taken_over(workspace):
    (workspace.source / "a.txt").write_text("hello")
    catalog_path = str(workspace.root / "state" / "catalog.sqlite")
    workspace.ws.catalog  # (created and migrated)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, catalog_path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = workspace.cli("backup", "tree")
        assert refused.returncode == 1
        assert f"pid {holder.pid} on host {os.uname().nodename}" in refused.stderr
        assert "user " in refused.stderr and "run holder-run-000001" in refused.stderr and "for " in refused.stderr
        # a scheduler skips the slot instead of counting a failure
        logs: list[str] = []
        jobs = scheduler.Scheduler(workspace.reopen(), log=logs.append)
        assert jobs.run_once() == [] and any(line.startswith("tree: skipped: a backup of tree is already running")
                                             for line in logs)
    finally:
        holder.kill()
        holder.wait()
    done = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    assert done["status"] == "succeeded"


def test_two_schedulers_racing_for_one_policy_run_it_once(workspace):
    (workspace.source / "a.txt").write_text("hello")
    from insite_console.workspace import Workspace

    barrier = threading.Barrier(2)
    outcomes = []

    def one():
        ws = Workspace.load(workspace.config)
        try:
            jobs = scheduler.Scheduler(ws, log=lambda m: None)
            barrier.wait()
            outcomes.append(jobs.run_once())
        finally:
            ws.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(len(o) for o in outcomes) == [0, 1]
    assert [row["status"] for row in workspace.ws.catalog.backups(policy="tree")] == ["succeeded"]


def test_schedule_list(workspace):
    _configure(workspace, extra='\n[scheduler]\ntimezone = "Europe/Berlin"\n',
               policy_extra='retries = 3\nretry_delay = "5m"\nrestore_test_schedule = "0 4 * * 0"')
    workspace.cli("backup", "tree", check=True)
    rows = json.loads(workspace.cli("schedule", "--list", "--json",
                                    env={"INSITE_FAKE_NOW": "2099-01-01T00:07:00Z"}, check=True).stdout)
    assert rows == [{"policy": "tree", "enabled": True, "schedule": "*/15 * * * *", "timezone": "Europe/Berlin",
                     "last_run_at": rows[0]["last_run_at"], "last_run_status": "succeeded",
                     "next_run_at": "2099-01-01T00:15:00Z", "retries": 3, "retry_delay": "5m",
                     "tests": [{"kind": "restore_test", "schedule": "0 4 * * 0", "last_run_at": None,
                                "last_run_status": None, "next_run_at": "2099-01-04T03:00:00Z"}]}]
    text = workspace.cli("schedule", "--list", check=True).stdout
    assert "tree" in text and "yes" in text and "3 every 5m (doubling)" in text
    assert "  restore_test" in text and "0 4 * * 0" in text


def test_the_scheduler_stops_cleanly_on_sigterm(workspace):
    (workspace.source / "a.txt").write_text("hello")
    _configure(workspace, extra="\n[scheduler]\ntick_seconds = 0.2\n")
    process = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(workspace.config), "schedule"],
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if "tree: backup" in line:
                break
        assert "succeeded" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert "scheduler stopping (signal SIGTERM)" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


# ----- one run per policy across hosts -------------------------------------------------------


def _on_host(host: str, *argv: str) -> list[str]:
    """argv run with its own hostname (a UTS namespace) and machine id (/etc/machine-id bound over
    in a mount namespace): another host sharing this repository."""
    script = ('hostname "$0" && f=$(mktemp) && printf "machine-of-%s\\n" "$0" > "$f" && '
              'mount --bind "$f" /etc/machine-id && rm "$f" && exec "$@"')
    return ["unshare", "--uts", "--mount", "sh", "-c", script, host, *argv]


def _cli_on(host: str, config, *args: str) -> list[str]:
    return _on_host(host, sys.executable, "-m", "insite_console", "-c", str(config), *args)


@pytest.fixture
def two_hosts(workspace, tmp_path):
    """Host alpha (the workspace) and host beta: configs and catalogs of their own, one repository."""
    if subprocess.run(_on_host("probe", "true"), capture_output=True).returncode != 0:
        pytest.skip("needs unshare --uts --mount (root) to give a process another host name and machine id")
    beta = tmp_path / "beta"
    beta.mkdir()
    write_config(beta, [str(workspace.source)], storage_path=str(workspace.root / "repo"))
    (workspace.source / "big.bin").write_bytes(os.urandom(40 << 20))  # a backup that lasts a moment
    return workspace.config, beta / "config.toml"


def _hold_stopped(config) -> subprocess.Popen:
    """`backup tree` on host alpha, frozen (SIGSTOP) once it holds the policy lock."""
    repo = config.parent / "repo" / "policy-locks"
    process = subprocess.Popen(_cli_on("alpha", config, "backup", "tree"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not [lock for lock in repo.glob("*/*") if len(lock.name) == 16]:  # (not a temporary file of the put)
        assert process.poll() is None and time.monotonic() < deadline, "alpha's backup took no policy lock"
        time.sleep(0.001)
    process.send_signal(signal.SIGSTOP)
    return process


def test_two_hosts_with_catalogs_of_their_own_never_run_one_policy_at_once(two_hosts):
    alpha, beta = two_hosts
    holder = _hold_stopped(alpha)
    try:
        scheduled = subprocess.run(_cli_on("beta", beta, "schedule", "--once"), capture_output=True, text=True)
        assert scheduled.returncode == 0, scheduled.stderr
        assert f"tree: skipped: a backup of tree is already running: pid {holder.pid} on host alpha, user " \
               in scheduled.stderr
        refused = subprocess.run(_cli_on("beta", beta, "backup", "tree"), capture_output=True, text=True)
        assert refused.returncode == 1 and f"pid {holder.pid} on host alpha, user root, for " in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        holder.send_signal(signal.SIGCONT)
    assert holder.wait(60) == 0, holder.stderr.read()
    from insite_console.workspace import Workspace

    ws = Workspace.load(beta)
    try:
        assert ws.catalog.backups(policy="tree") == []  # beta ran nothing while alpha ran
    finally:
        ws.close()
    # alpha dies holding the lock: beta cannot tell its process is gone, so it waits for the
    # storage's clock to call the lock stale (30 minutes unrefreshed); alpha itself takes it at once
    holder = _hold_stopped(alpha)
    holder.kill()
    holder.wait()
    [lock] = (alpha.parent / "repo" / "policy-locks").glob("*/*")
    refused = subprocess.run(_cli_on("beta", beta, "backup", "tree"), capture_output=True, text=True)
    assert refused.returncode == 1 and f"pid {holder.pid} on host alpha" in refused.stderr
    old = time.time() - 31 * 60
    os.utime(lock, (old, old))
    done = subprocess.run(_cli_on("beta", beta, "backup", "tree", "--json"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded" and not lock.exists()
    holder = _hold_stopped(alpha)
    holder.kill()
    holder.wait()
    again = subprocess.run(_cli_on("alpha", alpha, "backup", "tree"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # same host, its process gone: taken over at once


def test_two_schedulers_on_two_hosts_started_together_never_overlap(two_hosts):
    alpha, beta = two_hosts
    started = [subprocess.Popen(_cli_on(host, config, "schedule", "--once"), stderr=subprocess.PIPE, text=True)
               for host, config in (("alpha", alpha), ("beta", beta))]
    logs = [process.communicate(timeout=120)[1] for process in started]
    from insite_console.workspace import Workspace

    runs = []
    for config in (alpha, beta):
        ws = Workspace.load(config)
        try:
            runs += [(clock.parse_iso(b["started_at"]), clock.parse_iso(b["finished_at"]))
                     for b in ws.catalog.backups(policy="tree")]
        finally:
            ws.close()
    skipped = [log for log in logs if "tree: skipped: a backup of tree is already running" in log]
    # one ran and the other stood aside, or (both locking in the same instant) both stood aside
    assert (len(runs), len(skipped)) in ((1, 1), (0, 2)), logs
