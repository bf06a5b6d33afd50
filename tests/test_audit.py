"""Restore history and audit: who restored what, where, why; kept through a catalog rebuild."""

from __future__ import annotations

import json
import os
import socket

from insite_console import who


def test_restore_over_production_needs_a_reason_and_writes_nothing_without_one(workspace):
    (workspace.source / "a.txt").write_text("production data\n")
    backup = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    (workspace.source / "a.txt").write_text("changed since\n")
    refused = workspace.cli("restore", backup["id"], "--target", "/", "--yes")
    assert refused.returncode != 0
    assert "restore over production needs a reason or ticket id" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (workspace.source / "a.txt").read_text() == "changed since\n"
    assert json.loads(workspace.cli("restores", "--json", check=True).stdout) == []
    plan = json.loads(workspace.cli("restore", backup["id"], "--target", "/", "--dry-run", "--json",
                                    check=True).stdout)
    assert plan["over_source"] is True and plan["reason"] is None


def test_restores_lists_who_what_where_why_and_survives_a_catalog_rebuild(workspace):
    (workspace.source / "a.txt").write_text("hello\n")
    (workspace.source / "b.txt").write_text("other\n")
    backup = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    target = workspace.root / "beside"
    done = json.loads(workspace.cli("restore", backup["id"], "--target", str(target), "--include", "**/a.txt",
                                    "--reason", "INC-42: a.txt deleted", "--json", check=True).stdout)
    assert done["status"] == "succeeded" and done["over_source"] is False
    assert workspace.restored(target).joinpath("a.txt").read_text() == "hello\n"

    def listed() -> list[dict]:
        return json.loads(workspace.cli("restores", "--json", check=True).stdout)

    before = listed()
    assert len(before) == 1
    entry = before[0]
    assert entry["kind"] == "restore" and entry["id"] == done["id"] and entry["status"] == "succeeded"
    assert (entry["user"], entry["host"], entry["origin"]) == (who.user(), socket.gethostname(), "cli")
    assert entry["what"] == {"backup_id": backup["id"], "policy": "tree", "includes": ["**/a.txt"]}
    assert entry["target"] == str(target) and entry["reason"] == "INC-42: a.txt deleted"
    assert entry["files"] == 1 and entry["duration_seconds"] is not None and entry["duration_seconds"] >= 0

    workspace.close()
    os.unlink(workspace.root / "state" / "catalog.sqlite")
    assert listed() == []
    rebuilt = json.loads(workspace.cli("catalog", "rebuild", "--json", check=True).stdout)
    assert rebuilt["restores_added"] == [done["id"]]
    assert listed() == before

    text = workspace.cli("restores", check=True).stdout
    assert "INC-42: a.txt deleted" in text and f"{who.user()}@" in text and str(target) in text


def test_over_source_knows_a_server_however_its_address_is_written(tmp_path):
    from insite_console import restore
    from insite_console.workspace import Workspace
    from tests.conftest import write_config

    config = write_config(tmp_path, [str(tmp_path / "src")], extra='''
[source.cache]
type = "redis"
url = "redis://127.0.0.1:6390/0"
data_dir = "/var/lib/redis"

[source.db]
type = "postgresql"
dsn = "postgresql://app@db1.internal/orders"
''')
    ws = Workspace.load(config)
    cache, db, tree = {"source": "cache"}, {"source": "db"}, {"source": "tree"}
    for target in ("redis://localhost:6390", "redis://:pw@127.0.0.1:6390/0", "/var/lib/redis/", "/var/lib/../lib/redis"):
        assert restore.over_source(ws, cache, target), target
    for target in ("redis://127.0.0.1:6391/0", "redis://127.0.0.1:6390/1", "/srv/restores/cache"):
        assert not restore.over_source(ws, cache, target), target
    assert restore.over_source(ws, db, "postgres://other@db1.internal:5432/orders")
    assert not restore.over_source(ws, db, "postgresql://app@db1.internal/orders_restored")
    assert restore.over_source(ws, tree, "/") and restore.over_source(ws, tree, "/tmp/..")
    assert not restore.over_source(ws, tree, str(tmp_path / "src")) and not restore.over_source(ws, tree, " ")
    ws.close()


def test_over_source_knows_a_postgresql_server_in_key_value_form_and_a_cluster_by_its_pg_control(tmp_path):
    """A key=value DSN is the same server as its URL and as itself with libpq's defaults
    written out; a physical restore into a data directory of the backed-up cluster (same
    system identifier in global/pg_control) is over production, unless a restore made it as
    a copy."""
    import sys

    from insite_console import restore
    from insite_console.workspace import Workspace
    from tests.conftest import write_config

    config = write_config(tmp_path, [str(tmp_path / "src")], extra='''
[source.app]
type = "postgresql"
dsn = "host=127.0.0.1 dbname=app"

[source.local]
type = "postgresql"
dsn = "dbname=postgres"
''')
    ws = Workspace.load(config)
    app, local = {"source": "app"}, {"source": "local"}
    for target in ("host=127.0.0.1 port=5432 dbname=app user=postgres", "postgresql://postgres@127.0.0.1/app",
                   "host=localhost dbname=app", "postgres://u:pw@127.0.0.1:5432/app?sslmode=disable"):
        assert restore.over_source(ws, app, target), target
    for target in ("host=127.0.0.1 port=5433 dbname=app", "host=127.0.0.1 dbname=app_restored",
                   "host=10.0.0.9 dbname=app", "dbname=app", "postgresql://127.0.0.1/app2"):
        assert not restore.over_source(ws, app, target), target
    for target in ("user=postgres", "port=5432", "postgresql:///postgres", "postgresql://"):
        assert restore.over_source(ws, local, target), target
    assert not restore.over_source(ws, local, "host=127.0.0.1 dbname=postgres")

    sysid = 7301234567890123456
    cluster = tmp_path / "pgdata"
    (cluster / "global").mkdir(parents=True)
    (cluster / "global" / "pg_control").write_bytes(sysid.to_bytes(8, sys.byteorder) + b"\0" * 8184)
    physical = {"source": "db", "source_type": "postgresql",
                "info": {"source_info": {"system_identifier": str(sysid)}}}
    assert restore.over_source(ws, physical, str(cluster))
    assert not restore.over_source(ws, {**physical, "info": {"source_info": {"system_identifier": "42"}}},
                                   str(cluster))
    assert not restore.over_source(ws, physical, str(tmp_path / "empty"))
    auto = cluster / "postgresql.auto.conf"  # a copy an earlier restore made: not production; a new primary: is
    auto.write_text("# added by insite-console restore of backup X\narchive_mode = off\narchive_command = ''\n")
    assert not restore.over_source(ws, physical, str(cluster))
    auto.write_text(auto.read_text() + "# added by insite-console restore of backup Y\narchive_mode = on\n")
    assert restore.over_source(ws, physical, str(cluster))
    ws.close()
