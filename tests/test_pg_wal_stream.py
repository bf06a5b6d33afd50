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
        assert "wal-stream (pid" in cli("wal", "db").stdout
        assert cluster.sql("SELECT slot_name, active FROM pg_replication_slots") == [("insite_db", True)]
        assert _running_receivewal(spool)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert all(f"{name} archived (streamed)" in stdout for name in switched), stdout
    assert "stopped;" in stdout
    assert not _running_receivewal(spool)
    # only the newest pushed segment stays in the spool (pg_receivewal resumes after it)
    assert sorted(p.name for p in spool.iterdir() if len(p.name) == 24) == [switched[-1]]
