"""Retention and prune: decide which backups a policy keeps, forget the rest, then delete the
packs no kept backup references.

Keep rules are restic's `forget` rules: keep_last N, the newest backup in each of the last N
hours/days/weeks/months/years that have one, and keep_within a duration of the newest backup.
Each backup is judged on its own: every manifest lists all its files (an incremental reuses
its parent's chunk lists), so any backup restores alone and a parent is no dependency.
"""

from __future__ import annotations

import contextlib
import socket
from datetime import tzinfo
from typing import Any

from insite_console import clock
from insite_console.catalog.db import order_key
from insite_console.repo.prune import collect

_BUCKETS = {
    "keep_hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "keep_daily": lambda t: t.strftime("%Y-%m-%d"),
    "keep_weekly": lambda t: "%04d-W%02d" % t.isocalendar()[:2],
    "keep_monthly": lambda t: t.strftime("%Y-%m"),
    "keep_yearly": lambda t: t.strftime("%Y"),
}


def select_kept(backups: list[dict], rules: dict[str, Any], tz: tzinfo = clock.UTC) -> dict[str, list[str]]:
    """backup id -> reasons to keep it, among one group of succeeded backups (a policy on one host).

    Buckets are counted in `tz`, so "daily" means the operator's midnight, not UTC's.
    keep_within counts back from the newest backup, not from now (as restic does): a policy
    whose backups stopped keeps its last ones instead of losing them all."""
    ordered = sorted(backups, key=order_key, reverse=True)
    started = {b["id"]: clock.parse_iso(b.get("started_at_precise") or b["started_at"]) for b in ordered}
    reasons: dict[str, list[str]] = {}
    for backup in ordered[:rules.get("keep_last", 0)]:
        reasons.setdefault(backup["id"], []).append("last")
    for rule, bucket_of in _BUCKETS.items():
        limit = rules.get(rule, 0)
        seen: set[str] = set()
        for backup in ordered:
            bucket = bucket_of(started[backup["id"]].astimezone(tz))
            if bucket in seen:
                continue
            if len(seen) >= limit:
                break
            seen.add(bucket)
            reasons.setdefault(backup["id"], []).append(rule.replace("keep_", ""))
    if rules.get("keep_within") and ordered:
        horizon = started[ordered[0]["id"]] - clock.parse_duration(rules["keep_within"])
        for backup in ordered:
            if started[backup["id"]] >= horizon:
                reasons.setdefault(backup["id"], []).append("within")
    return reasons


def plan(ws, policy: str | None = None) -> list[dict]:
    """Per backup: keep or forget, with the reasons and every storage holding it (copies too).

    Rules apply per policy and host: two hosts sharing a config (and so its policy names)
    each keep their own last N, as restic groups by host."""
    decisions = []
    names = [policy] if policy else sorted(ws.config.policies)
    here = socket.gethostname()
    for name in names:
        rules = ws.config.policy(name).get("retention")
        backups = ws.catalog.backups(policy=name, status="succeeded")
        groups: dict[str, list[dict]] = {}
        for backup in backups:
            groups.setdefault(backup.get("host") or here, []).append(backup)
        kept: dict[str, list[str]] = {}
        for group in groups.values():
            kept.update(select_kept(group, rules, ws.config.timezone) if rules
                        else {b["id"]: ["no retention set"] for b in group})
        for backup in backups:
            decisions.append({"id": backup["id"], "policy": name, "host": backup.get("host") or here,
                              "started_at": backup["started_at"], "type": backup["type"],
                              "storage": backup["storage"],
                              "storages": ws.catalog.backup_storages(backup["id"]) or [backup["storage"]],
                              "action": "keep" if backup["id"] in kept else "forget",
                              "reasons": kept.get(backup["id"], [])})
    return decisions


def prune(ws, policy: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Forget backups outside retention, then delete packs nothing references.

    What is referenced is decided from every manifest on storage (repo/prune.py); packs
    whose unused share is above `[engine] prune_max_unused` are repacked.
    """
    decisions = plan(ws, policy)
    forget = [d for d in decisions if d["action"] == "forget"]
    result: dict[str, Any] = {"dry_run": dry_run, "backups": decisions, "forgotten": [d["id"] for d in forget],
                              "packs_deleted": 0, "packs_repacked": 0, "bytes_freed": 0, "warnings": []}
    if dry_run:
        return result
    storages = sorted({s for d in decisions for s in d["storages"] if s in ws.config.storages})
    with contextlib.ExitStack() as held:
        locks = {}
        for storage in storages:  # exclusive: no backup may reuse a blob prune is about to delete
            locks[storage] = held.enter_context(ws.repository(storage).lock("prune", exclusive=True))
        for decision in forget:
            # catalog row first (its tombstone stays): a kill before the manifests are gone never
            # lists a backup that is gone, and the next prune deletes the stray manifests below
            ws.catalog.delete_backup(decision["id"], reason="outside retention")
            # every copy goes: a manifest left on a copy storage would come back on rebuild
            for storage in decision["storages"]:
                if storage in ws.config.storages:
                    ws.repository(storage).delete_manifest(decision["id"])
                else:
                    result["warnings"].append(f"backup {decision['id']}: storage {storage} is no longer in "
                                              f"{ws.config.path}; its copy there was not deleted")
            ws.catalog.event(None, f"forgot backup {decision['id']} of {decision['policy']} (outside retention) "
                                   f"on {', '.join(decision['storages'])}")
        forgotten = ws.catalog.forgotten_ids()
        for storage in storages:  # manifests an interrupted prune forgot but did not delete
            repo = ws.repository(storage)
            for backup_id in sorted(set(repo.list_manifest_ids()) & forgotten):
                repo.delete_manifest(backup_id)
        for storage in storages:
            _collect_packs(ws, storage, locks[storage], result)
        result["wal"] = _prune_wal(ws, policy)
    return result


def _prune_wal(ws, policy: str | None) -> list[dict]:
    """WAL segments older than the oldest kept base backup can no longer be replayed."""
    from insite_console import wal

    names = [policy] if policy else sorted(ws.config.policies)
    sources = {ws.config.policies[n]["source"] for n in names}
    return [wal.prune(ws, source) for source in sorted(sources)
            if ws.config.sources[source]["type"] == "postgresql" and ws.config.sources[source].get("mode") == "physical"]


def _collect_packs(ws, storage: str, lock, result: dict[str, Any]) -> None:
    """Delete and repack packs on one storage (repo/prune.py), under prune's exclusive lock."""
    done = collect(ws.repository(storage), lock, max_unused=ws.config.prune_max_unused,
                   event=lambda message: ws.catalog.event(None, f"{storage}: {message}"))
    for key in ("packs_deleted", "packs_repacked", "bytes_freed"):
        result[key] = result.get(key, 0) + done[key]
