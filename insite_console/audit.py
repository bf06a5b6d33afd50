"""Restore history and audit: every restore, platform recovery and DR drill in one list, with
who ran it (OS user, host, origin), when, what (backup, includes), where (target), the outcome,
how long it took and why (the reason asked for over production).

A restore's record is sealed into every repository (`sealed/restores/<id>`) when it ends, as
drills (`sealed/drills/`) and recoveries (`sealed/recoveries/`) are, so `catalog rebuild`
brings the history back with the backups."""

from __future__ import annotations

import json

from insite_console import clock
from insite_console.errors import InsiteError

RESTORES = "restores/"
KINDS = ("restore", "recovery", "drill")


def seal_restore(ws, restore_id: str) -> dict | None:
    """The finished restore's catalog row, sealed into every repository; where it went (None
    if the row is gone). Never raises: the restore's own outcome stands either way."""
    row = ws.catalog.restore(restore_id)
    if row is None:
        return None
    try:
        where = ws.seal_everywhere(RESTORES + restore_id, json.dumps(row, sort_keys=True).encode())
    except InsiteError as exc:
        where = {"catalog": True, "repositories": [], "problems": [str(exc)]}
    if where["problems"]:
        ws.catalog.event(restore_id, "restore record not sealed into every repository: "
                         + "; ".join(where["problems"]), level="warning")
    return where


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    return round((clock.parse_iso(finished) - clock.parse_iso(started)).total_seconds(), 3)


def _restore_entry(row: dict) -> dict:
    return {
        "kind": "restore", "id": row["id"], "status": row["status"],
        "user": row.get("user"), "host": row.get("host"), "origin": row.get("origin"),
        "started_at": row["started_at"], "finished_at": row.get("finished_at"),
        "duration_seconds": _seconds(row["started_at"], row.get("finished_at")),
        "what": {"backup_id": row["backup_id"], "policy": row.get("policy"), "includes": row.get("includes") or []},
        "target": row["target"], "over_source": bool(row.get("over_source")), "reason": row.get("reason"),
        "files": row.get("files", 0), "bytes_written": row.get("bytes_written", 0), "error": row.get("error"),
    }


def _recovery_entry(record: dict) -> dict:
    components = record.get("components", [])
    return {
        "kind": "recovery", "id": record["id"], "status": record["status"],
        "user": record.get("user"), "host": record.get("host"), "origin": record.get("origin"),
        "started_at": record["started_at"], "finished_at": record.get("finished_at"),
        "duration_seconds": record.get("recovery_seconds"),
        "what": {"plan": record.get("plan"), "at": record.get("at"),
                 "backups": [{"policy": c["policy"], "backup_id": c["backup_id"], "includes": c.get("includes") or []}
                             for c in components]},
        "target": ", ".join(f"{c['policy']}: {c['target']}" for c in components),
        "over_source": None, "reason": record.get("reason"),
        "files": None, "bytes_written": sum(c.get("bytes") or 0 for c in components),
        "error": "; ".join(f"{c['policy']}: {c['error']}" for c in components if c.get("error")) or None,
    }


def _drill_entry(row: dict) -> dict:
    record = row.get("record") or {}
    steps = record.get("steps") or row.get("steps") or []
    return {
        "kind": "drill", "id": row["id"], "status": row["status"],
        "user": record.get("user"), "host": record.get("host"), "origin": "drill",
        "started_at": row["started_at"], "finished_at": row.get("finished_at"),
        "duration_seconds": _seconds(row["started_at"], row.get("finished_at")),
        "what": {"scenario": row["scenario"], "mode": row.get("mode"),
                 "backups": sorted({s["backup_id"] for s in steps if s.get("backup_id")})},
        "target": ", ".join(sorted({str(s["scratch"]) for s in steps if s.get("scratch")})) or None,
        "over_source": False, "reason": record.get("reason"),
        "files": None, "bytes_written": sum(s.get("bytes_written") or 0 for s in steps),
        "error": "; ".join(f"{s['id']}: {s['status']}" for s in steps if s.get("status") == "failed") or None,
    }


def history(ws, limit: int = 200, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Every real restore (dry runs are plans, not restores), recovery and drill, newest first."""
    catalog = ws.catalog
    entries = []
    if "restore" in kinds:
        entries += [_restore_entry(r) for r in catalog.restores(limit=limit) if not r["dry_run"]]
    if "recovery" in kinds:
        entries += [_recovery_entry(r) for r in catalog.recoveries(limit=limit)]
    if "drill" in kinds:
        entries += [_drill_entry(r) for r in catalog.drills(limit=limit)]
    entries.sort(key=lambda e: (clock.iso_precise(clock.parse_iso(e["started_at"])), e["id"]), reverse=True)
    return entries[:limit]


def who_text(entry: dict) -> str:
    if not entry.get("user"):
        return "unrecorded"
    return f"{entry['user']}@{entry.get('host') or '?'}" + (f" · {entry['origin']}" if entry.get("origin") else "")


def what_text(entry: dict) -> str:
    what = entry["what"]
    if entry["kind"] == "restore":
        parts = what["backup_id"] + (f" ({what['policy']})" if what.get("policy") else "")
        return parts + (f", only {', '.join(what['includes'])}" if what["includes"] else "")
    if entry["kind"] == "recovery":
        return f"plan {what['plan']}: " + ", ".join(f"{b['policy']} {b['backup_id']}" for b in what["backups"])
    return f"{what['mode'] or 'drill'} of {what['scenario']}"
