"""DR scenarios and their recovery plans, as data: one TOML file each (`[scenario]`, `[plan]`).

The strategy's scenarios ship as defaults (dr/defaults/*.toml); files in `[dr] dir` (default
`dr/` beside the config) add scenarios or replace a default of the same id; the older
`[dr] scenarios_file` (`[scenario.ID]` tables with a `steps` list) is still read. Everything is
validated on load and an error names the file, the table and the key. A step's `policy` may be
a selector (`@all`, `@databases`, `@postgresql`, `@redis`, `@files`): the step is expanded
into one step per matching policy, so a shipped plan fits any configuration.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from insite_console import clock
from insite_console.errors import ConfigError, UsageError

DEFAULTS = Path(__file__).with_name("defaults")
EXAMPLES = Path(__file__).with_name("examples")
TYPES = ("hardware_failure", "network_outage", "data_corruption", "security_breach", "natural_disaster",
         "human_error")
LEVELS = ("low", "medium", "high", "critical")
TIERS = {"tier_1": (0, 4 * 3600), "tier_2": (4 * 3600, 24 * 3600), "tier_3": (24 * 3600, 72 * 3600),
         "tier_4": (72 * 3600, None)}
STEP_KINDS = ("manual", "restore", "verify", "check_rpo", "sql_check", "redis_check", "command", "wait")
AUTOMATED = tuple(k for k in STEP_KINDS if k not in ("manual", "wait"))
NEEDS_POLICY = ("restore", "verify", "check_rpo", "sql_check", "redis_check")
SELECTORS = {"@all": None, "@databases": ("postgresql", "redis"), "@postgresql": ("postgresql",),
             "@redis": ("redis",), "@files": ("files",)}
ESCALATION_ON = ("overrun", "failure")


@dataclass
class Step:
    id: str
    action: str
    role: str
    kind: str = "manual"
    estimate_seconds: float = 300.0
    after: list[str] = field(default_factory=list)
    policy: str | None = None
    number: int | None = None
    off_site: bool = False
    deep: bool = False
    at: str | None = None            # restore: a point in time (ISO) instead of the newest
    query: str | None = None          # sql_check
    command: list[str] = field(default_factory=list)  # redis_check command, or the command step's argv
    expect: str | None = None         # sql_check / redis_check expected reply
    timeout_seconds: float = 300.0    # command
    exit: int = 0                     # command


@dataclass
class Escalation:
    level: int
    notify: list[str]
    after_seconds: float | None = None
    on: str | None = None             # "overrun" (a step passes its estimate) or "failure" (a step fails)
    response_seconds: float | None = None


@dataclass
class Inject:
    at_seconds: float
    text: str


@dataclass
class Plan:
    team: dict[str, dict[str, Any]]
    channels: list[str]
    escalations: list[Escalation]
    steps: list[Step]
    injects: list[Inject] = field(default_factory=list)
    verification: list[str] = field(default_factory=list)
    rollback: list[str] = field(default_factory=list)
    post_recovery: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # steps whose policy selector matched nothing here


@dataclass
class Scenario:
    id: str
    name: str
    type: str
    description: str
    probability: float
    impact: dict[str, str]
    tier: str
    downtime_seconds: float
    cost: float
    resources: list[str]
    communication: dict[str, Any]
    policies: list[str]
    rto_seconds: float
    rpo_seconds: float
    plan: Plan
    file: str = ""

    @property
    def steps(self) -> list[Step]:
        return self.plan.steps

    @property
    def risk(self) -> float:
        """Expected annual loss: probability per year × cost of one occurrence."""
        return self.probability * self.cost

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "risk_score": self.risk}


# ----- validation helpers ----------------------------------------------------------------

class _Where:
    """Names the file and table in every error."""

    def __init__(self, file: str, table: str):
        self.file, self.table = file, table

    def fail(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.table}]" + (f" {key}" if key else "") + f": {problem}")

    def keys(self, raw: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(raw, dict):
            raise self.fail(None, "must be a table")
        for key in raw:
            if key not in allowed:
                raise self.fail(key, f"unknown key (known: {', '.join(sorted(allowed))})")
        for key in sorted(required - set(raw)):
            raise self.fail(key, "is required")
        return raw

    def text(self, raw: dict, key: str, default: str | None = None) -> str | None:
        value = raw.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def texts(self, raw: dict, key: str) -> list[str]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return value

    def duration(self, raw: dict, key: str, default: str | None = None) -> float | None:
        value = raw.get(key, default)
        if value is None:
            return None
        try:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a duration like 15m or 2h")
            return clock.parse_duration(value).total_seconds()
        except ValueError as exc:
            raise self.fail(key, f"bad duration: {exc}") from None

    def number(self, raw: dict, key: str, low: float | None = None, high: float | None = None) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"must be between {low} and {high}" if high is not None else f"must be ≥ {low}")
        return float(value)

    def choice(self, raw: dict, key: str, choices, default: str | None = None) -> str | None:
        value = raw.get(key, default)
        if value is not None and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value


SCENARIO_KEYS = {"id", "name", "type", "description", "probability", "impact", "tier", "downtime", "cost",
                 "resources", "communication", "policies", "rto", "rpo"}
PLAN_KEYS = {"team", "channels", "escalations", "steps", "injects", "verification", "rollback", "post_recovery"}
STEP_KEYS = {"number", "id", "action", "role", "kind", "estimate", "after", "policy", "off_site", "deep", "at",
             "query", "command", "expect", "timeout", "exit"}
IMPACT_KEYS = ("service", "data_loss", "user", "financial")


def parse(raw: dict, file: str, ws) -> Scenario:
    """A scenario and its plan from one file's TOML (already parsed); ConfigError if invalid."""
    _Where(file, "top level").keys(raw, {"scenario", "plan"}, {"scenario", "plan"})
    where = _Where(file, "scenario")
    s = where.keys(raw["scenario"], SCENARIO_KEYS, {"id", "name", "type", "probability", "tier", "cost"})
    sid = where.text(s, "id")
    impact_where = _Where(file, "scenario.impact")
    impact = impact_where.keys(s.get("impact", {}), set(IMPACT_KEYS))
    for key in impact:
        impact_where.choice(impact, key, LEVELS)
    comm_where = _Where(file, "scenario.communication")
    communication = comm_where.keys(s.get("communication", {}), {"internal", "external", "stakeholders"})
    policies = where.texts(s, "policies")
    for name in policies:
        if name not in SELECTORS and name not in ws.config.policies:
            raise where.fail("policies", f"unknown policy {name!r} (policies: {', '.join(sorted(ws.config.policies))}; "
                             f"or one of {', '.join(SELECTORS)})")
    dr = ws.config.dr
    scenario = Scenario(
        id=sid, name=where.text(s, "name"), type=where.choice(s, "type", TYPES),
        description=where.text(s, "description", "") or "", probability=where.number(s, "probability", 0, 1),
        impact=dict(impact), tier=where.choice(s, "tier", tuple(TIERS)),
        downtime_seconds=where.duration(s, "downtime", "0s"), cost=where.number(s, "cost", 0),
        resources=where.texts(s, "resources"), communication=dict(communication), policies=policies,
        rto_seconds=where.duration(s, "rto", dr.get("rto", "1h")), rpo_seconds=where.duration(s, "rpo", dr.get("rpo", "15m")),
        plan=_parse_plan(raw["plan"], file, ws), file=file)
    return scenario


def _parse_plan(raw: dict, file: str, ws) -> Plan:
    where = _Where(file, "plan")
    where.keys(raw, PLAN_KEYS, {"steps"})
    team = {}
    for role, entry in _Where(file, "plan.team").keys(raw.get("team", {}), set(raw.get("team", {}))).items():
        w = _Where(file, f"plan.team.{role}")
        w.keys(entry, {"people", "contact"})
        team[role] = {"people": w.texts(entry, "people"), "contact": w.text(entry, "contact", "") or ""}
    escalations = []
    for i, entry in enumerate(_list(raw, "escalations", where)):
        w = _Where(file, f"plan.escalations[{i}]")
        w.keys(entry, {"level", "after", "on", "notify", "response"}, {"level", "notify"})
        if ("after" in entry) == ("on" in entry):
            raise w.fail("after", "give exactly one trigger: after = \"30m\" (elapsed) or on = \"overrun\"/\"failure\"")
        notify = w.texts(entry, "notify")
        for role in notify:
            if role not in team:
                raise w.fail("notify", f"unknown role {role!r} (team: {', '.join(team) or 'none'})")
        escalations.append(Escalation(level=int(w.number(entry, "level", 1)), notify=notify,
                                      after_seconds=w.duration(entry, "after"), on=w.choice(entry, "on", ESCALATION_ON),
                                      response_seconds=w.duration(entry, "response")))
    injects = []
    for i, entry in enumerate(_list(raw, "injects", where)):
        w = _Where(file, f"plan.injects[{i}]")
        w.keys(entry, {"at", "text"}, {"at", "text"})
        injects.append(Inject(at_seconds=w.duration(entry, "at"), text=w.text(entry, "text")))
    steps = [_parse_step(entry, i, file, team) for i, entry in enumerate(_list(raw, "steps", where))]
    ids = [s.id for s in steps]
    for i, step in enumerate(steps):
        if ids.count(step.id) > 1:
            raise _Where(file, f"plan.steps[{i}]").fail("number", f"step {step.id} is defined twice")
        for dep in step.after:
            if dep not in ids:
                raise _Where(file, f"plan.steps[{i}]").fail("after", f"unknown dependency {dep!r} (steps: {', '.join(ids)})")
    _check_cycles(steps, file)
    expanded, dropped = _expand(steps, ws, file)
    return Plan(team=team, channels=where.texts(raw, "channels"), escalations=sorted(escalations, key=lambda e: e.level),
                steps=expanded, dropped=dropped, injects=sorted(injects, key=lambda j: j.at_seconds),
                verification=where.texts(raw, "verification"), rollback=where.texts(raw, "rollback"),
                post_recovery=where.texts(raw, "post_recovery"))


def _list(raw: dict, key: str, where: _Where) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise where.fail(key, "must be an array of tables ([[plan.%s]])" % key)
    return value


def _parse_step(entry: Any, i: int, file: str, team: dict) -> Step:
    w = _Where(file, f"plan.steps[{i}]")
    w.keys(entry, STEP_KEYS, {"action", "role"})
    if "number" not in entry and "id" not in entry:
        raise w.fail("number", "is required")
    number = entry.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise w.fail("number", "must be an integer")
    step_id = str(entry["id"]) if "id" in entry else str(number)
    kind = w.choice(entry, "kind", STEP_KINDS, "manual")
    role = w.text(entry, "role")
    if team and role not in team:
        raise w.fail("role", f"unknown role {role!r} (team: {', '.join(team)})")
    after = entry.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in after):
        raise w.fail("after", "must be a list of step numbers")
    if kind in NEEDS_POLICY and "policy" not in entry:
        raise w.fail("policy", f"a {kind} step needs a policy (a name, or {', '.join(SELECTORS)})")
    command = entry.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise w.fail("command", "must be a list of strings (argv)")
    if kind == "command" and not command:
        raise w.fail("command", "a command step needs command = [\"argv0\", ...]")
    if kind == "sql_check" and ("query" in entry) != ("expect" in entry):
        raise w.fail("expect", "give query and expect together (or neither: row counts against the backup's baselines)")
    expect = entry.get("expect")
    if expect is not None and not isinstance(expect, (str, int)):
        raise w.fail("expect", "must be a string or an integer")
    at = w.text(entry, "at")
    if at is not None:
        try:
            clock.parse_iso(at)
        except ValueError:
            raise w.fail("at", f"{at!r} is not an ISO 8601 time such as 2026-11-27T02:00:00Z") from None
    exit_code = entry.get("exit", 0)
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise w.fail("exit", "must be an integer")
    for flag in ("off_site", "deep"):
        if not isinstance(entry.get(flag, False), bool):
            raise w.fail(flag, "must be true or false")
    return Step(id=step_id, number=number, action=w.text(entry, "action"), role=role, kind=kind,
                estimate_seconds=w.duration(entry, "estimate", "5m"), after=[str(a) for a in after],
                policy=w.text(entry, "policy"), off_site=entry.get("off_site", False), deep=entry.get("deep", False),
                at=at, query=w.text(entry, "query"), command=command,
                expect=None if expect is None else str(expect),
                timeout_seconds=w.duration(entry, "timeout", "5m"), exit=exit_code)


def _check_cycles(steps: list[Step], file: str) -> None:
    placed: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(d in placed for d in s.after)]
        if not ready:
            raise ConfigError(f"{file}: [plan.steps]: dependency cycle between steps "
                              f"{', '.join(s.id for s in pending)}")
        placed.update(s.id for s in ready)
        pending = [s for s in pending if s not in ready]


def policies_for(ws, selector: str) -> list[str]:
    """The configured policies a selector names: itself, or every policy whose source is of the
    selector's kinds (`@databases`, `@all`, ...)."""
    if selector not in SELECTORS:
        return [selector]
    wanted = SELECTORS[selector]
    return sorted(name for name, policy in ws.config.policies.items()
                  if wanted is None or ws.config.sources[policy["source"]]["type"] in wanted)


def covered_policies(ws, scenario: Scenario) -> list[str]:
    """The policies a scenario covers (its `policies`, selectors expanded), sorted, each once."""
    return sorted({name for selector in scenario.policies for name in policies_for(ws, selector)})


def _expand(steps: list[Step], ws, file: str) -> tuple[list[Step], list[dict]]:
    """Steps with a policy selector become one step per matching policy (`4.main_db`); a
    dependency on an expanded step means its twin for the same policy, else all of them. A
    selector that matches nothing drops its step (its dependents wait on what it waited on);
    the drop is returned, so a drill whose plan lost a restore that way is not passed."""
    expanded: dict[str, list[Step]] = {}
    inherited: dict[str, list[str]] = {}
    dropped = []
    out = []
    for step in topological(steps):
        i = steps.index(step)
        after = []
        for dep in step.after:
            after += inherited[dep] if not expanded[dep] else [t.id for t in expanded[dep]]
        if step.policy is not None and step.kind in NEEDS_POLICY and step.policy not in SELECTORS \
                and step.policy not in ws.config.policies:
            raise _Where(file, f"plan.steps[{i}]").fail(
                "policy", f"unknown policy {step.policy!r} (policies: {', '.join(sorted(ws.config.policies))}; "
                f"or one of {', '.join(SELECTORS)})")
        if step.kind not in NEEDS_POLICY or step.policy not in SELECTORS:
            step.after = after
            expanded[step.id] = [step]
            out.append(step)
            continue
        names = policies_for(ws, step.policy)
        if not names:
            expanded[step.id], inherited[step.id] = [], after
            dropped.append({"step": step.id, "kind": step.kind, "action": step.action,
                            "why": f"no policy matches {step.policy} in this configuration"})
            continue
        twins = []
        for name in names:
            own = []
            for dep in step.after:
                same = [t.id for t in expanded[dep] if t.policy == name and t.id != dep]
                own += same or (inherited[dep] if not expanded[dep] else [t.id for t in expanded[dep]])
            twins.append(Step(**{**asdict(step), "id": f"{step.id}.{name}", "policy": name, "after": own}))
        expanded[step.id] = twins
        out += twins
    return out, dropped


def topological(steps: list[Step]) -> list[Step]:
    """Steps in dependency order; steps in a cycle are left out (load rejects cycles first)."""
    done: list[Step] = []
    placed: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(d in placed for d in s.after)]
        done += ready
        placed.update(s.id for s in ready)
        pending = [s for s in pending if s not in ready]
    return done


# ----- loading -----------------------------------------------------------------------------

def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def scenario_files(ws) -> list[Path]:
    """The shipped defaults, then `[dr] dir`'s files (a later file of the same id replaces one)."""
    files = sorted(DEFAULTS.glob("*.toml"))
    configured = ws.config.dr.get("dir")
    folder = ws.config.resolve(configured or "dr")
    if folder.is_dir():
        files += sorted(folder.glob("*.toml"))
    elif configured:
        raise ConfigError(f"{ws.config.path}: [dr] dir: {folder} is not a folder")
    return files


def load(ws) -> list[Scenario]:
    scenarios: dict[str, Scenario] = {}
    for path in scenario_files(ws):
        scenario = parse(_read(path), str(path), ws)
        scenarios[scenario.id] = scenario
    legacy = ws.config.dr.get("scenarios_file")
    if legacy:
        path = ws.config.resolve(legacy)
        for sid, table in _read(path).get("scenario", {}).items():
            scenario = parse(_from_legacy(sid, table, str(path)), f"{path} (scenario.{sid})", ws)
            scenarios[scenario.id] = scenario
    return list(scenarios.values())


def _from_legacy(sid: str, table: Any, file: str) -> dict:
    """The older `[dr] scenarios_file` shape ([scenario.ID], steps with id/title/owner/
    depends_on/expected_minutes) in the new shape, so it is validated the same way."""
    where = _Where(file, f"scenario.{sid}")
    where.keys(table, {"name", "description", "policies", "steps", "rto_minutes", "rpo_minutes"}, {"name", "steps"})
    steps = []
    for i, step in enumerate(table["steps"]):
        w = _Where(file, f"scenario.{sid}.steps[{i}]")
        w.keys(step, {"id", "title", "owner", "kind", "depends_on", "expected_minutes", "policy", "escalation",
                      "verification", "off_site"}, {"id", "title", "owner"})
        new = {"id": step["id"], "action": step["title"], "role": step["owner"], "after": step.get("depends_on", []),
               "estimate": f"{round(w.number(step, 'expected_minutes', 0) * 60) if 'expected_minutes' in step else 300}s"}
        new.update({k: step[k] for k in ("kind", "policy", "off_site") if k in step})
        steps.append(new)
    scenario = {"id": sid, "name": table["name"], "description": table.get("description", ""),
                "type": "hardware_failure", "probability": 0.0, "tier": "tier_1", "cost": 0,
                "policies": table.get("policies", [])}
    for key in ("rto", "rpo"):
        if f"{key}_minutes" in table:
            scenario[key] = f"{round(where.number(table, f'{key}_minutes', 0) * 60)}s"
    return {"scenario": scenario, "plan": {"steps": steps}}


def order(scenario: Scenario) -> list[Step]:
    """Steps in dependency order (load has ruled out cycles)."""
    return topological(scenario.steps)


def find(ws, scenario_id: str) -> Scenario:
    scenarios = load(ws)
    for scenario in scenarios:
        if scenario.id == scenario_id:
            return scenario
    raise UsageError(f"no DR scenario {scenario_id!r} (scenarios: {', '.join(s.id for s in scenarios)})")
