"""PostgreSQL timelines: a restore as the new primary archives its new timeline's history, so a
second point-in-time restore follows it (latest, as PostgreSQL) and never reuses its number;
the archive refuses WAL from another cluster (system identifier).

One real PostgreSQL 15 cluster archives through the worktree's `wal-push` (run as postgres)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import PG_USER, as_postgres, free_port
from tests.test_postgresql import CONSOLE, _wait_archived, archiving_cluster, run_as_postgres

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(300)]  # noqa: F405


@pytest.fixture(scope="module")
def origin(pg_factory):
    """A cluster on timeline 1 with a base backup, then batch 0, a mark, batch 1 (archived)."""
    wsdir = Path(pg_factory.make_dir("timelines"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY, batch int)")
    base = json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)
    assert base["status"] == "succeeded"
    cluster.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    _wait_archived(cluster)
    mark = cluster.sql("SELECT clock_timestamp()")[0][0].isoformat()
    cluster.sql("INSERT INTO t SELECT g, 1 FROM generate_series(101, 200) g")
    _wait_archived(cluster)
    return {"cluster": cluster, "config": config, "wsdir": wsdir, "mark": mark}


def _restore(origin, pg_factory, *extra: str):
    target = Path(pg_factory.make_dir(f"timelines-restore-{free_port()}"))
    port = free_port()
    result = run_as_postgres(origin["config"], "restore", "db", "--target", str(target), "--start-port", str(port),
                             "--json", *extra, check=False)
    cluster = origin["cluster"]
    restored = pg_factory.adopt(type(cluster)(datadir=str(target), port=port, sockdir=str(target),
                                              log=str(target) + ".insite-recovery.log"))
    log = Path(restored.log)
    assert result.returncode == 0, (result.stdout, result.stderr, log.exists() and log.read_text()[-2000:])
    return json.loads(result.stdout), restored


def _batches(cluster) -> list[int]:
    return [row[0] for row in cluster.sql("SELECT DISTINCT batch FROM t ORDER BY 1")]


def test_second_pitr_follows_the_new_primarys_timeline(origin, pg_factory):
    """PITR as the new primary promotes to timeline 2 and archives 00000002.history; new rows on
    it are archived on timeline 2. A second PITR from the same (timeline 1) base backup to a point
    on timeline 2 follows the history (timeline 1 up to the branch, then 2), holds the rows of
    timeline 2 and not those timeline 1 wrote after the branch, and promotes to timeline 3, not
    to the existing 2. Before, the restored server never archived, so timeline 2 was lost."""
    config, cluster = origin["config"], origin["cluster"]
    first, primary = _restore(origin, pg_factory, "--at", origin["mark"], "--as-primary")
    assert first["status"] == "succeeded" and first["recovery"]["state"] == "promoted"
    assert first["recovery"]["timeline"] == 2 and first["recovery"]["history_archived"] == "00000002.history"
    assert _batches(primary) == [0]
    primary.sql("INSERT INTO t SELECT g, 9 FROM generate_series(1001, 1100) g")
    _wait_archived(primary)
    mark = primary.sql("SELECT clock_timestamp()")[0][0].isoformat()
    primary.sql("INSERT INTO t SELECT g, 10 FROM generate_series(1101, 1200) g")
    _wait_archived(primary)
    cluster.sql("INSERT INTO t SELECT g, 2 FROM generate_series(201, 300) g")  # timeline 1 goes on too
    _wait_archived(cluster)
    primary.stop()

    checked = json.loads(run_as_postgres(config, "verify", "--wal", "--json").stdout)[0]
    assert checked["status"] == "ok", checked
    assert {row["timeline"]: row.get("parent") for row in checked["timelines"]} == {1: None, 2: 1}

    second, restored = _restore(origin, pg_factory, "--at", mark)
    assert second["status"] == "succeeded" and second["details"]["timelines"] == "1 → 2"
    assert second["recovery"]["timeline"] == 3
    assert _batches(restored) == [0, 9]
    restored.stop()

    # the base backup's own timeline, on request
    current, on_one = _restore(origin, pg_factory, "--target-timeline", "current")
    assert current["details"]["timelines"] == "1" and _batches(on_one) == [0, 1, 2]
    on_one.stop()


def test_push_from_another_cluster_is_refused(origin, pg_factory):
    """A segment and a history file from a cluster with another system identifier are refused
    (exit 1, naming both identifiers) and not archived; the source's own cluster still pushes."""
    foreign = pg_factory(start=False)  # initdb: a new system identifier, segment 1 on timeline 1
    history = Path(foreign.datadir) / "pg_wal" / "00000007.history"
    history.write_text("1\t0/3000000\tno recovery target specified\n")
    os.chown(history, PG_USER.pw_uid, PG_USER.pw_gid)
    config = origin["config"]
    names = json.loads(run_as_postgres(config, "wal", "db", "--json").stdout)["segments"]
    before = {row["name"] for row in names}
    for name in ("000000010000000000000001", "00000007.history"):
        pushed = as_postgres([CONSOLE, "-c", str(config), "wal-push", "db", f"pg_wal/{name}"], cwd=foreign.datadir,
                             capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 1, (name, pushed.stdout, pushed.stderr)
        assert "system identifier" in pushed.stderr and "refusing" in pushed.stderr, pushed.stderr
    after = {row["name"] for row in json.loads(run_as_postgres(config, "wal", "db", "--json").stdout)["segments"]}
    assert "00000007.history" not in after and after >= before
    origin["cluster"].sql("INSERT INTO t VALUES (5000, 5)")
    _wait_archived(origin["cluster"])
