"""Base backups checked like pgBackRest checks them: a restored PGDATA is verified with
pg_verifybackup against its backup_manifest before anything starts on it, and a page checksum
failure during a base backup is a warning on a complete, marked backup (not a failed one).

One real PostgreSQL 15 cluster with data checksums archives through the worktree's `wal-push`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.pg_servers import BINDIR, PG_USER, as_postgres, free_port
from tests.test_postgresql import archiving_cluster, run_as_postgres

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(240)]  # noqa: F405


def _enable_checksums(cluster) -> None:
    result = as_postgres([os.path.join(BINDIR, "pg_checksums"), "--enable", "--no-sync", "-D", cluster.datadir],
                         capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def checked(pg_factory):
    wsdir = Path(pg_factory.make_dir("bbchecks"))
    cluster, config = archiving_cluster(pg_factory, wsdir, prepare=_enable_checksums)
    assert cluster.sql("SHOW data_checksums") == [("on",)]
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)")
    cluster.sql("INSERT INTO t SELECT generate_series(1, 500)")
    base = json.loads(run_as_postgres(config, "backup", "db", "--json").stdout)
    assert base["status"] == "succeeded" and not base["warnings"]
    return {"cluster": cluster, "config": config, "wsdir": wsdir, "base": base}


def test_restored_base_backup_is_verified_with_pg_verifybackup(checked, pg_factory, monkeypatch):
    """A restore runs pg_verifybackup over the extracted PGDATA and says so; a file that differs
    from the manifest (here PG_VERSION, changed after extraction as a bad disk would) fails the
    restore naming pg_verifybackup and the file, and leaves nothing behind. Before, the restore
    went on to recovery with whatever was on disk."""
    target = Path(pg_factory.make_dir(f"bbchecks-ok-{free_port()}"))
    done = json.loads(run_as_postgres(checked["config"], "restore", checked["base"]["id"], "--target", str(target),
                                      "--json").stdout)
    assert done["status"] == "succeeded"
    assert done["details"]["verified"].startswith("verified with pg_verifybackup against its backup_manifest")

    from insite_console import restore
    from insite_console.errors import SourceError
    from insite_console.sources import pg_restore_physical
    from insite_console.workspace import Workspace

    real_extract = pg_restore_physical._extract_tar

    def extract_then_damage(ctx, entry, where, **kwargs):
        counts = real_extract(ctx, entry, where, **kwargs)
        Path(where, "PG_VERSION").write_text("14\n")
        return counts

    monkeypatch.setattr(pg_restore_physical, "_extract_tar", extract_then_damage)
    target = Path(pg_factory.make_dir(f"bbchecks-bad-{free_port()}"))
    ws = Workspace.load(checked["config"])
    try:
        with pytest.raises(SourceError) as failed:
            restore.run(ws, checked["base"]["id"], str(target))
    finally:
        ws.close()
        for path in (checked["wsdir"] / "state").iterdir():  # this process ran as root
            os.chown(path, PG_USER.pw_uid, PG_USER.pw_gid)
    assert "pg_verifybackup" in str(failed.value) and 'checksum mismatch for file "PG_VERSION"' in str(failed.value)
    assert os.listdir(target) == []


def test_page_checksum_failure_is_a_warning_on_a_complete_backup(checked, pg_factory):
    """One flipped byte in a table's page: pg_basebackup exits 1 after sending the whole backup.
    The backup completes, warns naming the file and block, and records them in source_info;
    its restore passes pg_verifybackup and repeats the warning. Before, the backup failed."""
    cluster, config = checked["cluster"], checked["config"]
    cluster.sql("CREATE TABLE damaged (id int, pad text)")
    cluster.sql("INSERT INTO damaged SELECT g, repeat('x', 100) FROM generate_series(1, 200) g")
    cluster.sql("CHECKPOINT")
    relpath = cluster.sql("SELECT pg_relation_filepath('damaged')")[0][0]
    cluster.stop()
    with open(os.path.join(cluster.datadir, relpath), "r+b") as handle:
        handle.seek(4000)
        byte = handle.read(1)
        handle.seek(4000)
        handle.write(bytes([byte[0] ^ 0x01]))
    cluster.start()
    try:
        result = run_as_postgres(config, "backup", "db", "--json")
        backup = json.loads(result.stdout)
        assert backup["status"] == "succeeded"
        [warning] = [w for w in backup["warnings"] if "page checksum failure" in w]
        assert f"{relpath} block 0" in warning and "damaged" in warning
        from insite_console.workspace import Workspace

        ws = Workspace.load(config)
        try:
            info = ws.catalog.backup(backup["id"])["info"]["source_info"]
        finally:
            ws.close()
        assert info["page_checksum_failures"]["pages"] == [{"file": relpath, "block": 0}]
        assert info["page_checksum_failures"]["total"] == 1

        target = Path(pg_factory.make_dir(f"bbchecks-damaged-{free_port()}"))
        done = json.loads(run_as_postgres(config, "restore", backup["id"], "--target", str(target),
                                          "--json").stdout)
        assert done["status"] == "succeeded" and done["details"]["verified"].startswith("verified")
        assert any("page checksum failure" in note and relpath in note for note in done["notes"])
    finally:
        cluster.sql("DROP TABLE damaged")


def test_delta_restore_writes_only_what_differs(checked, pg_factory):
    """A PGDATA restored once, then damaged (a flipped byte, a truncated file, a deleted one,
    junk added): `--delta` over it compares every file with the base backup byte for byte,
    rewrites only those that differ, removes what the backup does not hold (the old pg_wal is
    moved aside, not removed), passes
    pg_verifybackup and recovers. It refuses a running server and a directory that is no PGDATA."""
    config, cluster = checked["config"], checked["cluster"]
    base = checked["base"]["id"]
    target = Path(pg_factory.make_dir(f"bbchecks-delta-{free_port()}"))
    first = json.loads(run_as_postgres(config, "restore", base, "--target", str(target), "--json").stdout)
    assert first["status"] == "succeeded"
    relpath = cluster.sql("SELECT pg_relation_filepath('t')")[0][0]
    with open(target / relpath, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0x10]))
    (target / "global" / "pg_filenode.map").unlink()
    with open(target / "pg_hba.conf", "r+") as handle:
        handle.truncate(10)
    (target / "junk.txt").write_text("not from the backup\n")
    (target / "pg_wal" / "000000010000000000000099").write_bytes(b"\0" * 1024)

    port = free_port()
    result = run_as_postgres(config, "restore", base, "--target", str(target), "--delta", "--start-port", str(port),
                             "--json", check=False)
    restored = pg_factory.adopt(type(cluster)(datadir=str(target), port=port, sockdir=str(target),
                                              log=str(target) + ".insite-recovery.log"))
    assert result.returncode == 0, (result.stdout, result.stderr)
    done = json.loads(result.stdout)
    delta = done["details"]["delta"]
    # the three damaged files and postgresql.auto.conf (it held the first restore's settings)
    assert delta["files_written"] == 4, delta
    assert delta["files_unchanged"] > 500 and delta["removed"] == 2  # junk.txt, recovery.signal
    assert done["bytes_written"] == delta["bytes_written"] < delta["bytes_unchanged"] / 10
    assert done["details"]["verified"].startswith("verified with pg_verifybackup")
    assert not (target / "junk.txt").exists() and not (target / "pg_wal" / "000000010000000000000099").exists()
    aside = Path(delta["old_wal"])  # the old pg_wal is moved aside, never deleted
    assert aside.parent == target and (aside / "000000010000000000000099").read_bytes() == b"\0" * 1024
    assert any(str(aside) in note for note in done["notes"])
    assert done["recovery"]["state"] == "promoted"
    assert restored.sql("SELECT count(*) FROM t") == [(500,)]

    refused = run_as_postgres(config, "restore", base, "--target", str(target), "--delta", check=False)
    assert refused.returncode == 1 and "a server is running on" in refused.stderr, refused.stderr
    restored.stop()
    other = Path(pg_factory.make_dir(f"bbchecks-notpg-{free_port()}"))
    (other / "notes.txt").write_text("x")
    refused = run_as_postgres(config, "restore", base, "--target", str(other), "--delta", check=False)
    assert refused.returncode == 1 and "is not a PostgreSQL data directory" in refused.stderr, refused.stderr
    assert (other / "notes.txt").exists()


def test_laid_out_pgdata_is_flushed_to_disk_before_the_restore_is_done(checked, pg_factory):
    """A physical restore without --start-port says `succeeded` once PGDATA is laid out; a crash
    right after must not find files still in the page cache (pgBackRest fsyncs what it
    restores). Traced with strace: a syncfs of the restored PGDATA, after its last file is
    written. Before, nothing flushed it (only the file-tree restore did)."""
    import shutil
    import subprocess

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    target = Path(pg_factory.make_dir(f"bbchecks-sync-{free_port()}"))
    trace = Path(pg_factory.make_dir("bbchecks-trace")) / "restore.strace"
    from tests.test_postgresql import CONSOLE

    command = ["strace", "-f", "-qq", "-y", "-e", "trace=syncfs,openat", "-e", "signal=none", "-o", str(trace),
               "runuser", "-u", "postgres", "--", CONSOLE, "-c", str(checked["config"]), "restore",
               checked["base"]["id"], "--target", str(target), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    lines = trace.read_text().splitlines()
    synced = [n for n, line in enumerate(lines) if "syncfs(" in line and f"<{target}>" in line and "= 0" in line]
    assert synced, "no syncfs of the restored PGDATA"
    wrote = [n for n, line in enumerate(lines) if "openat(" in line and str(target) in line and "O_CREAT" in line
             and "= -1" not in line]
    assert wrote and max(wrote) < synced[-1], "a file was created in PGDATA after the flush"
