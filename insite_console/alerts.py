"""Alerts: events (a backup failed, an RPO is breached, a restore began) delivered to the
`[[alert]]` tables' command, webhook or email.

Whatever process sees an event fires it (a cron `backup`, the scheduler, `status`, a restore).
Delivery never raises and never outlasts the alert's `timeout` (deliveries run side by side),
so a dead hook cannot fail or stall a backup. Every delivery is recorded in the catalog with
its outcome. Conditions (`rpo_breach`, `storage_unreachable`, a failing policy) are announced
once when they begin and once, as `recovered`, when they end: their state is in the catalog,
so neither a scheduler's every tick nor a second process repeats them. Secrets (the webhook
signing key, the SMTP password) are read from the environment at delivery and go nowhere else;
what is recorded of a webhook is its scheme and host only, since hook URLs often carry a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from insite_console import clock
from insite_console.redact import redact, redact_all

SIGNATURE_HEADER = "X-Insite-Signature"  # "sha256=" + hex HMAC-SHA256 of the body


def fire(ws, event: str, subject: str, message: str, details: dict[str, Any] | None = None) -> list[dict]:
    """Deliver `event` to every alert that wants it; returns the delivery records. Never raises."""
    return _send(ws, [(i, alert) for i, alert in enumerate(ws.config.alerts) if event in alert["on"]],
                 event, subject, message, details)


def _send(ws, chosen: list[tuple[int, dict]], event: str, subject: str, message: str,
          details: dict[str, Any] | None) -> list[dict]:
    if not chosen:
        return []
    payload = {"event": event, "subject": subject, "message": redact(message), "at": clock.iso(clock.now()),
               "host": socket.gethostname(), "config": str(ws.config.path),
               "details": redact_all(details or {})}
    with ThreadPoolExecutor(len(chosen), thread_name_prefix="insite-alert") as pool:
        records = list(pool.map(lambda item: _deliver(item[0], item[1], payload), chosen))
    for record in records:
        try:
            ws.catalog.record_delivery(record)
        except Exception as exc:  # a locked or read-only catalog must not turn into a failed backup
            print(f"insite-console: alert delivery not recorded: {exc}", file=sys.stderr)
    return records


def condition(ws, event: str, subject: str, active: bool, message: str, details: dict | None = None) -> None:
    """Announce a condition when it begins (`event`) and when it ends (`recovered`), once each."""
    if not ws.config.alerts:  # nobody to tell: leave the catalog untouched (status stays read-only)
        return
    try:
        changed = ws.catalog.set_condition(event, subject, active, message)
    except Exception as exc:
        print(f"insite-console: alert state not updated: {exc}", file=sys.stderr)
        return
    if changed and active:
        fire(ws, event, subject, message, details)
    elif changed:
        recovered(ws, event, subject, f"{subject}: {event.replace('_', ' ')} is over: {message}", details)


def recovered(ws, event: str, subject: str, message: str, details: dict | None = None) -> list[dict]:
    """`recovered` for a condition that is over, to the alerts that were told of it (those
    with both `recovered` and `event` in `on`): nobody hears of the end of what they never heard."""
    chosen = [(i, alert) for i, alert in enumerate(ws.config.alerts)
              if "recovered" in alert["on"] and event in alert["on"]]
    return _send(ws, chosen, "recovered", subject, message, {**(details or {}), "condition": event})


def watch(ws, rows: list[dict]) -> None:
    """Turn status rows (status.overview) into condition alerts: RPO breaches, storages that
    stopped answering, scheduled runs that did not start, a scheduler that is down while
    schedules are configured (overdue DR drills: watch_drills)."""
    storages: dict[str, str | None] = {}
    for row in rows:
        if not row.get("enabled", True):
            continue
        breached = row["health"] == "breach"
        message = (f"RPO of {row['policy']} breached: newest restore point {row['last_success_at']}, "
                   f"data-loss window {clock.human_duration(row['data_loss_seconds'] or 0)}"
                   if breached else f"{row['policy']} is within its RPO again (newest restore point "
                   f"{row['last_success_at']})")
        if row["health"] != "never" and row["rpo_seconds"]:
            condition(ws, "rpo_breach", row["policy"], breached, message,
                      {"policy": row["policy"], "rpo_seconds": row["rpo_seconds"],
                       "data_loss_seconds": row["data_loss_seconds"], "last_success_at": row["last_success_at"]})
        if row.get("storage_checked"):
            storages[row["storage"]] = row.get("storage_problem")
        if row.get("schedule"):  # the run the schedule promised did not start (reason: who did not start it)
            missed = row.get("missed_run")
            condition(ws, "missed_run", row["policy"], missed is not None,
                      f"scheduled run of {row['policy']} at {missed['at']} did not start: {missed['reason']}"
                      if missed else f"{row['policy']} runs on schedule again",
                      {"policy": row["policy"], "missed_at": missed["at"] if missed else None})
    for name, problem in storages.items():
        condition(ws, "storage_unreachable", f"storage:{name}", problem is not None,
                  problem or f"storage {name} answers again", {"storage": name})
    scheduled = [row for row in rows if row.get("enabled", True) and row.get("schedule") and row.get("scheduler")]
    if scheduled:  # a scheduler that stopped (or never ran) while schedules are configured
        state = scheduled[0]["scheduler"]
        condition(ws, "scheduler_down", "scheduler", state["running"] is False,
                  f"no scheduler is running: {state['text']}" if state["running"] is False
                  else f"the scheduler is {state['text']}", {"host": state["host"], "pid": state["pid"],
                                                             "last_tick": state["last_tick"]})


def watch_drills(ws, now=None) -> None:
    """`drill_overdue` for each scenario not drilled within `[dr] cadence` (once, when it
    becomes overdue; `recovered` when a drill of it is done)."""
    if not ws.config.alerts or not any("drill_overdue" in a["on"] or "recovered" in a["on"] for a in ws.config.alerts):
        return
    from insite_console.dr import report

    for row in report.build(ws, now)["scenarios"]:
        when = f"last drilled {row['days_since_drill']} days ago" if row["days_since_drill"] is not None \
            else "never drilled"
        condition(ws, "drill_overdue", f"drill:{row['id']}", row["overdue"],
                  f"DR drill of {row['name']} ({row['id']}) is overdue: {when}" if row["overdue"]
                  else f"DR scenario {row['id']} was drilled ({when})",
                  {"scenario": row["id"], "days_since_drill": row["days_since_drill"],
                   "cadence_days": round(clock.parse_duration(ws.config.dr.get("cadence", "90d")).total_seconds()
                                         / 86400, 1)})


def backup_outcome(ws, policy: str, result: dict | None = None, error: str | None = None) -> None:
    """After a backup (CLI or scheduler, after its last retry): `failure` for each failed run,
    `verify_failed` when the verification after it found problems, `recovered` on the first
    success after a failure."""
    if not ws.config.alerts:
        return
    failed = error is not None or (result or {}).get("status") != "succeeded"
    error = error or (result or {}).get("error")
    verification = (result or {}).get("verification")
    if verification and verification["status"] != "ok":
        fire(ws, "verify_failed", policy, f"verify after backup {result['id']} of {policy} failed: "
             f"{verification['problems'][0] if verification['problems'] else verification['status']}",
             {"policy": policy, "backup_id": result["id"], "problems": verification["problems"][:20]})
    details = {"policy": policy, "backup_id": (result or {}).get("id"), "error": error}
    if failed:
        fire(ws, "failure", policy, f"backup of {policy} failed: {error}", details)
    try:
        changed = ws.catalog.set_condition("failure", policy, failed, error or "")
    except Exception:
        return
    if changed and not failed:
        recovered(ws, "failure", policy, f"backup of {policy} succeeded again ({result['id']})", details)


# ----- delivery ------------------------------------------------------------------------------


def _deliver(index: int, alert: dict, payload: dict) -> dict:
    channel = "command" if "command" in alert else "webhook" if "webhook_url" in alert else "email"
    started = time.monotonic()
    record = {"at": payload["at"], "event": payload["event"], "subject": payload["subject"],
              "alert": alert.get("name") or f"alert[{index}]", "channel": channel,
              "target": describe(alert), "status": "delivered", "attempts": 1, "error": None}
    try:
        record["attempts"] = {"command": _command, "webhook": _webhook, "email": _email}[channel](alert, payload) or 1
    except _Failed as exc:
        record.update(status="failed", error=redact(str(exc)), attempts=exc.attempts)
    except Exception as exc:  # a hook must never break the process that fires it
        record.update(status="failed", error=redact(f"{type(exc).__name__}: {exc}"))
    record["seconds"] = round(time.monotonic() - started, 3)
    if record["status"] != "delivered":
        print(f"insite-console: alert {record['alert']} ({channel} {record['target']}) for {payload['event']} "
              f"failed: {record['error']}", file=sys.stderr)
    return record


def describe(alert: dict) -> str:
    """What a delivery went to, safe to store: a command's program, a webhook's scheme and host
    (its path and query may be a token), an email's recipients and server."""
    if "command" in alert:
        return alert["command"][0]
    if "webhook_url" in alert:
        parts = urlsplit(alert["webhook_url"])
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    email = alert["email"]
    return f"{', '.join(email['to'])} via {email['host']}:{email.get('port', 25)}"


class _Failed(Exception):
    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message)
        self.attempts = attempts


def _body(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True).encode()


def _command(alert: dict, payload: dict) -> int:
    """The event as JSON on stdin; a non-zero exit or the timeout is a failed delivery. The
    command runs in its own process group, killed whole at the timeout: a shell's children
    would otherwise keep its pipes open and the wait going."""
    try:
        process = subprocess.Popen(alert["command"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise _Failed(f"cannot run {alert['command'][0]}: {exc.strerror}") from None
    try:
        _, stderr = process.communicate(_body(payload), timeout=alert["timeout"])
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise _Failed(f"{alert['command'][0]} did not finish within {alert['timeout']}s (killed)") from None
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise _Failed(f"{alert['command'][0]} exited {process.returncode}" + (f": {tail[0][:300]}" if tail[0] else ""))
    return 1


def _webhook(alert: dict, payload: dict) -> int:
    """POST the JSON; retried on a network error or a 5xx, all within `timeout` seconds."""
    import urllib.error
    import urllib.request

    body = _body(payload)
    headers = {"Content-Type": "application/json", "User-Agent": "insite-console"}
    if alert.get("secret_env"):
        secret = os.environ.get(alert["secret_env"])
        if not secret:
            raise _Failed(f"environment variable {alert['secret_env']} (secret_env) is not set; not sent unsigned")
        headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    deadline = time.monotonic() + alert["timeout"]
    attempts = 1 + alert["retries"]
    error = ""
    for attempt in range(1, attempts + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Failed(f"no answer within {alert['timeout']}s ({error or 'timed out'})", attempt - 1)
        request = urllib.request.Request(alert["webhook_url"], data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=left) as response:
                response.read(65536)
            return attempt
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500:
                raise _Failed(error, attempt) from None  # the hook refused it: sending again won't help
        except (urllib.error.URLError, OSError) as exc:
            error = str(getattr(exc, "reason", exc))
        if attempt < attempts:
            time.sleep(min(0.5 * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
    raise _Failed(f"{error} (after {attempts} attempt(s))", attempts)


def _email(alert: dict, payload: dict) -> int:
    import smtplib
    from email.message import EmailMessage

    settings = alert["email"]
    message = EmailMessage()
    message["Subject"] = f"[insite] {payload['event']}: {payload['subject']}"
    message["From"] = settings["from"]
    message["To"] = ", ".join(settings["to"])
    message.set_content(payload["message"] + "\n\n" + json.dumps(payload, indent=2, sort_keys=True))
    password = None
    if settings.get("password_env"):
        password = os.environ.get(settings["password_env"])
        if not password:
            raise _Failed(f"environment variable {settings['password_env']} (password_env) is not set")
    try:
        with smtplib.SMTP(settings["host"], settings.get("port", 25), timeout=alert["timeout"]) as smtp:
            if settings.get("starttls"):
                smtp.starttls()
            if password is not None:
                smtp.login(settings.get("username", settings["from"]), password)
            smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise _Failed(f"SMTP {settings['host']}:{settings.get('port', 25)}: {exc}") from None
    return 1
