"""Retention and prune: decide which backups a policy keeps, forget the rest, then delete the
packs no kept backup references.

Keep rules work like restic's `forget`: keep_last N, and the newest backup in each of the last
N hours/days/weeks/months/years. A differential or incremental backup also keeps the chain it
depends on (its parent, and so on), since restoring it needs nothing but its own manifest —
yet forgetting a parent would change what "incremental" means to an operator reading the list.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from insite_console import clock
from insite_console.repo.prune import collect

_BUCKETS = {
    "keep_hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "keep_daily": lambda t: t.strftime("%Y-%m-%d"),
    "keep_weekly": lambda t: "%04d-W%02d" % t.isocalendar()[:2],
    "keep_monthly": lambda t: t.strftime("%Y-%m"),
    "keep_yearly": lambda t: t.strftime("%Y"),
}


def select_kept(backups: list[dict], rules: dict[str, Any], now: datetime | None = None) -> dict[str, list[str]]:
    """backup id -> reasons to keep it; `backups` are one policy's succeeded backups, newest first."""
    reasons: dict[str, list[str]] = {}
    for i, backup in enumerate(backups):
        if i < rules.get("keep_last", 0):
            reasons.setdefault(backup["id"], []).append("last")
    for rule, bucket_of in _BUCKETS.items():
        limit = rules.get(rule, 0)
        seen: list[str] = []
        for backup in backups:
            bucket = bucket_of(clock.parse_iso(backup["started_at"]))
            if bucket in seen:
                continue
            if len(seen) >= limit:
                break
            seen.append(bucket)
            reasons.setdefault(backup["id"], []).append(rule.replace("keep_", ""))
    if "keep_within" in rules:
        horizon = (now or clock.now()) - clock.parse_duration(rules["keep_within"])
        for backup in backups:
            if clock.parse_iso(backup["started_at"]) >= horizon:
                reasons.setdefault(backup["id"], []).append("within")
    by_id = {b["id"]: b for b in backups}
    for backup_id in list(reasons):
        parent = by_id.get(backup_id, {}).get("parent_id")
        while parent and parent in by_id and parent not in reasons:
            reasons[parent] = ["parent of a kept backup"]
            parent = by_id[parent].get("parent_id")
    return reasons


def plan(ws, policy: str | None = None) -> list[dict]:
    """Per backup: keep or forget, with the reasons."""
    decisions = []
    names = [policy] if policy else sorted(ws.config.policies)
    for name in names:
        settings = ws.config.policy(name)
        rules = settings.get("retention")
        backups = ws.catalog.backups(policy=name, status="succeeded")
        kept = select_kept(backups, rules) if rules else {b["id"]: ["no retention set"] for b in backups}
        for backup in backups:
            decisions.append({"id": backup["id"], "policy": name, "started_at": backup["started_at"],
                              "type": backup["type"], "storage": backup["storage"],
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
                              "packs_deleted": 0, "packs_repacked": 0, "bytes_freed": 0}
    if dry_run:
        return result
    storages = sorted({d["storage"] for d in decisions})
    with contextlib.ExitStack() as held:
        locks = {}
        for storage in storages:  # exclusive: no backup may reuse a blob prune is about to delete
            locks[storage] = held.enter_context(ws.repository(storage).lock("prune", exclusive=True))
        for decision in forget:  # catalog row first: a kill between the two never lists a backup that is gone
            ws.catalog.delete_backup(decision["id"])
            ws.repository(decision["storage"]).delete_manifest(decision["id"])
            ws.catalog.event(None, f"forgot backup {decision['id']} of {decision['policy']} (outside retention)")
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
