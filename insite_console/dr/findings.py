"""The improvement plan: what each drill taught, as actions with an owner and a due date.

A drill's record gets its findings when it ends: each step over its estimate, each failed,
skipped or not-run step, each escalation that fired and a missed RTO or RPO become an action
owned by the step's role (a drill-wide one by the role of the plan's first step, who declared
the incident), due before the next drill is (the drill's start plus `[dr] cadence`). The team
adds its own during the drill (`Drill.finding`) or after it (`add`, `drill finding ID TEXT`);
those are kept apart (`source = "operator"`) since a later drill does not make them moot.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from insite_console import clock
from insite_console.errors import UsageError


def due_after(started_at: str, cadence_seconds: float) -> str:
    return clock.iso(clock.parse_iso(started_at) + timedelta(seconds=cadence_seconds))


def derive(record: dict, cadence_seconds: float) -> list[dict]:
    """The findings of a finished drill's record (its steps, events and figures)."""
    steps = record.get("steps", [])
    due = due_after(record["started_at"], cadence_seconds)
    lead = steps[0]["role"] if steps else ""
    d = clock.human_duration
    found = []

    def add(kind: str, text: str, owner: str, step: str | None = None) -> None:
        found.append({"kind": kind, "step": step, "text": text, "owner": owner, "due": due, "source": "drill",
                      "drill": record["id"]})

    for s in steps:
        if s["status"] == "failed":
            add("failed_step", f"step {s['id']} ({s['action']}) failed: {s.get('notes') or 'no note'}; fix the cause "
                "and drill it again", s["role"], s["id"])
        elif s["status"] in ("skipped", "not run", "blocked", "pending"):
            add("not_carried_out", f"step {s['id']} ({s['action']}) was {s['status']}"
                + (f" ({s['notes']})" if s.get("notes") else "") + ": make it possible to carry out", s["role"], s["id"])
        if s.get("seconds") is not None and s["seconds"] > s["estimate_seconds"] + 1e-6:
            add("over_estimate", f"step {s['id']} ({s['action']}) took {d(s['seconds'])} against its estimate of "
                f"{d(s['estimate_seconds'])}: speed it up or correct the estimate", s["role"], s["id"])
    covered = {f"step {f['step']}:" for f in found if f["kind"] == "not_carried_out"}
    for what in record.get("missing", []):  # a restore step dropped from the plan, data loss not measured, ...
        if not any(what.startswith(prefix) for prefix in covered):
            add("not_carried_out", f"{what}: make it possible to carry out, or the drill cannot pass", lead)
    for e in record.get("events", []):
        if e["type"] == "escalation":
            add("escalation", f"escalation level {e['level']} fired at {d(e['t'])} ({e['trigger']}): review why, "
                "and whether the notified roles answered in time", (e.get("notify") or [lead])[0])
    if record.get("meets_rto") is False and record.get("status") != "cancelled":
        add("missed_rto", f"recovery took {d(record['recovery_seconds'])} against the RTO of "
            f"{d(record['rto_seconds'])}: shorten the critical path", lead)
    if record.get("meets_rpo") is False:
        add("missed_rpo", f"data loss of {d(record['data_loss_seconds'])} against the RPO of "
            f"{d(record['rpo_seconds'])}: back up more often", lead)
    for e in record.get("events", []):
        if e["type"] == "finding":
            found.append({"kind": "operator", "step": e.get("step"), "text": e["text"], "owner": e["owner"],
                          "due": e.get("due") or due, "source": "operator", "by": e.get("by"), "drill": record["id"]})
    for e in found:
        e.setdefault("by", None)
    return found


def parse_due(text: str | None, now: datetime) -> str | None:
    """A due date as typed: a duration from now (30d), a date (2027-01-31, local midnight) or a time."""
    if not text:
        return None
    try:
        return clock.iso(now + clock.parse_duration(text))
    except ValueError:
        pass
    try:
        return clock.iso(clock.parse_when(text, now, clock.local_zone()))
    except ValueError:
        raise UsageError(f"--due {text!r}: give a duration from now (30d), a date (2027-01-31) or a time "
                         "(2027-01-31T12:00:00Z)") from None


def add(ws, drill_id: str, text: str, owner: str, due: str | None = None, by: str = "operator") -> dict:
    """A finding entered after the drill: into its record, in the catalog and the repositories."""
    from insite_console.dr import history

    record = history.get(ws, drill_id)
    if record.get("status") == "running":
        raise UsageError(f"drill {record['id']} is still running: add the finding in the drill")
    if not text.strip() or not owner.strip():
        raise UsageError("a finding needs a text and an --owner")
    cadence = clock.parse_duration(ws.config.dr.get("cadence", "90d")).total_seconds()
    finding = {"kind": "operator", "step": None, "text": text.strip(), "owner": owner.strip(),
               "due": parse_due(due, clock.now()) or due_after(record["started_at"], cadence), "source": "operator",
               "by": by, "drill": record["id"], "added_at": clock.iso(clock.now())}
    record.setdefault("findings", []).append(finding)
    record["stored_in"] = ws.seal_everywhere(history.PREFIX + record["id"], json.dumps(record, sort_keys=True).encode())
    ws.catalog.insert_drill(record)
    return finding


def plan(ws, scenario_ids: list[str], now: datetime) -> list[dict]:
    """The improvement plan over every scenario: the findings of its newest drill (a cancelled
    one supersedes nothing), and the team's own findings of older drills; soonest due first,
    each marked overdue or not."""
    actions = []
    for sid in scenario_ids:
        rows = ws.catalog.drills(sid, limit=50, finished=True)
        newest = next((row["id"] for row in rows if row["status"] != "cancelled"), None)
        for row in rows:
            for f in row["record"].get("findings", []):
                if row["id"] == newest or f.get("source") == "operator":
                    actions.append({**f, "scenario": sid,
                                    "overdue": clock.parse_iso(f["due"]) < now if f.get("due") else False})
    return sorted(actions, key=lambda f: (f.get("due") or "", f["scenario"]))
