"""Logical PostgreSQL backups carry the cluster's roles and tablespaces (pg_dumpall
--globals-only): a restore into a fresh cluster, where the owner role does not exist, fails
naming the role and the way out, and works with --with-globals (or --no-owner --no-acl)."""

from __future__ import annotations

import os

import pytest

from insite_console import backup, restore
from insite_console.errors import SourceError
from tests.pg_servers import *  # noqa: F401,F403
from tests.test_postgresql import new_db, open_ws, pg_config

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405


def test_restore_into_a_fresh_cluster_needs_the_roles(pg_cluster, pg_factory, tmp_path):
    owner, reader = f"app_owner_{os.getpid()}", f"app_reader_{os.getpid()}"
    pg_cluster.sql(f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-secret'")
    pg_cluster.sql(f"CREATE ROLE {reader} NOLOGIN")
    source = new_db(pg_cluster, "owned")
    with pg_cluster.connect(source) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO accounts SELECT g, 'n' || g FROM generate_series(1, 50) g")
        conn.execute(f"ALTER TABLE accounts OWNER TO {owner}")
        conn.execute(f"GRANT SELECT ON accounts TO {reader}")
    ws = open_ws(pg_config(tmp_path, pg_cluster.dsn_for(source)))
    try:
        first = backup.run(ws, "db")
        assert first["status"] == "succeeded"
        assert ws.catalog.backup(first["id"])["info"]["source_info"]["globals"] is True

        fresh = pg_factory()  # a new cluster: only the postgres role
        for name in ("plain", "bare", "withroles"):
            fresh.sql(f"CREATE DATABASE {name}")
        with pytest.raises(SourceError, match=f'role "{owner}" does not exist') as failed:
            restore.run(ws, first["id"], fresh.dsn_for("plain"))
        assert "--with-globals" in str(failed.value) and "--no-owner --no-acl" in str(failed.value)
        assert fresh.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'accounts'", "plain") == [(0,)]

        done = restore.run(ws, first["id"], fresh.dsn_for("bare"), options={"no_owner": True, "no_acl": True})
        assert done["status"] == "succeeded"
        assert fresh.sql("SELECT tableowner, count(*) FROM pg_tables, accounts WHERE tablename = 'accounts' "
                         "GROUP BY 1", "bare") == [("postgres", 50)]

        plan = restore.run(ws, first["id"], fresh.dsn_for("withroles"), dry_run=True, options={"with_globals": True})
        assert {owner, reader} <= set(plan["details"]["globals"]["create"])
        assert "postgres" in plan["details"]["globals"]["keep_existing"]
        assert fresh.sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{owner}'") == [(0,)]
        password_before = fresh.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")

        done = restore.run(ws, first["id"], fresh.dsn_for("withroles"), options={"with_globals": True})
        assert done["status"] == "succeeded"
        assert fresh.sql("SELECT tableowner, count(*) FROM pg_tables, accounts WHERE tablename = 'accounts' "
                         "GROUP BY 1", "withroles") == [(owner, 50)]
        assert fresh.sql(f"SELECT has_table_privilege('{reader}', 'accounts', 'SELECT')", "withroles") == [(True,)]
        assert fresh.sql(f"SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{owner}'") \
            == [(True,)]
        assert fresh.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'") == password_before
    finally:
        ws.close()
        for role in (owner, reader):
            pg_cluster.sql(f"DROP OWNED BY {role}", source)
        pg_cluster.sql(f"DROP DATABASE {source}")
        for role in (owner, reader):
            pg_cluster.sql(f"DROP ROLE {role}")
