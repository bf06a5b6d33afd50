"""Scratch targets for drill restores: a folder for files, a scratch database for logical
PostgreSQL (on the source's server or `[dr] scratch_postgres`), a restored PGDATA started on
a free port for physical PostgreSQL, a `redis-server` on a free port for Redis. Each is torn
down by `close()` (dropped, stopped by its own pid, removed), also when a step fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from insite_console import restore
from insite_console.errors import InsiteError


class Impossible(InsiteError):
    """The step cannot be carried out here (no redis-server, no scratch server): not a pass."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scratch:
    """One restored copy: `kind` files|postgresql|redis, `where` its folder, DSN or URL."""

    def __init__(self, kind: str, where: str, folder: Path | None = None):
        self.kind, self.where, self.folder = kind, where, folder
        self.result: dict[str, Any] = {}
        self.replayed_wal = False  # a physical restore: WAL replayed past the base backup
        self._cleanups: list = []

    def on_close(self, action) -> None:
        self._cleanups.append(action)

    def close(self) -> list[str]:
        """Tear down; returns what could not be cleaned up (so the drill can say so)."""
        problems = []
        for action in reversed(self._cleanups):
            try:
                action()
            except Exception as exc:  # a cleanup failure must not hide the others
                problems.append(f"{self.kind} scratch {self.where}: {exc}")
        self._cleanups.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        return problems


def restore_into_scratch(ws, backup: dict, folder: Path, storage: str | None, cancel) -> Scratch:
    """Restore `backup` into a fresh scratch target under `folder`; the caller closes it."""
    source_type = backup["source_type"]
    settings = ws.config.sources.get(backup["source"], {})
    if source_type == "postgresql" and settings.get("mode", "logical") == "physical":
        return _physical(ws, backup, folder, storage, cancel)
    if source_type == "postgresql":
        return _logical(ws, backup, settings, storage, cancel)
    if source_type == "redis":
        return _redis(ws, backup, folder, storage, cancel)
    scratch = Scratch("files", str(folder), folder)
    try:
        scratch.result = restore.run(ws, backup["id"], str(folder), cancel=cancel, storage=storage)
    except BaseException:
        scratch.close()
        raise
    return scratch


def _logical(ws, backup: dict, settings: dict, storage: str | None, cancel) -> Scratch:
    from insite_console.sources.pg_client import PgTarget

    server = PgTarget(ws.config.dr.get("scratch_postgres") or settings["dsn"], settings.get("password_env"))
    name = f"insite_drill_{backup['id'][:12].lower()}_{os.getpid()}"
    try:
        with server.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        raise Impossible(f"cannot create a scratch database on {server.describe()}: {server.explain(str(exc))}"
                         " (set [dr] scratch_postgres to a server where the drill may create one)") from None
    dsn = server.conninfo(dbname=name)
    scratch = Scratch("postgresql", f"{server.describe()} database {name}")
    scratch.connect = lambda: server.connect(dbname=name)

    def drop() -> None:
        with server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    scratch.on_close(drop)
    try:
        # the scratch database is on the server just logged in to with the source's password_env
        scratch.result = restore.run(ws, backup["id"], dsn, cancel=cancel, storage=storage,
                                     options={"target_password_env": settings.get("password_env")})
    except BaseException:
        scratch.close()
        raise
    return scratch


def _physical(ws, backup: dict, folder: Path, storage: str | None, cancel) -> Scratch:
    from insite_console.sources.pg_restore_physical import _superuser
    from insite_console.sources.pg_client import PgTarget, pg_tool

    port = free_port()
    pgdata = folder / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Scratch("postgresql", f"scratch PGDATA {pgdata} on 127.0.0.1:{port}", folder)

    def stop() -> None:
        if (pgdata / "postmaster.pid").exists():
            owner = pgdata.stat()
            args = [pg_tool("pg_ctl", ws.config.sources.get(backup["source"])), "-D", str(pgdata), "-m", "fast",
                    "-w", "stop"]
            if os.geteuid() == 0 and owner.st_uid != 0:
                import pwd

                args = ["runuser", "-u", pwd.getpwuid(owner.st_uid).pw_name, "--"] + args
            subprocess.run(args, capture_output=True, timeout=120, check=False)

    scratch.on_close(stop)
    try:
        scratch.result = restore.run(ws, backup["id"], str(pgdata), cancel=cancel, storage=storage,
                                     options={"start_port": port})
        scratch.replayed_wal = True
        local = PgTarget(f"host=127.0.0.1 port={port} dbname=postgres user={_superuser(str(pgdata))}")
        scratch.connect = local.connect
    except BaseException:
        scratch.close()
        raise
    return scratch


def _redis(ws, backup: dict, folder: Path, storage: str | None, cancel) -> Scratch:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Impossible("redis-server is not installed: the drill cannot start a scratch Redis to restore into")
    scratch = Scratch("redis", str(folder), folder)
    try:
        scratch.result = restore.run(ws, backup["id"], str(folder), cancel=cancel, storage=storage)
        port = free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                 "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no",
                                 "--logfile", str(folder / "redis.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        scratch.on_close(stop)
        scratch.url = f"redis://127.0.0.1:{port}/0"
        scratch.where = f"scratch redis-server on 127.0.0.1:{port}"
        _wait_for_redis(port, proc, folder / "redis.log")
    except BaseException:
        scratch.close()
        raise
    return scratch


def _wait_for_redis(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """Until the server has loaded the RDB file and answers PING."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise InsiteError(f"the scratch redis-server exited with status {proc.returncode} (it could not load "
                              f"the restored RDB file?): {tail.strip()}")
        try:
            if client.ping():
                return
        except (redis.ConnectionError, redis.BusyLoadingError):
            time.sleep(0.05)
    raise InsiteError(f"the scratch redis-server on port {port} did not answer within {timeout:.0f}s")
