"""Parallel archive-push: one `wal-push --parallel N` call stores the asked segment and the other
ready ones, N at a time, leaving receipts; PostgreSQL's next calls for those are answered from
the receipt (checked against the file's SHA-256) without opening the repository.

A real PostgreSQL 15 cluster archives through the worktree's `wal-push`; archiving is paused
(archive_command = '') while segments pile up, as during a bulk load."""

from __future__ import annotations

import json
import textwrap
import os
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import as_postgres
from tests.test_postgresql import CONSOLE, _wait_archived, archiving_cluster, run_as_postgres

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(240)]  # noqa: F405


def _ready(cluster) -> list[str]:
    status = Path(cluster.datadir) / "pg_wal" / "archive_status"
    return sorted(p.name[:-6] for p in status.iterdir() if p.name.endswith(".ready"))


def test_one_call_pushes_the_ready_segments_and_later_calls_use_receipts(pg_factory):
    wsdir = Path(pg_factory.make_dir("walqueue"))
    cluster, config = archiving_cluster(pg_factory, wsdir)
    cluster.sql("CREATE TABLE t (id int, pad text)")
    _wait_archived(cluster)
    cluster.sql("ALTER SYSTEM SET archive_command = ''")  # paused: segments pile up as .ready
    cluster.sql("SELECT pg_reload_conf()")
    for batch in range(6):
        cluster.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
        cluster.sql("SELECT pg_switch_wal()")
    ready = _ready(cluster)
    assert len(ready) >= 6, ready
    sealed = wsdir / "repo" / "sealed" / "wal" / "db"
    receipts = Path(cluster.datadir) / "pg_wal" / ".insite-wal-pushed"

    def push(name: str, *extra: str):
        return as_postgres([CONSOLE, "-c", str(config), "wal-push", "db", f"pg_wal/{name}", *extra],
                           cwd=cluster.datadir, capture_output=True, text=True, timeout=120)

    first = push(ready[0], "--parallel", "3")
    assert first.returncode == 0, first.stderr
    assert f"and {min(5, len(ready) - 1)} ready file(s) ahead" in first.stderr, first.stderr
    ahead = ready[1:6]
    assert all((sealed / name).exists() for name in ready[:6])
    assert sorted(p.name for p in receipts.iterdir()) == ahead

    # PostgreSQL's call for a segment pushed ahead: answered from its receipt, without the
    # repository (the passphrase is unreadable here, so opening it would fail)
    passfile = wsdir / "passphrase"
    os.chmod(passfile, 0)
    try:
        answered = push(ahead[0], "--parallel", "3")
        assert answered.returncode == 0, answered.stderr
        assert not (receipts / ahead[0]).exists()
        # a receipt that does not match the file is not trusted: the normal push runs (and fails here)
        (receipts / ahead[1]).write_text("0" * 64 + "\n")
        untrusted = push(ahead[1], "--parallel", "3")
        assert untrusted.returncode != 0 and "passphrase" in untrusted.stderr, untrusted.stderr
    finally:
        os.chmod(passfile, 0o600)
    assert push(ahead[1], "--parallel", "3").returncode == 0  # archived already, identical: 0

    # and as the archive_command: everything reaches the archive, receipts are all used up
    cluster.sql(f"ALTER SYSTEM SET archive_command = '{CONSOLE} -c {config} wal-push db %p --parallel 3'")
    cluster.sql("SELECT pg_reload_conf()")
    for batch in range(4):
        cluster.sql("INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series(1, 2000) g")
        cluster.sql("SELECT pg_switch_wal()")
    _wait_archived(cluster)
    assert [p.name for p in receipts.iterdir()] == []
    checked = json.loads(run_as_postgres(config, "verify", "--wal", "--deep", "--json").stdout)[0]
    assert checked["status"] == "ok", checked


def test_a_receipt_vouches_only_for_its_source_storage_and_config(pg_factory):
    """A receipt left while pushing to source db (storage local) does not answer a push of the
    same segment to source db2 (storage second): db2 gets the segment; db's receipt stays
    good for db; a missing config is an error even with a receipt in place."""
    wsdir = Path(pg_factory.make_dir("walqueue-vouch"))
    extra = textwrap.dedent(f"""
        [storage.second]
        type = "local"
        path = "{wsdir / 'repo2'}"

        [source.db2]
        type = "postgresql"
        dsn = "postgresql://postgres@127.0.0.1:1/postgres"
        mode = "physical"

        [policy.db2]
        source = "db2"
        storage = "second"
        type = "full"
        """)
    cluster, config = archiving_cluster(pg_factory, wsdir, extra=extra)
    cluster.sql("CREATE TABLE t (id int, pad text)")
    _wait_archived(cluster)
    cluster.sql("ALTER SYSTEM SET archive_command = ''")
    cluster.sql("SELECT pg_reload_conf()")
    for batch in range(3):
        cluster.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
        cluster.sql("SELECT pg_switch_wal()")
    ready = _ready(cluster)
    assert len(ready) >= 3, ready
    receipts = Path(cluster.datadir) / "pg_wal" / ".insite-wal-pushed"

    def push(source: str, name: str, *extra: str, config=config):
        return as_postgres([CONSOLE, "-c", str(config), "wal-push", source, f"pg_wal/{name}", *extra],
                           cwd=cluster.datadir, capture_output=True, text=True, timeout=120)

    first = push("db", ready[0], "--parallel", "2")
    assert first.returncode == 0, first.stderr
    ahead = ready[1:3]
    assert sorted(p.name for p in receipts.iterdir()) == ahead

    other = wsdir / "repo2" / "sealed" / "wal" / "db2" / ahead[0]
    assert not other.exists()
    to_db2 = push("db2", ahead[0])
    assert to_db2.returncode == 0, to_db2.stderr
    assert other.exists(), "a receipt for source db answered a push to source db2: the segment is not in its archive"
    # db's receipt still answers db (without the repository: the passphrase is unreadable)
    os.chmod(wsdir / "passphrase", 0)
    try:
        answered = push("db", ahead[0])
        assert answered.returncode == 0, answered.stderr
        assert not (receipts / ahead[0]).exists()
    finally:
        os.chmod(wsdir / "passphrase", 0o600)

    missing = push("db", ahead[1], config="/nonexistent/config.toml")
    assert missing.returncode != 0 and "config file not found" in missing.stderr, missing.stderr
    assert (receipts / ahead[1]).exists()
