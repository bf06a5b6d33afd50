"""PostgreSQL recovery never loses WAL silently: a damaged or missing archived segment, or a
recovery that fails, ends in a failed restore naming the cause, never in `succeeded`.

One real PostgreSQL 15 cluster archives through the worktree's `wal-push` (run as postgres);
each test damages the archive, restores with a throwaway server, and puts the archive back."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from insite_console import clock
from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import PG_USER, as_postgres, free_port
from tests.test_postgresql import CONSOLE, _wait_archived, archiving_cluster, run_as_postgres

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(240)]  # noqa: F405

ROWS_PER_BATCH = 1000
STALE_LOG = "2026-01-01 00:00:00 UTC [1] LOG:  database system is ready to accept connections\n"


@pytest.fixture(scope="module")
def archive(pg_factory):
    """A cluster archiving into its own repository: a base backup, then three batches of rows,
    each in a segment of its own. Its PGDATA carries an old recovery log, as a cluster that was
    itself restored by an earlier insite-console did (the log used to live in PGDATA)."""
    wsdir = Path(pg_factory.make_dir("walsafe"))

    def leave_stale_log(cluster):
        stale = Path(cluster.datadir) / "insite-recovery.log"
        stale.write_text(STALE_LOG)
        os.chown(stale, PG_USER.pw_uid, PG_USER.pw_gid)

    cluster, config = archiving_cluster(pg_factory, wsdir, prepare=leave_stale_log)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY, batch int)")
    base = json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)
    assert base["status"] == "succeeded"
    segments, marks = [], []
    for batch in range(3):
        marks.append(cluster.sql("SELECT clock_timestamp()")[0][0].isoformat())
        first = batch * ROWS_PER_BATCH
        cluster.sql(f"INSERT INTO t SELECT g, {batch} FROM generate_series({first + 1}, {first + ROWS_PER_BATCH}) g")
        segments.append(cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])
        _wait_archived(cluster)
    assert len(set(segments)) == 3, segments
    return {"cluster": cluster, "config": config, "wsdir": wsdir, "base": base, "segments": segments,
            "before_batch": marks}


def sealed_path(archive, name: str) -> Path:
    return archive["wsdir"] / "repo" / "sealed" / "wal" / "db" / name


def restore_with_server(archive, pg_factory, *extra: str):
    """`restore db --start-port` into a fresh directory; returns (result, the restored cluster)."""
    target = Path(pg_factory.make_dir(f"walsafe-restore-{free_port()}"))
    port = free_port()
    result = run_as_postgres(archive["config"], "restore", "db", "--target", str(target), "--start-port", str(port),
                             *extra, check=False)
    cluster = archive["cluster"]
    restored = pg_factory.adopt(type(cluster)(datadir=str(target), port=port, sockdir=str(target),
                                              log=str(target) + ".insite-recovery.log"))
    return result, restored


def test_corrupt_segment_stops_recovery_and_fails_the_restore(archive, pg_factory):
    """A flipped byte in a sealed segment mid-archive: wal-fetch exits above 125 (not 1, which
    PostgreSQL takes for "end of the archive" and promotes), and both a latest and an --at
    restore fail naming the segment; before, both said `succeeded` with a third of the rows."""
    config, middle = archive["config"], archive["segments"][1]
    path = sealed_path(archive, middle)
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    try:
        # the restore_command helper itself: "damaged" is not "missing"
        scratch = Path(pg_factory.make_dir("walsafe-fetch"))
        fetched = run_as_postgres(config, "wal-fetch", "db", middle, str(scratch / "RECOVERYXLOG"), check=False)
        assert fetched.returncode > 125 and middle in fetched.stderr and "failed authentication" in fetched.stderr
        note = json.loads((scratch / ".insite-wal-prefetch" / "wal-fetch-failed.json").read_text())
        assert note["segment"] == middle
        missing = run_as_postgres(config, "wal-fetch", "db", "0000000100000000000000EE", str(scratch / "X"),
                                  check=False)
        assert missing.returncode == 1
        # a configuration or passphrase it cannot use is no "missing segment" either
        broken = as_postgres([CONSOLE, "-c", str(scratch / "no-such-config.toml"), "wal-fetch", "db", middle,
                              str(scratch / "X")], capture_output=True, text=True, timeout=60)
        assert broken.returncode > 125, broken.stderr
        wrong = scratch / "wrong-passphrase"
        wrong.write_text("not the passphrase\n")
        os.chmod(wrong, 0o600)
        os.chown(wrong, PG_USER.pw_uid, PG_USER.pw_gid)
        other = scratch / "config.toml"
        other.write_text(config.read_text().replace(str(archive["wsdir"] / "passphrase"), str(wrong))
                         .replace('"repo"', f'"{archive["wsdir"] / "repo"}"')
                         .replace('"state/', f'"{archive["wsdir"] / "state"}/'))
        os.chown(other, PG_USER.pw_uid, PG_USER.pw_gid)
        locked = run_as_postgres(other, "wal-fetch", "db", archive["segments"][0], str(scratch / "X"), check=False)
        assert locked.returncode > 125 and "passphrase" in locked.stderr, locked.stderr

        for extra in ((), ("--at", archive["before_batch"][2])):
            result, restored = restore_with_server(archive, pg_factory, *extra)
            assert result.returncode == 1, (extra, result.stdout, result.stderr)
            assert "succeeded" not in result.stdout + result.stderr
            assert middle in result.stderr and "failed authentication" in result.stderr, result.stderr
            assert not restored.running()
        from insite_console.workspace import Workspace

        ws = Workspace.load(config)
        try:
            assert [row["status"] for row in ws.catalog.restores(limit=2)] == ["failed", "failed"]
        finally:
            ws.close()
    finally:
        path.write_bytes(original)


def test_failed_recovery_of_a_restored_clusters_backup_is_reported(archive, pg_factory):
    """The base backup carries an old "ready to accept connections" line (its cluster was itself
    restored); its checkpoint's WAL is replaced by zeros, so recovery cannot start. The restore
    must fail from the live server's state, not read success from the old log."""
    from insite_console.workspace import Workspace

    ws = Workspace.load(archive["config"])
    try:
        start = ws.catalog.backup(archive["base"]["id"])["info"]["source_info"]["start_wal_file"]
        path = sealed_path(archive, start)
        aside = path.with_name(path.name + ".aside")
        shutil.copy2(path, aside)
        ws.repository("local").put_sealed(f"wal/db/{start}", bytes(16 * 1024 * 1024))
        os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
    finally:
        ws.close()
    try:
        result, restored = restore_with_server(archive, pg_factory)
    finally:
        os.replace(aside, path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "succeeded" not in result.stdout + result.stderr
    assert "stopped during recovery" in result.stderr and "checkpoint record" in result.stderr, result.stderr
    assert not restored.running()
    # the new log is beside PGDATA; the old one inside it got nothing new
    assert (Path(restored.datadir) / "insite-recovery.log").read_text() == STALE_LOG
    assert "checkpoint record" in Path(restored.log).read_text()


def test_gap_in_the_archive_is_shown_and_refused(archive, pg_factory):
    """One segment moved out of storage mid-archive: verify, `wal` and `status` report the gap,
    the catalog stops listing the segment, and restores that would stop at it are refused
    before anything is written. Before, all said OK and a latest restore lost the rows past it."""
    config, middle = archive["config"], archive["segments"][1]
    path = sealed_path(archive, middle)
    aside = archive["wsdir"] / f"{middle}.moved"
    os.replace(path, aside)
    try:
        checked = run_as_postgres(config, "verify", "--wal", "--json", check=False)
        assert checked.returncode == 1
        [wal_result] = json.loads(checked.stdout)
        assert wal_result["wal_source"] == "db" and wal_result["status"] == "gap"
        assert wal_result["gaps"] == [{"timeline": 1, "first": middle, "last": middle, "count": 1}]
        everything = run_as_postgres(config, "verify", "--all", check=False)
        assert everything.returncode == 1 and f"segment {middle} is missing" in everything.stdout, everything.stdout

        listing = run_as_postgres(config, "wal", "db", "--json", check=False)
        assert listing.returncode == 1
        listed = json.loads(listing.stdout)
        assert listed["archive"]["status"] == "gap" and middle not in [row["name"] for row in listed["segments"]]
        assert archive["segments"][2] in [row["name"] for row in listed["segments"]]
        text = run_as_postgres(config, "wal", "db", check=False).stdout
        assert "archive GAP" in text and middle in text

        gap = run_as_postgres(config, "status", "--json", check=False)
        [health] = json.loads(gap.stdout)
        assert health["health"] == "wal_gap" and health["wal_archive"]["gaps"][0]["first"] == middle
        assert gap.returncode == 2 and health["level"] == "critical"  # a monitoring plugin's CRITICAL
        assert "WAL GAP" in run_as_postgres(config, "status", check=False).stdout
        from insite_console.tui import model  # the console's dashboard row for the policy
        from insite_console.workspace import Workspace

        ws = Workspace.load(config)
        try:
            [row] = model.policy_health(ws)
        finally:
            ws.close()
        assert row["shown"] == "wal_gap" and "WAL gap" in model.status_label(row["shown"])[0], row["shown"]
        # a drill's RPO check does not take the archive lag past a gap (replay stops there)
        from insite_console.dr.actions import StepContext, run
        from insite_console.dr.scenarios import Step

        ws = Workspace.load(config)
        try:
            step = Step(id="rpo", action="check the RPO", role="dba", kind="check_rpo", policy="db")
            checked = run(StepContext(ws, "drill-rpo-gap", clock.now(), None), step)
        finally:
            ws.close()
        assert "the WAL archive of db is gap" in checked["notes"] and "newest archived WAL" not in checked["notes"], \
            checked
        assert checked["data_loss_seconds"] >= (clock.now() - clock.parse_iso(archive["base"]["finished_at"])).total_seconds() - 5

        target = Path(pg_factory.make_dir("walsafe-gap"))
        for extra in ((), ("--at", archive["before_batch"][2])):
            refused = run_as_postgres(config, "restore", "db", "--target", str(target), *extra, check=False)
            assert refused.returncode == 1 and "pre-flight failed" in refused.stderr, refused.stderr
            assert f"segment {middle} is missing" in refused.stderr, refused.stderr
            assert "succeeded" not in refused.stdout
        assert os.listdir(target) == []
    finally:
        os.replace(aside, path)
    assert run_as_postgres(config, "verify", "--wal").returncode == 0

    # deep: every segment is read back and authenticated
    first = sealed_path(archive, archive["segments"][0])
    original = first.read_bytes()
    first.write_bytes(original[:-1] + bytes([original[-1] ^ 0x40]))
    try:
        assert run_as_postgres(config, "verify", "--wal").returncode == 0  # quick: the listing is whole
        deep = run_as_postgres(config, "verify", "--wal", "--deep", check=False)
        assert deep.returncode == 1 and "FAILED" in deep.stdout
        assert f"WAL segment {archive['segments'][0]} is unreadable" in deep.stdout, deep.stdout
    finally:
        first.write_bytes(original)


def test_rpo_of_a_physical_source_is_the_wal_archive_lag(archive):
    """A base backup an hour old with WAL archived a moment ago loses at most that moment: the
    RPO is judged on the archive lag (it used to be the base backup's age: a breach). When the
    archive stops, the lag grows past the RPO: a breach, whatever the base backup's age."""
    from insite_console import clock, status
    from insite_console.workspace import Workspace

    ws = Workspace.load(archive["config"])
    try:
        ws.config.policies["db"]["rpo"] = "15m"
        hour_ago = clock.iso(clock.now() - clock.parse_duration("1h"))
        ws.catalog.db.execute("UPDATE backups SET started_at = ?, finished_at = ? WHERE id = ?",
                              (hour_ago, hour_ago, archive["base"]["id"]))
        now = clock.now()
        row = status.policy_health(ws, "db", now)
        assert row["age_seconds"] >= 3600
        assert row["rpo_basis"] == "wal_archive_lag" and row["data_loss_seconds"] < 600
        assert row["health"] == "ok", row
        later = status.policy_health(ws, "db", now + clock.parse_duration("20m"))
        assert later["health"] == "breach" and later["data_loss_seconds"] > 900
        # the console's dashboard shows that data-loss window, not the hour-old base backup against 15m
        from insite_console.tui import model

        [shown] = model.policy_health(ws, now)
        assert shown["shown"] == "ok" and shown["age_vs_rpo"].startswith("WAL ") and shown["age_vs_rpo"].endswith(" / 15m")
        assert "1h" not in shown["age_vs_rpo"], shown["age_vs_rpo"]
        # a drill's check_rpo step judges it the same way (it used to fail on the base backup's age)
        from insite_console.dr.actions import StepContext, run
        from insite_console.dr.scenarios import Step

        step = Step(id="rpo", action="check the RPO", role="dba", kind="check_rpo", policy="db")
        checked = run(StepContext(ws, "drill-rpo", now, None), step)
        assert checked["status"] == "passed" and checked["data_loss_seconds"] < 600, checked
        assert "newest archived WAL of db is" in checked["notes"]
        stale = run(StepContext(ws, "drill-rpo", now + clock.parse_duration("20m"), None), step)
        assert stale["status"] == "failed" and stale["data_loss_seconds"] > 900, stale
    finally:
        ws.close()


def test_a_port_taken_by_another_server_is_refused_not_judged(archive, pg_factory):
    """`--start-port` on a port another PostgreSQL already serves: the restored cluster could
    not bind, and its recovery must not be judged from the other server's state (a promoted
    server answers pg_is_in_recovery() = false). Refused before starting, naming the port."""
    other = archive["cluster"]  # the archiving cluster itself listens on its port
    target = Path(pg_factory.make_dir(f"walsafe-busy-{free_port()}"))
    result = run_as_postgres(archive["config"], "restore", "db", "--target", str(target), "--start-port",
                             str(other.port), check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"port {other.port} on 127.0.0.1 is in use" in result.stderr
    assert "succeeded" not in result.stdout
