"""Secrets: the repository passphrase and a PostgreSQL password (from password_env) never
appear in any file a run writes (catalog SQLite and its WAL, index cache, repository), in the
events, the --json output or stderr, in the argv of any child process while a backup runs
(/proc/PID/cmdline of every descendant, pg_dump included), or on the console's screens."""

from __future__ import annotations

import html
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from tests.pg_servers import *  # noqa: F401,F403
from tests.test_postgresql import pg_config

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405

DB_PASSWORD = "s3cret-dsn-pw-4711"
SECRETS = (PASSPHRASE, DB_PASSWORD)


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def _assert_no_secret(where: str, data: bytes | str) -> None:
    raw = data.encode(errors="surrogateescape") if isinstance(data, str) else data
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} found in {where}"


@pytest.fixture
def pg_with_password(pg_cluster, tmp_path):
    pg_cluster.sql("DROP DATABASE IF EXISTS secrets")
    pg_cluster.sql("DROP ROLE IF EXISTS secretuser")
    pg_cluster.sql(f"CREATE ROLE secretuser LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'")
    pg_cluster.sql("CREATE DATABASE secrets OWNER secretuser")
    hba = Path(pg_cluster.datadir) / "pg_hba.conf"
    if "secretuser" not in hba.read_text():
        hba.write_text("host all secretuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        pg_cluster.sql("SELECT pg_reload_conf()")
        time.sleep(0.3)
    # enough rows that pg_dump runs for a while, to be seen in /proc
    pg_cluster.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g",
                   dbname="secrets")
    config = pg_config(tmp_path, f"postgresql://secretuser@127.0.0.1:{pg_cluster.port}/secrets")
    config.write_text(config.read_text().replace('mode = "logical"\n',
                                                 'mode = "logical"\npassword_env = "DB_PASSWORD"\n'))
    os.environ["DB_PASSWORD"] = DB_PASSWORD
    try:
        subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), "init"], check=True,
                       capture_output=True)
        yield config
    finally:
        os.environ.pop("DB_PASSWORD", None)


def test_secrets_stay_out_of_files_output_argv_and_screen(pg_with_password, tmp_path, figures):
    config = pg_with_password
    proc = subprocess.Popen([sys.executable, "-m", "insite_console", "-c", str(config), "backup", "db", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    argv_seen: dict[int, bytes] = {}
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if argv:  # a zombie's is empty
                argv_seen[pid] = argv
        time.sleep(0.002)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert any(b"pg_dump" in argv for argv in argv_seen.values()), argv_seen  # the check could have failed
    for pid, argv in argv_seen.items():
        _assert_no_secret(f"argv of child {pid}: {argv!r}", argv)
    figures["child argvs checked"] = len(argv_seen)
    _assert_no_secret("backup --json output", stdout)
    _assert_no_secret("backup stderr", stderr)

    # a failing run too: wrong password, and the password variable's value in the error path
    os.environ["DB_PASSWORD"] = "wrong-" + DB_PASSWORD
    failed = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), "backup", "db", "--json"],
                            capture_output=True)
    os.environ["DB_PASSWORD"] = DB_PASSWORD
    assert failed.returncode == 1 and b"password authentication failed" in failed.stderr
    _assert_no_secret("a failed backup's output", failed.stdout + failed.stderr)
    # status exits 2 here (the last run failed: CRITICAL), the others 0
    for command, code in ((["backups", "--json"], 0), (["status", "--json"], 2),
                          (["verify", "--all", "--deep", "--json"], 0)):
        result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(config), *command],
                                capture_output=True)
        assert result.returncode == code, result.stderr
        _assert_no_secret(" ".join(command), result.stdout + result.stderr)

    files = [path for path in tmp_path.rglob("*") if path.is_file() and path != config]
    assert any(path.name == "catalog.sqlite" for path in files)
    for path in files:  # catalog and its WAL, index cache, every repository object
        _assert_no_secret(str(path), path.read_bytes())
    figures["files scanned"] = len(files)
    _assert_no_secret("config", config.read_bytes())


async def test_console_screens_show_no_secret(pg_with_password, figures):
    from insite_console import backup
    from insite_console.tui.app import InsiteApp
    from insite_console.workspace import Workspace

    ws = Workspace.load(pg_with_password)
    try:
        backup_id = backup.run(ws, "db")["id"]
        app = InsiteApp(ws, detach_jobs=False, theme="insite-dark", poll_seconds=0.2)
        async with app.run_test(size=(160, 50)) as pilot:
            for key in ("1", "2", "enter", "escape", "3", "4"):
                await pilot.press(key)
                await pilot.pause()
                screen = html.unescape(app.export_screenshot()).replace("\xa0", " ")
                if key == "2":  # the text read is the screen's: the catalog shows the backup
                    assert backup_id in screen
                _assert_no_secret(f"the console after pressing {key}", screen)
                figures["console screens checked"] += 1
    finally:
        ws.close()
