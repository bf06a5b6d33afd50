"""Streaming WAL: `wal-stream SOURCE` runs pg_receivewal (through a replication slot) into a
spool and pushes each completed segment into the archive, byte-identical to the server's; the
segment in progress shows in `wal SOURCE`; SIGTERM stops it and pg_receivewal cleanly.

A real PostgreSQL 15 cluster with no archive_command at all: the stream is the only archiver."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.test_postgresql import pg_config

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405


def _wait_for(check, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_receivewal(spool: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"pg_receivewal" in argv and str(spool).encode() in argv:
                found.append(int(entry))
    return found


def test_wal_stream_archives_completed_segments(pg_factory, tmp_path):
    cluster = pg_factory()
    (tmp_path / "passphrase").write_text("stream passphrase\n")
    config = pg_config(tmp_path, cluster.dsn, mode="physical", passphrase=str(tmp_path / "passphrase"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    assert cli("init").returncode == 0
    spool = tmp_path / "state" / "wal-stream" / "db"
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(config), "wal-stream", "db"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _running_receivewal(spool) and (spool / "status.json").exists(),
                  what="pg_receivewal to start")
        cluster.sql("CREATE TABLE t (id int, pad text)")
        switched = []
        for batch in range(3):
            cluster.sql("INSERT INTO t SELECT g, repeat('s', 100) FROM generate_series(1, 1000) g")
            switched.append(cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        server_copy = {name: hashlib.sha256((Path(cluster.datadir) / "pg_wal" / name).read_bytes()).hexdigest()
                       for name in switched}
        sealed = tmp_path / "repo" / "sealed" / "wal" / "db"
        _wait_for(lambda: all((sealed / name).exists() for name in switched), what=f"{switched} in the archive")
        for name in switched:
            fetched = tmp_path / f"fetched-{name}"
            assert cli("wal-fetch", "db", name, str(fetched)).returncode == 0
            assert hashlib.sha256(fetched.read_bytes()).hexdigest() == server_copy[name], name

        cluster.sql("INSERT INTO t VALUES (0, 'after the last switch')")
        current = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        _wait_for(lambda: (json.loads((spool / "status.json").read_text()).get("partial") or {}).get("name")
                  == f"{current}.partial", what="the status to show the segment in progress")
        listed = json.loads(cli("wal", "db", "--json").stdout)
        assert listed["stream"]["partial"]["name"] == f"{current}.partial"
        assert listed["stream"]["last_archived"] == switched[-1]
        assert "wal-stream running on " in cli("wal", "db").stdout
        assert cluster.sql("SELECT slot_name, active FROM pg_replication_slots") == [("insite_db", True)]
        assert _running_receivewal(spool)
        # Prometheus sees the same: running, with a heartbeat beaten within a few intervals
        samples = _stream_metrics(cli)
        assert samples["insite_wal_stream_running"] == 1
        assert 0 <= samples["insite_wal_stream_heartbeat_age_seconds"] < 30
        assert abs(samples["insite_wal_stream_last_heartbeat_timestamp_seconds"] - time.time()) < 30
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert all(f"{name} archived (streamed)" in stdout for name in switched), stdout
    assert "stopped;" in stdout
    # a clean stop is still a stopped streamer: status warns, naming it
    assert "wal-stream not running (stopped; last seen" in cli("status").stdout
    assert not _running_receivewal(spool)
    # only the newest pushed segment stays in the spool (pg_receivewal resumes after it)
    assert sorted(p.name for p in spool.iterdir() if len(p.name) == 24) == [switched[-1]]


def _status_row(cli) -> dict:
    done = cli("status", "--json")
    assert done.stdout, done.stderr
    return json.loads(done.stdout)[0]


def _stream_metrics(cli) -> dict[str, float]:
    """The wal-stream samples of `metrics` for source db, parsed back as Prometheus reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    done = cli("metrics")
    assert done.returncode == 0, done.stderr
    return {sample.name: sample.value for family in text_string_to_metric_families(done.stdout)
            for sample in family.samples if sample.name.startswith("insite_wal_stream") and sample.labels == {"source": "db"}}


def test_status_shows_the_streamer_running_then_gone(pg_factory, tmp_path):
    """The heartbeat in the catalog: `status` (and --json) says a wal-stream streams the source,
    from which host and pid, the segment in progress; killed (no clean stop), it is a WARNING
    naming the streamer, not a silent OK."""
    cluster = pg_factory()
    (tmp_path / "passphrase").write_text("stream passphrase\n")
    config = pg_config(tmp_path, cluster.dsn, mode="physical", passphrase=str(tmp_path / "passphrase"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    assert cli("init").returncode == 0
    assert _status_row(cli)["wal_stream"] is None  # never streamed: nothing to say
    assert _stream_metrics(cli) == {}
    spool = tmp_path / "state" / "wal-stream" / "db"
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(config), "wal-stream", "db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        current = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        rows = []
        _wait_for(lambda: rows.append(_status_row(cli)) or (rows[-1]["wal_stream"] or {}).get("partial")
                  == f"{current}.partial", what="status to show the streamer receiving")
        stream = rows[-1]["wal_stream"]
        assert stream["running"] is True and stream["pid"] == proc.pid
        assert f"wal-stream running on {stream['host']} (pid {proc.pid}): receiving {current}.partial" in cli("status").stdout
        assert not any("wal-stream" in problem for problem in rows[-1]["problems"])
        assert _running_receivewal(spool)
        # Prometheus sees the same: running, with a heartbeat beaten within a few intervals
        samples = _stream_metrics(cli)
        assert samples["insite_wal_stream_running"] == 1
        assert 0 <= samples["insite_wal_stream_heartbeat_age_seconds"] < 30
        assert abs(samples["insite_wal_stream_last_heartbeat_timestamp_seconds"] - time.time()) < 30
    finally:
        proc.kill()  # a crash: no clean stop recorded
        proc.wait(30)
        for pid in _running_receivewal(spool):  # the orphaned pg_receivewal (it streams on without its pusher)
            os.kill(pid, signal.SIGTERM)
    row = _status_row(cli)
    assert row["wal_stream"]["running"] is False
    warning = "wal-stream not running (its process is gone; last seen"
    assert any(problem.startswith(warning) and f"(pid {proc.pid})" in problem for problem in row["problems"]), row
    assert row["level"] in ("warning", "critical")
    assert warning in cli("status").stdout
    gone = _stream_metrics(cli)  # an alert on insite_wal_stream_running == 0 fires
    assert gone["insite_wal_stream_running"] == 0
    assert gone["insite_wal_stream_last_heartbeat_timestamp_seconds"] >= samples["insite_wal_stream_last_heartbeat_timestamp_seconds"]
    listing = cli("wal", "db").stdout  # its status file still says "receiving": the heartbeat says gone
    assert warning in listing and "in progress:" not in listing
    # streaming given up on purpose: forgotten, status no longer warns
    forgot = cli("wal-stream", "db", "--forget")
    assert forgot.returncode == 0 and "forgot 1 stopped streamer(s)" in forgot.stdout, forgot.stderr
    assert f"(pid {proc.pid})" in forgot.stdout
    assert _status_row(cli)["wal_stream"] is None
    assert _stream_metrics(cli) == {}


def test_wal_stream_refuses_a_history_file_from_another_cluster(pg_cluster, pg_factory, tmp_path):
    """A .history file has no header naming its cluster: wal-stream checks it against the system
    identifier of the server it streams from; the archive belongs to another cluster, so it is
    refused and named, not archived with a warning."""
    (tmp_path / "passphrase").write_text("stream passphrase\n")
    config = pg_config(tmp_path, pg_cluster.dsn, mode="physical", passphrase=str(tmp_path / "passphrase"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    assert cli("init").returncode == 0
    # the archive belongs to pg_cluster: one of its segments pushed as archive_command does
    switched = pg_cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    pushed = cli("wal-push", "db", str(Path(pg_cluster.datadir) / "pg_wal" / switched))
    assert pushed.returncode == 0, pushed.stderr
    ours = pg_cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0]

    other = pg_factory()  # the source's DSN now points at another cluster
    theirs = other.sql("SELECT system_identifier FROM pg_control_system()")[0][0]
    assert theirs != ours
    pg_config(tmp_path, other.dsn, mode="physical", passphrase=str(tmp_path / "passphrase"))
    spool = tmp_path / "state" / "wal-stream" / "db"
    spool.mkdir(parents=True)
    (spool / "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    done = cli("wal-stream", "db", "--duration", "1")
    assert done.returncode == 0, done.stderr
    assert (f"00000002.history not archived: wal-push db: 00000002.history comes from the cluster with system "
            f"identifier {theirs}, but the archive of source db belongs to cluster {ours}; refusing it") in done.stdout
    assert not (tmp_path / "repo" / "sealed" / "wal" / "db" / "00000002.history").exists()
    assert (spool / "00000002.history").exists()  # kept in the spool, not lost
    assert "00000002.history" not in cli("wal", "db").stdout


def test_wal_push_refuses_a_history_that_contradicts_the_archived_parent(pg_cluster, tmp_path):
    """N.history is its parent's history plus one line: a 00000003.history whose timeline 2 came
    from elsewhere than the archived 00000002.history says (a sibling promoted to the same
    timeline number) is refused and named; the consistent one is archived."""
    (tmp_path / "passphrase").write_text("stream passphrase\n")
    config = pg_config(tmp_path, pg_cluster.dsn, mode="physical", passphrase=str(tmp_path / "passphrase"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    assert cli("init").returncode == 0
    pgdata = tmp_path / "pgdata"  # archive_command's view: %p = pg_wal/NAME beside the cluster's pg_control
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    (pgdata / "global" / "pg_control").write_bytes((Path(pg_cluster.datadir) / "global" / "pg_control").read_bytes())

    def push(name, text):
        (pgdata / "pg_wal" / name).write_text(text)
        return cli("wal-push", "db", str(pgdata / "pg_wal" / name))

    assert push("00000002.history", "1\t0/3000000\tno recovery target specified\n").returncode == 0
    sibling = push("00000003.history", "1\t0/5000000\tno recovery target specified\n\n"
                                       "2\t0/7000000\tno recovery target specified\n")
    assert sibling.returncode == 1
    assert ("00000003.history says timeline 2 followed timeline 1 until 0/5000000, but the archived "
            "00000002.history says timeline 1 until 0/3000000; refusing it") in sibling.stderr
    assert not (tmp_path / "repo" / "sealed" / "wal" / "db" / "00000003.history").exists()
    consistent = push("00000003.history", "1\t0/3000000\tno recovery target specified\n\n"
                                          "2\t0/7000000\tno recovery target specified\n")
    assert consistent.returncode == 0, consistent.stderr
