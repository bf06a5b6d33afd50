"""The real terminal path: the installed `insite-console` in tmux, driven with keys, as an
operator over SSH would. Skipped (with the reason) where tmux is not installed."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.tui.conftest import SLOW_CHUNKS

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

CONSOLE = Path(sys.executable).with_name("insite-console")


class Tmux:
    def __init__(self, tmp_path: Path):
        self.socket = f"insite-test-{uuid.uuid4().hex[:8]}"
        self.tmp_path = tmp_path

    def tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        if check and result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr}")
        return result.stdout

    def start(self, command: str, width: int = 120, height: int = 40) -> None:
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), command)
        # without a client some tmux versions fall back to 80x24: make the size explicit
        self.tmux("resize-window", "-x", str(width), "-y", str(height), check=False)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", check=False)

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", key)
            time.sleep(0.15)

    def wait_for(self, predicate, timeout: float = 30, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def demo(tmp_path):
    root = tmp_path / "demo"
    result = subprocess.run([str(CONSOLE), "demo", "--dir", str(root), "--no-tui"], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        pytest.fail(f"insite-console demo failed: {result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def tmux(tmp_path):
    session = Tmux(tmp_path)
    yield session
    session.kill()


def _command(config: Path, env: dict[str, str] | None = None) -> str:
    exports = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    # TERM comes from tmux itself; the console never changes it.
    # COLUMNS/LINES (left behind by other tests) would override the pane's real size
    return f"cd {config.parent} && env -u COLUMNS -u LINES {exports} {CONSOLE} -c {config}"


def test_backup_from_the_keyboard_succeeds_in_a_real_terminal(demo, tmux):
    tmux.start(_command(demo))
    tmux.wait_for(lambda s: "Policy health" in s and "app_files" in s, what="the dashboard")
    tmux.keys("b")
    tmux.wait_for(lambda s: "backup of app_files started" in s, what="the start toast")
    tmux.keys("3")
    tmux.wait_for(lambda s: "✓ backup of app_files succeeded" in s, timeout=60, what="the success toast")
    screen = tmux.wait_for(lambda s: any("✓ ok" in line and "· console" in line
                                         for line in s.splitlines()), timeout=10, what="the job in Live jobs")
    assert "Running and recent jobs" in screen
    tmux.keys("q")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tmux.tmux("has-session", check=False) and "Jobs" in tmux.screen():
        time.sleep(0.2)
    with sqlite3.connect(demo.parent / "state/catalog.sqlite") as db:
        status = db.execute("SELECT status FROM backups ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    assert status == "succeeded"


def test_a_backup_started_from_the_console_survives_the_terminal_closing(demo, tmux, tmp_path):
    """SIGHUP (a dropped SSH session, a closed terminal): the detached job runs to completion."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_CHUNKS)
    sample = demo.parent / "sample/app/new"
    sample.mkdir()
    for i in range(12):
        (sample / f"file-{i}.bin").write_bytes(os.urandom(20_000))
    tmux.start(_command(demo, {"PYTHONPATH": str(hooks), "INSITE_TEST_SLOW_CHUNK": "0.5"}))
    tmux.wait_for(lambda s: "Policy health" in s, what="the dashboard")
    tmux.keys("b")
    tmux.wait_for(lambda s: "backup of app_files started" in s, what="the start toast")
    catalog = demo.parent / "state/catalog.sqlite"

    def running() -> tuple | None:
        with sqlite3.connect(catalog) as db:
            return db.execute("SELECT id, pid FROM runs WHERE status = 'running' AND kind = 'backup'").fetchone()

    deadline = time.monotonic() + 20
    row = None
    while time.monotonic() < deadline and row is None:
        row = running()
        time.sleep(0.1)
    assert row is not None, "the backup never started"
    run_id, pid = row
    tmux.kill()  # the terminal goes away: SIGHUP to the console's session
    with sqlite3.connect(catalog) as db:
        assert db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0] == "running"
    deadline = time.monotonic() + 90
    status = "running"
    while time.monotonic() < deadline and status == "running":
        with sqlite3.connect(catalog) as db:
            status = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        time.sleep(0.3)
    assert status == "succeeded"


def test_the_idle_dashboard_turns_to_breach_in_a_real_terminal(tmux, tmp_path):
    """Issue 9, misleading 1: nobody touches the keyboard after the backup, and the dashboard
    still turns from ✓ ok to ✗ RPO breach, with its notification."""
    from tests.tui.conftest import PASSPHRASE, make_workspace

    ws = make_workspace(tmp_path / "ws", backups=False)
    ws.close()
    config = tmp_path / "ws" / "config.toml"
    config.write_text(config.read_text().replace('rpo = "1h"', 'rpo = "10s"', 1))
    env = {"INSITE_PASSPHRASE": PASSPHRASE}
    tmux.start(_command(config, env))
    tmux.wait_for(lambda s: "Policy health" in s and "app_files" in s, what="the dashboard")
    backup = subprocess.run([str(CONSOLE), "-c", str(config), "backup", "app_files", "--json"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert backup.returncode == 0, backup.stderr

    def row(screen: str) -> str:
        return next((line for line in screen.splitlines() if " app_files " in line), "")

    tmux.wait_for(lambda s: "✓ ok" in row(s), timeout=10, what="app_files ✓ ok after the backup")
    screen = tmux.wait_for(lambda s: "✗ RPO breach" in row(s), timeout=20, what="the breach, with no key pressed")
    assert "/ 10s" in row(screen)
    tmux.wait_for(lambda s: "RPO breach: policy app_files" in s, timeout=5, what="the breach notification")
