"""The DR report: the strategy's risk analysis (total annual risk Σ probability × cost,
per-scenario risk scores, the four recovery tiers, the top five risks) and the after-action
part: per scenario the last drill against its RTO/RPO targets, steps that overran, drills
overdue against `[dr] cadence`, the RTO trend over its drills, and the improvement plan
(findings.py). `markdown()` renders it to be read on its own."""

from __future__ import annotations

from typing import Any

from insite_console import clock
from insite_console.dr import findings
from insite_console.dr.scenarios import TIERS, load

TREND = 10  # drills of a scenario in its RTO trend
BARS = "▁▂▃▄▅▆▇█"


def trend(records: list[dict]) -> list[dict]:
    """Measured RTO per drill, oldest first, against the target (cancelled drills measured nothing)."""
    return [{"drill": r["id"], "at": r["started_at"], "mode": r.get("mode"), "status": r["status"],
             "rehearsal": bool(r.get("auto", any(e.get("auto") for e in r.get("events", [])
                                                 if e["type"] == "drill_started"))),
             "recovery_seconds": r["recovery_seconds"], "rto_seconds": r["rto_seconds"], "meets_rto": r.get("meets_rto")}
            for r in reversed(records) if r["status"] != "cancelled"]


def sparkline(points: list[dict]) -> str:
    """The trend as bars, scaled to the largest of the measured RTOs and the target."""
    if not points:
        return ""
    top = max([p["recovery_seconds"] or 0 for p in points] + [points[-1]["rto_seconds"] or 0]) or 1
    return "".join("·" if p["recovery_seconds"] is None  # a drill that stopped before it measured
                   else BARS[min(len(BARS) - 1, int(p["recovery_seconds"] / top * (len(BARS) - 1) + 0.5))]
                   for p in points)


def trend_text(points: list[dict]) -> str:
    """'52m ✓ → 1h 10m ✗ → 48m ✓ (target 1h)': each drill's measured RTO, met or missed."""
    if not points:
        return "no drill yet"
    marks = " → ".join(f"{clock.human_duration(p['recovery_seconds'])} {'✓' if p['meets_rto'] else '✗'}"
                       + (" (rehearsal)" if p["rehearsal"] else "") for p in points)
    return f"{marks} (target {clock.human_duration(points[-1]['rto_seconds'])})"


def last_drilled(drills: list[dict]) -> str | None:
    """When a scenario was last drilled, from its drills newest first (`catalog.drills(...,
    finished=True)`): a stopped (cancelled) drill is no drill. `status` and the alerts use it too."""
    return next((d["started_at"] for d in drills if d["status"] != "cancelled"), None)


def build(ws, now=None) -> dict[str, Any]:
    now = now or clock.now()
    cadence = clock.parse_duration(ws.config.dr.get("cadence", "90d")).total_seconds()
    scenarios = []
    for s in load(ws):
        drills = ws.catalog.drills(s.id, limit=TREND, finished=True)
        last = drills[0]["record"] if drills else None
        done = last_drilled(drills)
        age = (now - clock.parse_iso(done)).total_seconds() if done else None
        overran = [st["id"] for st in (last or {}).get("steps", [])
                   if st.get("seconds") is not None and st["seconds"] > st["estimate_seconds"]]
        scenarios.append({
            "id": s.id, "name": s.name, "type": s.type, "tier": s.tier, "probability": s.probability, "cost": s.cost,
            "risk_score": round(s.risk, 2), "downtime_seconds": s.downtime_seconds, "impact": s.impact,
            "rto_seconds": s.rto_seconds, "rpo_seconds": s.rpo_seconds,
            "last_drill": None if last is None else {
                "id": last["id"], "at": last["started_at"], "mode": last.get("mode"), "status": last["status"],
                "recovery_seconds": last["recovery_seconds"], "data_loss_seconds": last["data_loss_seconds"],
                "meets_rto": last.get("meets_rto"), "meets_rpo": last.get("meets_rpo"),
                "steps_over_estimate": overran, "missing": last.get("missing", []),
                "verification": [{"step": st["id"], "status": st["status"]} for st in last.get("steps", [])
                                 if st["kind"] in ("verify", "sql_check", "redis_check")]},
            "rto_trend": trend([d["record"] for d in drills]),
            "overdue": age is None or age > cadence,
            "days_since_drill": None if age is None else round(age / 86400, 1),
        })
    tiers = []
    for name in TIERS:
        members = [s for s in scenarios if s["tier"] == name]
        tiers.append({"tier": name, "scenarios": len(members), "total_cost": sum(s["cost"] for s in members),
                      "average_downtime_seconds": (sum(s["downtime_seconds"] for s in members) / len(members))
                      if members else None})
    top = sorted(scenarios, key=lambda s: -s["risk_score"])[:5]
    return {"generated_at": clock.iso(now), "cadence_seconds": cadence,
            "improvement_plan": findings.plan(ws, [s["id"] for s in scenarios], now),
            "total_annual_risk": round(sum(s["risk_score"] for s in scenarios), 2),
            "scenarios": scenarios, "tiers": tiers,
            "top_risks": [{"id": s["id"], "name": s["name"], "risk_score": s["risk_score"]} for s in top],
            "overdue": [s["id"] for s in scenarios if s["overdue"]]}


def _money(value: float) -> str:
    return f"{value:,.0f}"


def markdown(report: dict) -> str:
    d = clock.human_duration
    lines = ["# DR report", "", f"Generated {report['generated_at']}.", "",
             f"**Total annual risk** (Σ probability × cost): **{_money(report['total_annual_risk'])}**", "",
             "## Scenarios", "", "| Scenario | Type | Tier | Probability/yr | Cost | Risk score | RTO | RPO |",
             "|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        lines.append(f"| {s['name']} (`{s['id']}`) | {s['type']} | {s['tier']} | {s['probability']:g} | "
                     f"{_money(s['cost'])} | {_money(s['risk_score'])} | {d(s['rto_seconds'])} | {d(s['rpo_seconds'])} |")
    lines += ["", "## Recovery tiers", "", "| Tier | Scenarios | Total cost | Average downtime |", "|---|---|---|---|"]
    for t in report["tiers"]:
        avg = d(t["average_downtime_seconds"]) if t["average_downtime_seconds"] is not None else "–"
        lines.append(f"| {t['tier']} | {t['scenarios']} | {_money(t['total_cost'])} | {avg} |")
    lines += ["", "## Top risks", ""]
    lines += [f"{i}. {r['name']}: {_money(r['risk_score'])} a year" for i, r in enumerate(report["top_risks"], 1)]
    lines += ["", "## Last drills", ""]
    for s in report["scenarios"]:
        last = s["last_drill"]
        if last is None:
            lines.append(f"- **{s['name']}**: never drilled (overdue)")
            continue
        loss = d(last["data_loss_seconds"]) if last["data_loss_seconds"] is not None else "not measured"
        met = lambda ok: "met" if ok else ("unknown" if ok is None else "MISSED")  # noqa: E731
        lines.append(f"- **{s['name']}**: {last['at']} ({last['mode'] or 'drill'}) **{last['status']}**; "
                     f"RTO {d(last['recovery_seconds'])} of {d(s['rto_seconds'])} ({met(last['meets_rto'])}), "
                     f"RPO {loss} of {d(s['rpo_seconds'])} ({met(last['meets_rpo'])})"
                     + (f"; over estimate: {', '.join(last['steps_over_estimate'])}" if last["steps_over_estimate"] else "")
                     + (f"; not carried out: {'; '.join(last['missing'])}" if last["missing"] else "")
                     + ("; OVERDUE" if s["overdue"] else ""))
    lines += ["", "## RTO trend", "", "Measured recovery time per drill, oldest first.", ""]
    for s in report["scenarios"]:
        points = s["rto_trend"]
        lines.append(f"- **{s['name']}**: " + (f"`{sparkline(points)}` " if points else "") + trend_text(points))
    lines += ["", f"## Overdue drills (cadence {d(report['cadence_seconds'])})", ""]
    lines += [f"- {sid}" for sid in report["overdue"]] or ["None."]
    lines += ["", "## Improvement plan", ""]
    if report["improvement_plan"]:
        lines += ["| Due | Owner | Scenario | Action | From |", "|---|---|---|---|---|"]
        for f in report["improvement_plan"]:
            lines.append(f"| {(f['due'] or '–')[:10]}{' **OVERDUE**' if f['overdue'] else ''} | {f['owner']} | "
                         f"{f['scenario']} | {f['text'].replace('|', '/')} | "
                         f"{'drill' if f['source'] == 'drill' else 'team: ' + (f.get('by') or '?')} {f['drill']} |")
    else:
        lines.append("No findings.")
    return "\n".join(lines) + "\n"
