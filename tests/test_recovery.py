"""Platform recovery (`recover PLAN`) against a real PostgreSQL, a real Redis and a file tree:
two states backed up, a recovery to a time between them brings every component back to the first."""

from __future__ import annotations

import json
import os
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from insite_console import backup, clock, recovery, who
from insite_console.errors import ConfigError, RestoreRefused
from insite_console.events import CancelToken
from tests.conftest import WorkspaceHelper
from tests.pg_servers import *  # noqa: F401,F403
from tests.redis_servers import *  # noqa: F401,F403

COMPONENTS = ("main_db", "cache", "app_files")


def platform_config(directory: Path, dsn: str, redis_url: str, files_src: Path, files_target: Path,
                    recovery_extra: str = "", db_target: str | None = None, redis_target: str | None = None) -> Path:
    config = directory / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"

        [storage.local]
        type = "local"
        path = "repo"

        [source.main_db]
        type = "postgresql"
        dsn = "{dsn}"
        exact_counts = true

        [source.cache]
        type = "redis"
        url = "{redis_url}"

        [source.app_files]
        type = "files"
        paths = ["{files_src}"]

        [policy.main_db]
        source = "main_db"
        storage = "local"
        type = "full"
        rpo = "1h"

        [policy.cache]
        source = "cache"
        storage = "local"
        type = "full"
        rpo = "1h"

        [policy.app_files]
        source = "app_files"
        storage = "local"
        rpo = "1h"

        [recovery.platform]
        components = ["main_db", "cache", "app_files"]
        targets = {{ main_db = "{db_target or dsn}", cache = "{redis_target or redis_url}", app_files = "{files_target}" }}
        """) + textwrap.dedent(recovery_extra))
    return config


_counter = [0]


class Platform:
    """A database, a redis and a file tree at state 1, backed up; then state 2, backed up."""

    def __init__(self, pg, redis_server, tmp_path: Path, recovery_extra: str = "", redis_target: str | None = None):
        _counter[0] += 1
        self.pg, self.redis = pg, redis_server
        self.db = f"plat_{_counter[0]}_{os.getpid()}"
        pg.sql(f'CREATE DATABASE "{self.db}"')
        self.src = tmp_path / "app"
        self.src.mkdir()
        self.target = tmp_path / "restored"
        self.helper = WorkspaceHelper(tmp_path, self.src, platform_config(
            tmp_path, pg.dsn_for(self.db), redis_server.url, self.src, self.target, recovery_extra,
            redis_target=redis_target))
        self.ws = self.helper.ws
        self.ws.init_repository("local")

    def state1(self) -> None:
        with self.pg.connect(self.db) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text);"
                         "INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');"
                         "CREATE TABLE audit (id int PRIMARY KEY, what text); INSERT INTO audit VALUES (1, 'first')")
        r = self.redis.client()
        r.flushall()
        r.set("session:a", "one")
        r.set("session:b", "one")
        (self.src / "app.txt").write_text("version one\n")

    def state2(self) -> None:
        with self.pg.connect(self.db) as conn:
            conn.execute("INSERT INTO items VALUES (4, 'four'); UPDATE items SET name = 'ONE' WHERE id = 1;"
                         "INSERT INTO audit VALUES (2, 'second')")
        r = self.redis.client()
        r.set("session:a", "two")
        r.set("session:c", "two")
        (self.src / "app.txt").write_text("version two, longer\n")
        (self.src / "new.txt").write_text("made after the first state\n")

    def backup_all(self) -> None:
        for policy in COMPONENTS:
            assert backup.run(self.ws, policy)["status"] == "succeeded"

    def items(self, table: str = "items") -> list:
        return self.pg.sql(f"SELECT * FROM {table} ORDER BY id", self.db)

    def keys(self) -> dict:
        r = self.redis.client()
        return {k.decode(): r.get(k).decode() for k in r.keys("*")}

    def restored_file(self, name: str = "app.txt") -> Path:
        return self.target / str(self.src).lstrip("/") / name

    def two_states(self):
        """Back up state 1, note a time, then state 2 and its backups; the time between them."""
        self.state1()
        self.backup_all()
        time.sleep(0.05)
        between = clock.now()
        time.sleep(0.05)
        self.state2()
        self.backup_all()
        # the file target holds something the recovery must overwrite
        self.restored_file().parent.mkdir(parents=True)
        self.restored_file().write_text("damaged copy\n")
        return between


@pytest.fixture
def platform(pg_cluster, redis_factory, tmp_path):
    made = []

    def make(**kwargs) -> Platform:
        made.append(Platform(pg_cluster, kwargs.pop("redis", None) or redis_factory(), tmp_path, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.helper.close()


STATE1_ITEMS = [(1, "one"), (2, "two"), (3, "three")]
STATE1_KEYS = {"session:a": "one", "session:b": "one"}


# ----- config -------------------------------------------------------------------------------------


def test_recovery_plan_config_is_validated_with_clear_errors(tmp_path):
    from insite_console import config as config_module

    config = platform_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "redis://127.0.0.1:1/0", tmp_path,
                             tmp_path / "t", recovery_extra="""
        [recovery.bad]
        components = ["main_db", "nope", "main_db", "cache"]
        mode = "sideways"
        on_failure = "retry"
        targets = { main_db = "postgresql://u:hunter2@db2/x", stray = "/x" }
        includes = { cache = "session:*" }
        colour = "red"
        """)
    with pytest.raises(ConfigError) as caught:
        config_module.load(config)
    text = str(caught.value)
    for expected in ("recovery.bad.components: names a policy twice",
                     "recovery.bad.components[1]: no [policy.nope] is defined",
                     'recovery.bad.mode: expected one of "rolling", "parallel"',
                     'recovery.bad.on_failure: expected one of "stop", "continue"',
                     "recovery.bad.targets.main_db: holds a password",
                     "recovery.bad.targets.stray: not one of the components",
                     "recovery.bad.includes.cache: expected a list of non-empty strings",
                     "recovery.bad.colour: unknown key"):
        assert expected in text
    assert "hunter2" not in text
    ok = config_module.load(platform_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "redis://127.0.0.1:1/0",
                                            tmp_path, Path("relative")))
    assert ok.recovery("platform") == {
        "components": list(COMPONENTS), "mode": "rolling", "on_failure": "stop", "includes": {}, "group": None, "start_ports": {},
        "targets": {"main_db": "postgresql://u@127.0.0.1:1/db", "cache": "redis://127.0.0.1:1/0",
                    "app_files": str(tmp_path / "relative")}}
    with pytest.raises(ConfigError, match="no recovery plan named 'other'"):
        ok.recovery("other")


# ----- the plan and the recovery ----------------------------------------------------------------------


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_dry_run_changes_nothing_then_rolling_recovery_brings_every_component_back(platform):
    p = platform()
    between = p.two_states()
    first = {c: p.ws.catalog.backups(policy=c)[-1]["id"] for c in COMPONENTS}
    state2 = (p.items(), p.keys(), p.restored_file().read_text())

    dry = p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert (p.items(), p.keys(), p.restored_file().read_text()) == state2  # nothing changed
    assert planned["checks_ok"] is True
    by_policy = {c["policy"]: c for c in planned["components"]}
    assert {c: by_policy[c]["backup_id"] for c in COMPONENTS} == first
    for c in COMPONENTS:
        assert 0 < by_policy[c]["data_loss_seconds"] < 60 and by_policy[c]["within_rpo"] is True
        assert {k["check"]: k["status"] for k in by_policy[c]["checks"]}["target reachable"] == "ok"
    assert by_policy["cache"]["overwrites"]["items"] == 3  # a, b, c are there now
    assert by_policy["app_files"]["overwrites"]["items"] == 1
    assert by_policy["main_db"]["overwrites"]["items"] == 2
    assert planned["skew_seconds"] is not None and planned["skew_seconds"] >= 0
    assert planned["bytes"] > 0 and planned["estimated_seconds"] >= 0

    refused = p.helper.cli("recover", "platform", "--at", clock.iso_precise(between))
    assert refused.returncode == 1 and "pass --yes to overwrite" in refused.stderr
    assert p.items() == state2[0]
    unexplained = p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--yes")
    assert unexplained.returncode == 1 and "main_db, cache" in unexplained.stderr
    assert "needs a reason or ticket id" in unexplained.stderr
    assert p.items() == state2[0]

    done = p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--yes", "--json",
                        "--reason", "incident 42: bad deploy")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["recovered"] == list(COMPONENTS)
    assert p.items() == STATE1_ITEMS and p.items("audit") == [(1, "first")]
    assert p.keys() == STATE1_KEYS  # the key made after the first state is gone
    assert p.restored_file().read_text() == "version one\n"
    assert not (p.restored_file("new.txt")).exists()
    for c in result["components"]:
        assert c["status"] == "succeeded" and c["verified"] is True, c
        assert c["backup_id"] == first[c["policy"]] and c["started_at"] <= c["finished_at"]
        assert c["bytes"] > 0
    ordered = [c["started_at"] for c in result["components"]]
    assert ordered == sorted(ordered)  # rolling: in the configured order
    assert result["components"][0]["finished_at"] <= result["components"][1]["started_at"]
    assert result["recovery_seconds"] > 0 and result["reason"] == "incident 42: bad deploy"
    assert result["user"] and result["host"] and result["stored_in"]["repositories"] == ["local"]

    history = json.loads(p.helper.cli("recover", "--history", "--json", check=True).stdout)
    assert [h["id"] for h in history] == [result["id"]] and history[0]["status"] == "succeeded"
    sealed = json.loads(p.helper.reopen().repository("local").get_sealed("recoveries/" + result["id"]))
    assert sealed["components"] == result["components"]
    audit = json.loads(p.helper.cli("restores", "--json", check=True).stdout)
    assert sorted((e["kind"], e["reason"]) for e in audit) == [("recovery", "incident 42: bad deploy")] + [
        ("restore", "incident 42: bad deploy")] * 3
    assert {e["id"] for e in audit if e["kind"] == "restore"} == {c["restore_id"] for c in result["components"]}
    assert [e["over_source"] for e in audit if e["kind"] == "restore"].count(True) == 2  # the database, the redis
    # a lost catalog: the recovery and its restores come back from the repository with their reason
    p.helper.close()
    (p.helper.root / "state" / "catalog.sqlite").unlink()
    rebuilt = json.loads(p.helper.cli("catalog", "rebuild", "--json", check=True).stdout)
    assert rebuilt["recoveries_added"] == [result["id"]] and len(rebuilt["restores_added"]) == 3
    again = json.loads(p.helper.cli("restores", "--json", check=True).stdout)
    assert sorted(e["id"] for e in again) == sorted(e["id"] for e in audit)
    assert {e["reason"] for e in again} == {"incident 42: bad deploy"}

    # the dashboard's figure: the newest instant every component has a restore point for
    newest = recovery.recoverable(p.ws, "platform")
    points = {c: recovery.restore_point(p.ws, c, None)[1] for c in COMPONENTS}
    assert newest["limited_by"] == min(points, key=points.get) and newest["problem"] is None
    assert newest["point_at"] == clock.iso_precise(min(points.values()))
    assert 0 <= newest["skew_seconds"] < 60 and newest["group_point"] is None


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_partial_recovery_restores_only_the_included_table(platform):
    p = platform(recovery_extra='includes = { main_db = ["public.items"] }\n')
    between = p.two_states()
    result = recovery.run(p.ws, "platform", between, yes=True, reason="test: partial")
    assert result["status"] == "succeeded", result
    assert p.items() == STATE1_ITEMS
    assert p.items("audit") == [(1, "first"), (2, "second")]  # not included: left at the second state
    assert result["components"][0]["includes"] == ["public.items"]


def _failing_cache(p: Platform, between) -> dict:
    """Plan while every target is up, then lose the redis target before the recovery runs."""
    planned = recovery.plan(p.ws, "platform", between)
    assert planned["checks_ok"]
    p.redis.stop()
    return planned


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_a_failing_component_stops_a_rolling_recovery(platform, redis_factory):
    p = platform()
    between = p.two_states()
    result = recovery.run(p.ws, "platform", between, yes=True, planned=_failing_cache(p, between), reason="test")
    statuses = {c["policy"]: c["status"] for c in result["components"]}
    assert statuses == {"main_db": "succeeded", "cache": "failed", "app_files": "skipped"}
    assert result["status"] == "partial" and result["failed"] == ["cache", "app_files"]
    assert "cannot connect to redis" in result["components"][1]["error"]
    assert result["components"][1]["verified"] is None
    assert p.restored_file().read_text() == "damaged copy\n"  # never reached
    assert p.items() == STATE1_ITEMS
    assert p.ws.catalog.recoveries()[0]["status"] == "partial"


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
@pytest.mark.parametrize("extra", ['mode = "parallel"\n', 'on_failure = "continue"\n'])
def test_a_failing_component_does_not_stop_parallel_or_continue(platform, extra):
    p = platform(recovery_extra=extra)
    between = p.two_states()
    result = recovery.run(p.ws, "platform", between, yes=True, planned=_failing_cache(p, between), reason="test")
    statuses = {c["policy"]: c["status"] for c in result["components"]}
    assert statuses == {"main_db": "succeeded", "cache": "failed", "app_files": "succeeded"}
    assert result["status"] == "partial"
    assert p.items() == STATE1_ITEMS and p.restored_file().read_text() == "version one\n"


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_cancel_stops_between_components_and_is_recorded(platform):
    p = platform()
    between = p.two_states()
    token = CancelToken()
    seen = []

    def on_event(event):
        seen.append((event["component"], event["status"]))
        if event == {"component": "main_db", "status": "succeeded", "verified": True, "error": None}:
            token.cancel("operator pressed cancel")

    result = recovery.run(p.ws, "platform", between, yes=True, events=on_event, cancel=token, reason="test")
    statuses = {c["policy"]: c["status"] for c in result["components"]}
    assert statuses == {"main_db": "succeeded", "cache": "skipped", "app_files": "skipped"}
    assert result["status"] == "cancelled"
    assert "operator pressed cancel" in result["components"][1]["error"]
    assert ("main_db", "running") in seen and ("cache", "running") not in seen
    assert p.keys() != STATE1_KEYS  # cache untouched
    assert p.ws.catalog.recoveries()[0]["status"] == "cancelled"
    assert result["cancelled_by"] == who.me()  # nobody asked through a console: this process's user


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_failed_pre_flight_exits_non_zero_and_restores_nothing(platform):
    from tests.redis_servers import free_port

    p = platform(redis_target=f"redis://127.0.0.1:{free_port()}/0")
    between = p.two_states()
    dry = p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--dry-run")
    assert dry.returncode == 1
    assert "[failed] target reachable: cannot connect to redis" in dry.stdout
    assert "pre-flight checks FAILED" in dry.stdout
    with pytest.raises(RestoreRefused, match="pre-flight failed; nothing was restored"):
        recovery.run(p.ws, "platform", between, yes=True)
    assert p.items() != STATE1_ITEMS
    early = p.helper.cli("recover", "platform", "--at", "2000-01-01T00:00:00Z", "--dry-run")
    assert early.returncode == 1 and "no succeeded backup of policy 'main_db' at or before" in early.stdout


@needs_pg  # noqa: F405
@pytest.mark.timeout(300)
def test_physical_component_replays_wal_to_exactly_the_time_and_to_a_group_point(pg_factory):
    """A physical PostgreSQL component end to end: planned within its restorable window, then
    recovered (a server started on the restored PGDATA replays WAL to the time and is promoted)
    holding the rows committed before the time and not those after; then a group restore point
    (a named restore point in the WAL after the base backup) recovered the same way."""
    from tests.pg_servers import PG_USER, PgCluster
    from tests.redis_servers import free_port
    from tests.test_postgresql import _wait_archived, archiving_cluster, run_as_postgres

    wsdir = Path(pg_factory.make_dir("platform-pitr"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    target = Path(pg_factory.make_dir("platform-pitr/pgdata"))
    group_target = Path(pg_factory.make_dir("platform-pitr/pgdata-group"))
    layout_target = Path(pg_factory.make_dir("platform-pitr/pgdata-layout"))
    ports = free_port(), free_port()
    with open(config, "a") as handle:
        handle.write(f'\n[recovery.pitr]\ncomponents = ["db"]\ntargets = {{ db = "{target}" }}\n'
                     f'start_ports = {{ db = {ports[0]} }}\n'
                     f'\n[recovery.grp]\ncomponents = ["db"]\ngroup = "pg"\ntargets = {{ db = "{group_target}" }}\n'
                     f'start_ports = {{ db = {ports[1]} }}\n'
                     f'\n[recovery.layout]\ncomponents = ["db"]\ntargets = {{ db = "{layout_target}" }}\n'
                     '\n[group.pg]\npolicies = ["db"]\n')
    os.chown(config, PG_USER.pw_uid, PG_USER.pw_gid)
    cluster.sql("CREATE TABLE events (id int PRIMARY KEY)")
    base = json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)
    cluster.sql("INSERT INTO events VALUES (1)")
    time.sleep(1.2)
    at = clock.now()
    time.sleep(1.2)
    cluster.sql("INSERT INTO events VALUES (2)")
    _wait_archived(cluster)

    planned = json.loads(run_as_postgres(config, "recover", "pitr", "--at", clock.iso_precise(at),
                                         "--dry-run", "--json").stdout)
    db = planned["components"][0]
    assert planned["checks_ok"] is True and db["kind"] == "postgresql-physical"
    assert db["backup_id"] == base["id"]
    assert db["restore_point_at"] == clock.iso_precise(at) and db["data_loss_seconds"] == 0
    window = db["restorable_window"]
    assert window["oldest"] < clock.iso_precise(at) < window["newest"]
    assert {c["check"]: c["status"] for c in db["checks"]}["WAL continuity"] == "ok"
    assert os.listdir(target) == []  # the dry run wrote nothing

    future = run_as_postgres(config, "recover", "pitr", "--at", clock.iso(clock.now() + timedelta(hours=1)),
                             "--dry-run", check=False)
    assert future.returncode == 1 and "is in the future" in future.stderr  # refused, not planned
    beyond = clock.parse_iso(window["newest"]) + timedelta(seconds=1)  # past, but after the archived WAL
    time.sleep(max(0.0, (beyond - clock.now()).total_seconds() + 0.1))
    late = run_as_postgres(config, "recover", "pitr", "--at", clock.iso_precise(beyond), "--dry-run", check=False)
    assert late.returncode == 1 and "[failed] WAL continuity: the target" in late.stdout

    done = json.loads(run_as_postgres(config, "recover", "pitr", "--at", clock.iso_precise(at), "--yes",
                                      "--json").stdout)
    component = done["components"][0]
    restored = pg_factory.adopt(PgCluster(datadir=str(target), port=ports[0], sockdir=str(target),
                                          log=component["server"]["log"]))
    assert done["status"] == "succeeded" and component["verified"] is True, component
    assert restored.sql("SELECT id FROM events ORDER BY id") == [(1,)]  # row 2 came after the time
    assert "promoted" in component["verification"]
    restored.stop()
    # without start_ports the PGDATA is laid out but not recovered: never "succeeded"
    laid = run_as_postgres(config, "recover", "layout", "--at", clock.iso_precise(at), "--yes", "--json", check=False)
    record = json.loads(laid.stdout)
    assert laid.returncode == 1 and record["status"] == "incomplete", record
    assert record["components"][0]["status"] == "incomplete" and record["components"][0]["verified"] is None
    assert "not recovered: start a server on it" in record["components"][0]["error"]
    assert (layout_target / "PG_VERSION").exists() and record["recovered"] == []

    # a group restore point: the member's base backup, then its moment, a named restore point
    cluster.sql("INSERT INTO events VALUES (3)")
    point = json.loads(run_as_postgres(config, "backup", "--group", "pg", "--json").stdout)
    [member] = point["members"]
    assert point["status"] == "succeeded" and member["point"]["what"] == "WAL position"
    assert member["point"]["restore_point_name"] == f"insite-group-{point['id']}" and member["point"]["wal_lsn"]
    assert clock.parse_iso(member["point_at"]) >= clock.parse_iso(point["point_at"])
    cluster.sql("INSERT INTO events VALUES (4)")
    _wait_archived(cluster)
    done = json.loads(run_as_postgres(config, "recover", "grp", "--latest", "--yes", "--json").stdout)
    component = done["components"][0]
    regrouped = pg_factory.adopt(PgCluster(datadir=str(group_target), port=ports[1], sockdir=str(group_target),
                                           log=component["server"]["log"]))
    assert done["status"] == "succeeded" and done["group_point"]["id"] == point["id"], done
    assert component["backup_id"] == member["backup_id"] and component["replay_to"] == member["point_at"]
    assert regrouped.sql("SELECT id FROM events ORDER BY id") == [(1,), (2,), (3,)]  # 4 came after the moment
    regrouped.stop()


# ----- group restore points --------------------------------------------------------------------------

GROUP = """group = "platform"

[group.platform]
policies = ["main_db", "cache", "app_files"]
schedule = "* * * * *"
"""
POINT_KINDS = {"main_db": "snapshot exported", "cache": "RDB snapshot requested", "app_files": "file walk started"}


@needs_pg  # noqa: F405
@needs_redis  # noqa: F405
@pytest.mark.timeout(240)
def test_group_members_share_one_moment_and_a_recovery_to_the_group_point_names_it(platform):
    from insite_console import scheduler

    p = platform(recovery_extra=GROUP)
    p.state1()
    first = json.loads(p.helper.cli("backup", "--group", "platform", "--json", check=True).stdout)
    time.sleep(0.05)
    between = clock.now()
    p.state2()
    next_minute = clock.now() + timedelta(minutes=1)  # its own schedule (every minute) fires again
    assert scheduler.due_groups(p.ws) == [] and scheduler.due_groups(p.ws, next_minute) == ["platform"]
    [second] = scheduler.Scheduler(p.ws, log=lambda m: None, now=lambda: next_minute).run_once()
    assert second["policy"] == "group:platform" and second["status"] == "succeeded", second

    assert first["status"] == "succeeded" and [m["policy"] for m in first["members"]] == list(COMPONENTS)
    moment = clock.parse_iso(first["point_at"])
    points = {m["policy"]: clock.parse_iso(m["point_at"]) for m in first["members"]}
    for m in first["members"]:
        assert m["status"] == "succeeded" and m["point"]["what"] == POINT_KINDS[m["policy"]], m
        assert points[m["policy"]] >= moment  # nobody took its snapshot before the moment
        row = p.ws.catalog.backup(m["backup_id"])
        assert row["status"] == "succeeded" and row["policy"] == m["policy"]
    assert first["skew_seconds"] == round((max(points.values()) - min(points.values())).total_seconds(), 6)
    assert first["skew_seconds"] < 1.0
    assert first["members"][0]["point"]["snapshot"]  # the dump's exported snapshot, named
    sealed = json.loads(p.helper.reopen().repository("local").get_sealed("groups/" + first["id"]))
    assert sealed["members"] == first["members"]

    # the plan names a group: --at picks the newest group point at or before the time
    dry = json.loads(p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--dry-run",
                                  "--json", check=True).stdout)
    assert dry["group_point"] == {"id": first["id"], "group": "platform", "point_at": first["point_at"]}
    by_policy = {c["policy"]: c for c in dry["components"]}
    for m in first["members"]:
        assert by_policy[m["policy"]]["backup_id"] == m["backup_id"]
        assert by_policy[m["policy"]]["restore_point_at"] == m["point_at"]
    assert dry["skew_seconds"] == first["skew_seconds"]
    text = p.helper.cli("recover", "platform", "--point", second["id"][:10], "--dry-run", check=True).stdout
    assert f"group restore point {second['id']} of [group.platform]" in text

    done = json.loads(p.helper.cli("recover", "platform", "--at", clock.iso_precise(between), "--yes", "--json",
                                   "--reason", "INC-5: back to the group point", check=True).stdout)
    assert done["status"] == "succeeded" and done["group_point"]["id"] == first["id"]
    assert p.items() == STATE1_ITEMS and p.keys() == STATE1_KEYS
    assert p.restored_file().read_text() == "version one\n"

    # a lost catalog comes back from the repository with the recovery and group histories
    p.helper.close()
    for leftover in p.ws.config.catalog_path.parent.glob(p.ws.config.catalog_path.name + "*"):
        leftover.unlink()
    rebuilt = json.loads(p.helper.cli("catalog", "rebuild", "--json").stdout)
    assert rebuilt["problems"] == []
    assert rebuilt["recoveries_added"] == [done["id"]]
    assert sorted(rebuilt["group_points_added"]) == sorted([first["id"], second["id"]])
    history = json.loads(p.helper.cli("recover", "--history", "--json", check=True).stdout)
    assert [h["id"] for h in history] == [done["id"]] and history[0]["group_point"]["id"] == first["id"]
    again = json.loads(p.helper.cli("recover", "platform", "--point", first["id"], "--dry-run", "--json",
                                    check=True).stdout)
    assert again["checks_ok"] is True and again["group_point"]["id"] == first["id"]


def test_group_config_is_validated(tmp_path):
    from insite_console import config as config_module

    config = platform_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "redis://127.0.0.1:1/0", tmp_path,
                             tmp_path / "t", recovery_extra="""group = "nope"

        [recovery.part]
        components = ["main_db"]
        targets = { main_db = "postgresql://u@db2/x" }
        group = "some"
        start_ports = { main_db = 5432, cache = 0 }

        [group.some]
        policies = ["cache", "cache", "ghost"]
        schedule = "every day"

        [group.empty]
        policies = []
        colour = 1
        """)
    with pytest.raises(ConfigError) as caught:
        config_module.load(config)
    text = str(caught.value)
    for expected in ("recovery.platform.group: no [group.nope] is defined (groups: empty, some)",
                     "recovery.part.group: main_db not among the policies of [group.some]",
                     "group.some.policies: names a policy twice",
                     "group.some.policies[2]: no [policy.ghost] is defined",
                     "group.some.schedule: expected",
                     "group.empty.policies: expected a non-empty list of policy names",
                     "group.empty.colour: unknown key",
                     "recovery.part.start_ports.main_db: only a physical PostgreSQL component is started",
                     "recovery.part.start_ports.cache: not one of the components"):
        assert expected in text, expected


def test_a_member_failing_before_the_moment_fails_the_whole_group(tmp_path):
    """No half group: the unreachable Redis fails before the moment, so the file tree, waiting
    there, takes no snapshot; neither is a group restore point, and a group plan refuses."""
    from insite_console import group
    from tests.redis_servers import free_port

    src = tmp_path / "app"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    helper = WorkspaceHelper(tmp_path, src, platform_config(
        tmp_path, "postgresql://u@127.0.0.1:1/db", f"redis://127.0.0.1:{free_port()}/0", src, tmp_path / "t",
        recovery_extra=f"""
        [recovery.pair]
        components = ["cache", "app_files"]
        group = "pair"
        targets = {{ cache = "{tmp_path / 'rdb'}", app_files = "{tmp_path / 't'}" }}

        [group.pair]
        policies = ["cache", "app_files"]
        """))
    try:
        ws = helper.ws
        ws.init_repository("local")
        record = group.run(ws, "pair")
        members = {m["policy"]: m for m in record["members"]}
        assert record["status"] == "failed" and record["point_at"] is None and record["skew_seconds"] is None
        assert "cannot connect to redis" in members["cache"]["error"]
        assert members["app_files"]["status"] == "failed"
        assert "group moment not reached: cache failed before it" in members["app_files"]["error"]
        assert [b["status"] for b in ws.catalog.backups(policy="app_files")] == ["failed"]
        assert group.points(ws, "pair", status="succeeded") == []
        with pytest.raises(RestoreRefused, match=r"no succeeded group restore point of \[group.pair\]"):
            recovery.plan(ws, "pair", None)
        cli = helper.cli("backup", "--group", "pair")
        assert cli.returncode == 1 and "(not a group restore point)" in cli.stderr
    finally:
        helper.close()
