"""The PostgreSQL client side that backups, restores and the WAL archive share: the
connection target (DSN and password, never in argv), secrets scrubbed from messages, the
client tools and how they are run, LSNs and WAL file names. It imports no other PostgreSQL
module, so postgresql.py, pg_restore_logical.py, pg_restore_physical.py and wal.py all
depend on it and not on each other."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

from insite_console.errors import InsiteError, SourceError, UsageError

CONNECT_TIMEOUT = 10


# --- connection settings, secrets, tools ----------------------------------------------------------

_PW_PATTERNS = [re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I),
                re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.I)]


def scrub(text: str, secrets: list[str | None] | None = None) -> str:
    """Remove passwords from a message: password=..., user:pass@ in URLs, and known secrets."""
    for secret in secrets or []:
        if secret:
            text = text.replace(secret, "***")
    text = _PW_PATTERNS[0].sub(lambda m: m.group(1) + "***", text)
    text = _PW_PATTERNS[1].sub(lambda m: m.group(1) + "***" + m.group(3), text)
    return text


class PgTarget:
    """A DSN split into the password (kept for the environment) and everything else."""

    def __init__(self, dsn: str, password_env: str | None = None):
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(dsn)
        except Exception as exc:
            raise UsageError(f"not a valid PostgreSQL DSN: {scrub(str(exc), [dsn])}") from None
        self.password = params.pop("password", None)
        if password_env:
            value = os.environ.get(password_env)
            if value is None:
                raise SourceError(f"PostgreSQL at {self._where(params)}: environment variable {password_env} "
                                  "(password_env) is not set")
            self.password = value
        self.params = {k: str(v) for k, v in params.items() if v is not None}
        self.password_env = password_env

    @staticmethod
    def _where(params: dict) -> str:
        host = params.get("host") or os.environ.get("PGHOST") or "localhost"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        return f"{host}:{port}"

    @property
    def host_port(self) -> str:
        return self._where(self.params)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or os.environ.get("PGDATABASE") or self.params.get("user") or "postgres"

    def describe(self) -> str:
        return f"{self.host_port}/{self.dbname}"

    def conninfo(self, **override: str) -> str:
        from psycopg.conninfo import make_conninfo

        params = dict(self.params)
        params.update(override)
        return make_conninfo(**params)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
        return env

    def secrets(self) -> list[str | None]:
        return [self.password]

    def connect(self, autocommit: bool = True, **override: str):
        import psycopg

        kwargs: dict[str, Any] = {"autocommit": autocommit}
        if self.password is not None:
            kwargs["password"] = self.password
        if "connect_timeout" not in self.params:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        try:
            return psycopg.connect(self.conninfo(**override), **kwargs)
        except psycopg.OperationalError as exc:
            raise SourceError(self.explain(str(exc))) from None

    def explain(self, message: str) -> str:
        """A connection failure as one clear line naming host and port, secrets removed."""
        text = scrub(message.strip(), self.secrets())
        where = self.host_port
        user = self.params.get("user") or os.environ.get("PGUSER") or "(default user)"
        if "password authentication failed" in text or "authentication failed" in text:
            hint = f" (password from {self.password_env})" if self.password_env else ""
            return f"PostgreSQL at {where}: password authentication failed for user {user}{hint}"
        if "no password supplied" in text or "fe_sendauth" in text:
            return (f"PostgreSQL at {where} requires a password for user {user}: set password_env, "
                    "PGPASSWORD or ~/.pgpass")
        if "Connection refused" in text or "could not connect" in text or "No such file or directory" in text:
            return f"cannot connect to PostgreSQL at {where}: connection refused (is the server running?)"
        if "timeout expired" in text:
            return f"cannot connect to PostgreSQL at {where}: timed out after {CONNECT_TIMEOUT}s"
        if "does not exist" in text and "database" in text:
            return f"PostgreSQL at {where}: database {self.dbname!r} does not exist"
        first = text.splitlines()[-1] if text else "connection failed"
        return f"PostgreSQL at {where}: {first}"


GLOBALS_FILE = "globals.sql"  # pg_dumpall --globals-only, stored beside each logical dump


def pg_tool(name: str, settings: dict | None = None) -> str:
    """Path of a PostgreSQL client tool: `pg_bin` setting, then the newest installed, then PATH."""
    configured = (settings or {}).get("pg_bin")
    if configured:
        path = os.path.join(configured, name)
        if not os.access(path, os.X_OK):
            raise SourceError(f"{name} not found in pg_bin = {configured}")
        return path
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)) if re.search(r"/(\d+)/bin/", p) else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise SourceError(f"{name} is not installed (install the PostgreSQL client tools or set pg_bin)")


def exit_text(tool: str, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"{tool} was killed by signal {-code} ({name})"
    return f"{tool} exited with status {code}"


def tail_text(handle, secrets: list, limit: int = 1500) -> str:
    try:
        handle.seek(0)
        text = handle.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    text = scrub(text.strip(), secrets)
    return text[-limit:]


# --- LSNs and WAL file names ----------------------------------------------------------------------

def parse_lsn(text: str) -> int:
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, lsn: int, seg_size: int, end: bool = False) -> str:
    """The segment holding `lsn` (with end=True: holding the byte just before it)."""
    segno = (lsn - 1 if end and lsn > 0 else lsn) // seg_size
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_wal_name(name: str, seg_size: int) -> tuple[int, int]:
    """'000000010000000000000003' -> (timeline, segment number)."""
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:24], 16)


def segment_name(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


# --- running the tools -----------------------------------------------------------------------------

def wait_or_cancel(proc: subprocess.Popen, cancel) -> None:
    """Wait for a tool; if the operator cancels (or anything interrupts), kill it first."""
    try:
        while proc.poll() is None:
            if cancel.cancelled:
                stop_tool(proc)
                cancel.check()
            time.sleep(0.05)
    except BaseException:
        stop_tool(proc)
        raise


def stop_tool(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


def source_settings(ctx) -> dict:
    name = ctx.manifest.get("source")
    try:
        return dict(ctx.ws.config.sources.get(name) or {})
    except AttributeError:
        return {}


def _pump(ctx, entry, sink, on_error: list) -> None:
    """Copy a stored entry into a pipe (thread body); stop quietly when the reader goes away."""
    try:
        with ctx.open_entry(entry) as source:
            while True:
                if ctx.cancel.cancelled:
                    break
                block = source.read(1 << 20)
                if not block:
                    break
                sink.write(block)
                ctx.reporter.advance(bytes_done=len(block))
    except (BrokenPipeError, ValueError):
        pass
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        on_error.append(exc)
    finally:
        try:
            sink.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


def run_tool(ctx, args: list[str], env: dict, secrets: list, what: str, feed=None) -> str:
    """Run a pg tool, with the stored entry `feed` on its stdin if given; return its stdout;
    raise a SourceError (stderr's tail, secrets scrubbed) on failure or cancel."""
    stderr = tempfile.TemporaryFile()
    stdout = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, env=env)
    except OSError as exc:
        raise SourceError(f"cannot run {args[0]}: {exc.strerror}") from None
    errors: list = []
    feeder = None
    if feed is not None:
        feeder = threading.Thread(target=_pump, args=(ctx, feed, proc.stdin, errors), daemon=True)
        feeder.start()
    wait_or_cancel(proc, ctx.cancel)
    if feeder is not None:
        feeder.join(60)
    if errors:
        raise errors[0] if isinstance(errors[0], InsiteError) else SourceError(f"{what}: {errors[0]}")
    if proc.returncode != 0:
        raise SourceError(f"{what} failed: {exit_text(os.path.basename(args[0]), proc.returncode)}: "
                          f"{tail_text(stderr, secrets)}")
    stdout.seek(0)
    text = stdout.read().decode("utf-8", "replace")
    stderr.close()
    stdout.close()
    return text
