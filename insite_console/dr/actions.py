"""The automated drill steps, each bound to a real engine action and judged by a check that
can fail: `check_rpo`, `verify`, `restore` (into a scratch target, see scratch.py),
`sql_check` and `redis_check` (on that scratch restore), `command`. A step that cannot be
carried out here is `skipped` with the reason, which makes the drill incomplete, never passed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from insite_console import clock, verify
from insite_console.dr.scenarios import Step
from insite_console.dr.scratch import Impossible, Scratch, restore_into_scratch
from insite_console.errors import Cancelled, InsiteError


class StepContext:
    """What the automated steps of one drill share: the scratch restores, torn down at the end."""

    def __init__(self, ws, drill_id: str, started, cancel):
        self.ws, self.drill_id, self.started, self.cancel = ws, drill_id, started, cancel
        self.scratch: dict[str, Scratch] = {}

    def close(self) -> list[str]:
        problems = []
        for scratch in self.scratch.values():
            problems += scratch.close()
        self.scratch.clear()
        try:  # the drill's folder, once its scratch folders are gone (never what a failed cleanup left)
            self.folder.rmdir()
        except OSError:
            pass
        return problems

    @property
    def folder(self) -> Path:
        return Path(self.ws.config.state_dir) / "drills" / self.drill_id


def run(ctx: StepContext, step: Step) -> dict[str, Any]:
    """Carry out one automated step; returns {status: passed|failed|skipped, notes, ...}."""
    try:
        return _KINDS[step.kind](ctx, step)
    except Cancelled:
        raise
    except Impossible as exc:
        return {"status": "skipped", "notes": str(exc)}
    except InsiteError as exc:
        return {"status": "failed", "notes": str(exc)}
    except Exception as exc:  # a bug fails its step, not the drill: the rest is still carried out and timed
        return {"status": "failed", "notes": f"the step stopped on an unexpected error: {type(exc).__name__}: {exc}"}


def _restore_point(ctx: StepContext, step: Step) -> dict:
    if step.at:
        from insite_console.restore import resolve_backup

        return resolve_backup(ctx.ws, step.policy, clock.parse_iso(step.at))
    last = ctx.ws.catalog.last_backup(step.policy)
    if last is None:
        raise InsiteError(f"policy {step.policy} has no restore point")
    return last


def _loss(ctx: StepContext, backup: dict) -> float:
    return max(0.0, (ctx.started - clock.parse_iso(backup["finished_at"])).total_seconds())


def _check_rpo(ctx: StepContext, step: Step) -> dict[str, Any]:
    last = _restore_point(ctx, step)
    policy = ctx.ws.config.policy(step.policy)
    loss = _loss(ctx, last)
    said = f"newest restore point {last['id']} is {clock.human_duration(loss)} old"
    source = ctx.ws.config.sources.get(policy["source"]) or {}
    if not step.at and source.get("type") == "postgresql" and source.get("mode") == "physical":
        # as `status` judges it: a physical source restores to its newest archived WAL, so the
        # data at risk is the archive lag, not the base backup's age
        from insite_console import wal

        archive = wal.archive_check(ctx.ws, policy["source"])
        lag = wal.restorable_window(ctx.ws, policy["source"], ctx.started)["archive_lag_seconds"]
        if archive["status"] != "ok":  # replay stops at a gap: the archive lag would promise too much
            problem = (archive["problems"] or ["not checked"])[0]
            said += (f"; the WAL archive of {policy['source']} is {archive['status']} ({problem}), so the loss is "
                     "judged on the base backup, not on the archive lag")
        elif lag is not None and lag < loss:
            loss = max(0.0, lag)
            said = (f"newest archived WAL of {policy['source']} is {clock.human_duration(loss)} old "
                    f"(base backup {last['id']}, replayed up to it)")
    limit = clock.parse_duration(policy["rpo"]).total_seconds() if policy.get("rpo") else None
    ok = limit is None or loss <= limit
    return {"status": "passed" if ok else "failed", "data_loss_seconds": loss, "backup_id": last["id"],
            "notes": said + (f" (RPO {clock.human_duration(limit)})" if limit else " (the policy sets no RPO)")}


def _verify(ctx: StepContext, step: Step) -> dict[str, Any]:
    last = _restore_point(ctx, step)
    result = verify.run(ctx.ws, last["id"], deep=step.deep, cancel=ctx.cancel)
    return {"status": "passed" if result["status"] == "ok" else "failed", "backup_id": last["id"],
            "notes": "; ".join(result["problems"][:3])
                     or f"{'deep-' if step.deep else ''}verified {result['objects']} packs"}


def _restore(ctx: StepContext, step: Step) -> dict[str, Any]:
    last = _restore_point(ctx, step)
    storage = None
    if step.off_site:
        copies = [s for s in ctx.ws.catalog.backup_storages(last["id"]) if s != last["storage"]]
        if not copies:
            return {"status": "failed", "backup_id": last["id"],
                    "notes": f"backup {last['id']} has no copy off its own storage {last['storage']} "
                             "(see `insite-console copy`)"}
        storage = copies[0]
    old = ctx.scratch.pop(step.policy, None)
    if old is not None:
        old.close()
    folder = ctx.folder / step.policy
    scratch = restore_into_scratch(ctx.ws, last, folder, storage, ctx.cancel)
    ctx.scratch[step.policy] = scratch
    result = scratch.result
    outcome = {"backup_id": last["id"], "bytes_written": result["bytes_written"], "data_loss_seconds": _loss(ctx, last),
               "scratch": scratch.where}
    where = f" into {scratch.where}" + (f" from the copy on {storage}" if storage else "")
    if scratch.kind == "files":
        totals = (last["info"] or {}).get("totals", {})
        expected = totals.get("bytes_read", 0) + totals.get("bytes_reused", 0)
        ok = result["bytes_written"] == expected
        return {**outcome, "status": "passed" if ok else "failed",
                "notes": f"restored {result['files']} files, {clock.human_bytes(result['bytes_written'])}{where}"
                         + ("" if ok else f"; expected {clock.human_bytes(expected)}")}
    return {**outcome, "status": "passed",
            "notes": f"restored {clock.human_bytes(result['bytes_written'])}{where}"}


def _scratch_for(ctx: StepContext, step: Step, kind: str) -> Scratch:
    scratch = ctx.scratch.get(step.policy)
    if scratch is None:
        raise Impossible(f"no scratch restore of {step.policy} to check (its restore step did not run)")
    if scratch.kind != kind:
        raise InsiteError(f"{step.kind} needs a {kind} policy; {step.policy} restored as {scratch.kind}")
    return scratch


def _baselines(ctx: StepContext, backup_id: str) -> tuple[dict, dict]:
    source_info = ((ctx.ws.catalog.backup(backup_id) or {}).get("info") or {}).get("source_info") or {}
    return source_info.get("baselines") or {}, source_info.get("baseline_kinds") or {}


def _sql_check(ctx: StepContext, step: Step) -> dict[str, Any]:
    scratch = _scratch_for(ctx, step, "postgresql")
    backup_id = scratch.result["backup_id"]
    with scratch.connect() as conn:
        if step.query is not None:
            row = conn.execute(step.query).fetchone()
            got = "|".join("" if v is None else str(v) for v in row) if row else ""
            ok = got == step.expect
            return {"status": "passed" if ok else "failed", "backup_id": backup_id,
                    "notes": f"{step.query!r} returned {got!r}" + ("" if ok else f", expected {step.expect!r}")}
        from psycopg import sql

        if scratch.replayed_wal:  # counting them would fail a sound restore (or pass a short one)
            raise Impossible(f"the restore of {step.policy} replayed the archived WAL past its base backup, so the "
                             "row counts taken at the base backup do not describe it: give this sql_check a query "
                             "and expect")
        baselines, kinds = _baselines(ctx, backup_id)
        exact = {k: v for k, v in baselines.items() if kinds.get(k, "exact") == "exact"}
        if not exact:
            raise Impossible(f"backup {backup_id} recorded no exact row counts to check the restore against")
        wrong = []
        for key in sorted(exact):
            schema, _, name = key.partition(".")
            try:
                count = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name))).fetchone()[0]
            except Exception as exc:
                count = f"unreadable ({str(exc).splitlines()[0]})"
            if count != exact[key]:
                wrong.append(f"{key}: {count} rows, backup had {exact[key]}")
    if wrong:
        return {"status": "failed", "backup_id": backup_id, "notes": "; ".join(wrong[:5])}
    return {"status": "passed", "backup_id": backup_id,
            "notes": f"row counts of {len(exact)} tables match the backup ({sum(exact.values())} rows)"}


def _redis_check(ctx: StepContext, step: Step) -> dict[str, Any]:
    import redis

    scratch = _scratch_for(ctx, step, "redis")
    backup_id = scratch.result["backup_id"]
    port = int(scratch.url.rsplit(":", 1)[1].split("/")[0])
    if step.command:
        reply = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30).execute_command(*step.command)
        got = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        ok = got == step.expect if step.expect is not None else reply is not None
        return {"status": "passed" if ok else "failed", "backup_id": backup_id,
                "notes": f"{' '.join(step.command)} returned {got!r}"
                         + ("" if ok else f", expected {step.expect!r}" if step.expect is not None else "")}
    baselines, _ = _baselines(ctx, backup_id)
    if not baselines:
        raise Impossible(f"backup {backup_id} recorded no key counts to check the restore against")
    wrong = []
    for db, expected in sorted(baselines.items()):
        got = redis.Redis(host="127.0.0.1", port=port, db=int(db[2:]), socket_timeout=30).dbsize()
        if got != expected:
            wrong.append(f"{db}: {got} keys, backup had {expected}")
    if wrong:
        return {"status": "failed", "backup_id": backup_id, "notes": "; ".join(wrong)}
    return {"status": "passed", "backup_id": backup_id,
            "notes": f"key counts of {len(baselines)} databases match the backup ({sum(baselines.values())} keys)"}


def _command(ctx: StepContext, step: Step) -> dict[str, Any]:
    try:
        done = subprocess.run(step.command, capture_output=True, text=True, timeout=step.timeout_seconds)
    except FileNotFoundError:
        return {"status": "failed", "notes": f"{step.command[0]}: command not found"}
    except subprocess.TimeoutExpired:
        return {"status": "failed", "notes": f"{step.command[0]} ran over its timeout of "
                                             f"{clock.human_duration(step.timeout_seconds)}"}
    ok = done.returncode == step.exit
    tail = (done.stderr or done.stdout).strip()[-300:]
    return {"status": "passed" if ok else "failed",
            "notes": f"{step.command[0]} exited {done.returncode}" + ("" if ok else f", expected {step.exit}")
                     + (f": {tail}" if tail and not ok else "")}


_KINDS = {"check_rpo": _check_rpo, "verify": _verify, "restore": _restore, "sql_check": _sql_check,
          "redis_check": _redis_check, "command": _command}
