"""Fixtures for the console's tests: real workspaces (real repository, real backups), made
deterministic where a snapshot needs it (fixed clock, ids, hostname, free space)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

PASSPHRASE = "console-test-passphrase"
FIXED_NOW = "2026-11-27T09:30:00Z"
SNAPSHOT_ROOT = Path("/tmp/insite-console-tui-snapshots")
# For child processes (detached jobs): a sitecustomize that slows every stored chunk (and with
# INSITE_TEST_SLOW_READ every chunk read), so a test can act on a job while it runs.
SLOW_CHUNKS = '''
import os
if os.environ.get("INSITE_TEST_SLOW_CHUNK"):
    import time
    from insite_console.repo.repository import Repository
    _original = Repository._store_chunk
    def _slow(self, *args, **kwargs):
        time.sleep(float(os.environ["INSITE_TEST_SLOW_CHUNK"]))
        return _original(self, *args, **kwargs)
    Repository._store_chunk = _slow
if os.environ.get("INSITE_TEST_SLOW_READ"):  # restores: every chunk read delayed
    import time
    from insite_console.repo.repository import Repository
    _read = Repository.read_blob
    def _slow_read(self, *args, **kwargs):
        time.sleep(float(os.environ["INSITE_TEST_SLOW_READ"]))
        return _read(self, *args, **kwargs)
    Repository.read_blob = _slow_read
'''

CONFIG = """
[catalog]
path = "state/catalog.sqlite"

[encryption]
passphrase_env = "INSITE_PASSPHRASE"

[console]
refresh_seconds = 1

[storage.local]
type = "local"
path = "backups"

[source.app_files]
type = "files"
paths = ["data/app"]
exclude = ["*.tmp"]

[source.etc]
type = "files"
paths = ["data/etc"]

[policy.app_files]
source = "app_files"
storage = "local"
schedule = "0 * * * *"
type = "incremental"
rpo = "1h"

[policy.etc]
source = "etc"
storage = "local"
schedule = "30 2 * * *"
type = "full"
rpo = "1d"
"""


def write_tree(root: Path) -> None:
    app = root / "data" / "app"
    for folder in ("src", "src/reports", "static", "logs"):
        (app / folder).mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (app / "src" / f"module_{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * (20 + i))
    for i in range(3):
        (app / "src/reports" / f"report_{i}.csv").write_text("day,value\n" + "".join(f"{d},{d * i}\n" for d in range(200)))
    (app / "static" / "logo.bin").write_bytes(bytes(range(256)) * 300)
    (app / "logs" / "app.log").write_text("boot\n" * 50)
    (app / "logs" / "scratch.tmp").write_text("excluded\n")
    etc = root / "data" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "app.toml").write_text("[server]\nport = 8080\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    for path in sorted(root.joinpath("data").rglob("*")):
        os.utime(path, (1_764_000_000, 1_764_000_000), follow_symlinks=False)


def make_workspace(root: Path, backups: bool = True):
    from insite_console import backup
    from insite_console.workspace import Workspace

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(CONFIG)
    write_tree(root)
    ws = Workspace.load(root / "config.toml")
    ws.init_repository("local")
    if backups:
        backup.run(ws, "app_files", "full")
        backup.run(ws, "etc", "full")
    return ws


@pytest.fixture(autouse=True)
def _console_env(monkeypatch):
    monkeypatch.setenv("INSITE_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("INSITE_FAKE_NOW", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def console_workspace(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture
def make_app(console_workspace):
    """An app over the test workspace; jobs run in thread workers (fast and deterministic)."""
    from insite_console.tui.app import InsiteApp

    def make(**options):
        options.setdefault("detach_jobs", False)
        options.setdefault("theme", "insite-dark")
        options.setdefault("poll_seconds", 0.2)
        return InsiteApp(console_workspace, **options)

    return make


def _fixed_environment(monkeypatch) -> None:
    from insite_console import clock, who
    from insite_console.tui import model

    counter = itertools.count(1)
    monkeypatch.setenv("INSITE_FAKE_NOW", FIXED_NOW)
    monkeypatch.setenv("TZ", "UTC")  # the wizard shows the local zone
    monkeypatch.setattr(clock, "new_id", lambda: f"{next(counter):04x}5eed{next(counter) * 7919:08x}")
    monkeypatch.setattr(socket, "gethostname", lambda: "bastion-1")
    monkeypatch.setattr(who, "user", lambda: "operator")
    monkeypatch.setattr(model, "HOST", "bastion-1")
    monkeypatch.setattr(model.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(100 << 30, 60 << 30, 40 << 30))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Snapshot workspaces live at one fixed path (it shows on screen): under pytest-xdist,
    every test using one runs on the same worker (`--dist loadgroup`). First, before xdist
    reads the marks: run as `pytest tests/tui` this conftest came after it, and two workers
    shared the path."""
    for item in items:
        if "snapshot_workspace" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tui-snapshots"))


@pytest.fixture
def snapshot_workspace(monkeypatch):
    """A workspace at a fixed path with fixed clock, ids and host, so snapshots are stable:
    two policies, a few backups, a failed one, a verification and a job still running."""
    from insite_console import backup, verify
    from insite_console.sources import files as files_source

    _fixed_environment(monkeypatch)
    # the tree is written just before its backups: within the racy window every file would be
    # read again, and the screens would not show an incremental's reuse
    monkeypatch.setattr(files_source, "RACY_NS", 0)
    root = SNAPSHOT_ROOT / "ws"
    shutil.rmtree(SNAPSHOT_ROOT, ignore_errors=True)
    ws = make_workspace(root, backups=False)
    times = iter(["2026-11-27T06:00:00Z", "2026-11-27T07:00:00Z", "2026-11-27T08:00:00Z",
                  "2026-11-26T02:30:00Z", "2026-11-27T09:00:00Z", "2026-11-27T09:10:00Z"])

    def at(text):
        monkeypatch.setenv("INSITE_FAKE_NOW", text)

    at(next(times))
    backup.run(ws, "app_files", "full")
    at(next(times))
    (root / "data/app/logs/app.log").write_text("boot\n" * 60)
    os.utime(root / "data/app/logs/app.log", (1_764_000_100, 1_764_000_100))
    backup.run(ws, "app_files")
    at(next(times))
    backup.run(ws, "app_files")
    at(next(times))
    first_etc = backup.run(ws, "etc")
    at(next(times))
    verify.run(ws, first_etc["id"])
    # Encrypted pack sizes vary by a few bytes from run to run: pin what the screens show.
    db = ws.catalog.db
    db.execute("UPDATE backups SET bytes_stored = 4096")
    for row in db.execute("SELECT id, message FROM events").fetchall():
        db.execute("UPDATE events SET message = ? WHERE id = ?",
                   (re.sub(r"\d+ stored", "4096 stored", row["message"]), row["id"]))
    # a failed run, as a killed process leaves it
    at(next(times))
    catalog = ws.catalog
    catalog.start_run("00000000000000f1", "backup", "app_files")
    catalog.insert_backup({"id": "00000000000000f1", "policy": "app_files", "source": "app_files",
                           "source_type": "files", "storage": "local", "type": "incremental", "status": "failed",
                           "started_at": "2026-11-27T09:10:00Z", "finished_at": "2026-11-27T09:10:05Z",
                           "error": "local: cannot write data/5e/5e3f…: No space left on device",
                           "run_id": "00000000000000f1"})
    catalog.finish_run("00000000000000f1", "failed", "local: cannot write data/5e/5e3f…: No space left on device")
    catalog.event("00000000000000f1", "backup 00000000000000f1 failed: No space left on device", level="error")
    # a job of another process, still running (pid: our parent, which is alive)
    at(FIXED_NOW)
    catalog.start_run("00000000000000e1", "backup", "etc")
    from insite_console.process import start_ticks

    catalog.db.execute("UPDATE runs SET pid = ?, process_start = ?, phase = 'reading', bytes_done = 4194304, "
                       "bytes_total = 10485760, files_done = 120, files_total = 300, "
                       "current = '/srv/etc/nginx/nginx.conf' WHERE id = ?",
                       (os.getppid(), start_ticks(os.getppid()), "00000000000000e1"))
    yield ws
    ws.close()
