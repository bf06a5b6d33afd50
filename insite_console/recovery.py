"""Platform recovery: PostgreSQL, Redis and file trees brought back to one point in time.

A `[recovery.PLAN]` names policies (the components) in the order they come back, a target for
each, optional includes. `plan()` picks each component's restore point (the newest succeeded
backup at or before the time; for physical PostgreSQL the base backup plus WAL replayed to
exactly that time) and runs every component's restore as a dry run: that is the pre-flight
(target reachable, what is overwritten, WAL continuity), so nothing is written while planning.
`run()` restores the components one after another (rolling, each verified against the
baselines its backup recorded before the next starts) or all at once (parallel), and records
the result in the catalog and, sealed, in every repository.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable

from insite_console import clock, restore, who
from insite_console.errors import Cancelled, InsiteError, RestoreRefused
from insite_console.events import CancelToken, Progress
from insite_console.redact import redact

SEALED_PREFIX = "recoveries/"  # audit.RECOVERIES: catalog rebuild reads them back

#: per component: {"component", "status", ...} when it is planned, starts, finishes
EventCallback = Callable[[dict], None]


def _is_physical(ws, source: str) -> bool:
    settings = ws.config.sources.get(source, {})
    return settings.get("type") == "postgresql" and settings.get("mode") == "physical"


def _point_of(backup: dict) -> datetime:
    """The instant a backup's data stands at: its snapshot's (source_info `point`), else its start."""
    point = ((backup.get("info") or {}).get("source_info") or {}).get("point") or {}
    return clock.parse_iso(point.get("at") or backup.get("started_at_precise") or backup["started_at"])


def refuse_future(at: datetime | None, now: datetime) -> None:
    """A point in time after now has no restore point yet, and its "data loss" would be invented."""
    if at is not None and at > now:
        raise RestoreRefused(f"{clock.iso_precise(at)} is in the future (now is {clock.iso(now)}): "
                             "recover to a past time, or to the latest")


def group_point(ws, settings: dict, at: datetime | None, point_id: str | None = None) -> dict | None:
    """The group restore point a recovery comes back to: `point_id`, or with the plan's `group`
    the newest succeeded one at or before `at`; None when the plan uses no group."""
    components = settings["components"]
    if point_id:
        found = ws.catalog.group_points(id_prefix=point_id, limit=2)
        if len(found) != 1:
            raise RestoreRefused(f"no group restore point {point_id!r}" if not found else
                                 f"{point_id!r} names {len(found)} group restore points; give more of the id")
        chosen = found[0]
        if chosen["status"] != "succeeded":
            raise RestoreRefused(f"group restore point {chosen['id']} is {chosen['status']}, not a restore point: "
                                 f"{chosen.get('error')}")
        missing = [c for c in components if c not in {m["policy"] for m in chosen["members"]}]
        if missing:
            raise RestoreRefused(f"group restore point {chosen['id']} of {chosen['group']} holds no backup of "
                                 + ", ".join(missing))
        return chosen
    if not settings.get("group"):
        return None
    for candidate in ws.catalog.group_points(group=settings["group"], status="succeeded", limit=10000):
        if at is None or clock.parse_iso(candidate["point_at"]) <= at:
            return candidate
    raise RestoreRefused(f"no succeeded group restore point of [group.{settings['group']}]"
                         + (f" at or before {clock.iso_precise(at)}" if at else "")
                         + f" (run `insite-console backup --group {settings['group']}`)")


def _named_group_point(ws, components: list[dict]) -> dict | None:
    """The group restore point whose members are exactly the backups chosen, each at its
    member's instant (a physical one replayed to another time is not), if there is one."""
    chosen = {c["policy"]: (c["backup_id"], c["restore_point_at"]) for c in components}
    if any(backup_id is None for backup_id, _ in chosen.values()):
        return None
    for candidate in ws.catalog.group_points(status="succeeded", limit=200):
        members = {m["policy"]: (m["backup_id"], m["point_at"]) for m in candidate["members"]}
        if all(members.get(policy) == pair for policy, pair in chosen.items()):
            return candidate
    return None


def restore_point(ws, policy: str, at: datetime | None) -> tuple[dict, datetime]:
    """The backup a component comes back from, and the time its data stands at.

    Logical backups stand at their start (a dump's snapshot, the RDB's fork, the file walk's
    beginning: what changed after may or may not be in it, so it counts as lost). A physical
    base backup with WAL replays to `at` exactly."""
    source = ws.config.policies[policy]["source"]
    if _is_physical(ws, source):
        from insite_console.sources.pg_restore_physical import pick_base_backup

        backup = pick_base_backup(ws, source, at)
        return backup, at if at is not None else _point_of(backup)
    candidates = [b for b in ws.catalog.backups(policy=policy, status="succeeded")
                  if at is None or _point_of(b) <= at]
    if not candidates:
        raise RestoreRefused(f"no succeeded backup of policy {policy!r}"
                             + (f" at or before {clock.iso_precise(at)}" if at else ""))
    return max(candidates, key=_point_of), _point_of(max(candidates, key=_point_of))


def _check(name: str, status: str, detail: str) -> dict:
    return {"check": name, "status": status, "detail": detail}


def _free_space_check(target: str, need: int) -> dict:
    parent = os.path.abspath(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    if free < need:
        return _check("free space", "failed", f"{clock.human_bytes(free)} free in {parent}, "
                      f"{clock.human_bytes(need)} to write")
    return _check("free space", "ok", f"{clock.human_bytes(free)} free in {parent}, {clock.human_bytes(need)} to write")


def _overwrites(kind: str, dry: dict) -> dict:
    """What the target holds now that the restore replaces, from the component's dry run."""
    if kind == "files":
        summary = dry.get("summary") or {}
        repairs = summary.get("to_repair", 0)
        return {"items": summary.get("to_overwrite", 0) + repairs, "identical": summary.get("identical", 0),
                "what": f"{summary.get('to_overwrite', 0)} existing item(s) overwritten, "
                        + (f"{repairs} identical item(s) with their metadata put back, " if repairs else "")
                        + f"{summary.get('to_create', 0)} created, {summary.get('identical', 0)} already identical"}
    if kind == "redis":
        keys = dry.get("target_keys") or {}
        total = sum(keys.values())
        return {"items": total, "what": f"{total} key(s) at the target now ("
                + (", ".join(f"{db}: {n}" for db, n in sorted(keys.items())) or "empty") + ")"}
    if kind == "postgresql-logical":
        details = dry.get("details") or {}
        existing = details.get("existing_in_target", 0)
        return {"items": existing, "what": f"{existing} relation(s) in the target dropped and recreated"}
    return {"items": 0, "what": "an empty directory becomes PGDATA"}


def plan(ws, name: str, at: datetime | None, events: EventCallback | None = None,
         cancel: CancelToken | None = None, point_id: str | None = None) -> dict[str, Any]:
    """The recovery plan: per component the restore point, data loss, what is overwritten, bytes,
    estimated duration and pre-flight checks; the skew between components. Writes nothing.
    With `point_id`, or a plan whose `group` is set, every component comes back from its
    member of one group restore point."""
    settings = ws.config.recovery(name)
    cancel = cancel or CancelToken()
    now = clock.now()
    refuse_future(at, now)
    target_time = at or now
    throughput = ws.catalog.restore_throughput()
    rate = throughput or restore.DEFAULT_THROUGHPUT
    basis = "measured from past restores" if throughput else "assumed 150 MiB/s (no restore measured yet)"
    chosen_group = group_point(ws, settings, at, point_id)
    members = {m["policy"]: m for m in (chosen_group or {}).get("members", [])}
    components = []
    for policy in settings["components"]:
        cancel.check()
        components.append(_plan_component(ws, settings, policy, at, target_time, rate, basis, members.get(policy)))
        if events:
            events({"component": policy, "status": "planned", "checks_ok": components[-1]["checks_ok"]})
    chosen_group = chosen_group or _named_group_point(ws, components)
    points = [clock.parse_iso(c["restore_point_at"]) for c in components if c.get("restore_point_at")]
    skew = round((max(points) - min(points)).total_seconds(), 6) if len(points) == len(components) and points else None
    seconds = [c["estimated_seconds"] for c in components]
    estimate = (max(seconds) if settings["mode"] == "parallel" else sum(seconds)) if seconds else 0.0
    return {"plan": name, "at": clock.iso_precise(at) if at else None, "latest": at is None and point_id is None,
            "planned_at": clock.iso(now), "mode": settings["mode"], "on_failure": settings["on_failure"],
            "components": components, "skew_seconds": skew,
            "group_point": {k: chosen_group[k] for k in ("id", "group", "point_at")} if chosen_group else None,
            "bytes": sum(c["bytes"] for c in components), "estimated_seconds": round(estimate, 1),
            "estimate_basis": basis, "checks_ok": all(c["checks_ok"] for c in components)}


def _plan_component(ws, settings: dict, policy: str, at: datetime | None, target_time: datetime,
                    rate: float, basis: str, member: dict | None = None) -> dict[str, Any]:
    source = ws.config.policies[policy]["source"]
    source_type = ws.config.sources[source]["type"]
    kind = source_type
    if source_type == "postgresql":
        kind = "postgresql-physical" if _is_physical(ws, source) else "postgresql-logical"
    target = settings["targets"][policy]
    includes = settings["includes"].get(policy, [])
    rpo = ws.config.policies[policy].get("rpo")
    rpo_seconds = clock.parse_duration(rpo).total_seconds() if rpo else None
    item: dict[str, Any] = {"policy": policy, "source": source, "kind": kind, "target": redact(target),
                            "includes": includes, "backup_id": None, "restore_point_at": None,
                            "data_loss_seconds": None, "rpo_seconds": rpo_seconds, "within_rpo": None,
                            "overwrites": None, "bytes": 0, "estimated_seconds": 0.0, "checks": []}
    checks = item["checks"]
    try:
        if member is not None:  # one member of a group restore point, at its exact instant
            backup = ws.catalog.backup(member["backup_id"])
            if backup is None or backup["status"] != "succeeded":
                raise RestoreRefused(f"backup {member['backup_id']} of the group restore point is "
                                     + ("not in the catalog" if backup is None else backup["status"]))
            point = clock.parse_iso(member["point_at"])
        else:
            backup, point = restore_point(ws, policy, at)
    except InsiteError as exc:
        checks.append(_check("restore point", "failed", redact(str(exc))))
        item["checks_ok"] = False
        return item
    loss = max(0.0, (target_time - point).total_seconds())
    # physical: WAL replayed to this instant (None: to the end of the archive)
    replay_to = point if kind == "postgresql-physical" and (at is not None or member is not None) else None
    item.update(backup_id=backup["id"], restore_point_at=clock.iso_precise(point), data_loss_seconds=round(loss, 3),
                within_rpo=None if rpo_seconds is None else loss <= rpo_seconds,
                replay_to=clock.iso_precise(replay_to) if replay_to else None)
    checks.append(_check("restore point", "ok", f"backup {backup['id']} of {backup['started_at']}"))
    if kind == "postgresql-physical":
        from insite_console import wal

        window = wal.restorable_window(ws, source)
        item["restorable_window"] = {"oldest": window["oldest"], "newest": window["newest"]}  # checked by the dry run
    try:
        dry = restore.run(ws, backup["id"], target, includes=includes, dry_run=True, at=replay_to)
    except InsiteError as exc:
        checks.append(_check("target reachable", "failed", redact(str(exc))))
        item["checks_ok"] = False
        return item
    checks.append(_check("target reachable", "ok", f"the dry run reached {redact(target)}"))
    for problem in dry.get("problems", []):  # physical: WAL continuity, free space, empty target
        checks.append(_check("WAL continuity" if "WAL" in problem or "segment" in problem else "pre-flight",
                             "failed", problem))
    if kind == "postgresql-physical" and not dry.get("problems"):
        checks.append(_check("WAL continuity", "ok", f"{(dry.get('details') or {}).get('wal_segments')} segment(s) "
                             "archived without a gap up to the target"))
    item["overwrites"] = _overwrites(kind, dry)
    if kind == "files":
        item["bytes"] = (dry.get("summary") or {}).get("bytes_to_write", 0)
        checks.append(_free_space_check(target, item["bytes"]))
    else:
        item["bytes"] = int(backup.get("bytes_read") or 0)
        if kind == "postgresql-physical":
            pass  # free space is one of the physical restore's own pre-flight problems
        elif kind == "redis" and not str(target).startswith(("redis://", "rediss://", "unix://")):
            checks.append(_free_space_check(target, item["bytes"]))
        else:
            checks.append(_check("free space", "unknown", "a remote server's free space cannot be read from here"))
    item["estimated_seconds"] = round(item["bytes"] / rate, 1)
    item["estimate_basis"] = basis
    item["notes"] = dry.get("notes", [])
    item["checks_ok"] = all(c["status"] != "failed" for c in checks)
    return item


# ----- execution -----------------------------------------------------------------------------


def _verified(kind: str, outcome: dict) -> tuple[bool | None, str]:
    """Did the restored component match the figures its backup recorded? None: no check could be made."""
    if kind == "files":
        if outcome.get("verified"):
            return True, "every chunk authenticated and each file's length checked against the backup"
        return None, "the restore made no verification"
    rows = outcome.get("baselines") or []
    if kind == "redis":
        checked = [r for r in rows if r.get("backup") is not None and r.get("target_now") is not None]
        bad = [r for r in checked if r["target_now"] != r["backup"]]
        if bad:
            return False, "key counts differ from the backup: " + ", ".join(
                f"{r['object']} {r['target_now']} now, {r['backup']} at backup" for r in bad)
        if not checked:
            return None, "the backup recorded no key counts to compare"
        return True, "key counts match the backup: " + ", ".join(f"{r['object']} {r['backup']}" for r in checked)
    if kind == "postgresql-logical":
        bad = [r for r in rows if r.get("match") is False]
        exact = [r for r in rows if r.get("match") is True]
        if bad:
            return False, "row counts differ from the backup: " + ", ".join(
                f"{r['object']} {r['restored']} restored, {r['backup']} at backup" for r in bad[:10])
        if not exact:
            return None, "the backup recorded only estimated row counts"
        return True, f"exact row counts of {len(exact)} table(s) match the backup"
    recovered = outcome.get("recovery")
    if recovered:  # started: replay is over, judged on the live server (restore_physical checks the position)
        if recovered["state"] == "promoted":
            return True, (f"the restored server replayed WAL to {recovered['replayed_to']} (every segment up to the "
                          f"time) and was promoted on timeline {recovered['timeline']}; running on "
                          f"127.0.0.1:{recovered['port']}")
        return False, f"the restored server is {recovered['state']}, not promoted (log {recovered['log']})"
    return None, ("PGDATA laid out; WAL is replayed when the server starts, so nothing could be compared yet "
                  "(start_ports starts it and waits)")


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


def run(ws, name: str, at: datetime | None, yes: bool = False, reason: str | None = None,
        progress: Callable[[Progress], None] | None = None, events: EventCallback | None = None,
        cancel: CancelToken | None = None, planned: dict | None = None, point_id: str | None = None) -> dict[str, Any]:
    """Recover the platform as `plan()` (or `planned`, the plan shown to the operator) says.

    `progress` gets each component's Progress with `operation` = "recover:POLICY"; `events` a dict
    when a component starts and finishes; `cancel` stops between units of work (the component
    running ends `cancelled`, those not started `skipped`)."""
    cancel = cancel or CancelToken()
    planned = planned or plan(ws, name, at, cancel=cancel, point_id=point_id)
    if not planned["checks_ok"]:
        failed = [f"{c['policy']}: {k['check']}: {k['detail']}" for c in planned["components"]
                  for k in c["checks"] if k["status"] == "failed"]
        raise RestoreRefused("recovery pre-flight failed; nothing was restored:\n  - " + "\n  - ".join(failed))
    overwritten = [c for c in planned["components"] if (c.get("overwrites") or {}).get("items")]
    if overwritten and not yes:
        raise RestoreRefused("the recovery would overwrite what the targets hold ("
                             + "; ".join(f"{c['policy']}: {c['overwrites']['what']}" for c in overwritten)
                             + "); pass --yes to overwrite, or --dry-run to see the plan")
    reason = reason.strip() if reason and reason.strip() else None
    targets = ws.config.recovery(name)["targets"]
    production = [c["policy"] for c in planned["components"]
                  if restore.over_source(ws, {"source": c.get("source", "")}, targets[c["policy"]])]
    if production and reason is None:
        raise RestoreRefused(f"the recovery restores over production ({', '.join(production)}: the source's own "
                             "location): it needs a reason or ticket id (--reason \"INC-123: ...\"); nothing was restored")
    user, host = _who()
    started = clock.now()
    record: dict[str, Any] = {
        "id": clock.new_id(), "plan": name, "at": planned["at"], "latest": planned["latest"], "mode": planned["mode"],
        "on_failure": planned["on_failure"], "status": "running", "started_at": clock.iso_precise(started),
        "finished_at": None, "recovery_seconds": None, "user": user, "host": host, "origin": who.origin(), "reason": reason,
        "skew_seconds": planned["skew_seconds"],
        "components": [{"policy": c["policy"], "kind": c["kind"], "backup_id": c["backup_id"],
                        "restore_point_at": c["restore_point_at"], "data_loss_seconds": c["data_loss_seconds"],
                        "target": c["target"], "includes": c["includes"], "status": "pending", "verified": None,
                        "verification": None, "started_at": None, "finished_at": None, "bytes": 0, "error": None,
                        "restore_id": None, "replay_to": c.get("replay_to")}
                       for c in planned["components"]],
        "group_point": planned.get("group_point"),
    }
    lock = threading.Lock()
    ws.catalog.insert_recovery(record)
    # a run of its own, so Live jobs (any console) shows the recovery and the component it is on;
    # each component's restore is a run too, with its bytes and files
    ws.catalog.start_run(record["id"], "recover", name)
    ws.catalog.event(record["id"], f"recovery {record['id']} of plan {name} started by {user}@{host}"
                     + (f": {reason}" if reason else ""))

    def one(index: int) -> None:
        item = record["components"][index]
        if cancel.cancelled:
            item["status"], item["error"] = "skipped", "not started: " + cancel.reason
            return
        item["status"], item["started_at"] = "running", clock.iso_precise(clock.now())
        if events:
            events({"component": item["policy"], "status": "running"})
        label = f"recover:{item['policy']}"
        forward = (lambda p: progress(replace(p, operation=label, run_id=record["id"]))) if progress else None
        with lock:
            ws.catalog.insert_recovery(record)  # a console watching the record sees the component start
            running = [c["policy"] for c in record["components"] if c["status"] == "running"]
            ws.catalog.update_run(record["id"], phase=f"restoring {', '.join(running)}",
                                  files_done=sum(c["status"] == "succeeded" for c in record["components"]),
                                  files_total=len(record["components"]), current=", ".join(running))
        settings = ws.config.recovery(name)
        target = settings["targets"][item["policy"]]
        try:
            outcome = restore.run(ws, item["backup_id"], target, includes=item["includes"], yes=yes,
                                  at=clock.parse_iso(item["replay_to"]) if item["replay_to"] else None,
                                  progress=forward, cancel=cancel,
                                  options={"replace_all": not item["includes"],
                                           "start_port": settings["start_ports"].get(item["policy"])},
                                  reason=reason)
            item["restore_id"], item["bytes"] = outcome["id"], outcome.get("bytes_written", 0)
            if outcome.get("recovery"):
                item["server"] = outcome["recovery"]  # a started physical component: where it runs
            item["verified"], item["verification"] = _verified(item["kind"], outcome)
            item["status"] = "failed" if item["verified"] is False else "succeeded"
            if item["verified"] is False:
                item["error"] = "verification failed: " + item["verification"]
            elif item["kind"] == "postgresql-physical" and not outcome.get("recovery"):
                item["status"] = "incomplete"  # its files are there; the database is not back until WAL is replayed
                item["error"] = (f"PGDATA laid out in {target}, not recovered: start a server on it to replay WAL "
                                 "to the time (or give the component a start_ports entry)")
        except Cancelled as exc:
            item["status"], item["error"] = "cancelled", str(exc)
        except InsiteError as exc:
            item["status"], item["error"] = "failed", redact(str(exc))
        except Exception as exc:  # a bug in one component must not leave the record "running"
            item["status"], item["error"] = "failed", redact(f"{type(exc).__name__}: {exc}")
        item["finished_at"] = clock.iso_precise(clock.now())
        with lock:
            ws.catalog.insert_recovery(record)
        ws.catalog.event(record["id"], f"{item['policy']}: {item['status']}"
                         + (f": {item['error']}" if item["error"] else ""),
                         level="info" if item["status"] == "succeeded" else "error")
        if events:
            events({"component": item["policy"], "status": item["status"], "verified": item["verified"],
                    "error": item["error"]})

    indexes = range(len(record["components"]))
    if planned["mode"] == "parallel":
        with ThreadPoolExecutor(max(1, len(record["components"])), thread_name_prefix="insite-recover") as pool:
            list(pool.map(one, indexes))
    else:
        for index in indexes:
            one(index)
            status = record["components"][index]["status"]
            if status == "cancelled" or (status == "failed" and planned["on_failure"] == "stop"):
                for rest in record["components"][index + 1:]:
                    rest["status"] = "skipped"
                    rest["error"] = ("not started: the recovery was cancelled" if status == "cancelled" else
                                     f"not started: {record['components'][index]['policy']} failed "
                                     "and on_failure is \"stop\"")
                break
    return _finish(ws, record, started)


def _finish(ws, record: dict, started: datetime) -> dict[str, Any]:
    statuses = [c["status"] for c in record["components"]]
    if "cancelled" in statuses or ("skipped" in statuses and "failed" not in statuses):
        status = "cancelled"
    elif all(s == "succeeded" for s in statuses):
        status = "succeeded"
    elif "incomplete" in statuses and "failed" not in statuses:
        status = "incomplete"  # every component restored, not every one recovered (a PGDATA not started)
    elif "succeeded" in statuses:
        status = "partial"
    else:
        status = "failed"
    finished = clock.now()
    record.update(status=status, finished_at=clock.iso_precise(finished),
                  recovery_seconds=round((finished - started).total_seconds(), 3),
                  recovered=[c["policy"] for c in record["components"] if c["status"] == "succeeded"],
                  failed=[c["policy"] for c in record["components"] if c["status"] != "succeeded"])
    ws.catalog.insert_recovery(record)
    ws.catalog.finish_run(record["id"], status if status in ("succeeded", "cancelled", "incomplete") else "failed",
                          None if status == "succeeded" else
                          f"{status}: " + "; ".join(f"{c['policy']} {c['status']}" for c in record["components"]
                                                    if c["status"] != "succeeded"))
    if status == "cancelled":  # who asked (a console records it before its signal), else this process's user
        record["cancelled_by"] = (ws.catalog.run(record["id"]) or {}).get("cancelled_by")
    ws.catalog.event(record["id"], f"recovery {record['id']} {status} in {clock.human_duration(record['recovery_seconds'])}",
                     level="info" if status == "succeeded" else "error")
    record["stored_in"] = ws.seal_everywhere(SEALED_PREFIX + record["id"], json.dumps(record, sort_keys=True).encode())
    ws.catalog.insert_recovery(record)
    return record


def history(ws, name: str | None = None, limit: int = 50) -> list[dict]:
    return ws.catalog.recoveries(plan=name, limit=limit)


def recoverable(ws, name: str) -> dict[str, Any]:
    """The newest point in time to which the whole platform of plan `name` can be recovered.

    With a group: the newest group restore point. Otherwise the oldest of the components' newest
    restore points (a physical cluster's: its newest archived WAL): after it, at least one
    component has nothing; `limited_by` names that component. `skew_seconds` is the spread of
    the restore points a recovery to that time would use; `problem` says why there is none."""
    settings = ws.config.recovery(name)
    result: dict[str, Any] = {"plan": name, "point_at": None, "group_point": None, "limited_by": None,
                              "skew_seconds": None, "problem": None}
    if settings.get("group"):
        newest = ws.catalog.group_points(group=settings["group"], status="succeeded", limit=1)
        if not newest:
            result["problem"] = f"no group restore point of [group.{settings['group']}] yet"
            return result
        result.update(point_at=newest[0]["point_at"], group_point=newest[0]["id"],
                      skew_seconds=newest[0]["skew_seconds"])
        return result
    newest_points: dict[str, datetime] = {}
    for policy in settings["components"]:
        source = ws.config.policies[policy]["source"]
        if _is_physical(ws, source):
            from insite_console import wal

            newest = wal.restorable_window(ws, source)["newest"]
            if newest is None:
                result["problem"] = f"{policy}: no archived WAL after a base backup"
                return result
            newest_points[policy] = clock.parse_iso(newest)
            continue
        backups = ws.catalog.backups(policy=policy, status="succeeded", limit=1)
        if not backups:
            result["problem"] = f"{policy}: no succeeded backup"
            return result
        newest_points[policy] = _point_of(backups[0])
    limited_by = min(newest_points, key=newest_points.get)
    at = newest_points[limited_by]
    used = []
    for policy in settings["components"]:
        try:
            used.append(restore_point(ws, policy, at)[1] if not _is_physical(ws, ws.config.policies[policy]["source"])
                        else at)
        except InsiteError as exc:
            result["problem"] = f"{policy}: {redact(str(exc))}"
            return result
    result.update(point_at=clock.iso_precise(at), limited_by=limited_by,
                  skew_seconds=round((max(used) - min(used)).total_seconds(), 6))
    return result
