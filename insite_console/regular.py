"""Regular tests (the strategy's phase 5), run by the scheduler per policy: `verify_schedule`
deep-verifies the newest backup, `restore_test_schedule` restores it into a scratch target (as a
drill's restore step does: a folder, a scratch database, a PGDATA or a redis-server on a free
port), checks what came back and tears the target down.

Each test is a run in the catalog (kind `scheduled_verify` or `restore_test`, subject the
policy) ending `succeeded`, `failed` (with the reason) or `incomplete` (it could not be carried
out here, or the restore could not be checked: never a pass); `status` reads the newest one. The
deep verify is also a verification of the backup, the restore also a restore in the history.
"""

from __future__ import annotations

from typing import Any

from insite_console import alerts, clock, verify
from insite_console.errors import Cancelled, InsiteError, UsageError
from insite_console.events import CancelToken

#: run kind -> the policy key holding its cron schedule
KINDS = {"scheduled_verify": "verify_schedule", "restore_test": "restore_test_schedule"}
WORDS = {"scheduled_verify": "scheduled deep verify", "restore_test": "restore test"}
#: after a restore, the check of its content, by source type (files are checked by the restore step)
CONTENT_CHECKS = {"postgresql": "sql_check", "redis": "redis_check"}


def run(ws, kind: str, policy: str, cancel: CancelToken | None = None) -> dict[str, Any]:
    """One regular test of the newest backup of `policy`, recorded; returns {id, kind, policy,
    backup_id, status, error, notes, started_at, finished_at}. `failed` fires `verify_failed`.
    One at a time per policy and kind across hosts (PolicyBusy otherwise, as for backups)."""
    if kind not in KINDS:
        raise UsageError(f"no regular test {kind!r} (tests: {', '.join(KINDS)})")
    ws.config.policy(policy)
    cancel = cancel or CancelToken()
    newest = ws.catalog.last_backup(policy)
    if newest is None:
        raise UsageError(f"policy {policy} has no successful backup to test")
    from insite_console.backup import policy_lock

    with policy_lock(ws, f"{kind}/{policy}", policy, f"a {WORDS[kind]} of {policy}"):
        return _run(ws, kind, policy, newest, cancel)


def _run(ws, kind: str, policy: str, newest: dict, cancel: CancelToken) -> dict[str, Any]:
    run_id = clock.new_id()
    started = clock.now()
    ws.catalog.start_run(run_id, kind, policy)
    ws.catalog.event(run_id, f"{WORDS[kind]} of {policy} started on backup {newest['id']}")
    try:
        outcome = (_verify if kind == "scheduled_verify" else _restore_test)(ws, newest, run_id, cancel)
    except (Cancelled, KeyboardInterrupt) as exc:
        ws.catalog.finish_run(run_id, "cancelled", str(exc) or "interrupted")
        raise
    except InsiteError as exc:
        outcome = {"status": "failed", "error": str(exc), "notes": []}
    except Exception as exc:  # a bug: still a failed test on record, never a silent gap
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "notes": []}
    result = {"id": run_id, "kind": kind, "policy": policy, "backup_id": newest["id"], **outcome,
              "started_at": clock.iso(started), "finished_at": clock.iso(clock.now())}
    ws.catalog.finish_run(run_id, result["status"], result["error"])
    level = {"succeeded": "info", "incomplete": "warning"}.get(result["status"], "error")
    ws.catalog.event(run_id, f"{WORDS[kind]} of {policy} (backup {newest['id']}) {result['status']}"
                     + (f": {result['error']}" if result["error"] else ""), level=level)
    if result["status"] == "failed":
        alerts.fire(ws, "verify_failed", policy, f"{WORDS[kind]} of {policy} failed on backup {newest['id']}: "
                    f"{result['error']}", {"policy": policy, "backup_id": newest["id"], "test": kind,
                                           "run_id": run_id, "error": result["error"]})
    return result


def _verify(ws, backup: dict, run_id: str, cancel: CancelToken) -> dict[str, Any]:
    check = verify.run(ws, backup["id"], deep=True, cancel=cancel)
    if check["status"] == "ok":
        return {"status": "succeeded", "error": None,
                "notes": [f"deep-verified {check['objects']} packs ({clock.human_bytes(check['bytes'])})"]}
    more = f" (and {len(check['problems']) - 1} more)" if len(check["problems"]) > 1 else ""
    return {"status": "failed", "error": check["problems"][0] + more, "notes": check["problems"][:20]}


def _restore_test(ws, backup: dict, run_id: str, cancel: CancelToken) -> dict[str, Any]:
    """The drill's restore step and content check (dr/actions.py), in a context of this run."""
    from insite_console.dr import actions
    from insite_console.dr.scenarios import Step

    ctx = actions.StepContext(ws, run_id, clock.now(), cancel)
    steps = [Step(id="restore", action="restore test", role="scheduler", kind="restore", policy=backup["policy"])]
    check = CONTENT_CHECKS.get(backup["source_type"])
    if check:
        steps.append(Step(id="check", action="check the restore", role="scheduler", kind=check,
                          policy=backup["policy"]))
    notes: list[str] = []
    outcome = {"status": "succeeded", "error": None}
    try:
        for step in steps:
            done = actions.run(ctx, step)
            notes.append(done.get("notes", ""))
            if done["status"] == "failed":
                outcome = {"status": "failed", "error": done.get("notes") or f"{step.kind} failed"}
                break
            if done["status"] != "passed":  # skipped: not carried out here, so not a pass
                outcome = {"status": "incomplete", "error": f"{step.kind} not carried out: {done.get('notes')}"}
                break
    finally:
        leftovers = ctx.close()
    for problem in leftovers:  # the restore was checked; what is left behind is told, not hidden
        notes.append(f"not cleaned up: {problem}")
        ws.catalog.event(run_id, f"restore test scratch target not cleaned up: {problem}", level="warning")
    return {**outcome, "notes": notes}
