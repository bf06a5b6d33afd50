"""A logical PostgreSQL restore sends the target server its own password, from the variable
named by `--target-password-env` (as for Redis), never the source's password_env, and the
password appears in no argv, output or catalog row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pg_servers import *  # noqa: F401,F403
from tests.test_postgresql import new_db, pg_config

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405

TARGET_SECRET = "target-secret-7f3a"


def _children_argv(pid: int) -> list[bytes]:
    seen = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    seen.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except (OSError, IndexError, ValueError):
                continue
    return seen


def test_target_password_from_its_own_variable(pg_cluster, tmp_path):
    pg_cluster.sql("DROP ROLE IF EXISTS tgtuser")
    pg_cluster.sql(f"CREATE ROLE tgtuser LOGIN SUPERUSER PASSWORD '{TARGET_SECRET}'")
    hba = Path(pg_cluster.datadir) / "pg_hba.conf"
    if "tgtuser" not in hba.read_text():
        hba.write_text("host all tgtuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        pg_cluster.sql("SELECT pg_reload_conf()")
        time.sleep(0.3)
    source = new_db(pg_cluster, "pwsrc")
    pg_cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100000) g", dbname=source)
    (tmp_path / "passphrase").write_text("target password passphrase\n")
    config = pg_config(tmp_path, pg_cluster.dsn_for(source), passphrase=str(tmp_path / "passphrase"),
                       extra='password_env = "SRC_PW"\n')
    env = {**os.environ, "SRC_PW": TARGET_SECRET, "TGT_PW": TARGET_SECRET}
    env.pop("PGPASSWORD", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    assert cli("init").returncode == 0
    backed = json.loads(cli("backup", "db", "--json").stdout)
    assert backed["status"] == "succeeded"
    target = f"postgresql://tgtuser@127.0.0.1:{pg_cluster.port}/{new_db(pg_cluster, 'pwdst')}"

    # the source's variable holds the right password, but it is not sent to a target: refused,
    # naming the option (before, it was borrowed silently)
    refused = cli("restore", backed["id"], "--target", target)
    assert refused.returncode == 1, refused.stdout
    assert "requires a password for user tgtuser" in refused.stderr
    assert "--target-password-env SRC_PW" in refused.stderr

    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(config), "restore", backed["id"],
                             "--target", target, "--target-password-env", "TGT_PW", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    argvs: list[bytes] = []
    while proc.poll() is None:
        argvs += _children_argv(proc.pid)
        time.sleep(0.005)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["status"] == "succeeded"
    assert pg_cluster.sql("SELECT count(*) FROM t", dbname=target.rsplit("/", 1)[1]) == [(100000,)]
    assert any(b"pg_restore" in argv for argv in argvs), argvs  # the check could have failed
    for argv in argvs:
        assert TARGET_SECRET.encode() not in argv, argv
    assert TARGET_SECRET not in (stdout + stderr).decode()
    assert TARGET_SECRET.encode() not in (tmp_path / "state" / "catalog.sqlite").read_bytes()

    wrong = cli("restore", backed["id"], "--target", target, "--target-password-env", "NOT_SET_ANYWHERE")
    assert wrong.returncode == 1 and "NOT_SET_ANYWHERE" in wrong.stderr and "is not set" in wrong.stderr
