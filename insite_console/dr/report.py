"""The DR report: per scenario the last drill against RTO/RPO, per policy its tier, and the
risks an auditor would raise (RPO breaches, unverified backups, no off-site copy, untested
recovery)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from insite_console import clock, status
from insite_console.dr.scenarios import load

TIERS = ((15 * 60, "tier 1 (RPO ≤ 15m)"), (4 * 3600, "tier 2 (RPO ≤ 4h)"), (float("inf"), "tier 3"))


def tier(rpo_seconds: float | None) -> str:
    if rpo_seconds is None:
        return "untiered (no RPO set)"
    return next(name for limit, name in TIERS if rpo_seconds <= limit)


def build(ws) -> dict[str, Any]:
    now = clock.now()
    catalog = ws.catalog
    scenarios = []
    for scenario in load(ws):
        drills = catalog.drills(scenario.id, limit=1)
        last = drills[0] if drills else None
        scenarios.append({
            "id": scenario.id, "name": scenario.name, "policies": scenario.policies,
            "rto_seconds": scenario.rto_minutes * 60, "rpo_seconds": scenario.rpo_minutes * 60,
            "steps": len(scenario.steps), "owners": sorted({s.owner for s in scenario.steps}),
            "last_drill": None if last is None else {
                "id": last["id"], "at": last["started_at"], "status": last["status"],
                "recovery_seconds": last["recovery_seconds"], "data_loss_seconds": last["data_loss_seconds"]},
        })
    policies, risks = [], []
    recent = now - timedelta(days=30)
    for health in status.overview(ws, now):
        name = health["policy"]
        storages = set()
        for row in catalog.backups(policy=name, status="succeeded", limit=50):
            storages.update(catalog.backup_storages(row["id"]))
        last_ok = catalog.backup(health["last_success_id"]) if health["last_success_id"] else None
        checks = catalog.verifications(last_ok["id"], limit=1) if last_ok else []
        policies.append({**health, "tier": tier(health["rpo_seconds"]), "storages": sorted(storages),
                         "last_verification": checks[0]["status"] if checks else None})
        if health["health"] in ("breach", "never"):
            risks.append({"level": "high", "policy": name,
                          "risk": "no backup ever succeeded" if health["health"] == "never" else
                          f"RPO breached: newest restore point is {clock.human_duration(health['age_seconds'])} old"})
        if health["failing"]:
            risks.append({"level": "high", "policy": name, "risk": f"last run failed: {health['last_failure_error']}"})
        if last_ok and not checks:
            risks.append({"level": "medium", "policy": name, "risk": "newest backup was never verified"})
        elif checks and checks[0]["status"] != "ok":
            risks.append({"level": "high", "policy": name, "risk": "newest backup failed verification"})
        if len(storages) < 2:
            risks.append({"level": "medium", "policy": name,
                          "risk": "no off-site copy: every restore point is on one storage"})
    tested = [d for d in catalog.drills(limit=200) if clock.parse_iso(d["started_at"]) >= recent]
    if not tested:
        risks.append({"level": "medium", "policy": None, "risk": "no DR drill in the last 30 days"})
    for item in scenarios:
        if item["last_drill"] and item["last_drill"]["status"] == "failed":
            risks.append({"level": "high", "policy": None,
                          "risk": f"last drill of {item['name']} failed its RTO/RPO or a step"})
    order = {"high": 0, "medium": 1}
    risks.sort(key=lambda r: order[r["level"]])
    return {"generated_at": clock.iso(now), "scenarios": scenarios, "policies": policies, "risks": risks}
