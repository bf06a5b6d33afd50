"""Run a DR drill: carry out a scenario's plan, time every step, and judge it against RTO/RPO.

Automated steps run for real: `check_rpo` measures the data loss a recovery would have now
(age of the newest restore point), `verify` deep- or quick-verifies it, `restore` restores it
into a scratch folder under the state directory (removed afterwards) and checks what came
back against the manifest. `manual` steps are played back with their expected duration.
The recovery time is the critical path through the plan's dependencies.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from insite_console import clock, restore, verify
from insite_console.errors import Cancelled, InsiteError
from insite_console.events import CancelToken, ProgressCallback, ProgressReporter
from insite_console.dr.scenarios import Scenario, Step, find, order


def _run_step(ws, step: Step, drill_id: str, deep: bool, cancel: CancelToken) -> dict[str, Any]:
    """Carry out one automated step; returns its outcome (status, notes, figures)."""
    last = ws.catalog.last_backup(step.policy)
    if last is None:
        return {"status": "failed", "notes": f"policy {step.policy} has no restore point"}
    if step.kind == "check_rpo":
        policy = ws.config.policy(step.policy)
        loss = (clock.now() - clock.parse_iso(last["finished_at"])).total_seconds()
        limit = clock.parse_duration(policy["rpo"]).total_seconds() if policy.get("rpo") else None
        ok = limit is None or loss <= limit
        return {"status": "passed" if ok else "failed", "data_loss_seconds": loss, "backup_id": last["id"],
                "notes": f"newest restore point {last['id']} is {clock.human_duration(loss)} old"
                         + (f" (RPO {clock.human_duration(limit)})" if limit else "")}
    if step.kind == "verify":
        result = verify.run(ws, last["id"], deep=deep, cancel=cancel)
        return {"status": "passed" if result["status"] == "ok" else "failed", "backup_id": last["id"],
                "notes": "; ".join(result["problems"][:3]) or f"{result['objects']} packs verified"}
    source_type = last["source_type"]
    if source_type == "postgresql" and ws.config.sources.get(last["source"], {}).get("mode", "logical") == "logical":
        return {"status": "skipped", "backup_id": last["id"],
                "notes": "a logical PostgreSQL restore needs a scratch database: restore it by hand with "
                         f"`insite-console restore {last['id']} --target DSN`"}
    storage = None
    if step.off_site:
        copies = [s for s in ws.catalog.backup_storages(last["id"]) if s != last["storage"]]
        if not copies:
            return {"status": "failed", "backup_id": last["id"],
                    "notes": f"backup {last['id']} has no copy off its own storage {last['storage']} "
                             "(see `insite-console copy`)"}
        storage = copies[0]
    scratch = ws.config.state_dir / "drills" / drill_id / step.policy
    try:
        result = restore.run(ws, last["id"], str(scratch), cancel=cancel, storage=storage)
        totals = (last["info"] or {}).get("totals", {})
        expected = totals.get("bytes_read", 0) + totals.get("bytes_reused", 0)
        ok = source_type != "files" or result["bytes_written"] == expected
        return {"status": "passed" if ok else "failed", "backup_id": last["id"],
                "bytes_written": result["bytes_written"],
                "notes": f"restored {result['files']} files, {clock.human_bytes(result['bytes_written'])}"
                         + (f" from the copy on {storage}" if storage else "")
                         + ("" if ok else f"; expected {clock.human_bytes(expected)}")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(ws, scenario_id: str, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None) -> dict[str, Any]:
    scenario: Scenario = find(ws, scenario_id)
    cancel = cancel or CancelToken()
    drill_id = clock.new_id()
    started = clock.now()
    steps = order(scenario)
    reporter = ProgressReporter("drill", [progress])
    reporter.update(run_id=drill_id, phase="running", files_total=len(steps), force=True)
    ws.catalog.event(None, f"DR drill {drill_id} of scenario {scenario.id} started")
    deep = scenario.id == "data-corruption"
    finish_at: dict[str, float] = {}
    outcomes: list[dict[str, Any]] = []
    failed: set[str] = set()
    status = "passed"
    try:
        for step in steps:
            cancel.check()
            reporter.update(current=step.title)
            begin = max((finish_at[d] for d in step.depends_on), default=0.0)
            blocked = [d for d in step.depends_on if d in failed]
            outcome: dict[str, Any] = {"id": step.id, "title": step.title, "owner": step.owner, "kind": step.kind,
                                       "depends_on": step.depends_on, "expected_seconds": step.expected_minutes * 60,
                                       "escalation": step.escalation, "verification": step.verification}
            if blocked:
                outcome.update(status="blocked", seconds=0.0, notes=f"blocked by {', '.join(blocked)}")
                failed.add(step.id)
            elif step.kind == "manual":
                outcome.update(status="played back", seconds=step.expected_minutes * 60,
                               notes="manual step: expected duration counted")
            else:
                tick = time.monotonic()
                try:
                    outcome.update(_run_step(ws, step, drill_id, deep, cancel))
                except Cancelled:
                    raise
                except InsiteError as exc:
                    outcome.update(status="failed", notes=str(exc))
                outcome["seconds"] = round(time.monotonic() - tick, 3)
                if outcome["status"] == "failed":
                    failed.add(step.id)
            outcome["starts_at_second"] = round(begin, 3)
            finish_at[step.id] = begin + outcome["seconds"]
            outcome["ends_at_second"] = round(finish_at[step.id], 3)
            outcomes.append(outcome)
            reporter.advance(files_done=1)
    except Cancelled:
        status = "cancelled"
    recovery = max(finish_at.values(), default=0.0)
    losses = [o["data_loss_seconds"] for o in outcomes if "data_loss_seconds" in o]
    data_loss = max(losses) if losses else None
    rto, rpo = scenario.rto_minutes * 60, scenario.rpo_minutes * 60
    if status != "cancelled":
        if failed or recovery > rto or (data_loss is not None and data_loss > rpo):
            status = "failed"
    result = {
        "id": drill_id, "scenario": scenario.id, "name": scenario.name, "status": status,
        "started_at": clock.iso(started), "finished_at": clock.iso(clock.now()),
        "rto_seconds": rto, "rpo_seconds": rpo, "recovery_seconds": round(recovery, 3),
        "data_loss_seconds": data_loss, "meets_rto": recovery <= rto,
        "meets_rpo": data_loss is None or data_loss <= rpo, "steps": outcomes,
    }
    ws.catalog.insert_drill({k: result[k] for k in ("id", "scenario", "status", "started_at", "finished_at",
                                                   "rto_seconds", "rpo_seconds", "recovery_seconds",
                                                   "data_loss_seconds", "steps")})
    ws.catalog.event(None, f"DR drill {drill_id} of {scenario.id} {status}: recovery "
                     f"{clock.human_duration(recovery)} (RTO {clock.human_duration(rto)})",
                     level="info" if status == "passed" else "error")
    reporter.update(phase="done", force=True)
    return result
