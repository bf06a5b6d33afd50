"""Monitoring from outside: `status` exit codes as a monitoring plugin, and alerts delivered to a
real local HTTP server, a command and a local SMTP server (aiosmtpd), recorded in the catalog."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from insite_console import alerts, backup, clock, status
from insite_console.errors import ConfigError
from tests.conftest import write_config
from tests.redis_servers import free_port

SECRET = "s3cr3t-signing-key-for-tests"


def _config(workspace, alert_toml: str, policy_extra: str = "") -> None:
    """Rewrite the workspace's config with [[alert]] tables (and policy keys)."""
    write_config(workspace.root, [str(workspace.source)], extra=alert_toml, policy_extra=policy_extra)
    workspace.reopen()


def _status(workspace, now: str | None = None) -> tuple[int, list[dict]]:
    """`status --json` at `now`, with a live scheduler heartbeat at that time (this process's):
    without one, a scheduled policy whose run was missed is CRITICAL, which is tested apart."""
    import os

    saved = os.environ.get("INSITE_FAKE_NOW")
    if now:
        os.environ["INSITE_FAKE_NOW"] = now
    try:
        workspace.ws.catalog.scheduler_beat(clock.iso(clock.now()), 30)
    finally:
        if saved is None:
            os.environ.pop("INSITE_FAKE_NOW", None)
        else:
            os.environ["INSITE_FAKE_NOW"] = saved
    env = {"INSITE_FAKE_NOW": now} if now else None
    result = workspace.cli("status", "--json", env=env)
    return result.returncode, json.loads(result.stdout)


# ----- status exit codes -----------------------------------------------------------------


def test_status_exits_like_a_monitoring_plugin(workspace):
    (workspace.source / "a.txt").write_text("hello")
    code, rows = _status(workspace)
    assert code == 2 and rows[0]["level"] == "critical" and "no backup has ever succeeded" in rows[0]["problems"]
    done = backup.run(workspace.ws, "tree")
    code, rows = _status(workspace)
    assert code == 0 and rows[0]["level"] == "ok" and rows[0]["problems"] == []
    finished = clock.parse_iso(done["finished_at"])
    code, rows = _status(workspace, clock.iso(finished + clock.parse_duration("13m")))  # RPO 15m, 80% is 12m
    assert code == 1 and rows[0]["problems"][0].startswith("near the RPO")
    code, rows = _status(workspace, clock.iso(finished + clock.parse_duration("16m")))
    assert code == 2 and rows[0]["problems"][0].startswith("RPO breached")
    text = workspace.cli("status", env={"INSITE_FAKE_NOW": clock.iso(finished + clock.parse_duration("16m"))})
    assert text.returncode == 2 and text.stdout.rstrip().endswith("CRITICAL") and "RPO breached" in text.stdout


def test_status_is_critical_when_no_scheduler_started_a_scheduled_run(workspace, monkeypatch):
    (workspace.source / "a.txt").write_text("hello")
    monkeypatch.setenv("INSITE_FAKE_NOW", "2026-03-01T10:05:00Z")  # (at XX:00-XX:03 no slot fell in the 13m)
    done = backup.run(workspace.ws, "tree")
    monkeypatch.delenv("INSITE_FAKE_NOW")
    later = clock.iso(clock.parse_iso(done["finished_at"]) + clock.parse_duration("13m"))  # the 10:15 run was due
    result = workspace.cli("status", "--json", env={"INSITE_FAKE_NOW": later})
    rows = json.loads(result.stdout)
    assert result.returncode == 2 and rows[0]["level"] == "critical"
    assert any(p.startswith("missed ") and p.endswith("scheduler not running") for p in rows[0]["problems"])


def test_a_failed_last_run_and_an_unreachable_storage_are_critical(workspace):
    (workspace.source / "a.txt").write_text("hello")
    backup.run(workspace.ws, "tree")
    assert status.exit_code(status.overview(workspace.ws, check_storage=True)) == 0
    shutil.move(workspace.source, workspace.root / "gone")
    failed = workspace.cli("backup", "tree")
    assert failed.returncode != 0
    [row] = status.overview(workspace.ws, check_storage=True)
    assert row["level"] == "critical" and any(p.startswith("last run failed: ") and "does not exist" in p
                                              for p in row["problems"])
    shutil.move(workspace.root / "gone", workspace.source)
    backup.run(workspace.ws, "tree")
    shutil.move(workspace.root / "repo", workspace.root / "repo-away")
    [row] = status.overview(workspace.ws, check_storage=True)
    assert row["level"] == "critical" and row["storage_problem"].startswith("storage local holds no repository")
    assert status.overview(workspace.ws)[0]["level"] == "ok"  # (without the check, nothing is claimed about it)


def test_verification_overdue_is_a_warning_and_a_disabled_policy_does_not_page(workspace):
    _config(workspace, "", policy_extra='verify_every = "1h"')
    (workspace.source / "a.txt").write_text("hello")
    done = backup.run(workspace.ws, "tree")
    [row] = status.overview(workspace.ws, check_storage=True)
    assert row["level"] == "warning" and row["problems"] == ["verification overdue: last never"]
    assert workspace.cli("verify", done["id"]).returncode == 0
    [row] = status.overview(workspace.ws, check_storage=True)
    assert row["level"] == "ok" and row["last_verification_status"] == "ok"
    _config(workspace, "", policy_extra="enabled = false")
    code, rows = _status(workspace, "2099-01-01T00:00:00Z")
    assert rows[0]["level"] == "critical" and rows[0]["enabled"] is False and code == 0


# ----- alerts: configuration -------------------------------------------------------------


def test_alert_tables_are_validated(workspace):
    with pytest.raises(ConfigError) as caught:
        _config(workspace, """
            [[alert]]
            on = ["failure", "nonsense"]
            webhook_url = "https://hooks.example/x"

            [[alert]]
            on = ["failure"]

            [[alert]]
            on = ["failure"]
            webhook_url = "https://user:pw@hooks.example/x"
            command = ["/bin/true"]
            """)
    text = str(caught.value)
    assert "alert[0].on: expected a non-empty list of events" in text and "unknown: nonsense" in text
    assert "alert[1]: needs exactly one of command, webhook_url or email" in text
    assert "alert[2]: needs exactly one of command, webhook_url or email (has command, webhook_url)" in text
    assert "alert[2].webhook_url: holds a password" in text


# ----- alerts: delivery -------------------------------------------------------------------


class _Hook:
    """A real HTTP server on a free loopback port that records each POST; `fail_first` answers
    that many requests with 500 first."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((dict(self.headers), body))
                code = 500 if len(hook.received) <= hook.fail_first else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/TOKEN-IN-PATH"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = _Hook(fail_first=1)
    yield server
    server.close()


def test_a_failed_backup_posts_a_signed_webhook_with_retries_and_is_recorded(workspace, hook, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    _config(workspace, f"""
        [[alert]]
        name = "oncall"
        on = ["failure", "recovered"]
        webhook_url = "{hook.url}"
        secret_env = "HOOK_SECRET"
        timeout = 5
        retries = 2
        """)
    shutil.move(workspace.source, workspace.root / "gone")
    result = workspace.cli("backup", "tree")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert len(hook.received) == 2  # a 500, then delivered
    headers, body = hook.received[-1]
    payload = json.loads(body)
    assert payload["event"] == "failure" and payload["subject"] == "tree" and "does not exist" in payload["message"]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[alerts.SIGNATURE_HEADER] == expected
    [record] = workspace.reopen().catalog.deliveries()
    assert record["status"] == "delivered" and record["attempts"] == 2 and record["alert"] == "oncall"
    assert record["target"] == f"http://127.0.0.1:{hook.server.server_port}"  # no path: it may be a token
    catalog_bytes = (workspace.root / "state" / "catalog.sqlite").read_bytes()
    assert SECRET.encode() not in body and SECRET not in result.stderr and SECRET.encode() not in catalog_bytes
    assert b"TOKEN-IN-PATH" not in catalog_bytes
    # the next success is announced once as recovered, the one after it not at all
    shutil.move(workspace.root / "gone", workspace.source)
    workspace.cli("backup", "tree", check=True)
    workspace.cli("backup", "tree", check=True)
    events = [json.loads(b)["event"] for _, b in hook.received]
    assert events == ["failure", "failure", "recovered"]


def test_a_hanging_or_failing_command_never_fails_or_stalls_the_backup(workspace, tmp_path):
    got = tmp_path / "event.json"
    _config(workspace, f"""
        [[alert]]
        on = ["restore_started", "restore_finished"]
        command = ["{sys.executable}", "-c", "import sys, time; time.sleep(60)"]
        timeout = 1

        [[alert]]
        on = ["restore_finished"]
        command = ["sh", "-c", "cat > {got}; echo nope >&2; exit 3"]

        [[alert]]
        on = ["restore_finished"]
        command = ["sh", "-c", "cat >> {got}.ok"]
        """)
    (workspace.source / "a.txt").write_text("hello")
    done = backup.run(workspace.ws, "tree")
    started = time.monotonic()
    workspace.cli("restore", done["id"], "--target", str(tmp_path / "out"), check=True)
    assert time.monotonic() - started < 10  # two hangs of 1s each, not 2 x 60s
    assert workspace.restored(tmp_path / "out").joinpath("a.txt").read_text() == "hello"
    assert json.loads(got.read_text())["event"] == "restore_finished"
    finished = json.loads((tmp_path / "event.json.ok").read_text())
    assert finished["details"]["status"] == "succeeded" and finished["details"]["backup_id"] == done["id"]
    records = {(r["event"], r["alert"]): r for r in workspace.reopen().catalog.deliveries()}
    assert records[("restore_started", "alert[0]")]["error"].endswith("did not finish within 1s (killed)")
    assert records[("restore_finished", "alert[1]")]["error"] == "sh exited 3: nope"
    assert records[("restore_finished", "alert[2]")]["status"] == "delivered"


def test_an_email_reaches_a_local_smtp_server(workspace, monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    inbox = []

    class Inbox(Message):
        def handle_message(self, message):
            inbox.append(message)

    port = free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        _config(workspace, f"""
            [[alert]]
            on = ["failure"]
            email = {{ host = "127.0.0.1", port = {port}, from = "insite@example.org", to = ["ops@example.org"] }}
            """)
        alerts.fire(workspace.ws, "failure", "tree", "backup of tree failed: disk on fire", {"policy": "tree"})
    finally:
        controller.stop()
    [mail] = inbox
    assert mail["Subject"] == "[insite] failure: tree" and mail["To"] == "ops@example.org"
    assert "disk on fire" in mail.get_payload()
    [record] = workspace.ws.catalog.deliveries()
    assert record["status"] == "delivered" and record["target"] == f"ops@example.org via 127.0.0.1:{port}"


def test_a_breach_is_announced_once_and_again_on_recovery(workspace, hook):
    hook.fail_first = 0
    _config(workspace, f"""
        [[alert]]
        on = ["rpo_breach", "recovered", "storage_unreachable"]
        webhook_url = "{hook.url}"
        """)
    (workspace.source / "a.txt").write_text("hello")
    done = backup.run(workspace.ws, "tree")
    late = clock.iso(clock.parse_iso(done["finished_at"]) + clock.parse_duration("1h"))
    for _ in range(3):  # status every minute from Nagios, or the scheduler's ticks
        assert _status(workspace, late)[0] == 2
    assert [json.loads(b)["event"] for _, b in hook.received] == ["rpo_breach"]
    backup.run(workspace.ws, "tree")
    assert _status(workspace)[0] == 0
    assert _status(workspace)[0] == 0
    events = [json.loads(b) for _, b in hook.received]
    assert [e["event"] for e in events] == ["rpo_breach", "recovered"]
    assert events[1]["details"]["condition"] == "rpo_breach"


def test_a_drill_escalation_and_an_overdue_drill_reach_the_webhook_once(workspace, hook, monkeypatch):
    from tests.test_dr import _operated_drill

    hook.fail_first = 0
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    _config(workspace, f"""
        [[alert]]
        on = ["escalation", "drill_overdue", "recovered"]
        webhook_url = "{hook.url}"
        secret_env = "HOOK_SECRET"
        [dr]
        cadence = "30d"
        rpo = "1d"
        """)
    (workspace.source / "a.txt").write_text("hello")
    backup.run(workspace.ws, "tree")
    from insite_console.scheduler import Scheduler

    # never drilled: overdue, announced once, by the scheduler's tick or `drill report`, however often
    Scheduler(workspace.ws, log=lambda line: None).tick()
    assert len(hook.received) == 3
    workspace.cli("drill", "report", check=True)
    payloads = [json.loads(body) for _, body in hook.received]
    assert sorted((p["event"], p["subject"]) for p in payloads) == [
        ("drill_overdue", "drill:data_corruption"), ("drill_overdue", "drill:database_failure"),
        ("drill_overdue", "drill:datacenter_failure")]
    assert "DR drill of Data corruption (data_corruption) is overdue: never drilled" in [p["message"] for p in payloads]
    hook.received.clear()
    # the operator spends 1h 10m on step 2: level 2 (1h elapsed) pages the incident commander
    record = _operated_drill(workspace.ws, {"2": 3300})
    assert [e["level"] for e in record["events"] if e["type"] == "escalation"] == [2]
    payloads = [json.loads(body) for _, body in hook.received]
    assert [(p["event"], p["subject"]) for p in payloads] == [
        ("escalation", "drill:data_corruption"), ("recovered", "drill:data_corruption")]
    page = payloads[0]
    assert page["details"]["drill_id"] == record["id"] and page["details"]["level"] == 2
    assert page["details"]["notify"] == ["incident_commander"] and page["details"]["mode"] == "tabletop"
    assert "escalation level 2 (1h elapsed): notify incident_commander (on-call phone, #incident)" in page["message"]
    headers, body = hook.received[0]
    assert headers[alerts.SIGNATURE_HEADER] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert payloads[1]["details"]["condition"] == "drill_overdue"
    delivered = workspace.ws.catalog.deliveries()
    assert [(d["event"], d["status"]) for d in delivered][:2] == [("recovered", "delivered"), ("escalation", "delivered")]
    workspace.cli("drill", "report", check=True)  # drilled now: nothing more for data_corruption
    assert len(hook.received) == 2


# ----- metrics ------------------------------------------------------------------------------


def _parse(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_parse_and_match_the_catalog(workspace, tmp_path):
    (workspace.source / "a.txt").write_text("hello" * 1000)
    done = backup.run(workspace.ws, "tree")
    shutil.move(workspace.source, workspace.root / "gone")
    assert workspace.cli("backup", "tree").returncode != 0
    assert workspace.cli("backup", "tree").returncode != 0
    printed = workspace.cli("metrics", check=True).stdout
    samples = _parse(printed)
    policy = (("policy", "tree"),)
    assert samples[("insite_backup_last_success_timestamp_seconds", policy)] == \
        clock.parse_iso(done["finished_at"]).timestamp()
    assert samples[("insite_backup_last_bytes_stored", policy)] == done["bytes_stored"] > 0
    assert samples[("insite_backup_last_duration_seconds", policy)] >= 0
    assert samples[("insite_backup_failures_total", policy)] == 2
    assert samples[("insite_policy_rpo_seconds", policy)] == 900
    assert ("insite_scheduler_last_tick_timestamp_seconds", ()) not in samples  # no scheduler ever ran
    workspace.cli("schedule", "--once", check=True)  # leaves a heartbeat
    tick = _parse(workspace.cli("metrics", check=True).stdout)[("insite_scheduler_last_tick_timestamp_seconds", ())]
    assert abs(tick - clock.now().timestamp()) < 60
    samples = _parse(workspace.cli("metrics", check=True).stdout)
    target = tmp_path / "node" / "insite.prom"
    target.parent.mkdir()
    workspace.cli("metrics", "--textfile", str(target), check=True)
    assert _parse(target.read_text()) == samples and list(target.parent.iterdir()) == [target]  # no temp left
    refused = workspace.cli("metrics", "--textfile", str(tmp_path / "missing" / "x.prom"))
    assert refused.returncode == 1 and "cannot write metrics to" in refused.stderr and "Traceback" not in refused.stderr


# ----- regular tests, missed runs, a scheduler down, overdue drills --------------------------


def _events(hook) -> list[tuple[str, str]]:
    return [(json.loads(b)["event"], json.loads(b)["subject"]) for _, b in hook.received]


def test_scheduled_verify_and_restore_test_are_runs_that_feed_status_and_alert(workspace, hook):
    from insite_console import regular, scheduler

    hook.fail_first = 0
    _config(workspace, f"""
        [[alert]]
        on = ["verify_failed"]
        webhook_url = "{hook.url}"
        """, policy_extra='verify_schedule = "0 3 * * *"\nrestore_test_schedule = "0 4 * * 0"')
    (workspace.source / "a.txt").write_text("hello " * 5000)
    assert scheduler.due_tests(workspace.ws) == []  # nothing to test before a backup
    done = backup.run(workspace.ws, "tree")
    logs: list[str] = []
    jobs = scheduler.Scheduler(workspace.ws, log=logs.append)
    jobs.run_once()
    tests = {r["kind"]: r for r in jobs.results if "kind" in r}
    assert tests["scheduled_verify"]["status"] == "succeeded" and tests["restore_test"]["status"] == "succeeded"
    assert tests["restore_test"]["backup_id"] == done["id"]
    assert any("tree: restore test of backup" in line and "succeeded" in line for line in logs)
    catalog = workspace.reopen().catalog
    assert catalog.last_run("restore_test", "tree")["status"] == "succeeded"
    assert catalog.restores(limit=1)[0]["backup_id"] == done["id"]  # recorded like any restore
    assert catalog.verifications(done["id"])[0]["deep"] is True
    assert not list((workspace.root / "state" / "drills").glob("*/*"))  # the scratch folder is gone
    assert scheduler.due_tests(workspace.ws) == []  # ran since the slot fired
    [row] = status.overview(workspace.ws)
    assert [t["last_status"] for t in row["regular_tests"]] == ["succeeded", "succeeded"]
    assert not any("verify" in p or "restore test" in p for p in row["problems"])
    # the data rots: both tests fail, status says why, each failure is delivered once
    for pack in (workspace.root / "repo" / "data").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[len(data) // 3:len(data) // 3 + 64] = bytes(64)  # inside a blob: its authentication fails
            pack.write_bytes(bytes(data))
    failed = [regular.run(workspace.ws, kind, "tree") for kind in ("scheduled_verify", "restore_test")]
    assert [r["status"] for r in failed] == ["failed", "failed"]
    [row] = status.overview(workspace.ws)
    assert row["level"] == "critical"
    problems = "\n".join(row["problems"])
    assert "last scheduled deep verify (" in problems and f") failed: {failed[0]['error']}" in problems
    assert "failed authentication" in failed[0]["error"]
    assert "last restore test (" in problems and f"failed: {failed[1]['error']}" in problems
    assert sorted(_events(hook)) == [("verify_failed", "tree"), ("verify_failed", "tree")]
    assert {json.loads(b)["details"]["test"] for _, b in hook.received} == {"scheduled_verify", "restore_test"}
    # a week on, with no scheduler: both are overdue (a warning each, beside the RPO breach)
    later = clock.parse_iso(done["finished_at"]) + clock.parse_duration("8d")
    [row] = status.overview(workspace.ws, later)
    assert sum(p.startswith(("scheduled deep verify overdue: due ", "restore test overdue: due "))
               for p in row["problems"]) == 2


def test_schedules_of_regular_tests_are_validated(workspace):
    with pytest.raises(ConfigError) as caught:
        _config(workspace, "", policy_extra='verify_schedule = "every night"\nrestore_test_schedule = 3')
    assert "policy.tree.verify_schedule: expected a valid 5-field cron expression" in str(caught.value)
    assert "policy.tree.restore_test_schedule: expected a cron expression" in str(caught.value)


def test_missed_runs_a_scheduler_down_and_overdue_drills_are_announced_once_and_recovered(workspace, hook):
    hook.fail_first = 0
    _config(workspace, f"""
        [[alert]]
        on = ["missed_run", "scheduler_down", "drill_overdue", "recovered"]
        webhook_url = "{hook.url}"

        [dr]
        cadence = "30d"
        """)
    (workspace.source / "a.txt").write_text("hello")
    done = backup.run(workspace.ws, "tree")
    late = clock.iso(clock.parse_iso(done["finished_at"]) + clock.parse_duration("20m"))
    for _ in range(3):  # Nagios every minute: told once
        result = workspace.cli("status", "--json", env={"INSITE_FAKE_NOW": late})
        assert result.returncode == 2
    [row] = json.loads(result.stdout)
    assert any(p.startswith("DR drill datacenter_failure overdue: never drilled (cadence 30d)") for p in row["problems"])
    assert not any("database_failure" in p for p in row["problems"])  # covers @databases only
    # the alerts name every scenario the DR report calls overdue; the status row only those covering it
    assert sorted(_events(hook)) == [("drill_overdue", "drill:data_corruption"),
                                     ("drill_overdue", "drill:database_failure"),
                                     ("drill_overdue", "drill:datacenter_failure"),
                                     ("missed_run", "tree"), ("scheduler_down", "scheduler")]
    missed = json.loads(next(b for _, b in hook.received if json.loads(b)["event"] == "missed_run"))
    assert missed["message"].endswith("did not start: scheduler not running")
    # the scheduler is back, a run started, one scenario was drilled
    workspace.ws.catalog.scheduler_beat(clock.iso(clock.now()), 30)
    backup.run(workspace.ws, "tree")
    from tests.test_dr import _operated_drill

    assert _operated_drill(workspace.ws, {})["status"] == "passed"  # a real drill, its whole record
    for _ in range(2):
        assert workspace.cli("status", "--json").returncode == 1  # one drill still overdue: a warning
    recovered = sorted(s for e, s in _events(hook)[5:] if e == "recovered")
    assert recovered == ["drill:data_corruption", "scheduler", "tree"]
    assert len(hook.received) == 8


def test_a_backup_failing_after_its_retries_is_delivered_once(workspace, hook):
    from insite_console import scheduler

    hook.fail_first = 0
    _config(workspace, f"""
        [[alert]]
        on = ["failure"]
        webhook_url = "{hook.url}"
        """, policy_extra='retries = 1\nretry_delay = "1s"')
    shutil.move(workspace.source, workspace.root / "gone")
    jobs = scheduler.Scheduler(workspace.ws, log=lambda m: None)
    results = jobs.run_once()
    assert [r["status"] for r in results] == ["failed"]
    assert len(workspace.ws.catalog.backups(policy="tree")) == 2  # two attempts, one announcement
    assert _events(hook) == [("failure", "tree")]


def _fill(ws, start: int, count: int) -> None:
    """`count` more backups of tree (one in ten failed), each with its run, every tenth verified."""
    db = ws.catalog.db
    db.execute("BEGIN")
    for n in range(start, start + count):
        at = clock.iso_precise(clock.parse_iso("2020-01-01T00:00:00Z") + clock.parse_duration(f"{15 * n}m"))
        status_ = "failed" if n % 10 == 7 else "succeeded"
        db.execute("INSERT INTO backups (id, policy, source, source_type, storage, type, status, started_at, "
                   "finished_at, started_at_precise, run_id) VALUES (?, 'tree', 'tree', 'files', 'local', 'full', "
                   "?, ?, ?, ?, ?)", (f"{n:016x}", status_, at[:19] + "Z", at[:19] + "Z", at, f"{n:016x}"))
        db.execute("INSERT INTO runs (id, kind, subject, status, started_at) VALUES (?, 'backup', 'tree', ?, ?)",
                   (f"{n:016x}", status_, at))
        if n % 10 == 3:
            ws.catalog.insert_verification({"id": f"v{n:015x}", "backup_id": f"{n:016x}", "storage": "local",
                                            "deep": 1, "status": "ok", "started_at": at, "finished_at": at})
    db.execute("COMMIT")


def test_status_and_metrics_do_not_read_more_as_the_catalog_grows(workspace):
    """Not timed (bench/bench_status.py measures): SQLite's own step count of what status and
    metrics ask, at 1,000 and at 10,000 runs, must not grow with the catalog."""
    from insite_console import metrics

    _config(workspace, "", policy_extra='verify_every = "1d"\nrestore_test_schedule = "0 4 * * *"')
    ws = workspace.ws

    def steps() -> int:
        count = [0]

        def tick():
            count[0] += 1
            return 0

        ws.catalog.db.set_progress_handler(tick, 100)
        try:
            status.overview(ws, check_storage=True)
            metrics.exposition(ws)
        finally:
            ws.catalog.db.set_progress_handler(None, 100)
        return count[0]

    _fill(ws, 0, 1000)
    small = steps()
    _fill(ws, 1000, 9000)
    large = steps()
    assert large < small * 1.5 + 50, (small, large)
