"""DR scenarios and their recovery plans: steps with owners, dependencies, escalation and
verification, expanded against the workspace's policies.

Three scenarios are built in (database failure, datacenter failure, data corruption); a
`[dr] scenarios_file` (TOML, same shape as `Scenario.to_json`) adds or replaces them. Steps of
kind `restore`, `verify` and `check_rpo` are carried out for real during a drill; `manual`
steps are played back with their expected duration, so a drill measures the whole plan.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

from insite_console.errors import ConfigError, UsageError

STEP_KINDS = ("manual", "check_rpo", "verify", "restore")


@dataclass
class Step:
    id: str
    title: str
    owner: str
    kind: str = "manual"
    depends_on: list[str] = field(default_factory=list)
    expected_minutes: float = 5.0
    policy: str | None = None
    escalation: str = ""
    verification: str = ""
    off_site: bool = False  # restore from a copy on another storage than the backup's own


@dataclass
class Scenario:
    id: str
    name: str
    description: str
    policies: list[str]
    steps: list[Step]
    rto_minutes: float = 60.0
    rpo_minutes: float = 15.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _policy_steps(policies: list[str], after: str, verify_deep: bool, owner: str, off_site: bool) -> list[Step]:
    steps = []
    for name in policies:
        steps.append(Step(id=f"rpo-{name}", title=f"Measure data loss of {name} against the RPO", owner=owner,
                          kind="check_rpo", depends_on=[after], expected_minutes=1, policy=name,
                          escalation="Backup on-call if the newest restore point is older than the RPO",
                          verification="age of the newest restore point ≤ RPO"))
        steps.append(Step(id=f"verify-{name}", title=f"{'Deep-verify' if verify_deep else 'Verify'} the newest "
                          f"backup of {name}", owner=owner, kind="verify", depends_on=[f"rpo-{name}"],
                          expected_minutes=5, policy=name, escalation="Storage owner on any integrity error",
                          verification="every pack present and authenticated"))
        steps.append(Step(id=f"restore-{name}", title=f"Restore {name} to the recovery target", owner=owner,
                          kind="restore", depends_on=[f"verify-{name}"], expected_minutes=20, policy=name,
                          off_site=off_site,
                          escalation="Incident commander if the restore exceeds half the RTO",
                          verification="restored data matches the baselines recorded at backup time"))
    return steps


def builtin(ws) -> list[Scenario]:
    policies = sorted(ws.config.policies)
    by_type: dict[str, list[str]] = {}
    for name in policies:
        source = ws.config.sources[ws.config.policies[name]["source"]]
        by_type.setdefault(source["type"], []).append(name)
    databases = by_type.get("postgresql", []) + by_type.get("redis", []) or policies
    rto = float(_minutes(ws.config.dr.get("rto", "1h")))
    rpo = float(_minutes(ws.config.dr.get("rpo", "15m")))

    def scenario(sid, name, description, scope, first, last, deep, off_site=False):
        steps = [first] + _policy_steps(scope, first.id, deep, "backup on-call", off_site)
        restores = [s.id for s in steps if s.kind == "restore"]
        steps.append(Step(id=last[0], title=last[1], owner=last[2], depends_on=restores or [first.id],
                          expected_minutes=last[3], escalation="CTO if service is not back within the RTO",
                          verification=last[4]))
        return Scenario(sid, name, description, scope, steps, rto, rpo)

    return [
        scenario("database-failure", "Database failure",
                 "The primary database server is lost; restore the databases from the newest restore points.",
                 databases,
                 Step("declare", "Declare the incident and freeze writes", "incident commander", expected_minutes=5,
                      escalation="Head of operations after 10 minutes", verification="incident channel open"),
                 ("reconnect", "Point the application at the restored database and run smoke tests", "application owner",
                  10, "smoke tests pass; row counts match baselines"), deep=False),
        scenario("datacenter-failure", "Datacenter failure",
                 "The whole site is lost; rebuild every service from the off-site copies.",
                 policies,
                 Step("declare", "Declare a site disaster; start the standby site", "incident commander",
                      expected_minutes=15, escalation="CTO immediately", verification="standby hosts reachable"),
                 ("failover", "Switch DNS and traffic to the standby site", "network owner", 15,
                  "external health checks green"), deep=False, off_site=True),
        scenario("data-corruption", "Data corruption",
                 "Bad data was written (bug or attack); find the last good restore point and restore beside production.",
                 policies,
                 Step("contain", "Stop the writer and find when corruption began", "application owner",
                      expected_minutes=15, escalation="Security on-call if an attack is suspected",
                      verification="time of first bad write known"),
                 ("reconcile", "Reconcile restored data with production and switch over", "data owner", 20,
                  "reconciliation report signed off"), deep=True),
    ]


def _minutes(value: str) -> float:
    from insite_console.clock import parse_duration

    return parse_duration(value).total_seconds() / 60


def load(ws) -> list[Scenario]:
    scenarios = {s.id: s for s in builtin(ws)}
    path = ws.config.dr.get("scenarios_file")
    if path:
        full = ws.config.resolve(path)
        try:
            raw = tomllib.loads(full.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{ws.config.path}: dr.scenarios_file: cannot read {full}: {exc}") from None
        for sid, table in raw.get("scenario", {}).items():
            try:
                steps = [Step(**step) for step in table.pop("steps", [])]
                scenarios[sid] = Scenario(id=sid, steps=steps, **table)
            except TypeError as exc:
                raise ConfigError(f"{full}: scenario.{sid}: {exc}") from None
    for scenario in scenarios.values():
        _check(scenario, ws)
    return list(scenarios.values())


def _check(scenario: Scenario, ws) -> None:
    ids = {step.id for step in scenario.steps}
    for step in scenario.steps:
        if step.kind not in STEP_KINDS:
            raise ConfigError(f"scenario {scenario.id}: step {step.id}: kind must be one of {', '.join(STEP_KINDS)}")
        for dep in step.depends_on:
            if dep not in ids:
                raise ConfigError(f"scenario {scenario.id}: step {step.id} depends on unknown step {dep!r}")
        if step.kind != "manual" and step.policy not in ws.config.policies:
            raise ConfigError(f"scenario {scenario.id}: step {step.id} names unknown policy {step.policy!r}")
    order(scenario)


def order(scenario: Scenario) -> list[Step]:
    """Steps in dependency order (a cycle is a configuration error)."""
    done: list[Step] = []
    placed: set[str] = set()
    pending = list(scenario.steps)
    while pending:
        ready = [s for s in pending if all(d in placed for d in s.depends_on)]
        if not ready:
            raise ConfigError(f"scenario {scenario.id}: steps {', '.join(s.id for s in pending)} depend on each other")
        for step in ready:
            done.append(step)
            placed.add(step.id)
            pending.remove(step)
    return done


def find(ws, scenario_id: str) -> Scenario:
    for scenario in load(ws):
        if scenario.id == scenario_id:
            return scenario
    known = ", ".join(s.id for s in load(ws))
    raise UsageError(f"no DR scenario {scenario_id!r} (scenarios: {known})")
