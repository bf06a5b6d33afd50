"""PostgreSQL sources against real throwaway PostgreSQL 15 clusters (started by the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from insite_console import backup, clock, restore
from insite_console.errors import InsiteError, RestoreRefused, SourceError
from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import PG_USER, as_postgres, free_port, postgres_can_reach

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405

ROOT = Path(__file__).resolve().parent.parent


def pg_config(directory: Path, dsn: str, mode: str = "logical", extra: str = "", passphrase: str = "") -> Path:
    config = directory / "config.toml"
    enc = f'passphrase_file = "{passphrase}"' if passphrase else 'passphrase_env = "INSITE_PASSPHRASE"'
    config.write_text(textwrap.dedent(f"""
        [catalog]
        path = "state/catalog.sqlite"

        [encryption]
        {enc}

        [storage.local]
        type = "local"
        path = "repo"

        [source.db]
        type = "postgresql"
        dsn = "{dsn}"
        mode = "{mode}"
        """) + extra + textwrap.dedent("""
        [policy.db]
        source = "db"
        storage = "local"
        type = "full"
        """))
    return config


def open_ws(config: Path, init: bool = True):
    from insite_console.workspace import Workspace

    ws = Workspace.load(config)
    if init:
        ws.init_repository("local")
    return ws


SCHEMA_SQL = r"""
CREATE SCHEMA sales;
CREATE SCHEMA "Odd Schema";
CREATE TABLE public.customers (
    id serial PRIMARY KEY, name text NOT NULL, profile jsonb, avatar bytea, balance numeric(20, 6),
    created timestamptz DEFAULT now(), tags text[], scores int[]
);
CREATE INDEX customers_name_idx ON public.customers (lower(name));
CREATE INDEX customers_profile_idx ON public.customers USING gin (profile);
INSERT INTO public.customers (name, profile, avatar, balance, created, tags, scores)
SELECT 'customer ' || g, jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       decode(md5(g::text), 'hex'), g * 1.123456, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
       ARRAY['a' || g, 'b'], ARRAY[g, g * 2]
FROM generate_series(1, 2000) g;
CREATE TABLE sales.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int REFERENCES public.customers(id),
    amount numeric, placed timestamptz, note text
);
INSERT INTO sales.orders (customer_id, amount, placed, note)
SELECT (g % 2000) + 1, g / 7.0, '2026-02-01T12:00:00Z'::timestamptz + g * interval '1 second', repeat('x', g % 50)
FROM generate_series(1, 5000) g;
CREATE SEQUENCE sales.invoice_no START 1000;
SELECT nextval('sales.invoice_no') FROM generate_series(1, 42);
CREATE TABLE "Odd Schema"."Mixed Case" ("Key" text PRIMARY KEY, "Value" double precision);
INSERT INTO "Odd Schema"."Mixed Case" VALUES ('pi', 3.14159), ('e', 2.71828), ('quote''s', -1);
CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE amount > 500;
CREATE MATERIALIZED VIEW sales.totals AS SELECT customer_id, sum(amount) AS total FROM sales.orders GROUP BY 1;
CREATE FUNCTION sales.order_total(c int) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(amount), 0) FROM sales.orders WHERE customer_id = c $$;
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.created := now(); RETURN NEW; END $$;
CREATE TRIGGER customers_touch BEFORE UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.touch();
SELECT lo_from_bytea(0, convert_to('large object one', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('ab', 100000), 'hex'));
"""

FINGERPRINT_SQL = r"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2
"""


def fingerprint(cluster, dbname: str) -> dict:
    """Every table's content, plus sequences, views, functions, indexes and large objects."""
    from psycopg import sql

    out = {}
    with cluster.connect(dbname) as conn:
        for schema, table in conn.execute(FINGERPRINT_SQL).fetchall():
            query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                            "FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            out[f"table {schema}.{table}"] = conn.execute(query).fetchone()
        out["sequences"] = conn.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2").fetchall()
        out["views"] = conn.execute(
            "SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        out["functions"] = conn.execute(
            "SELECT n.nspname, p.proname, md5(p.prosrc) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        out["indexes"] = conn.execute(
            "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        out["triggers"] = conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1").fetchall()
        out["large_objects"] = conn.execute(
            "SELECT md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1").fetchall()
    return out


_db_counter = [0]


def new_db(cluster, prefix: str = "db") -> str:
    _db_counter[0] += 1
    name = f"{prefix}_{_db_counter[0]}_{os.getpid()}"
    cluster.sql(f'CREATE DATABASE "{name}"')
    return name


@pytest.fixture(scope="module")
def shop(pg_cluster):
    name = new_db(pg_cluster, "shop")
    with pg_cluster.connect(name) as conn:
        conn.execute(SCHEMA_SQL)
    return name


@pytest.fixture
def shop_ws(pg_cluster, shop, tmp_path):
    ws = open_ws(pg_config(tmp_path, pg_cluster.dsn_for(shop)))
    yield ws
    ws.close()


def test_logical_round_trip_of_schemas_types_and_objects(pg_cluster, shop, shop_ws):
    first = backup.run(shop_ws, "db")
    assert first["status"] == "succeeded"
    info = shop_ws.catalog.backup(first["id"])["info"]["source_info"]
    assert info["baselines"]["public.customers"] == 2000
    assert info["baselines"]["sales.orders"] == 5000
    assert info["baselines"]['Odd Schema.Mixed Case'] == 3
    assert info["baselines_in_dump_snapshot"] is True


    target = new_db(pg_cluster, "restored")
    result = restore.run(shop_ws, first["id"], pg_cluster.dsn_for(target))
    assert result["status"] == "succeeded"
    assert fingerprint(pg_cluster, shop) == fingerprint(pg_cluster, target)
    by_table = {row["object"]: row for row in result["baselines"]}
    assert by_table["sales.orders"] == {"object": "sales.orders", "backup": 5000, "restored": 5000,
                                        "kind": "exact", "match": True}


def test_parallel_restore_spools_and_matches(pg_cluster, shop, shop_ws, monkeypatch):
    first = backup.run(shop_ws, "db")
    target = new_db(pg_cluster, "parallel")
    result = restore.run(shop_ws, first["id"], pg_cluster.dsn_for(target), options={"jobs": 2})
    assert result["details"]["jobs"] == 2
    assert fingerprint(pg_cluster, shop) == fingerprint(pg_cluster, target)


def test_parallel_directory_format_dump_round_trip(pg_cluster, shop, tmp_path):
    config = pg_config(tmp_path, pg_cluster.dsn_for(shop), extra="jobs = 2\n")
    ws = open_ws(config)

    def spools():
        return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(("insite-pgdump-", "insite-pgrestore-"))}

    before = spools()
    first = backup.run(ws, "db")
    info = ws.catalog.backup(first["id"])["info"]["source_info"]
    assert info["format"] == "directory" and info["baselines"]["sales.orders"] == 5000
    assert first["files"] > 3  # toc.dat and one file per table's data
    second = backup.run(ws, "db")
    assert second["bytes_stored"] < first["bytes_stored"] * 0.10
    target = new_db(pg_cluster, "from_dir")
    restore.run(ws, first["id"], pg_cluster.dsn_for(target))
    assert fingerprint(pg_cluster, shop) == fingerprint(pg_cluster, target)
    partial = new_db(pg_cluster, "from_dir_partial")
    restore.run(ws, first["id"], pg_cluster.dsn_for(partial), includes=["public.customers"],
                options={"jobs": 1})
    assert pg_cluster.sql("SELECT count(*) FROM public.customers", dbname=partial) == [(2000,)]
    assert spools() == before  # the temporary copies are gone
    ws.close()


def test_partial_restore_of_one_table_and_refusals(pg_cluster, shop, shop_ws):
    done = backup.run(shop_ws, "db")
    target = new_db(pg_cluster, "partial")
    plan = restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target), includes=["public.customers"], dry_run=True)
    assert plan["status"] == "planned"
    labels = [item["path"] for item in plan["plan"]]
    assert "TABLE public.customers" in labels and "TABLE DATA public.customers" in labels
    assert not any("sales." in label for label in labels)
    assert pg_cluster.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=target) == [(0,)]

    restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target), includes=["public.customers"])
    source_fp, target_fp = fingerprint(pg_cluster, shop), fingerprint(pg_cluster, target)
    assert target_fp["table public.customers"] == source_fp["table public.customers"]
    assert [k for k in target_fp if k.startswith("table ")] == ["table public.customers"]
    indexes = {row[1] for row in target_fp["indexes"]}
    assert {"customers_pkey", "customers_name_idx", "customers_profile_idx"} <= indexes
    # the serial's sequence came along and continues where the source was
    assert pg_cluster.sql("SELECT nextval('public.customers_id_seq')", dbname=target) == [(2001,)]

    # the table exists now: refused without --yes, replaced with it
    with pytest.raises(RestoreRefused, match="already has TABLE public.customers"):
        restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target), includes=["public.customers"])
    pg_cluster.sql("DELETE FROM public.customers WHERE id > 10", dbname=target)
    restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target), includes=["public.customers"], yes=True)
    assert pg_cluster.sql("SELECT count(*) FROM public.customers", dbname=target) == [(2000,)]

    # a table in a schema the target lacks: the schema comes along, the foreign key is left out (noted)
    other = new_db(pg_cluster, "partial_sales")
    result = restore.run(shop_ws, done["id"], pg_cluster.dsn_for(other), includes=["sales.orders"])
    assert pg_cluster.sql("SELECT count(*) FROM sales.orders", dbname=other) == [(5000,)]
    assert any("FK CONSTRAINT sales.orders" in note for note in result["notes"])

    # a whole-database restore into a non-empty database is refused without --yes
    with pytest.raises(RestoreRefused, match="is not empty"):
        restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target))
    restore.run(shop_ws, done["id"], pg_cluster.dsn_for(target), yes=True)
    assert fingerprint(pg_cluster, shop) == fingerprint(pg_cluster, target)


def test_server_down_names_host_and_port(tmp_path):
    port = free_port()
    ws = open_ws(pg_config(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/postgres"))
    with pytest.raises(SourceError) as caught:
        backup.run(ws, "db")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "is the server running" in str(caught.value)
    rows = ws.catalog.backups()
    assert rows[0]["status"] == "failed" and f"127.0.0.1:{port}" in rows[0]["error"]
    ws.close()


def test_wrong_password_is_reported_without_the_password(pg_cluster, tmp_path, monkeypatch):
    pg_cluster.sql("DROP ROLE IF EXISTS pwuser")
    pg_cluster.sql("CREATE ROLE pwuser LOGIN PASSWORD 'right-secret-1'")
    hba = Path(pg_cluster.datadir) / "pg_hba.conf"
    text = hba.read_text()
    if "pwuser" not in text:
        hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + text)
        pg_cluster.sql("SELECT pg_reload_conf()")
        time.sleep(0.3)
    dsn = f"postgresql://pwuser@127.0.0.1:{pg_cluster.port}/postgres"
    extra = 'password_env = "DB_PASSWORD"\n'
    config = pg_config(tmp_path, dsn, extra="")
    config.write_text(config.read_text().replace('mode = "logical"\n', 'mode = "logical"\n' + extra))
    ws = open_ws(config)
    monkeypatch.setenv("DB_PASSWORD", "wrong-secret-2")
    with pytest.raises(SourceError) as caught:
        backup.run(ws, "db")
    message = str(caught.value)
    assert "password authentication failed for user pwuser" in message
    assert f"127.0.0.1:{pg_cluster.port}" in message
    assert "wrong-secret-2" not in message
    assert "wrong-secret-2" not in json.dumps(ws.catalog.backups())
    assert "wrong-secret-2" not in json.dumps(ws.catalog.events(limit=1000))
    monkeypatch.setenv("DB_PASSWORD", "right-secret-1")
    assert backup.run(ws, "db")["status"] == "succeeded"
    ws.close()


def _children_named(name: str) -> list[int]:
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)
            comm = open(f"/proc/{entry}/comm").read().strip()
        except OSError:
            continue
        ppid = int(fields[1].split()[1])
        if ppid == me and comm == name:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def big_db(pg_cluster):
    """A database whose dump (~35 MB) spans many ~1 MiB chunks."""
    name = new_db(pg_cluster, "big")
    pg_cluster.sql("CREATE TABLE big AS SELECT g, md5(g::text) || repeat('y', 200) AS pad "
                   "FROM generate_series(1, 150000) g", dbname=name)
    pg_cluster.sql("CREATE TABLE small AS SELECT g FROM generate_series(1, 100) g", dbname=name)
    return name


def test_second_logical_backup_of_an_unchanged_database_stores_little(pg_cluster, big_db, tmp_path):
    ws = open_ws(pg_config(tmp_path, pg_cluster.dsn_for(big_db)))
    first = backup.run(ws, "db")
    time.sleep(1.1)  # a new second: the dump's header (creation time) differs from the first's
    second = backup.run(ws, "db")
    assert second["bytes_read"] == first["bytes_read"] > 30_000_000
    # only the chunk holding the dump's header (its creation time) differs: one ~1-4 MiB chunk of
    # 13 here (bench/bench_db.py measures ~1.5% on a 450 MB database)
    assert second["bytes_stored"] < first["bytes_stored"] * 0.15
    ws.close()


def test_pg_dump_killed_mid_stream_fails_the_backup(pg_cluster, big_db, tmp_path):
    name = big_db
    ws = open_ws(pg_config(tmp_path, pg_cluster.dsn_for(name)))
    killed = []

    def progress(event):
        if event.bytes_done > 0 and not killed:
            for pid in _children_named("pg_dump"):
                os.kill(pid, 9)
                killed.append(pid)

    with pytest.raises(SourceError, match="pg_dump was killed by signal 9"):
        backup.run(ws, "db", progress=progress)
    assert killed
    rows = ws.catalog.backups()
    assert [r["status"] for r in rows] == ["failed"]
    assert "incomplete" in rows[0]["error"]
    assert ws.catalog.backups(status="succeeded") == []
    with pytest.raises(InsiteError):
        restore.run(ws, rows[0]["id"], pg_cluster.dsn_for(new_db(pg_cluster, "never")))
    with pytest.raises(InsiteError):
        restore.run(ws, "db", pg_cluster.dsn_for(new_db(pg_cluster, "never")))
    ws.close()


# ----- physical: base backup + WAL archive + point-in-time restore ------------------------------------

CONSOLE = str(Path(sys.executable).parent / "insite-console")


def run_as_postgres(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = as_postgres([CONSOLE, "-c", str(config), *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"insite-console {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def _wait_archived(cluster, timeout: float = 60) -> None:
    """Switch WAL and wait until the archiver has pushed everything up to the switch."""
    with cluster.connect() as conn:
        wanted = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last, failed = conn.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            if last is not None and last >= wanted:
                return
            time.sleep(0.2)
    raise AssertionError(f"WAL {wanted} was not archived in {timeout}s (see {cluster.log})")


def archiving_cluster(pg_factory, wsdir: Path, prepare=None, extra: str = ""):
    """A cluster whose archive_command is the worktree's `wal-push db %p` into a physical
    workspace in `wsdir` (owned by postgres); `prepare(cluster)` runs before it starts; `extra`:
    more config tables (pg_config's)."""
    if not postgres_can_reach(CONSOLE) or not postgres_can_reach(str(ROOT / "insite_console" / "wal.py")):
        pytest.skip(f"the postgres user cannot run {CONSOLE}")
    passfile = wsdir / "passphrase"
    passfile.write_text(f"{wsdir.name} passphrase\n")
    os.chmod(passfile, 0o600)
    cluster = pg_factory(start=False)
    config = pg_config(wsdir, f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres", mode="physical",
                       passphrase=str(passfile), extra=extra)
    for path in (passfile, config):
        os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
    archive = f"{CONSOLE} -c {config} wal-push db %p"
    with open(os.path.join(cluster.datadir, "postgresql.conf"), "a") as handle:
        handle.write(f"archive_mode = on\narchive_command = '{archive}'\n")
    if prepare is not None:
        prepare(cluster)
    cluster.start()
    run_as_postgres(config, "init")
    return cluster, config


@pytest.fixture(scope="module")
def pitr_setup(pg_factory, pg_work_dir):
    home = Path(pg_factory.make_dir("pitr"))
    os.chmod(home, 0o711)
    wsdir = Path(pg_factory.make_dir("pitr/ws"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    return {"cluster": cluster, "config": config, "home": home, "wsdir": wsdir}


def test_point_in_time_restore_between_two_inserts(pitr_setup, pg_factory):
    cluster, config = pitr_setup["cluster"], pitr_setup["config"]
    cluster.sql("CREATE TABLE events (id int PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())")
    cluster.sql("INSERT INTO events (id, note) VALUES (1, 'before the base backup')")
    base = json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)
    assert base["status"] == "succeeded"
    cluster.sql("INSERT INTO events (id, note) VALUES (2, 'first insert after the backup')")
    time.sleep(1.2)
    target_time = clock.now()
    time.sleep(1.2)
    cluster.sql("INSERT INTO events (id, note) VALUES (3, 'second insert, after the target')")
    _wait_archived(cluster)

    # the catalog knows the window and the lag
    from insite_console import wal
    from insite_console.workspace import Workspace

    restored_dir = Path(pg_factory.make_dir("pitr/restored"))
    port = free_port()
    dry = json.loads(run_as_postgres(config, "restore", base["id"], "--target", str(restored_dir), "--at",
                                     target_time.isoformat(), "--dry-run", "--json").stdout)
    assert dry["problems"] == []
    assert os.listdir(restored_dir) == []
    started = time.monotonic()
    result = run_as_postgres(config, "restore", base["id"], "--target", str(restored_dir), "--at",
                             target_time.isoformat(), "--start-port", str(port), "--json")
    restored = json.loads(result.stdout)
    recovered = pg_factory.adopt(type(cluster)(datadir=str(restored_dir), port=port, sockdir=str(restored_dir),
                                               log=restored["recovery"]["log"]))
    assert restored["recovery"]["state"] == "promoted"
    rows = recovered.sql("SELECT id FROM events ORDER BY id")
    assert rows == [(1,), (2,)], rows
    auto = (restored_dir / "postgresql.auto.conf").read_text()
    assert "archive_mode = off" in auto and "+00:00'" in auto and "wal-fetch db %f %p" in auto
    assert time.monotonic() - started < 120
    recovered.stop()

    # --pause: recovery stops at the target and waits, read-only, for the operator to check
    paused_dir = Path(pg_factory.make_dir("pitr/paused"))
    port = free_port()
    # by source name: the newest base backup that ended before the target is picked
    result = run_as_postgres(config, "restore", "db", "--target", str(paused_dir), "--at",
                             target_time.isoformat(), "--start-port", str(port), "--pause", "--json")
    assert json.loads(result.stdout)["backup_id"] == base["id"]
    paused = pg_factory.adopt(type(cluster)(datadir=str(paused_dir), port=port, sockdir=str(paused_dir),
                                            log=json.loads(result.stdout)["recovery"]["log"]))
    assert json.loads(result.stdout)["recovery"]["state"] == "paused"
    assert any(f"-p {port}" in note and "pg_wal_replay_resume()" in note for note in json.loads(result.stdout)["notes"])
    assert paused.sql("SELECT pg_is_in_recovery()") == [(True,)]
    assert paused.sql("SELECT id FROM events ORDER BY id") == [(1,), (2,)]
    paused.stop()

    # window and lag, read back from the catalog the archiver wrote
    ws = Workspace.load(config)
    try:
        window = wal.restorable_window(ws, "db")
        assert window["oldest"] is not None and window["newest"] is not None
        assert clock.parse_iso(window["newest"]) > target_time
        assert window["archive_lag_seconds"] is not None and window["archive_lag_seconds"] < 600
        segments = wal.list_segments(ws, "db")
        assert any(row["last_time"] for row in segments)
        from insite_console.errors import UsageError
        from insite_console.sources.pg_restore_physical import pick_base_backup

        assert pick_base_backup(ws, "db", target_time)["id"] == base["id"]
        # WAL retention: segments before the oldest base backup's start can go
        start_wal = ws.catalog.backup(base["id"])["info"]["source_info"]["start_wal_file"]
        planned = wal.prune(ws, "db", dry_run=True)
        assert planned["kept_from"] == start_wal
        assert planned["deleted"] and all(name[8:24] < start_wal[8:] for name in planned["deleted"])
        assert start_wal in wal.archived_names(ws.repository("local"), "db")
        with pytest.raises(UsageError, match="no physical base backup"):
            pick_base_backup(ws, "db", clock.parse_iso(base["started_at"]) - clock.parse_duration("1h"))
    finally:
        ws.close()

    # the same, as an operator sees it: the `wal` listing and `status`
    listing = json.loads(run_as_postgres(config, "wal", "db", "--json").stdout)
    assert listing["segments"] and listing["window"]["oldest"] is not None
    health = json.loads(run_as_postgres(config, "status", "--json", check=False).stdout)  # (exits by level)
    assert health[0]["restorable_window"]["segments"] == len(listing["segments"])

    # pre-flight: a target before the base backup ended, or in the future, is refused before writing
    too_early = clock.parse_iso(base["started_at"]) - clock.parse_duration("1h")
    other = Path(pg_factory.make_dir("pitr/refused"))
    refused = run_as_postgres(config, "restore", base["id"], "--target", str(other), "--at", too_early.isoformat(),
                              check=False)
    assert refused.returncode == 1 and "after the time asked" in refused.stderr
    future = clock.now() + clock.parse_duration("1h")
    refused = run_as_postgres(config, "restore", base["id"], "--target", str(other), "--at", future.isoformat(),
                              check=False)
    assert refused.returncode == 1 and "in the future" in refused.stderr
    # the dry run of a restore the pre-flight would refuse exits 1 too (scripts check it)
    planned = run_as_postgres(config, "restore", base["id"], "--target", str(other), "--at", future.isoformat(),
                              "--dry-run", check=False)
    assert planned.returncode == 1 and "pre-flight problem" in planned.stdout and "in the future" in planned.stdout
    assert os.listdir(other) == []


def test_wal_push_semantics(pitr_setup, pg_factory):
    config, wsdir = pitr_setup["config"], pitr_setup["wsdir"]
    scratch = Path(pg_factory.make_dir("pitr/scratch"))
    segment = scratch / "0000000100000000000000FE"
    segment.write_bytes(os.urandom(1024) * 16)
    os.chown(segment, PG_USER.pw_uid, PG_USER.pw_gid)
    assert run_as_postgres(config, "wal-push", "db", str(segment), check=False).returncode == 0
    # the same segment again: success (PostgreSQL retries after a crash)
    assert run_as_postgres(config, "wal-push", "db", str(segment), check=False).returncode == 0
    # different content under the same name: refused
    segment.write_bytes(os.urandom(1024) * 16)
    clash = run_as_postgres(config, "wal-push", "db", str(segment), check=False)
    assert clash.returncode == 1 and "DIFFERENT content" in clash.stderr
    # storage unreachable: non-zero so PostgreSQL keeps the segment and retries; nothing lost
    other = scratch / "0000000100000000000000FF"
    other.write_bytes(b"segment data" * 1000)
    os.chown(other, PG_USER.pw_uid, PG_USER.pw_gid)
    repo = wsdir / "repo"
    moved = wsdir / "repo.unplugged"
    os.rename(repo, moved)
    try:
        failed = run_as_postgres(config, "wal-push", "db", str(other), check=False)
        assert failed.returncode != 0
    finally:
        os.rename(moved, repo)
    assert run_as_postgres(config, "wal-push", "db", str(other), check=False).returncode == 0
    fetched = scratch / "fetched"
    fetch = run_as_postgres(config, "wal-fetch", "db", other.name, str(fetched), check=False)
    assert fetch.returncode == 0 and fetched.read_bytes() == other.read_bytes()
    missing = run_as_postgres(config, "wal-fetch", "db", "000000010000000000000AAA", str(fetched), check=False)
    assert missing.returncode == 1

    # a fetch prefetches the following segments into a spool beside %p; the next fetch is local
    names = [f"0000000100000001000000{n:02X}" for n in range(0xF0, 0xF3)]
    for name in names:
        path = scratch / name
        path.write_bytes(name.encode() * 1000)
        os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
        run_as_postgres(config, "wal-push", "db", str(path))
    pg_wal = Path(pg_factory.make_dir("pitr/scratch/pg_wal"))
    run_as_postgres(config, "wal-fetch", "db", names[0], str(pg_wal / "RECOVERYXLOG"))
    spool = pg_wal / ".insite-wal-prefetch"
    assert sorted(os.listdir(spool)) == names[1:]
    os.rename(wsdir / "repo", wsdir / "repo.away")  # served from the spool, without the storage
    try:
        run_as_postgres(config, "wal-fetch", "db", names[1], str(pg_wal / "RECOVERYXLOG"))
    finally:
        os.rename(wsdir / "repo.away", wsdir / "repo")
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == names[1].encode() * 1000
    assert sorted(os.listdir(spool)) == names[2:]


def test_base_backup_extraction_refuses_paths_and_links_that_escape(tmp_path):
    import io
    import tarfile
    import types

    from insite_console.events import CancelToken
    from insite_console.sources.pg_restore_physical import _extract_tar

    def tar_with(*members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as archive:
            for info, data in members:
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def ctx_for(data: bytes):
        reporter = types.SimpleNamespace(advance=lambda **kw: None)
        return types.SimpleNamespace(open_entry=lambda entry: io.BytesIO(data), cancel=CancelToken(),
                                     reporter=reporter)

    def member(name, kind=tarfile.REGTYPE, data=b"x", link=""):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        return info, data if kind == tarfile.REGTYPE else None

    good = tar_with(member("global/", tarfile.DIRTYPE), member("global/pg_control", data=b"ctl"),
                    member("PG_VERSION", data=b"15\n"))
    target = tmp_path / "ok"
    target.mkdir()
    assert _extract_tar(ctx_for(good), None, str(target)) == (2, 6)
    assert (target / "PG_VERSION").read_bytes() == b"15\n"
    # a socket lock file (the socket directory was PGDATA) is not carried into the restore
    locked = tar_with(member("PG_VERSION", data=b"15\n"), member(".s.PGSQL.5433.lock", data=b"4242\n"))
    target = tmp_path / "locked"
    target.mkdir()
    assert _extract_tar(ctx_for(locked), None, str(target)) == (1, 3)
    assert sorted(os.listdir(target)) == ["PG_VERSION"]

    for bad in ([member("../evil")], [member("/etc/evil")],
                [member("link", tarfile.SYMTYPE, link="/etc")],
                [member("link", tarfile.SYMTYPE, link="../.."), member("link/evil")],
                [member("dev", tarfile.CHRTYPE)]):
        target = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        target.mkdir()
        with pytest.raises(RestoreRefused):
            _extract_tar(ctx_for(tar_with(*bad)), None, str(target))
    assert not (tmp_path / "evil").exists()


def test_delta_extraction_rewrites_only_files_that_differ(tmp_path):
    """--delta's file level: a file equal to the backup's is left alone (not even rewritten), one
    that differs after its first MiB is rebuilt whole and right, and what the backup lacks goes."""
    import io
    import tarfile
    import types

    from insite_console.events import CancelToken
    from insite_console.sources.pg_restore_physical import _extract_tar, _remove_not_in_backup

    big = os.urandom(3 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in (("PG_VERSION", b"15\n"), ("base/big", big), ("base/small", b"abc")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    ctx = types.SimpleNamespace(open_entry=lambda entry: io.BytesIO(buf.getvalue()), cancel=CancelToken(),
                                reporter=types.SimpleNamespace(advance=lambda **kw: None))
    _extract_tar(ctx, None, str(tmp_path))
    damaged = bytearray(big)
    damaged[(2 << 20) + 5] ^= 1
    (tmp_path / "base" / "big").write_bytes(bytes(damaged))
    (tmp_path / "base" / "extra").write_text("not in the backup")
    small_inode = (tmp_path / "base" / "small").stat().st_ino
    changes: dict = {}
    assert _extract_tar(ctx, None, str(tmp_path), delta=changes) == (1, len(big))
    assert changes["unchanged"] == 2 and _remove_not_in_backup(str(tmp_path), changes.pop("seen")) == 1
    assert (tmp_path / "base" / "big").read_bytes() == big
    assert (tmp_path / "base" / "small").stat().st_ino == small_inode
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["big", "small"]
