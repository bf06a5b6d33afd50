"""The command line: the same engine as the console, for cron, scripts and operators.

Exit status: 0 done, 1 the operation failed, 2 usage or configuration error. Expected errors
print one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from typing import Any

from insite_console import clock
from insite_console.errors import Cancelled, InsiteError, UsageError
from insite_console.events import CancelToken, Progress


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _progress_printer(enabled: bool):
    """A one-line progress display on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None

    def show(progress: Progress) -> None:
        parts = [f"{progress.operation} {progress.phase}"]
        if progress.bytes_total:
            parts.append(f"{clock.human_bytes(progress.bytes_done)}/{clock.human_bytes(progress.bytes_total)}")
        elif progress.bytes_done:
            parts.append(clock.human_bytes(progress.bytes_done))
        if progress.files_done:
            parts.append(f"{progress.files_done} files")
        parts.append(f"{clock.human_bytes(progress.bytes_per_second)}/s")
        if progress.eta_seconds is not None:
            parts.append(f"ETA {clock.human_duration(progress.eta_seconds)}")
        line = "  ".join(parts)
        sys.stderr.write("\r\033[K" + line[: os.get_terminal_size(2).columns - 1])
        if progress.phase in ("done", "failed", "cancelled"):
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _run_seen(show):
    """The progress callback `show` (or none), noting the run id the engine reports, so that a
    run stopped by a cancel or an error can still be printed: `--json` prints one object."""
    seen: dict[str, str] = {}

    def track(progress: Progress) -> None:
        if progress.run_id:
            seen["id"] = progress.run_id
        if show is not None:
            show(progress)

    return track, seen


#: the contract's keys of `restore --json`, and the record's that say why
RESTORE_FIELDS = ("id", "backup_id", "status", "target", "files", "bytes_written", "started_at", "finished_at",
                  "error", "over_source", "reason")


def _cancel_on_signals() -> CancelToken:
    """Ctrl-C or SIGTERM cancel cleanly: the engine stops between units of work and cleans up."""
    token = CancelToken()

    def handler(signum, _frame):
        if token.cancelled:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        token.cancel(f"cancelled by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return token


def _workspace(args):
    from insite_console.workspace import Workspace

    return Workspace.load(args.config)


# ----- commands --------------------------------------------------------------------------


def cmd_init(args) -> int:
    ws = _workspace(args)
    ws.create_containers = args.create
    names = [args.storage] if args.storage else sorted(ws.config.storages)
    if args.storage and args.storage not in ws.config.storages:
        raise UsageError(f"{ws.config.path}: no storage named {args.storage!r}")
    results = []
    for name in names:
        repo = ws.init_repository(name)
        results.append({"storage": name, "repository_id": repo.id, "location": repo.storage.describe()})
    if args.json:
        _print_json(results)
    else:
        for item in results:
            print(f"initialised repository {item['repository_id'][:16]} on {item['storage']} ({item['location']})")
    return 0


def cmd_backup(args) -> int:
    from insite_console import alerts, backup
    from insite_console.catalog.db import public_backup
    from insite_console.errors import PolicyBusy

    ws = _workspace(args)
    if bool(args.policy) == bool(args.group):
        raise UsageError("backup needs a POLICY, or --group NAME (a [group.NAME] table)")
    token = _cancel_on_signals()
    if args.group:
        return _backup_group(ws, args, token)
    progress, seen = _run_seen(_progress_printer(not args.json))
    try:
        result = backup.run(ws, args.policy, args.type, progress=progress, cancel=token)
    except BaseException as exc:
        # a cancel, or another run holding the policy, is not a failed backup; an unknown
        # policy is a usage error, not a failure
        if isinstance(exc, InsiteError) and not isinstance(exc, (Cancelled, PolicyBusy)) \
                and args.policy in ws.config.policies:
            alerts.backup_outcome(ws, args.policy, error=str(exc))
        row = ws.catalog.backup(seen["id"]) if args.json and "id" in seen else None
        if row is not None:  # the stopped run, as recorded
            _print_json(public_backup(row, ws.catalog.backup_storages(row["id"])))
        raise
    alerts.backup_outcome(ws, args.policy, result)
    if args.json:
        _print_json(result)
    else:
        print(f"backup {result['id']} of {result['policy']} {result['status']}: {result['type']}, "
              f"{result['files']} files, {clock.human_bytes(result['bytes_read'])} read, "
              f"{clock.human_bytes(result['bytes_stored'])} stored")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if result["status"] != "succeeded":
        print(f"insite-console: backup {result['id']} {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    return 0


def _backup_group(ws, args, token) -> int:
    from insite_console import group

    if args.type:
        raise UsageError("--type does not apply to --group (each member backs up as its policy says)")
    ws.config.group(args.group)
    result = group.run(ws, args.group, progress=_progress_printer(not args.json), cancel=token)
    group.announce(ws, result)
    if args.json:
        _print_json(result)
    else:
        for m in result["members"]:
            print(f"  {m['policy']:<16} {m['status']:<10} backup {m['backup_id'] or '-':<16}  "
                  f"{m['point_at'] or '-'}  {(m['point'] or {}).get('what', '')}"
                  + (f"  {m['error']}" if m["error"] and m["status"] != "succeeded" else ""))
        if result["status"] == "succeeded":
            print(f"group restore point {result['id']} of {result['group']} at {result['point_at']}: "
                  f"{len(result['members'])} members within {_skew_text(result['skew_seconds'])} of each other")
        else:
            print(f"insite-console: group backup {result['id']} of {result['group']} {result['status']}: "
                  f"{result['error']} (not a group restore point)", file=sys.stderr)
    return _exit_status(result["status"])


def _backup_table(rows: list[dict]) -> None:
    header = f"{'ID':<16}  {'STARTED (UTC)':<20}  {'POLICY':<14}  {'TYPE':<12}  {'STATUS':<9}  {'READ':>10}  {'STORED':>10}  FILES"
    print(header)
    for row in rows:
        print(f"{row['id']:<16}  {row['started_at']:<20}  {row['policy'][:14]:<14}  {row['type']:<12}  "
              f"{row['status']:<9}  {clock.human_bytes(row['bytes_read'] or 0):>10}  "
              f"{clock.human_bytes(row['bytes_stored'] or 0):>10}  {row['files']}")
        if row.get("error"):
            print(f"{'':<16}  error: {row['error']}")


def cmd_backups(args) -> int:
    from insite_console.catalog.db import public_backup

    ws = _workspace(args)
    rows = ws.catalog.backups(policy=args.policy)
    if args.json:
        _print_json([public_backup(r, ws.catalog.backup_storages(r["id"])) for r in rows])
    elif not rows:
        print("no backups in the catalog" + (f" for policy {args.policy}" if args.policy else ""))
    else:
        _backup_table(rows)
    return 0


def cmd_show(args) -> int:
    from insite_console.catalog.db import public_backup

    ws = _workspace(args)
    row = ws.catalog.backup(args.backup_id)
    if row is None:
        raise UsageError(f"no backup {args.backup_id!r} in the catalog (see `insite-console backups`)")
    result = public_backup(row, ws.catalog.backup_storages(row["id"]))
    result["source_type"] = row["source_type"]
    result["info"] = row["info"]
    result["verifications"] = ws.catalog.verifications(row["id"], limit=5)
    if args.json:
        _print_json(result)
    else:
        for key in ("id", "policy", "source", "source_type", "storage", "type", "status", "started_at",
                    "finished_at", "parent_id", "files", "bytes_read", "bytes_stored", "error"):
            print(f"{key:>13}: {result.get(key)}")
        print(f"{'storages':>13}: {', '.join(result['storages'])}")
        for name, value in (row["info"].get("source_info") or {}).items():
            if name == "baselines" and isinstance(value, dict):
                print(f"{'baselines':>13}: {len(value)} item(s)")
                for table, count in list(value.items())[:20]:
                    print(f"{'':>15}{table}: {count}")
            else:
                print(f"{name:>13}: {value}")
        for warning in row["info"].get("warnings", []):
            print(f"{'warning':>13}: {warning}")
        for check in result["verifications"]:
            print(f"{'verified':>13}: {check['finished_at']} {'deep' if check['deep'] else 'quick'} {check['status']}")
    return 0


def cmd_verify(args) -> int:
    from insite_console import verify

    ws = _workspace(args)
    if args.all:
        ids = [row["id"] for row in ws.catalog.backups(status="succeeded")]
    elif args.backup_id:
        ids = [args.backup_id]
    elif args.wal:
        ids = []
    else:
        raise UsageError("verify needs a BACKUP_ID, --all or --wal")
    token = _cancel_on_signals()
    results = [verify.run(ws, backup_id, deep=args.deep, progress=_progress_printer(not args.json), cancel=token)
               for backup_id in ids]
    from insite_console import alerts

    for result in results:
        if result["status"] != "ok":
            policy = ws.catalog.backup(result["backup_id"])["policy"]
            alerts.fire(ws, "verify_failed", policy, f"verify of {result['backup_id']} on {result['storage']} found "
                        f"{len(result['problems'])} problem(s): {result['problems'][0]}",
                        {"backup_id": result["backup_id"], "storage": result["storage"],
                         "problems": result["problems"][:20]})
    if args.all or args.wal:  # each physical source's WAL archive: continuity, and with --deep integrity
        results += [verify.run_wal(ws, source, deep=args.deep) for source in verify.physical_sources(ws)]
    if args.json:
        _print_json(results if args.all or args.wal else results[0])
    else:
        for result in results:
            kind = "deep" if result["deep"] else "quick"
            what = result["backup_id"] or f"WAL archive of {result.get('wal_source')}"
            unit = "packs" if result["backup_id"] else "segments"
            if result["status"] == "ok":
                print(f"{what}: {kind} verify ok ({result['objects']} {unit}"
                      + (f", {clock.human_bytes(result['bytes'])} read" if result["deep"] else "") + ")")
            else:
                print(f"{what}: {kind} verify {'FAILED' if result['status'] == 'failed' else result['status'].upper()}")
                for problem in result["problems"]:
                    print(f"  - {problem}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _parse_at(text: str | None):
    """`--at` as an operator types it (clock.parse_when); a time without a zone is local."""
    if not text:
        return None
    try:
        return clock.parse_when(text, clock.now(), clock.local_zone())
    except ValueError as exc:
        raise UsageError(f"--at: {exc}") from None


def cmd_restore(args) -> int:
    from insite_console import restore

    ws = _workspace(args)
    at = _parse_at(args.at)
    options = {"pause": args.pause, "start_port": args.start_port, "target_timeline": args.target_timeline,
               "as_primary": args.as_primary, "with_globals": args.with_globals, "no_owner": args.no_owner,
               "no_acl": args.no_acl, "target_password_env": args.target_password_env, "delta": args.delta}
    token = _cancel_on_signals()
    progress, seen = _run_seen(_progress_printer(not args.json))
    try:
        result = restore.run(ws, args.backup_id, args.target, includes=args.include, dry_run=args.dry_run,
                             yes=args.yes, at=at, progress=progress, cancel=token, options=options,
                             reason=args.reason)
    except BaseException:
        row = ws.catalog.restore(seen["id"]) if args.json and "id" in seen else None
        if row is not None:  # the stopped run, as recorded (a refused one has none)
            _print_json({key: row.get(key) for key in RESTORE_FIELDS})
        raise
    failed_preflight = 1 if args.dry_run and result.get("problems") else 0  # a plan that would be refused
    if args.json:
        _print_json(result)
        return failed_preflight
    summary = result.get("summary", {})
    if args.dry_run:
        print(f"plan for restoring {result['backup_id']} into {result['target']} (nothing written):")
        for item in result.get("plan", []):
            if item["action"] != "skip" or item["type"] != "dir":
                print(f"  {item['action']:<9} {item['type']:<7} {item['path']}  {clock.human_bytes(item['bytes'])}")
        if result.get("plan_truncated"):
            print("  … (plan truncated; totals below count everything)")
    if summary:
        print(f"create {summary.get('to_create', 0)}, overwrite {summary.get('to_overwrite', 0)}, "
              + (f"repair metadata of {summary['to_repair']}, " if summary.get("to_repair") else "")
              + f"already identical {summary.get('identical', 0)}; "
              f"{clock.human_bytes(summary.get('bytes_to_write', 0))} to write, "
              f"about {clock.human_duration(summary.get('estimated_seconds', 0))} "
              f"({summary.get('estimate_basis', '')})")
    for key, value in (result.get("details") or {}).items():
        if not isinstance(value, (dict, list)):
            print(f"{key}: {value}")
    if result.get("baselines"):
        print(f"{'object':<40} {'at backup':>12} {'restored':>12}")
        for row in result["baselines"]:
            mark = {True: "ok", False: "DIFFERS", None: "(estimate)"}[row.get("match")]
            print(f"{row['object']:<40} {str(row['backup']):>12} {str(row['restored']):>12}  {mark}")
    for line in result.get("notes", []):
        print(line)
    if not args.dry_run:
        print(f"restore {result['id']} {result['status']}: {result['files']} files, "
              f"{clock.human_bytes(result['bytes_written'])} written into {result['target']}")
    elif result.get("over_source"):
        print(f"{result['target']} is where the source lives: the restore over production needs --reason")
    return failed_preflight


def cmd_restores(args) -> int:
    from insite_console import audit

    ws = _workspace(args)
    kinds = tuple(args.kind) if args.kind else audit.KINDS
    entries = audit.history(ws, limit=args.limit, kinds=kinds)
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print("no restores, recoveries or drills recorded yet")
        return 0
    print(f"{'STARTED (UTC)':<20}  {'KIND':<8}  {'STATUS':<9}  {'TIME':>7}  {'WHO':<28}  WHAT → WHERE  (WHY)")
    for e in entries:
        duration = "—" if e["duration_seconds"] is None else clock.human_duration(e["duration_seconds"])
        where = e["target"] or "—"
        print(f"{e['started_at'][:19]:<20}  {e['kind']:<8}  {e['status']:<9}  {duration:>7}  {audit.who_text(e)[:28]:<28}  "
              f"{audit.what_text(e)} → {where}" + ("  [over production]" if e["over_source"] else "")
              + (f"  ({e['reason']})" if e["reason"] else "") + (f"\n{'':<22}✗ {e['error']}" if e["error"] else ""))
    return 0


def cmd_recover(args) -> int:
    from insite_console import recovery

    ws = _workspace(args)
    if args.history:
        records = recovery.history(ws, args.plan)
        if args.json:
            _print_json(records)
            return 0
        print(f"{'ID':<16}  {'STARTED (UTC)':<27}  {'PLAN':<12}  {'STATUS':<9}  {'TIME':>8}  WHO / WHY")
        for r in records:
            print(f"{r['id']:<16}  {r['started_at']:<27}  {r['plan'][:12]:<12}  {r['status']:<9}  "
                  f"{clock.human_duration(r['recovery_seconds'] or 0):>8}  {r['user']}@{r['host']}"
                  + (f": {r['reason']}" if r.get("reason") else ""))
        return 0
    if not args.plan:
        raise UsageError("recover needs a PLAN (a [recovery.PLAN] table), or --history")
    if bool(args.at) + bool(args.latest) + bool(args.point) != 1:
        raise UsageError("recover needs exactly one of --at TIME, --latest or --point ID")
    at = _parse_at(args.at)
    token = _cancel_on_signals()
    planned = recovery.plan(ws, args.plan, at, cancel=token, point_id=args.point)
    if args.dry_run:
        if args.json:
            _print_json(planned)
        else:
            _print_recovery_plan(planned)
        return 0 if planned["checks_ok"] else 1
    if not args.json:
        _print_recovery_plan(planned)
    show = _progress_printer(not args.json)
    result = recovery.run(ws, args.plan, at, yes=args.yes, reason=args.reason, progress=show, cancel=token,
                          planned=planned)
    if args.json:
        _print_json(result)
    else:
        for c in result["components"]:
            verified = {True: "verified", False: "NOT verified", None: "unverified"}[c["verified"]]
            print(f"  {c['policy']:<14} {c['status']:<10} {verified:<12} backup {c['backup_id']}  "
                  f"data loss {clock.human_duration(c['data_loss_seconds'] or 0)}"
                  + (f"  {c['error']}" if c["error"] else ""))
            if c.get("verification"):
                print(f"  {'':<14} {c['verification']}")
        if result.get("group_point"):
            print(f"to group restore point {result['group_point']['id']} of [group.{result['group_point']['group']}]")
        print(f"recovery {result['id']} {result['status']} in {clock.human_duration(result['recovery_seconds'])}")
    return _exit_status(result["status"])


def _exit_status(status: str) -> int:
    """0 succeeded, 130 cancelled (as an interrupted command: the console shows it cancelled, not failed), else 1."""
    return 0 if status == "succeeded" else 130 if status == "cancelled" else 1


def _skew_text(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else clock.human_duration(seconds)


def _print_recovery_plan(planned: dict) -> None:
    when = planned["at"] or (f"latest ({planned['planned_at']})" if planned["latest"]
                             else f"group restore point {planned['group_point']['id']}")
    print(f"recovery plan {planned['plan']} to {when}, {planned['mode']}, on failure {planned['on_failure']}:")
    for c in planned["components"]:
        print(f"  {c['policy']} ({c['kind']}) -> {c['target']}")
        if c["backup_id"]:
            rpo = "" if c["within_rpo"] is None else (" within RPO" if c["within_rpo"] else " BEYOND RPO")
            print(f"    restore point {c['restore_point_at']} (backup {c['backup_id']}), data loss "
                  f"{clock.human_duration(c['data_loss_seconds'])}{rpo}")
        if c.get("restorable_window"):
            print(f"    restorable window {c['restorable_window']['oldest']} .. {c['restorable_window']['newest']}")
        if c.get("overwrites"):
            print(f"    target: {c['overwrites']['what']}")
        print(f"    {clock.human_bytes(c['bytes'])}, about {clock.human_duration(c['estimated_seconds'])}")
        for check in c["checks"]:
            print(f"    [{check['status']}] {check['check']}: {check['detail']}")
    skew = planned["skew_seconds"]
    if planned.get("group_point"):
        g = planned["group_point"]
        print(f"group restore point {g['id']} of [group.{g['group']}] at {g['point_at']}")
    print(f"skew between restore points: {'unknown' if skew is None else _skew_text(skew)}; "
          f"{clock.human_bytes(planned['bytes'])}, about {clock.human_duration(planned['estimated_seconds'])} "
          f"({planned['estimate_basis']})")
    print("pre-flight checks passed" if planned["checks_ok"] else "pre-flight checks FAILED: nothing can be restored")


def cmd_prune(args) -> int:
    from insite_console import retention

    ws = _workspace(args)
    result = retention.prune(ws, args.policy, dry_run=args.dry_run)
    if args.json:
        _print_json(result)
        return 0
    for decision in result["backups"]:
        reasons = ", ".join(decision["reasons"])
        print(f"{decision['action']:<6} {decision['id']}  {decision['started_at']}  {decision['policy']}"
              + (f"  ({reasons})" if reasons else ""))
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    verb = "would forget" if args.dry_run else "forgot"
    print(f"{verb} {len(result['forgotten'])} backup(s); deleted {result['packs_deleted']} pack(s), "
          f"repacked {result['packs_repacked']}, freed {clock.human_bytes(result['bytes_freed'])}")
    return 0


def cmd_catalog(args) -> int:
    from insite_console.catalog.rebuild import sync

    ws = _workspace(args)
    result = sync(ws, args.storage)  # rebuild and sync are one operation: see catalog/rebuild.py
    if args.json:
        _print_json(result)
    else:
        verb = "rebuilt" if args.action == "rebuild" else "synced"
        print(f"catalog {verb} from {', '.join(result['storages'])}: {result['backups']} backup(s) found, "
              f"{len(result['added'])} added, {len(result['removed'])} no longer on storage removed")
        if result["skipped_forgotten"]:
            print(f"{len(result['skipped_forgotten'])} forgotten backup(s) still on storage were not brought back")
        for problem in result["problems"]:
            print(f"problem: {problem}", file=sys.stderr)
    return 1 if result["problems"] else 0


def cmd_repair(args) -> int:
    from insite_console import repair

    ws = _workspace(args)
    result = repair.run(ws, args.action, args.storage, dry_run=args.dry_run)
    if args.json:
        _print_json(result)
    else:
        print("\n".join(repair.summary(result)))
    return 0 if result["status"] in ("clean", "repaired") else 1


def cmd_status(args) -> int:
    """Exits like a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL (status.assess says why)."""
    from insite_console import alerts, status

    ws = _workspace(args)
    rows = status.overview(ws, check_storage=True)
    alerts.watch(ws, rows)  # announce breaches (and recoveries) even where no scheduler runs
    try:
        alerts.watch_drills(ws)
    except InsiteError as exc:  # a DR file that does not load must not hide the backups' status
        print(f"warning: cannot check DR drills for alerts: {exc}", file=sys.stderr)
    code = status.exit_code(rows)
    if args.json:
        _print_json(rows)
        return code
    print(f"scheduler: {status.scheduler_state(ws)['text']}")
    for row in rows:
        age = clock.human_duration(row["age_seconds"]) if row["age_seconds"] is not None else "-"
        rpo = clock.human_duration(row["rpo_seconds"]) if row["rpo_seconds"] else "-"
        loss = ""
        if row["rpo_basis"] == "wal_archive_lag":
            loss = f", data-loss window {clock.human_duration(row['data_loss_seconds'])} (WAL archive lag)"
        print(f"{row['level'].upper():<8}  {status.HEALTH_WORDS[row['health']]:<10}  {row['policy']:<16}  "
              f"last ok {age} ago{loss} (RPO {rpo})  next {row['next_run_at'] or '-'}"
              + ("" if row["enabled"] else "  (disabled)"))
        for problem in row["problems"]:
            print(f"{'':<8}  {'':<10}  {'':<16}  {problem}")
        window = row.get("restorable_window")
        if window:
            lag = window["archive_lag_seconds"]
            print(f"{'':<8}  {'':<10}  {'':<16}  restorable {window['oldest'] or '-'} … {window['newest'] or '-'}, "
                  f"WAL archive lag {clock.human_duration(lag) if lag is not None else '-'}")
        if row.get("wal_stream") and row["wal_stream"]["text"] not in row["problems"]:
            print(f"{'':<8}  {'':<10}  {'':<16}  {row['wal_stream']['text']}")
        archive = row.get("wal_archive")
        if archive and archive["status"] != "ok":
            for problem in archive["problems"]:
                print(f"{'':<8}  {'':<10}  {'':<16}  WAL archive {archive['status'].upper()}: {problem}")
    print({0: "OK", 1: "WARNING", 2: "CRITICAL"}[code])
    return code


def cmd_metrics(args) -> int:
    from insite_console import metrics

    ws = _workspace(args)
    if args.textfile:
        try:
            metrics.write_textfile(ws, args.textfile)
        except OSError as exc:
            raise InsiteError(f"cannot write metrics to {args.textfile}: {exc.strerror or exc}") from None
        return 0
    sys.stdout.buffer.write(metrics.exposition(ws))
    return 0


def cmd_schedule(args) -> int:
    from insite_console import scheduler

    ws = _workspace(args)
    if args.list:
        rows = scheduler.schedule_list(ws)
        if args.json:
            _print_json(rows)
            return 0
        print(f"{'POLICY':<16}  {'ENABLED':<7}  {'SCHEDULE':<16}  {'LAST RUN':<30}  {'NEXT RUN':<20}  RETRIES")
        for row in rows:
            last = f"{row['last_run_at']} {row['last_run_status']}" if row["last_run_at"] else "never"
            print(f"{row['policy'][:16]:<16}  {'yes' if row['enabled'] else 'no':<7}  {row['schedule'] or '-':<16}  "
                  f"{last:<30}  {row['next_run_at'] or '-':<20}  "
                  + (f"members {', '.join(row['members'])}" if "members" in row
                     else f"{row['retries']} every {row['retry_delay']} (doubling)"))
            for test in row.get("tests", []):
                last = f"{test['last_run_at'][:19]}Z {test['last_run_status']}" if test["last_run_at"] else "never"
                print(f"{'  ' + test['kind']:<16}  {'':<7}  {test['schedule']:<16}  {last:<30}  "
                      f"{test['next_run_at'] or '-':<20}  -")
        print(f"cron times in {rows[0]['timezone'] if rows else 'UTC'}; next runs shown in UTC")
        return 0
    log = lambda m: print(f"{clock.iso(clock.now())} {m}", file=sys.stderr, flush=True)  # noqa: E731
    jobs = scheduler.Scheduler(ws, log=log)
    if args.once:
        results = jobs.run_once()
        if args.json:
            _print_json(results)
        return 1 if any(r.get("status") != "succeeded" for r in results) else 0

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if jobs.stopping.is_set():  # a second signal: cancel what still runs
            jobs.stop(f"second {name}", cancel_running=True)
        else:
            jobs.stop(f"signal {name}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    jobs.loop()
    return 0


def cmd_key(args) -> int:
    from insite_console.repo import keys

    ws = _workspace(args)
    storage = args.storage or sorted(ws.config.storages)[0]
    repo = ws.repository(storage)
    if args.key_command == "list":
        rows = [{"id": key_id, "label": data.get("label", "") if data else "(damaged key file)",
                 "created_at": (data or {}).get("created_at"), "host": (data or {}).get("host"),
                 "current": key_id == repo.key_id}
                for key_id, data in keys.list_keys(repo.storage)]
        if args.json:
            _print_json(rows)
        else:
            for row in rows:
                print(f"{'*' if row['current'] else ' '} {row['id']}  {row['created_at']}  {row['host']}  {row['label']}")
        return 0
    if args.key_command == "add":
        variable = args.new_passphrase_env
        new = os.environ.get(variable)
        if not new:
            raise UsageError(f"environment variable {variable} (--new-passphrase-env) is not set")
        key_id = keys.add_key(repo.storage, repo.master, new, label=args.label or "")
        print(f"added key {key_id} to the repository on {storage}")
        return 0
    keys.remove_key(repo.storage, args.key_id, repo.key_id)
    print(f"removed key {args.key_id} from the repository on {storage}")
    return 0


def cmd_copy(args) -> int:
    from insite_console import copy

    ws = _workspace(args)
    token = _cancel_on_signals()
    result = copy.run(ws, args.backup_id, args.to, progress=_progress_printer(not args.json), cancel=token)
    if args.json:
        _print_json(result)
    else:
        print(f"copied backup {result['backup_id']} to {result['storage']}: "
              f"{clock.human_bytes(result['bytes_stored'])} new data stored")
    return 0


def cmd_wal_push(args) -> int:
    from insite_console import wal, wal_queue

    ws = _workspace(args)
    if wal_queue.pushed_ahead(ws, args.source, args.path):  # an earlier --parallel call stored it: no repository
        return 0
    parallel = args.parallel or int((ws.config.sources.get(args.source) or {}).get("archive_push_parallel") or 1)
    if parallel > 1:  # push the other ready files too, several at a time
        return wal_queue.push(ws, args.source, args.path, parallel)
    return wal.push(ws, args.source, args.path) or 0


def cmd_wal_stream(args) -> int:
    from insite_console import wal_stream

    if args.forget:
        ws = _workspace(args)
        if args.source not in ws.config.sources:
            raise UsageError(f"{ws.config.path}: no source named {args.source!r}")
        stale = clock.now() - clock.parse_duration(f"{wal_stream.STALE_SECONDS:g}s")
        forgotten = ws.catalog.forget_wal_streams(args.source, clock.iso(stale))
        if args.json:
            _print_json({"source": args.source, "forgotten": forgotten})
        else:
            print(f"wal-stream {args.source}: forgot {len(forgotten)} stopped streamer(s)"
                  + "".join(f"\n  {row['host']} (pid {row['pid']}), last seen {row['last_beat']}" for row in forgotten))
        return 0
    result = wal_stream.run(_workspace(args), args.source, spool=args.spool, slot=args.slot, duration=args.duration,
                            cancel=_cancel_on_signals(), say=lambda line: print(line, flush=True))
    if args.json:
        _print_json(result)
    else:
        print(f"wal-stream {args.source}: stopped; {len(result['archived'])} file(s) archived")
    return 0


def cmd_wal_fetch(args) -> int:
    """Exit 1 only for "not in the archive"; any other failure (integrity, storage, config,
    passphrase, a bug) exits wal.FETCH_FATAL, so PostgreSQL stops recovery instead of promoting."""
    from insite_console import wal

    try:
        return wal.fetch(_workspace(args), args.source, args.name, args.path) or 0
    except wal.WalNotFound:
        raise
    except Exception as exc:
        return wal.fetch_failed(args.source, args.name, args.path, exc)


def _fetch_usage_fatal() -> int:
    """wal-fetch called wrongly: PostgreSQL reads any exit status of 125 or less as "not
    archived" and would end recovery there; exit FETCH_FATAL so it stops instead."""
    from insite_console import wal

    print(f"error: wal-fetch: exiting {wal.FETCH_FATAL} so PostgreSQL stops recovery instead of ending it early "
          "(check restore_command: wal-fetch SOURCE %f %p)", file=sys.stderr)
    return wal.FETCH_FATAL


def cmd_wal(args) -> int:
    from insite_console import wal

    ws = _workspace(args)
    if args.source not in ws.config.sources:
        raise UsageError(f"{ws.config.path}: no source named {args.source!r}")
    archive = wal.archive_check(ws, args.source)  # also makes the catalog's listing match storage
    segments = wal.list_segments(ws, args.source)
    window = wal.restorable_window(ws, args.source)
    from insite_console.wal_stream import stream_state, stream_status

    stream = stream_status(ws, args.source)
    streaming = stream_state(ws, args.source)  # from its heartbeat: a killed streamer's status file still says receiving
    if args.json:
        _print_json({"window": window, "segments": segments, "archive": archive, "stream": stream,
                     "wal_stream": streaming})
        return 0 if archive["status"] == "ok" else 1
    for row in segments:
        print(f"{row['name']:<40} {clock.human_bytes(row['size']):>10}  archived {row['archived_at'][:19]}Z  "
              f"commits {row['first_time'] or '?'} … {row['last_time'] or '?'}")
    lag = window["archive_lag_seconds"]
    print(f"restorable window: {window['oldest'] or '-'} … {window['newest'] or '-'}; "
          f"{window['segments']} segment(s), {window['base_backups']} base backup(s); archive lag "
          + (clock.human_duration(lag) if lag is not None else "-"))
    print(f"archive {archive['status'].upper()}: " + ("continuous" if archive["status"] == "ok"
                                                      else "; ".join(archive["problems"])))
    if streaming:
        print(streaming["text"])
    if stream and streaming and streaming["running"]:
        partial = stream.get("partial") or {}
        print(f"  in progress: {partial.get('name', '-')} ({clock.human_bytes(partial.get('bytes', 0))}, last written "
              f"{partial.get('updated_at', '-')}); last archived {stream.get('last_archived') or '-'}")
    return 0 if archive["status"] == "ok" else 1


def cmd_demo(args) -> int:
    from insite_console import demo

    config_path = demo.make_demo(args.dir, log=lambda m: print(m, file=sys.stderr))
    if args.no_tui:
        print(config_path)
        return 0
    return _open_console(str(config_path), read_only=False, theme=None)


def _open_console(config_path: str | None, read_only: bool, theme: str | None) -> int:
    try:
        from insite_console.tui.app import run_console
    except ImportError as exc:
        raise InsiteError(f"the console is not available: {exc}") from None
    return run_console(config_path, read_only=read_only, theme=theme) or 0


def cmd_drill(args) -> int:
    ws = _workspace(args)
    from insite_console.dr import history

    if args.text is not None and args.drill_command != "finding":
        raise UsageError(f"drill {args.drill_command} takes one argument, not {args.text!r}")
    if args.drill_command == "finding":
        from insite_console.dr import findings

        if not args.scenario or not args.text or not args.owner:
            raise UsageError("drill finding needs a drill ID, the action and --owner: "
                             "drill finding ID \"shorten the restore\" --owner dba [--due 30d]")
        from insite_console import who

        finding = findings.add(ws, args.scenario, args.text, args.owner, args.due, by=who.me())
        if args.json:
            _print_json(finding)
        else:
            print(f"finding added to drill {finding['drill']}: {finding['text']} (owner {finding['owner']}, "
                  f"due {finding['due']})")
        return 0
    if args.drill_command == "list" and args.history:
        drills = ws.catalog.drills(limit=200)
        for d in drills:  # a drill whose process died on this host is not running
            if d["status"] == "running" and ws.catalog.drill_ended(d["record"]):
                d["status"] = "abandoned"
        if args.json:
            _print_json([{k: d[k] for k in ("id", "scenario", "mode", "status", "started_at", "finished_at",
                                             "recovery_seconds", "data_loss_seconds")} for d in drills])
            return 0
        for d in drills:
            print(f"{d['id']}  {d['started_at']}  {d['scenario']:<20} {d['mode'] or '-':<9} {d['status']:<10} "
                  f"recovery {clock.human_duration(d['recovery_seconds'] or 0)}")
        return 0
    if args.drill_command == "list":
        from insite_console.dr.scenarios import load, order

        scenarios = load(ws)
        if args.json:
            _print_json([s.to_json() for s in scenarios])
            return 0
        for scenario in scenarios:
            print(f"{scenario.id}: {scenario.name} [{scenario.type}, {scenario.tier}] probability "
                  f"{scenario.probability:g}/yr, cost {scenario.cost:,.0f} (RTO {clock.human_duration(scenario.rto_seconds)}, "
                  f"RPO {clock.human_duration(scenario.rpo_seconds)})\n  {scenario.description}")
            for step in order(scenario):
                after = f"  after {', '.join(step.after)}" if step.after else ""
                print(f"  - {step.id} [{step.kind}] {step.action} — {step.role}, "
                      f"~{clock.human_duration(step.estimate_seconds)}{after}")
            for drop in scenario.plan.dropped:
                print(f"  - {drop['step']} [{drop['kind']}] {drop['action']}: not here, {drop['why']}")
        return 0
    if args.drill_command in ("show", "replay"):
        if not args.scenario:
            raise UsageError(f"drill {args.drill_command} needs a drill ID (see `insite-console drill list --history`)")
        record = history.get(ws, args.scenario)
        if args.drill_command == "show":
            if args.json:
                _print_json(record)
            else:
                _print_drill(record)
            return 0
        emit = (lambda e: print(json.dumps(e), flush=True)) if args.json else _print_event
        history.replay(record, emit, speed=args.speed or 1.0)
        return 0
    if args.drill_command == "run":
        from insite_console.dr import drill

        if not args.scenario:
            raise UsageError("drill run needs a SCENARIO (see `insite-console drill list`)")
        if args.live and args.tabletop:
            raise UsageError("a drill is --live or --tabletop, not both")
        if args.live and args.speed not in (None, 1):
            raise UsageError("a live drill runs in real time: --speed is for tabletops")
        result = drill.run(ws, args.scenario, mode="live" if args.live else "tabletop", speed=args.speed or 1.0,
                           auto=args.auto, listener=None if args.json else (lambda e, snap: _print_event(e, snap)),
                           on_manual=None if args.auto else _prompt_manual, cancel=_cancel_on_signals())
        if args.json:
            _print_json(result)
        else:
            _print_drill(result)
        return 0 if result["status"] == "passed" else 1
    from insite_console import alerts
    from insite_console.dr import report

    result = report.build(ws)
    alerts.watch_drills(ws)  # overdue drills are announced (once) where no scheduler runs
    if args.json or args.format == "json":
        _print_json(result)
    else:
        print(report.markdown(result), end="")
    return 0


def _print_event(event: dict, snapshot: dict | None = None) -> None:
    """One line of a drill's timeline (live or replayed)."""
    from insite_console.dr.history import event_text

    t = clock.human_duration(event["t"])
    kind = event["type"]
    text = event_text(event)
    tail = ""
    if snapshot and kind in ("step_finished", "escalation"):
        tail = (f"   [level {snapshot['level']}, projected RTO {clock.human_duration(snapshot['projected_rto_seconds'])}"
                f" of {clock.human_duration(snapshot['rto_seconds'])}]")
    print(f"{t:>8}  {text}{tail}", file=sys.stderr if snapshot is not None else sys.stdout, flush=True)


def _prompt_manual(drill_run, step) -> None:
    """The CLI's operator: mark a manual step on the terminal (`i TEXT` adds an inject first)."""
    while True:
        print(f"\nstep {step.id}: {step.action} ({step.role}, estimate {clock.human_duration(step.estimate_seconds)})\n"
              "  [d]one / [f]ailed / [s]kipped, then a note; `i TEXT` for an inject; `n OWNER TEXT` for a finding: ", end="", file=sys.stderr,
              flush=True)
        line = sys.stdin.readline()
        if not line:
            drill_run.mark(step.id, "skipped", "no operator answer (end of input; use --auto for rehearsals)", "cli")
            return
        word, _, note = line.strip().partition(" ")
        if word == "i" and note:
            drill_run.inject(note, "facilitator")
            continue
        if word == "n" and " " in note.strip():  # n OWNER TEXT: a finding for the improvement plan
            owner, _, text = note.strip().partition(" ")
            drill_run.finding(text.strip(), owner, step=step.id, by=os.environ.get("USER") or "operator")
            continue
        status = {"d": "done", "done": "done", "f": "failed", "failed": "failed", "s": "skipped",
                  "skipped": "skipped"}.get(word.lower())
        if status:
            drill_run.mark(step.id, status, note, os.environ.get("USER") or "operator")
            return


def _print_drill(result: dict) -> None:
    print(f"drill {result['id']} of {result['name']} ({result.get('mode') or 'drill'}): {result['status'].upper()}")
    for step in result["steps"]:
        start = step.get("starts_at_second")
        took = step.get("seconds")
        print(f"  {clock.human_duration(start) if start is not None else '-':>7} "
              f"+{clock.human_duration(took) if took is not None else '-':<7} {step['status']:<9} {step['id']} "
              f"{step['action']} ({step['role']})" + (f": {step['notes']}" if step.get("notes") else ""))
    if result["status"] == "running":
        print(f"still running (by {result.get('by') or '?'}, drill time {clock.human_duration(result['clock']['t'])} "
              f"at {result['clock']['at'][:19]}Z)")
        return
    loss = result["data_loss_seconds"]
    rpo_word = {True: "met", False: "MISSED", None: "not measured"}[result.get("meets_rpo")]
    recovery = result["recovery_seconds"]
    rto_word = "not measured" if recovery is None else "met" if result["meets_rto"] else "MISSED"
    print(f"recovery time {clock.human_duration(recovery)} against RTO "
          f"{clock.human_duration(result['rto_seconds'])}: {rto_word}; "
          f"data loss {clock.human_duration(loss) if loss is not None else 'n/a'} against RPO "
          f"{clock.human_duration(result['rpo_seconds'])}: {rpo_word}")
    for item in result.get("missing", []):
        print(f"not carried out: {item}")
    for item in result.get("cleanup_problems", []):
        print(f"cleanup problem: {item}")


def status_word(health: str) -> str:
    from insite_console.status import HEALTH_WORDS

    return HEALTH_WORDS[health]


# ----- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help="config file (default: $INSITE_CONFIG, then ./config.toml)")
    common.add_argument("--limit-upload", default=argparse.SUPPRESS, help="bandwidth limit for uploads, e.g. 20MiB/s")
    common.add_argument("--limit-download", default=argparse.SUPPRESS, help="bandwidth limit for downloads")

    parser = argparse.ArgumentParser(prog="insite-console", parents=[common],
                                     description="Backup, restore and DR drills for PostgreSQL, Redis and file trees.")
    parser.add_argument("--read-only", action="store_true", help="open the console with every write action hidden")
    parser.add_argument("--theme", help="console theme")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_text, json_flag=True):
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(func=func)
        if json_flag:
            command.add_argument("--json", action="store_true", help="print JSON for scripts")
        return command

    p = add("demo", cmd_demo, "make a self-contained demo workspace, back it up and open the console", json_flag=False)
    p.add_argument("--dir", default="demo-workspace", help="where to create it (default: ./demo-workspace)")
    p.add_argument("--no-tui", action="store_true", help="stop after the set-up and print the config path")

    p = add("init", cmd_init, "create the repository on each configured storage, or one")
    p.add_argument("storage", nargs="?")
    p.add_argument("--create", action="store_true", help="create a missing bucket or container")

    p = add("backup", cmd_backup, "run one backup of a policy now (or of a group's policies at one moment)")
    p.add_argument("policy", nargs="?")
    p.add_argument("--group", help="a [group.NAME]: back up its policies at one moment, as one restore point")
    p.add_argument("--type", choices=["full", "incremental", "differential"])

    p = add("backups", cmd_backups, "list the catalog, newest first")
    p.add_argument("--policy")

    p = add("show", cmd_show, "one backup with its contents summary")
    p.add_argument("backup_id")

    p = add("verify", cmd_verify, "check that a backup's data is on storage (--deep: read and authenticate all of it)")
    p.add_argument("backup_id", nargs="?")
    p.add_argument("--all", action="store_true", help="every backup, and every physical source's WAL archive")
    p.add_argument("--wal", action="store_true", help="the WAL archives of physical PostgreSQL sources: "
                   "continuity per timeline (--deep: every segment read back and authenticated)")
    p.add_argument("--deep", action="store_true")

    p = add("restore", cmd_restore, "restore a backup (see --dry-run for the plan)")
    p.add_argument("backup_id", help="a backup id, or a policy/source name (with --at: the restore point before it)")
    p.add_argument("--target", required=True)
    p.add_argument("--at", help="point in time: 2026-11-27T02:15:00Z, 2026-11-27 02:15 (local), "
                   "14:05 (today), -2h, yesterday 14:00")
    p.add_argument("--include", action="append", default=[], help="glob / schema.table / key pattern (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--yes", action="store_true", help="allow overwriting what exists")
    p.add_argument("--pause", action="store_true", help="PostgreSQL PITR: pause at the target instead of promoting")
    p.add_argument("--start-port", type=int, help="PostgreSQL PITR: start a throwaway server on this port")
    p.add_argument("--target-timeline", default="latest",
                   help="PostgreSQL PITR: latest (default, as PostgreSQL), current (the base backup's) or a number")
    p.add_argument("--with-globals", action="store_true",
                   help="PostgreSQL logical: create the backup's roles and tablespaces first (existing ones kept)")
    p.add_argument("--no-owner", action="store_true", help="PostgreSQL logical: objects owned by the restoring user")
    p.add_argument("--no-acl", action="store_true", help="PostgreSQL logical: leave out GRANT/REVOKE")
    p.add_argument("--target-password-env", metavar="VAR",
                   help="Redis or PostgreSQL (logical) target: the environment variable holding the target "
                        "server's password (the source's password_env is never used for a target)")
    p.add_argument("--delta", action="store_true",
                   help="PostgreSQL physical: update a stopped data directory in place, writing only the files "
                        "that differ from the base backup")
    p.add_argument("--as-primary", action="store_true",
                   help="PostgreSQL PITR: restore as the new primary: it archives WAL (its new timeline's history "
                        "first) into the source's archive, so no later restore reuses that timeline")
    p.add_argument("--reason", help="why, or a ticket id: recorded with the restore; required over production "
                   "(a target that is the source's own location)")

    p = add("restores", cmd_restores, "restore history and audit: every restore, recovery and drill, who, why")
    p.add_argument("--kind", action="append", choices=("restore", "recovery", "drill"),
                   help="only these kinds (repeatable)")
    p.add_argument("--limit", type=int, default=200, help="at most this many, newest first (default 200)")

    p = add("recover", cmd_recover, "platform recovery of a [recovery.PLAN]: every component to one point in time")
    p.add_argument("plan", nargs="?", help="a [recovery.PLAN] table of the config")
    p.add_argument("--at", help="point in time (ISO 8601 with offset, e.g. 2026-11-27T02:14:00Z)")
    p.add_argument("--latest", action="store_true", help="the newest restore point of every component")
    p.add_argument("--point", metavar="ID", help="a group restore point (`backup --group`): every component "
                   "from its member")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its pre-flight checks, change nothing")
    p.add_argument("--yes", action="store_true", help="allow overwriting what the targets hold")
    p.add_argument("--reason", help="why: recorded with the result")
    p.add_argument("--history", action="store_true", help="past recoveries (of PLAN, or all)")

    p = add("prune", cmd_prune, "apply retention, then delete data no kept backup references")
    p.add_argument("--policy")
    p.add_argument("--dry-run", action="store_true")

    p = add("catalog", cmd_catalog, "rebuild the local catalog from the repositories on storage, or sync it "
            "with what other hosts wrote there")
    p.add_argument("action", choices=["rebuild", "sync"])
    p.add_argument("storage", nargs="?")

    p = add("repair", cmd_repair, "repair a damaged repository: rebuild the index, drop damaged chunks, "
            "rewrite manifests without unreadable files")
    p.add_argument("action", choices=["index", "packs", "snapshots"])
    p.add_argument("storage")
    p.add_argument("--dry-run", action="store_true", help="report what would be repaired and change nothing")

    p = add("schedule", cmd_schedule, "run policies when their cron schedule is due")
    p.add_argument("--once", action="store_true", help="run what is due now (with its retries), then exit")
    p.add_argument("--list", action="store_true", help="every schedule: enabled, last run, next run, retries")

    add("status", cmd_status, "health per policy: last success against the RPO, next run, failures "
        "(exits 0 OK, 1 WARNING, 2 CRITICAL)")

    p = add("metrics", cmd_metrics, "Prometheus metrics (text exposition)", json_flag=False)
    p.add_argument("--textfile", metavar="PATH", help="write them to PATH atomically (node_exporter's textfile "
                   "collector) instead of printing them")

    p = add("key", cmd_key, "list, add or remove the passphrases that open a repository")
    p.add_argument("key_command", choices=["list", "add", "remove"])
    p.add_argument("key_id", nargs="?", help="for remove")
    p.add_argument("--storage")
    p.add_argument("--new-passphrase-env", default="INSITE_NEW_PASSPHRASE",
                   help="environment variable holding the passphrase to add (default INSITE_NEW_PASSPHRASE)")
    p.add_argument("--label")

    p = add("copy", cmd_copy, "copy a backup to another storage (the off-site copy)")
    p.add_argument("backup_id")
    p.add_argument("--to", required=True)

    p = add("wal", cmd_wal, "the WAL archive of a physical PostgreSQL source: segments, restorable window, lag")
    p.add_argument("source")

    p = add("wal-push", cmd_wal_push, "PostgreSQL archive_command helper", json_flag=False)
    p.add_argument("source")
    p.add_argument("path")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="also push the other ready WAL files, N at a time (default: the source's "
                        "archive_push_parallel, else 1)")
    p = add("wal-stream", cmd_wal_stream, "stream WAL with pg_receivewal into the archive (a long-running service)")
    p.add_argument("source")
    p.add_argument("--spool", help="where pg_receivewal writes (default: STATE_DIR/wal-stream/SOURCE)")
    p.add_argument("--slot", help="the replication slot (default: insite_SOURCE, created if missing)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: run until "
                   "SIGTERM or Ctrl-C)")
    p.add_argument("--forget", action="store_true", help="forget the heartbeats of stopped streamers of SOURCE "
                   "(streaming given up on purpose: status stops warning about it) and exit")
    p = add("wal-fetch", cmd_wal_fetch, "PostgreSQL restore_command helper", json_flag=False)
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("path")

    p = add("drill", cmd_drill, "DR scenarios, drill playback, the DR report")
    p.add_argument("drill_command", choices=["list", "run", "show", "replay", "report", "finding"])
    p.add_argument("scenario", nargs="?", help="run: a scenario id; show/replay/finding: a drill id")
    p.add_argument("text", nargs="?", help="finding: the action to take, for the improvement plan")
    p.add_argument("--owner", help="finding: who owns the action (a role or a person)")
    p.add_argument("--due", help="finding: due date (2027-01-31) or duration from now (30d); default: before "
                   "the next drill is due")
    p.add_argument("--history", action="store_true", help="list: past drills instead of scenarios")
    p.add_argument("--live", action="store_true", help="run: a live drill, in real time")
    p.add_argument("--tabletop", action="store_true", help="run: a tabletop drill (the default)")
    p.add_argument("--speed", type=float, help="run (tabletop) / replay: the clock N times faster")
    p.add_argument("--auto", action="store_true", help="run: mark manual steps done after their estimate")
    p.add_argument("--format", choices=["md", "json"], default="md", help="report: Markdown or JSON")
    return parser


def _join_relative_at(argv: list[str]) -> list[str]:
    """`--at -2h` as `--at=-2h`: argparse would take `-2h` for an option."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] == "--at" and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            joined.append(f"--at={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def _one_malloc_arena() -> None:
    """glibc gives each thread its own heap arena; buffers a reader thread frees then stay in its
    arena while a worker's grows (peak RSS of a backup 160 -> 120 MiB on bench_files, same
    speed). One arena, set before any thread starts; a no-op on other C libraries."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # malloc.h


def main(argv: list[str] | None = None) -> int:
    _one_malloc_arena()
    # file names that are not UTF-8 print as their original bytes, as ls would
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    parser = build_parser()
    try:
        args = parser.parse_args(_join_relative_at(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        if exc.code not in (0, None) and "wal-fetch" in (sys.argv[1:] if argv is None else argv):
            return _fetch_usage_fatal()  # argparse's 2 would read as "not archived" and end recovery
        raise
    if not hasattr(args, "config"):
        args.config = None
    if args.command == "key" and args.key_command == "remove" and not args.key_id:
        parser.error("key remove needs a KEY_ID")
    try:
        limits = {k: getattr(args, k) for k in ("limit_upload", "limit_download") if hasattr(args, k)}
        if limits:
            from insite_console.config import parse_size
            from insite_console.storage.ratelimit import set_global_limits

            try:
                set_global_limits(upload=parse_size(limits["limit_upload"]) if "limit_upload" in limits else None,
                                  download=parse_size(limits["limit_download"]) if "limit_download" in limits else None)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if args.command is None:
            return _open_console(args.config, read_only=args.read_only, theme=args.theme)
        return args.func(args)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except InsiteError as exc:
        from insite_console.redact import redact

        for line in redact(str(exc)).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        if args.command == "wal-fetch" and exc.exit_code != 1:
            return _fetch_usage_fatal()
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
