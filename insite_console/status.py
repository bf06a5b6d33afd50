"""Health per policy: last success, its age against the RPO target, next run, failures; for a
physical PostgreSQL source also the WAL archive (lag, and gaps: health `wal_gap`).

`assess` turns a row into a monitoring plugin's level (Nagios, Icinga, Sensu): `ok`, `warning`
(near the RPO, verification overdue) or `critical` (RPO breached or never met, last run failed,
storage unreachable, WAL gap), each with the reasons; `exit_code` is the plugin's exit status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from insite_console import clock, cron
from insite_console.catalog.db import order_key


def storage_reachability(ws, names) -> dict[str, str | None]:
    """Per storage: None when its repository's config object can be read now, else why not.
    One request per storage: cheap enough for a check that runs every minute."""
    from insite_console.errors import InsiteError, ObjectNotFound
    from insite_console.repo.repository import CONFIG_KEY

    problems: dict[str, str | None] = {}
    for name in sorted(set(names)):
        try:
            ws.storage(name).stat(CONFIG_KEY)
            problems[name] = None
        except ObjectNotFound:
            problems[name] = f"storage {name} holds no repository (run `insite-console init {name}`)"
        except InsiteError as exc:
            problems[name] = f"storage {name} is unreachable: {exc}"
        except Exception as exc:  # an SDK's own error (DNS, TLS, credentials): still "unreachable"
            problems[name] = f"storage {name} is unreachable: {type(exc).__name__}: {exc}"
    return problems


def policy_health(ws, name: str, now: datetime | None = None,
                  storages: dict[str, str | None] | None = None) -> dict[str, Any]:
    """One policy's health; `storages` (from storage_reachability) adds whether its storage
    answers, which costs a request, so the console's refresh leaves it out."""
    now = now or clock.now()
    policy = ws.config.policy(name)
    catalog = ws.catalog
    last_ok = catalog.last_backup(name)
    last_failed = catalog.last_backup(name, status="failed")
    running = catalog.last_backup(name, status="running")
    rpo = clock.parse_duration(policy["rpo"]).total_seconds() if policy.get("rpo") else None
    age = (now - clock.parse_iso(last_ok["finished_at"] or last_ok["started_at"])).total_seconds() if last_ok else None
    # to the microsecond: a failure in the same second as the success before it is still the newest
    failing = bool(last_failed and (not last_ok or order_key(last_failed) > order_key(last_ok)))
    upcoming = cron.next_fire(policy.get("schedule"), now, cron.timezone(ws))
    source = ws.config.sources[policy["source"]]
    window = archive = stream = None
    data_loss, basis = age, "last_backup"
    if source["type"] == "postgresql" and source.get("mode") == "physical":
        from insite_console import wal

        # the data-loss window of a physical source is the archive lag: it restores to its newest
        # archived WAL, not only to its last base backup
        window = wal.restorable_window(ws, policy["source"], now)
        lag = window["archive_lag_seconds"]
        if lag is not None and age is not None:
            data_loss, basis = min(lag, age), "wal_archive_lag"
        # read-only here (no catalog sync): `wal` and `verify --wal` make the catalog match storage
        archive = wal.archive_check(ws, policy["source"], sync=False)
        from insite_console.wal_stream import stream_state

        stream = stream_state(ws, policy["source"], now)
    if last_ok is None:
        health = "never"
    elif archive and archive["gaps"]:
        health = "wal_gap"  # a restore to the latest point would stop at the gap
    elif rpo is not None and data_loss > rpo:
        health = "breach"
    elif rpo is not None and data_loss > rpo * 0.8:
        health = "warning"
    else:
        health = "ok"
    verify_every = clock.parse_duration(policy["verify_every"]).total_seconds() if policy.get("verify_every") else None
    verified = catalog.last_verification(name) if verify_every or last_ok else None
    return {
        "policy": name, "source": policy["source"], "storage": policy["storage"], "health": health,
        "rpo_seconds": rpo, "last_success_at": last_ok["finished_at"] if last_ok else None,
        "last_success_id": last_ok["id"] if last_ok else None, "age_seconds": age,
        "data_loss_seconds": data_loss, "rpo_basis": basis,
        "last_failure_at": last_failed["started_at"] if last_failed else None,
        "last_failure_error": last_failed["error"] if last_failed else None, "failing": failing,
        "running": running["id"] if running else None, "schedule": policy.get("schedule"),
        "next_run_at": clock.iso(upcoming) if upcoming else None, "restorable_window": window,
        "wal_archive": archive, "wal_stream": stream, "enabled": policy.get("enabled", True),
        "storage_problem": storages.get(policy["storage"]) if storages is not None else None,
        "storage_checked": storages is not None and policy["storage"] in storages,
        "last_verification_at": verified["finished_at"] if verified else None,
        "last_verification_status": verified["status"] if verified else None,
        "last_verification_problem": (json.loads(verified["problems"] or "[]") or [None])[0] if verified else None,
        "verify_overdue": bool(verify_every and last_ok and (
            not verified or (now - clock.parse_iso(verified["finished_at"])).total_seconds() > verify_every)),
        "regular_tests": regular_tests(ws, name, now, last_ok),
    }


def regular_tests(ws, name: str, now: datetime, last_ok: dict | None) -> list[dict[str, Any]]:
    """The policy's scheduled verify and restore test (regular.py): the newest run of each, and
    whether one is overdue (its schedule fired, past a scheduler tick's grace, and none started
    since; only once there is a backup to test)."""
    from insite_console import regular

    policy = ws.config.policy(name)
    tests = []
    for kind, key in regular.KINDS.items():
        if not policy.get(key):
            continue
        last = ws.catalog.last_run(kind, name)
        due = cron.last_fire(policy[key], now - timedelta(seconds=MISSED_GRACE_SECONDS), cron.timezone(ws))
        overdue = bool(policy.get("enabled", True) and last_ok and last_ok["finished_at"]
                       and clock.parse_iso(last_ok["finished_at"]) < due
                       and (last is None or clock.parse_iso(last["started_at"]) < due))
        tests.append({"kind": kind, "what": regular.WORDS[kind], "schedule": policy[key], "last_run_id": last["id"] if last else None,
                      "last_at": last["started_at"] if last else None, "last_status": last["status"] if last else None,
                      "last_error": last["error"] if last else None, "due_at": clock.iso(due), "overdue": overdue})
    return tests


def overview(ws, now: datetime | None = None, check_storage: bool = False) -> list[dict[str, Any]]:
    """Every policy's health; with check_storage, each used storage is asked once and each row
    gets its monitoring level and reasons (see assess)."""
    storages = None
    if check_storage:
        storages = storage_reachability(ws, [p["storage"] for p in ws.config.policies.values()])
    now = now or clock.now()
    scheduler = scheduler_state(ws, now)
    drills = overdue_drills(ws, now)
    rows = [dict(policy_health(ws, name, now, storages), missed_run=missed_run(ws, name, scheduler, now),
                 scheduler=scheduler, drills_overdue=drills.get(name, [])) for name in sorted(ws.config.policies)]
    for row in rows:
        row["level"], row["problems"] = assess(row)
    return rows


def overdue_drills(ws, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Policy -> the DR scenarios covering it (their `policies`) not drilled within `[dr]
    cadence`. Only when the cadence is set in the config: monitoring warns about what the operator
    asked for (`drill report` still lists overdue drills against the default 90 days)."""
    if not ws.config.dr.get("cadence"):
        return {}
    from insite_console.dr import report, scenarios

    cadence = clock.parse_duration(ws.config.dr["cadence"]).total_seconds()
    overdue: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios.load(ws):
        last = report.last_drilled(ws.catalog.drills(scenario.id, limit=report.TREND, finished=True))
        if last and (now - clock.parse_iso(last)).total_seconds() <= cadence:
            continue
        entry = {"scenario": scenario.id, "last_drill_at": last, "cadence": ws.config.dr["cadence"],
                 "cadence_seconds": cadence}
        for name in scenarios.covered_policies(ws, scenario):
            overdue.setdefault(name, []).append(entry)
    return overdue


def assess(row: dict[str, Any]) -> tuple[str, list[str]]:
    """A policy's monitoring level and the reasons for it, worst first."""
    critical, warning = [], []
    rpo = row["rpo_seconds"]
    if row["health"] == "never":
        critical.append("no backup has ever succeeded")
    elif row["health"] == "breach":
        critical.append(f"RPO breached: data-loss window {clock.human_duration(row['data_loss_seconds'])} "
                        f"against an RPO of {clock.human_duration(rpo)}")
    elif row["health"] == "wal_gap":
        critical.append("WAL archive has a gap: " + "; ".join((row["wal_archive"] or {}).get("problems", [])[:1]))
    elif row["health"] == "warning":
        warning.append(f"near the RPO: data-loss window {clock.human_duration(row['data_loss_seconds'])} "
                       f"of {clock.human_duration(rpo)}")
    if row["failing"]:
        critical.append(f"last run failed: {row['last_failure_error']}")
    if row.get("storage_problem"):
        critical.append(row["storage_problem"])
    if row.get("last_verification_status") == "failed":
        critical.append(f"last verification ({row['last_verification_at']}) found problems"
                        + (f": {row['last_verification_problem']}" if row.get("last_verification_problem") else ""))
    for test in row.get("regular_tests", []):
        word = test["what"]
        if test["last_status"] == "failed":
            critical.append(f"last {word} ({test['last_at']}) failed: {test['last_error']}")
        elif test["last_status"] == "incomplete":
            warning.append(f"last {word} ({test['last_at']}) incomplete: {test['last_error']}")
        if test["overdue"]:
            warning.append(f"{word} overdue: due {test['due_at']}, last {test['last_at'] or 'never'}")
    for drill in row.get("drills_overdue", []):
        warning.append(f"DR drill {drill['scenario']} overdue: " + (f"last drilled {drill['last_drill_at']}"
                       if drill["last_drill_at"] else "never drilled") + f" (cadence {drill['cadence']})")
    missed = row.get("missed_run")
    if missed:  # nothing started the run the schedule promised: the RPO is at risk
        (critical if (row.get("scheduler") or {}).get("running") is False else warning).append(
            f"missed {missed['at']}: {missed['reason']}")
    stream = row.get("wal_stream")
    if stream and (stream["running"] is False or stream["last_error"]):  # seen streaming: never silently OK
        warning.append(stream["text"])
    if row.get("verify_overdue"):
        warning.append("verification overdue: last " + (row["last_verification_at"] or "never"))
    if critical:
        return "critical", critical + warning
    return ("warning", warning) if warning else ("ok", [])


EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2}


def exit_code(rows: list[dict[str, Any]]) -> int:
    """The worst level of the enabled policies: 0 OK, 1 WARNING, 2 CRITICAL. A disabled policy
    is shown with its level but does not page: it was switched off on purpose."""
    return max((EXIT_CODES[row["level"]] for row in rows if row.get("enabled", True)), default=0)


HEALTH_WORDS = {"ok": "OK", "warning": "WARN", "breach": "RPO BREACH", "never": "NEVER RUN", "wal_gap": "WAL GAP"}


# ----- scheduler liveness and missed runs (issue 9) ---------------------------------------

MISSED_GRACE_SECONDS = 120  # a due run starts within a scheduler tick (30 s); allow for a busy one


def scheduler_state(ws, now: datetime | None = None) -> dict[str, Any]:
    """Whether a scheduler runs for this catalog, from its heartbeats: running True / False, or
    None when only one-shot `schedule --once` runs (cron) were seen, whose period is unknown."""
    now = now or clock.now()
    beats = ws.catalog.scheduler_beats()
    if not beats:
        return {"running": False, "host": None, "pid": None, "last_tick": None, "age_seconds": None,
                "text": "no scheduler has ever run for this catalog"}
    beat = beats[0]
    age = (now - clock.parse_iso(beat["last_tick"])).total_seconds()
    where = f"on {beat['host']} (pid {beat['pid']})"
    facts = {"host": beat["host"], "pid": beat["pid"], "last_tick": beat["last_tick"], "age_seconds": age}
    if beat["interval_seconds"] is None:
        return dict(facts, running=None, text=f"last `schedule --once` {clock.human_duration(age)} ago {where}")
    stale = age > max(3 * beat["interval_seconds"], 90)
    if beat["stopped_at"] or not beat["alive"] or stale:
        why = "stopped" if beat["stopped_at"] else ("its process is gone" if not beat["alive"] else "no heartbeat")
        return dict(facts, running=False, text=f"not running ({why}; last seen {clock.human_duration(age)} ago "
                                                f"{where})")
    return dict(facts, running=True, text=f"running {where}, last tick {clock.human_duration(age)} ago")


def missed_run(ws, name: str, scheduler: dict[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """The scheduled time a policy's run should have started but did not, and why; None if none.
    Without this the next run moves on silently when no scheduler runs."""
    now = now or clock.now()
    policy = ws.config.policy(name)
    schedule = policy.get("schedule")
    if not schedule or not policy.get("enabled", True):
        return None
    # the newest fire past its grace (a run may take a scheduler tick to start)
    fired = cron.last_fire(schedule, now - timedelta(seconds=MISSED_GRACE_SECONDS), cron.timezone(ws))
    latest = ws.catalog.backups(policy=name, limit=1)
    if latest and (latest[0]["status"] == "running" or clock.parse_iso(latest[0]["started_at"]) >= fired):
        return None
    if scheduler["running"] is False:
        reason = "scheduler not running"
    elif scheduler["running"] is None and (not scheduler["last_tick"]
                                           or clock.parse_iso(scheduler["last_tick"]) < fired):
        reason = "no `schedule --once` run since"
    else:
        reason = "the scheduler did not start it"
    return {"at": clock.iso(fired), "reason": reason}
