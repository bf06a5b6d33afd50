"""config.toml: load, validate every key, report each problem with file, key and expectation.

Validation collects all problems before failing, so an operator fixes a file in one pass.
Secrets are never read from here: the file names the environment variable or file holding them.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from insite_console.clock import parse_duration
from insite_console.errors import ConfigError

CONFIG_ENV = "INSITE_CONFIG"

Check = Callable[[Any], str | None]  # returns what was expected, or None if fine


def _is_str(value: Any) -> str | None:
    return None if isinstance(value, str) and value != "" else "a non-empty string"


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _is_pos_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "a positive integer"


def _is_str_list(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return None
    return "a list of non-empty strings"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(f'"{c}"' for c in choices)
    return check


def _is_duration(value: Any) -> str | None:
    try:
        parse_duration(value) if isinstance(value, str) else (_ for _ in ()).throw(ValueError)
        return None
    except ValueError:
        return 'a duration such as "15m", "1h" or "1d"'


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|K|M|G|T)?\s*(/s)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
               "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4}


def parse_size(value: Any) -> int:
    """'64MiB' or '20MiB/s' or 1048576 -> bytes (per second for rates)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a size like 64MiB or 20MiB/s")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def _is_size(value: Any) -> str | None:
    try:
        parse_size(value)
        return None
    except ValueError:
        return 'a size such as 1048576, "64MiB" or "20MiB/s"'


def _is_cron(value: Any) -> str | None:
    if not isinstance(value, str):
        return 'a cron expression such as "*/15 * * * *"'
    from croniter import croniter

    return None if croniter.is_valid(value) else 'a valid 5-field cron expression such as "*/15 * * * *"'


RETENTION_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def _is_retention(value: Any) -> str | None:
    expected = "a table of " + ", ".join(RETENTION_KEYS) + " with non-negative integers"
    if not isinstance(value, dict) or not value:
        return expected
    for key, number in value.items():
        if key not in RETENTION_KEYS and key != "keep_within":
            return expected + f' (unknown key "{key}")'
        if key == "keep_within":
            if _is_duration(number):
                return 'keep_within as a duration such as "7d"'
        elif not isinstance(number, int) or isinstance(number, bool) or number < 0:
            return expected + f' ({key} = {number!r})'
    if not any(value.get(k) for k in RETENTION_KEYS) and not value.get("keep_within"):
        return expected + " (at least one must be above zero, or every backup would be deleted)"
    return None


def _is_timezone(value: Any) -> str | None:
    """An IANA name (Europe/Berlin), looked up in the system's time zone database."""
    expected = 'an IANA time zone name such as "UTC" or "Europe/Berlin"'
    if not isinstance(value, str) or not value:
        return expected
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return expected + " (not in this system's time zone database)"
    return None


def _is_seconds(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive number of seconds"


def parse_share(value: Any) -> float:
    """A share of a whole: "5%" or a fraction 0.05."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(value)


def _is_share(value: Any) -> str | None:
    try:
        share = parse_share(value)
    except ValueError:
        return 'a share such as "5%" or 0.05'
    return None if 0 <= share <= 1 else "a share between 0% and 100%"


def _is_count(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "an integer >= 0"


_LIMITS = {"limit_upload": _is_size, "limit_download": _is_size, "retries": _is_count,
           "part_size": _is_size, "concurrency": _is_pos_int, "connect_timeout": _is_seconds,
           "read_timeout": _is_seconds, "retry_base_delay": _is_seconds, "retry_max_delay": _is_seconds}

# key -> (check, required)
SCHEMAS: dict[str, dict[str, dict[str, tuple[Check, bool]]]] = {
    "storage": {
        "local": {"path": (_is_str, True)},
        "s3": {"bucket": (_is_str, True), "prefix": (lambda v: None if isinstance(v, str) else "a string", False),
               "endpoint_url": (_is_str, False), "region": (_is_str, False), "profile": (_is_str, False),
               "access_key_id_env": (_is_str, False), "secret_access_key_env": (_is_str, False),
               "session_token_env": (_is_str, False),
               "addressing_style": (_one_of("path", "virtual", "auto"), False),
               **{k: (v, False) for k, v in _LIMITS.items()}},
        "gcs": {"bucket": (_is_str, True), "prefix": (lambda v: None if isinstance(v, str) else "a string", False),
                "project": (_is_str, False), "credentials_file": (_is_str, False),
                "location": (_is_str, False), "endpoint_url": (_is_str, False),
                **{k: (v, False) for k, v in _LIMITS.items()}},
        "azure": {"container": (_is_str, True), "prefix": (lambda v: None if isinstance(v, str) else "a string", False),
                  "connection_string_env": (_is_str, False), "account_url": (_is_str, False),
                  "api_version": (_is_str, False),
                  **{k: (v, False) for k, v in _LIMITS.items()}},
    },
    "source": {
        "files": {"paths": (_is_str_list, True), "exclude": (_is_str_list, False),
                  "one_file_system": (_is_bool, False)},
        "postgresql": {"dsn": (_is_str, True), "mode": (_one_of("logical", "physical"), False),
                       "password_env": (_is_str, False), "jobs": (_is_pos_int, False),
                       "exact_counts": (_is_bool, False), "pg_bin": (_is_str, False),
                       "archive_wait": (_is_duration, False), "archive_push_parallel": (_is_pos_int, False)},
        "redis": {"url": (_is_str, True), "password_env": (_is_str, False), "data_dir": (_is_str, False)},
    },
}

POLICY_KEYS: dict[str, tuple[Check, bool]] = {
    "source": (_is_str, True), "storage": (_is_str, True), "schedule": (_is_cron, False),
    "type": (_one_of("full", "incremental", "differential"), False),
    "compression": (_one_of("zstd", "gzip", "none"), False), "encryption": (_is_bool, False),
    "verify": (_is_bool, False), "rpo": (_is_duration, False), "retention": (_is_retention, False),
    "retries": (_is_count, False),
    "retry_delay": (_is_duration, False), "copy_to": (_is_str_list, False),
    "enabled": (_is_bool, False), "verify_every": (_is_duration, False),
    "verify_schedule": (_is_cron, False), "restore_test_schedule": (_is_cron, False),
}

ALERT_EVENTS = ("failure", "rpo_breach", "verify_failed", "restore_started", "restore_finished", "drill_overdue",
                "escalation", "storage_unreachable", "missed_run", "scheduler_down", "recovered")


def _is_events(value: Any) -> str | None:
    expected = "a non-empty list of events from " + ", ".join(ALERT_EVENTS)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return expected
    unknown = [v for v in value if v not in ALERT_EVENTS]
    return expected + f" (unknown: {', '.join(unknown)})" if unknown else None


def _is_port(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536 else "a port 1-65535"


ALERT_KEYS: dict[str, tuple[Check, bool]] = {
    "on": (_is_events, True), "name": (_is_str, False), "command": (_is_str_list, False),
    "webhook_url": (_is_str, False), "email": (lambda v: None if isinstance(v, dict) else "a table", False),
    "timeout": (_is_seconds, False), "retries": (_is_count, False), "secret_env": (_is_str, False),
}
EMAIL_KEYS: dict[str, tuple[Check, bool]] = {
    "host": (_is_str, True), "port": (_is_port, False), "starttls": (_is_bool, False), "from": (_is_str, True),
    "to": (_is_str_list, True), "username": (_is_str, False), "password_env": (_is_str, False),
}

TOP_TABLES = {
    "catalog": {"path": (_is_str, False)},
    "encryption": {"passphrase_env": (_is_str, False), "passphrase_file": (_is_str, False)},
    "engine": {"threads": (_is_pos_int, False), "memory_limit": (_is_size, False), "pack_size": (_is_size, False),
               "restore_threads": (_is_pos_int, False), "processes": (_is_count, False),
               "prune_max_unused": (_is_share, False),
               "timezone": (_is_timezone, False)},
    "console": {"theme": (_is_str, False), "refresh_seconds": (_is_pos_int, False), "keymap": (lambda v: None if isinstance(v, dict) else "a table", False)},
    "dr": {"rto": (_is_duration, False), "rpo": (_is_duration, False), "scenarios_file": (_is_str, False),
           "dir": (_is_str, False), "cadence": (_is_duration, False), "scratch_postgres": (_is_str, False)},
    "scheduler": {"max_parallel": (_is_pos_int, False), "timezone": (_is_timezone, False),
                  "catch_up": (_is_bool, False), "on_stop": (_one_of("cancel", "finish"), False),
                  "tick_seconds": (_is_seconds, False)},
}


@dataclass
class Config:
    path: Path
    base_dir: Path
    catalog_path: Path
    encryption: dict[str, str]
    engine: dict[str, Any]
    console: dict[str, Any]
    dr: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    storages: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    recoveries: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        """Relative paths in config resolve against the folder of the config file."""
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def state_dir(self) -> Path:
        return self.catalog_path.parent

    @property
    def prune_max_unused(self) -> float:
        """Repack a pack once more than this share of it is unused (restic's --max-unused)."""
        return parse_share(self.engine.get("prune_max_unused", "5%"))

    @property
    def timezone(self) -> zoneinfo.ZoneInfo:
        """`[engine] timezone`: where retention's hours, days and weeks begin (default UTC)."""
        return zoneinfo.ZoneInfo(self.engine.get("timezone", "UTC"))

    def check_source_paths(self, name: str) -> None:
        """A backup of a file-tree source needs every path it names: one that is gone would
        give a backup `succeeded` without it."""
        table = self.sources[name]
        missing = [f"{self.path}: source.{name}.paths[{i}]: path {entry} does not exist"
                   for i, entry in enumerate(table.get("paths", []) if table["type"] == "files" else [])
                   if not os.path.lexists(entry)]
        if missing:
            raise ConfigError(missing)

    def recovery(self, name: str) -> dict[str, Any]:
        if name not in self.recoveries:
            known = ", ".join(sorted(self.recoveries)) or "none"
            raise ConfigError(f"{self.path}: no recovery plan named {name!r} ([recovery.NAME] tables: {known})")
        return self.recoveries[name]

    def group(self, name: str) -> dict[str, Any]:
        if name not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none"
            raise ConfigError(f"{self.path}: no group policy named {name!r} ([group.NAME] tables: {known})")
        return self.groups[name]

    def policy(self, name: str) -> dict[str, Any]:
        if name not in self.policies:
            known = ", ".join(sorted(self.policies)) or "none"
            raise ConfigError(f"{self.path}: no policy named {name!r} (policies: {known})")
        return self.policies[name]


def find_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path("config.toml")


def load(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (use -c PATH, set {CONFIG_ENV}, "
                          "or run `insite-console demo` for a working example)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> Config:
    problems: list[str] = []
    where = str(path)
    base_dir = path.resolve().parent

    def check_table(table: Any, schema: dict[str, tuple[Check, bool]], prefix: str, allow: tuple[str, ...] = ()) -> dict:
        if not isinstance(table, dict):
            problems.append(f"{where}: [{prefix}] must be a table")
            return {}
        for key, value in table.items():
            if key in allow:
                continue
            if key not in schema:
                known = ", ".join(sorted(list(schema) + list(allow)))
                problems.append(f"{where}: {prefix}.{key}: unknown key (expected one of: {known})")
                continue
            expected = schema[key][0](value)
            if expected:
                problems.append(f"{where}: {prefix}.{key}: expected {expected}, got {value!r}")
        for key, (_check, required) in schema.items():
            if required and key not in table:
                problems.append(f"{where}: {prefix}.{key}: missing (required)")
        return table

    known_top = set(TOP_TABLES) | {"storage", "source", "policy", "recovery", "alert", "group"}
    for key in raw:
        if key not in known_top:
            problems.append(f"{where}: [{key}]: unknown table (expected one of: {', '.join(sorted(known_top))})")
    tops = {name: check_table(raw.get(name, {}), schema, name) for name, schema in TOP_TABLES.items()}

    groups: dict[str, dict[str, dict]] = {}
    for group in ("storage", "source"):
        groups[group] = {}
        for name, label, table in _named_tables(raw, group, where, problems):
            kind = table.get("type")
            kinds = SCHEMAS[group]
            if not isinstance(kind, str) or kind not in kinds:
                problems.append(f"{where}: {label}.type: expected one of {', '.join(repr(k) for k in kinds)}, got {kind!r}")
                continue
            check_table(table, kinds[kind], label, allow=("type",))
            groups[group][name] = dict(table)

    # Paths: resolve relative ones. Whether a source's paths exist is checked by the backup of
    # that source (Config.check_source_paths), not here: a DR host restoring with the production
    # config has none of them, and every other command must work there.
    for name, table in groups["storage"].items():
        if table["type"] == "local" and isinstance(table.get("path"), str):
            table["path"] = str(_resolve(base_dir, table["path"]))
    for name, table in groups["source"].items():
        if table["type"] == "files" and not _is_str_list(table.get("paths")):
            table["paths"] = [str(_resolve(base_dir, entry)) for entry in table["paths"]]

    for name, table in groups["source"].items():
        key = {"postgresql": "dsn", "redis": "url"}.get(table["type"])
        if key and isinstance(table.get(key), str) and _has_password(table[key]):
            variable = "password_env" if table["type"] == "redis" else "PGPASSWORD, ~/.pgpass or password_env"
            problems.append(f"{where}: source.{name}.{key}: holds a password; secrets never live in the config "
                            f"file: remove it and use {variable}")

    policies: dict[str, dict] = {}
    for name, label, table in _named_tables(raw, "policy", where, problems):
        check_table(table, POLICY_KEYS, label)
        source, storage = table.get("source"), table.get("storage")
        if isinstance(source, str) and source not in groups["source"]:
            problems.append(f"{where}: {label}.source: no [source.{source}] is defined "
                            f"(sources: {', '.join(sorted(groups['source'])) or 'none'})")
        if isinstance(storage, str) and storage not in groups["storage"]:
            problems.append(f"{where}: {label}.storage: no [storage.{storage}] is defined "
                            f"(storages: {', '.join(sorted(groups['storage'])) or 'none'})")
        for i, target in enumerate(table.get("copy_to", []) if isinstance(table.get("copy_to"), list) else []):
            if not isinstance(target, str) or target not in groups["storage"]:
                problems.append(f"{where}: {label}.copy_to[{i}]: no [storage.{target}] is defined")
        if table.get("encryption") is False:
            problems.append(f"{where}: {label}.encryption: repository format 1 always encrypts "
                            "(AES-256-GCM); remove the key or set it to true")
        policy = {"type": "incremental", "compression": "zstd", "encryption": True, "verify": False,
                  "retries": 0, "retry_delay": "1m", "copy_to": [], "enabled": True}
        policy.update(table)
        policies[name] = policy

    policy_groups = _groups(raw, policies, where, check_table, problems)
    recoveries = _recoveries(raw, policies, groups["source"], base_dir, where, problems,
                             policy_groups)
    alerts = _check_alerts(raw.get("alert", []), where, check_table, problems)

    encryption = tops["encryption"]
    if "passphrase_env" not in encryption and "passphrase_file" not in encryption:
        encryption = {"passphrase_env": "INSITE_PASSPHRASE", **encryption}
    if "passphrase_file" in encryption and isinstance(encryption["passphrase_file"], str):
        encryption["passphrase_file"] = str(_resolve(base_dir, encryption["passphrase_file"]))

    if problems:
        raise ConfigError(problems)

    catalog_path = _resolve(base_dir, tops["catalog"].get("path", "state/catalog.sqlite"))
    return Config(
        path=path, base_dir=base_dir, catalog_path=catalog_path, encryption=encryption,
        engine=tops["engine"], console=tops["console"], dr=tops["dr"],
        storages=groups["storage"], sources=groups["source"], policies=policies, raw=raw, recoveries=recoveries,
        scheduler=tops["scheduler"], alerts=alerts, groups=policy_groups,
    )


RECOVERY_KEYS = ("components", "mode", "targets", "includes", "on_failure", "group", "start_ports")

GROUP_KEYS: dict[str, tuple[Check, bool]] = {
    "policies": (_is_str_list, True), "schedule": (_is_cron, False), "enabled": (_is_bool, False),
}


def _named_tables(raw: dict, section: str, where: str, problems: list[str]):
    """The `[SECTION.NAME]` tables of one section, each as (name, label, table); a section that is
    not a table of tables, or an entry that is not a table, is reported and skipped."""
    tables = raw.get(section, {})
    if not isinstance(tables, dict):
        problems.append(f"{where}: [{section}] must contain named tables like [{section}.NAME]")
        return
    for name, table in tables.items():
        label = f"{section}.{name}"
        if not isinstance(table, dict):
            problems.append(f"{where}: {label}: must be a table")
            continue
        yield name, label, table


def _groups(raw: dict, policies: dict, where: str, check_table, problems: list[str]) -> dict[str, dict]:
    """`[group.NAME]`: policies backed up at one moment as one restore point, on a schedule of its own."""
    result: dict[str, dict] = {}
    for name, label, table in _named_tables(raw, "group", where, problems):
        check_table(table, GROUP_KEYS, label)
        members = table.get("policies") if not _is_str_list(table.get("policies")) else []
        if "policies" in table and not members:
            problems.append(f"{where}: {label}.policies: expected a non-empty list of policy names")
        if len(set(members)) != len(members):
            problems.append(f"{where}: {label}.policies: names a policy twice: {members!r}")
        for i, policy in enumerate(members):
            if policy not in policies:
                problems.append(f"{where}: {label}.policies[{i}]: no [policy.{policy}] is defined "
                                f"(policies: {', '.join(sorted(policies)) or 'none'})")
        result[name] = {"policies": list(members), "schedule": table.get("schedule"),
                        "enabled": table.get("enabled", True)}
    return result


def _recoveries(raw: dict, policies: dict, sources: dict, base_dir: Path, where: str,
                problems: list[str], policy_groups: dict[str, dict]) -> dict[str, dict]:
    """`[recovery.NAME]`: components (policies, in the order they come back), a target for each,
    optional includes per component; a plan that names no known policy is refused here, not mid-recovery."""
    plans: dict[str, dict] = {}
    for name, label, table in _named_tables(raw, "recovery", where, problems):
        for key in table:
            if key not in RECOVERY_KEYS:
                problems.append(f"{where}: {label}.{key}: unknown key (expected one of: {', '.join(RECOVERY_KEYS)})")
        components = table.get("components")
        if "components" not in table:
            problems.append(f"{where}: {label}.components: missing (required): the policies to recover, in order")
            components = []
        elif _is_str_list(components) or not components:
            problems.append(f"{where}: {label}.components: expected a non-empty list of policy names, got {components!r}")
            components = []
        elif len(set(components)) != len(components):
            problems.append(f"{where}: {label}.components: names a policy twice: {components!r}")
        for i, policy in enumerate(components):
            if policy not in policies:
                problems.append(f"{where}: {label}.components[{i}]: no [policy.{policy}] is defined "
                                f"(policies: {', '.join(sorted(policies)) or 'none'})")
        for key, choices in (("mode", ("rolling", "parallel")), ("on_failure", ("stop", "continue"))):
            if key in table and _one_of(*choices)(table[key]):
                problems.append(f"{where}: {label}.{key}: expected {_one_of(*choices)(table[key])}, "
                                f"got {table[key]!r}")
        targets = table.get("targets", {})
        if not isinstance(targets, dict):
            problems.append(f"{where}: {label}.targets: expected a table of component = target, got {targets!r}")
            targets = {}
        for policy in components:
            if policy not in targets:
                problems.append(f"{where}: {label}.targets.{policy}: missing (each component needs a target: "
                                "a directory, a PostgreSQL DSN or a redis URL)")
        for key, value in targets.items():
            if key not in components:
                problems.append(f"{where}: {label}.targets.{key}: not one of the components {components!r}")
            elif _is_str(value):
                problems.append(f"{where}: {label}.targets.{key}: expected {_is_str(value)}, got {value!r}")
            elif _has_password(value):
                problems.append(f"{where}: {label}.targets.{key}: holds a password; secrets never live in the "
                                "config file: remove it and use PGPASSWORD, ~/.pgpass or the source's password_env")
        includes = table.get("includes", {})
        if not isinstance(includes, dict):
            problems.append(f"{where}: {label}.includes: expected a table of component = [patterns], got {includes!r}")
            includes = {}
        for key, value in includes.items():
            if key not in components:
                problems.append(f"{where}: {label}.includes.{key}: not one of the components {components!r}")
            elif _is_str_list(value):
                problems.append(f"{where}: {label}.includes.{key}: expected {_is_str_list(value)}, got {value!r}")
            else:
                source = sources.get(policies[key].get("source"), {})
                if source.get("type") == "postgresql" and source.get("mode") == "physical":
                    problems.append(f"{where}: {label}.includes.{key}: a physical PostgreSQL backup restores the "
                                    "whole cluster; a partial recovery needs a logical one")
        start_ports = table.get("start_ports", {})
        if not isinstance(start_ports, dict):
            problems.append(f"{where}: {label}.start_ports: expected a table of component = port, got {start_ports!r}")
            start_ports = {}
        for key, value in start_ports.items():
            source = sources.get(policies.get(key, {}).get("source"), {})
            if key not in components:
                problems.append(f"{where}: {label}.start_ports.{key}: not one of the components {components!r}")
            elif _is_port(value):
                problems.append(f"{where}: {label}.start_ports.{key}: expected {_is_port(value)}, got {value!r}")
            elif not (source.get("type") == "postgresql" and source.get("mode") == "physical"):
                problems.append(f"{where}: {label}.start_ports.{key}: only a physical PostgreSQL component is "
                                "started (a server replaying WAL to the time, then promoted)")
        group = table.get("group")
        if group is not None:
            if not isinstance(group, str) or group not in policy_groups:
                problems.append(f"{where}: {label}.group: no [group.{group}] is defined "
                                f"(groups: {', '.join(sorted(policy_groups)) or 'none'})")
            else:
                outside = [c for c in components if c not in policy_groups[group]["policies"]]
                if outside:
                    problems.append(f"{where}: {label}.group: {', '.join(outside)} not among the policies of "
                                    f"[group.{group}]; a group restore point holds only its members")
        # a directory target (files, an RDB, PGDATA) resolves like every path here; URLs and DSNs stay
        targets = {key: value if not isinstance(value, str) or "://" in value or "=" in value
                   else str(_resolve(base_dir, value)) for key, value in targets.items()}
        plans[name] = {"components": list(components), "mode": table.get("mode", "rolling"),
                       "targets": targets, "includes": {k: list(v) for k, v in includes.items()},
                       "on_failure": table.get("on_failure", "stop"), "group": group,
                       "start_ports": dict(start_ports)}
    return plans


def _check_alerts(raw: Any, where: str, check_table, problems: list[str]) -> list[dict[str, Any]]:
    """`[[alert]]` tables: the events, and exactly one way to deliver them."""
    if not isinstance(raw, list):
        problems.append(f"{where}: alert: must be an array of tables, written [[alert]]")
        return []
    alerts = []
    for i, table in enumerate(raw):
        label = f"alert[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: {label}: must be a table")
            continue
        check_table(table, ALERT_KEYS, label)
        channels = [key for key in ("command", "webhook_url", "email") if key in table]
        if len(channels) != 1:
            problems.append(f"{where}: {label}: needs exactly one of command, webhook_url or email"
                            + (f" (has {', '.join(channels)})" if channels else ""))
        if "secret_env" in table and "webhook_url" not in table:
            problems.append(f"{where}: {label}.secret_env: only a webhook_url is signed")
        url = table.get("webhook_url")
        if isinstance(url, str) and not re.match(r"^https?://[^/\s]+", url):
            problems.append(f"{where}: {label}.webhook_url: expected an http:// or https:// URL, got {url!r}")
        if isinstance(url, str) and _has_password(url):
            problems.append(f"{where}: {label}.webhook_url: holds a password; secrets never live in the config "
                            "file: sign with secret_env instead")
        if isinstance(table.get("email"), dict):
            check_table(table["email"], EMAIL_KEYS, f"{label}.email")
        alerts.append({"timeout": 10, "retries": 2, **table})
    return alerts


def _has_password(dsn: str) -> bool:
    """Does a URL (scheme://user:secret@host) or a libpq key=value string carry a password?"""
    from urllib.parse import urlsplit

    if "://" in dsn:
        try:
            return urlsplit(dsn).password is not None or "password=" in (urlsplit(dsn).query or "")
        except ValueError:
            return False
    return re.search(r"(^|\s)password\s*=", dsn) is not None


def _resolve(base_dir: Path, value: str) -> Path:
    candidate = Path(os.path.expanduser(value))
    return candidate if candidate.is_absolute() else (base_dir / candidate)


def write(raw: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a config back (the TUI's settings): validate first, then replace atomically."""
    import tomli_w

    path = Path(path)
    validate(raw, path)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(tomli_w.dumps(raw).encode())
    os.replace(temp, path)
