"""Base backups from a standby, and standbys promoted into an archive: a standby's base backup
succeeds only once its stop segment is archived (the standby archives nothing itself, so
pg_basebackup does not wait there), and a standby promoted onto a timeline number the archive
holds already cannot mix its WAL into that timeline.

Real PostgreSQL 15: a primary archiving through the worktree's `wal-push`, streaming standbys
made with `pg_basebackup -R` (they inherit its archive_command)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import BINDIR, PgCluster, as_postgres, free_port
from tests.test_postgresql import CONSOLE, _wait_archived, archiving_cluster, run_as_postgres

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(240)]  # noqa: F405


def make_standby(pg_factory, primary: PgCluster, name: str) -> PgCluster:
    root = pg_factory.make_dir(f"{name}-{free_port()}")
    datadir = os.path.join(root, "data")
    made = as_postgres([os.path.join(BINDIR, "pg_basebackup"), "-D", datadir, "-R", "-X", "stream", "-c", "fast",
                        "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"],
                       capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    standby = pg_factory.adopt(PgCluster(datadir=datadir, port=free_port(), sockdir=pg_factory.make_dir(
        f"{name}-sock-{free_port()}"), log=os.path.join(root, "log")))
    standby.start()
    return standby


def caught_up(primary: PgCluster, standby: PgCluster, timeout: float = 30) -> None:
    lsn = primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0][0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"standby did not replay up to {lsn}")


@pytest.fixture(scope="module")
def replicated(pg_factory):
    wsdir = Path(pg_factory.make_dir("standby"))
    primary, config = archiving_cluster(pg_factory, wsdir)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, batch int)")
    primary.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    assert json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)["status"] == "succeeded"
    standby = make_standby(pg_factory, primary, "standby-a")
    return {"primary": primary, "standby": standby, "config": config, "wsdir": wsdir}


def standby_config(replicated, wait: str) -> Path:
    """The same workspace (catalog, repository, source `db`), its DSN on the standby."""
    config = replicated["wsdir"] / f"standby-{wait}.toml"
    text = replicated["config"].read_text().replace(f":{replicated['primary'].port}/", f":{replicated['standby'].port}/")
    config.write_text(text.replace('mode = "physical"\n', f'mode = "physical"\narchive_wait = "{wait}"\n'))
    os.chown(config, *(lambda st: (st.st_uid, st.st_gid))(os.stat(replicated["config"])))
    return config


def test_base_backup_from_a_standby_waits_for_its_stop_segment(replicated):
    """Rows on the primary, replayed by the standby, in a segment not yet switched: the standby's
    base backup ends in that segment. With nothing archiving it, the backup fails after
    archive_wait naming the segment (before: `succeeded`, restorable only if the segment came
    later). With the primary switching segments meanwhile, it succeeds once the segment is on
    storage."""
    primary, standby = replicated["primary"], replicated["standby"]
    primary.sql("INSERT INTO t SELECT g, 1 FROM generate_series(101, 200) g")
    caught_up(primary, standby)
    assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)]

    failed = run_as_postgres(standby_config(replicated, "2s"), "backup", "db", "--json", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "from the standby" in failed.stderr and "was not archived within" in failed.stderr, failed.stderr
    assert "pg_switch_wal()" in failed.stderr

    done = threading.Event()

    def primary_switches():
        while not done.is_set():
            primary.sql("INSERT INTO t SELECT coalesce(max(id), 0) + 1, 2 FROM t")
            primary.sql("SELECT pg_switch_wal()")
            done.wait(0.5)

    switcher = threading.Thread(target=primary_switches, daemon=True)
    config = standby_config(replicated, "60s")
    switcher.start()
    try:
        result = as_postgres([CONSOLE, "-c", str(config), "backup", "db", "--json"], capture_output=True, text=True,
                      timeout=120)
    finally:
        done.set()
        switcher.join(10)
    assert result.returncode == 0, result.stderr
    backup = json.loads(result.stdout)
    from insite_console.workspace import Workspace

    ws = Workspace.load(replicated["config"])
    try:
        info = ws.catalog.backup(backup["id"])["info"]["source_info"]
    finally:
        ws.close()
    assert info["backup_from"] == "standby" and info["stop_wal_archived"] is True
    assert (replicated["wsdir"] / "repo" / "sealed" / "wal" / "db" / info["stop_wal_file"]).exists()


def test_standby_promoted_onto_a_timeline_the_archive_has_is_kept_out(replicated, pg_factory):
    """Standby A is promoted: timeline 2, its history archived. The primary goes on; standby B,
    streaming only (no restore_command, so it cannot see the archive), is promoted later and also
    picks timeline 2. Its 00000002.history differs from the archived one: wal-push refuses it, and
    refuses its timeline-2 segments too (PostgreSQL may archive one before the history), so none of
    B's timeline-2 WAL enters the archive, and the archive's timeline 2 stays A's (verify --wal ok)."""
    primary, standby_a, config = replicated["primary"], replicated["standby"], replicated["config"]
    sealed = replicated["wsdir"] / "repo" / "sealed" / "wal" / "db"
    standby_a.sql("SELECT pg_promote(true, 60)")
    deadline = time.monotonic() + 60
    while not (sealed / "00000002.history").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (sealed / "00000002.history").exists(), "standby A did not archive its history"
    standby_a.sql("INSERT INTO t SELECT g, 20 FROM generate_series(10001, 10100) g")
    _wait_archived(standby_a)
    standby_a.stop()  # a shutdown may archive one more of A's segments: take the snapshot after it
    before = {path.name: path.read_bytes() for path in sealed.iterdir() if path.name.startswith("00000002")}

    primary.sql("INSERT INTO t SELECT g, 3 FROM generate_series(20001, 20100) g")
    standby_b = make_standby(pg_factory, primary, "standby-b")
    primary.sql("INSERT INTO t SELECT g, 4 FROM generate_series(20101, 20200) g")
    caught_up(primary, standby_b)
    standby_b.sql("SELECT pg_promote(true, 60)")
    assert standby_b.sql(
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")[0][0] == 2
    standby_b.sql("INSERT INTO t SELECT g, 30 FROM generate_series(30001, 30100) g")
    standby_b.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last_failed, failed_count = standby_b.sql("SELECT last_failed_wal, failed_count FROM pg_stat_archiver")[0]
        if failed_count:
            break
        time.sleep(0.2)
    # PostgreSQL may try the history or a segment first: each is refused, each for its reason
    assert last_failed.startswith("00000002") and failed_count >= 1
    log = Path(standby_b.log).read_text()
    assert "already archived with DIFFERENT content" in log or "is another server's" in log, log[-3000:]
    # and whatever order the archiver takes, one of B's timeline-2 segments pushed by hand is refused
    pg_wal = Path(standby_b.datadir) / "pg_wal"
    segment = next(path for path in sorted(pg_wal.iterdir()) if len(path.name) == 24 and path.name.startswith("00000002"))
    refused = run_as_postgres(config, "wal-push", "db", str(segment), check=False)
    assert refused.returncode != 0
    assert f"{segment.name} is on this cluster's timeline 2, but the archived 00000002.history is another server's" \
        in refused.stderr, refused.stderr
    after = {path.name: path.read_bytes() for path in sealed.iterdir() if path.name.startswith("00000002")}
    assert after == before  # nothing of B's timeline 2 got in
    assert standby_b.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] is None
    standby_b.stop()
    checked = json.loads(run_as_postgres(config, "verify", "--wal", "--json").stdout)[0]
    assert checked["status"] == "ok", checked


def test_a_segment_reaches_the_archive_only_with_its_timeline_history(pg_factory):
    """A timeline-3 segment (a real segment with its header's timeline rewritten) is refused while
    neither the archive nor its pg_wal holds 00000003.history; with the history beside it, the
    history is archived first, then the segment."""
    wsdir = Path(pg_factory.make_dir(f"tlhistory-{free_port()}"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    cluster.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    _wait_archived(cluster)
    real = sorted(path for path in (Path(cluster.datadir) / "pg_wal").iterdir()
                  if len(path.name) == 24 and path.name.startswith("00000001"))[0]
    scratch = Path(pg_factory.make_dir(f"tlhistory-wal-{free_port()}")) / "pg_wal"
    scratch.mkdir()
    data = bytearray(real.read_bytes())
    data[4:8] = (3).to_bytes(4, "little")  # xlp_tli of the long page header
    segment = scratch / ("00000003" + real.name[8:])
    segment.write_bytes(bytes(data))
    refused = run_as_postgres(config, "wal-push", "db", str(segment), check=False)
    assert refused.returncode != 0
    assert "00000003.history is neither in the archive nor beside it" in refused.stderr, refused.stderr
    sealed = wsdir / "repo" / "sealed" / "wal" / "db"
    assert not (sealed / segment.name).exists()

    (scratch / "00000003.history").write_text("1\t0/3000000\tno recovery target specified\n"
                                              "2\t0/4000000\tno recovery target specified\n")
    run_as_postgres(config, "wal-push", "db", str(segment))
    assert (sealed / "00000003.history").exists() and (sealed / segment.name).exists()
    cluster.stop()
