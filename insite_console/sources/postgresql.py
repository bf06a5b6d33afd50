"""PostgreSQL: logical dumps (pg_dump) and physical base backups (pg_basebackup) + WAL for PITR.

Logical (`mode = "logical"`, the default)
    `pg_dump -Fc -Z0` streams into the repository: the uncompressed custom format keeps every
    table's rows in the same byte order from one dump to the next, so the repository's
    content-defined chunking deduplicates an unchanged table across runs, and the repository
    compresses. pg_dump runs on a snapshot exported from our own REPEATABLE READ transaction,
    and the per-table row counts (the baselines) are taken in that same snapshot, so they are
    exactly what the dump holds (estimates from pg_class.reltuples for tables too large to
    count cheaply, unless `exact_counts = true`).
    With `jobs > 1`, `pg_dump -Fd -j N` writes into a local temporary directory (the directory
    format cannot go to a pipe) and each of its files is stored; the copy is removed after.
    Restore: `pg_restore` into `--target DSN`. With `jobs = 1` (default) the stored stream is
    fed to pg_restore's stdin inside one transaction (`--single-transaction`: all or nothing).
    With `jobs > 1`, pg_restore needs a seekable file for `-j`: the dump is spooled to a
    temporary file in the restoring machine's temp dir (free space is checked first, the file
    is removed afterwards) and restored with `-j N`. `--include schema.table` restores those
    tables with their data, sequences, defaults, constraints, indexes and triggers.

Physical (`mode = "physical"`)
    `pg_basebackup -D - -Ft -X none -c fast` streams a tar of PGDATA into the repository. WAL
    comes from the archive that `archive_command = 'insite-console -c CONFIG wal-push SOURCE %p'`
    fills (see insite_console/wal.py); pg_basebackup waits until the last segment the backup
    needs is archived. backup_label and backup_manifest are read from the tar stream as it
    passes, for the start/stop LSN, timeline and times.
    Restore: an EMPTY directory becomes PGDATA (safe tar extraction), with `recovery.signal`
    and settings in postgresql.auto.conf: restore_command (wal-fetch), recovery_target_time
    with an explicit UTC offset, recovery_target_action, archive_mode = off. Pre-flight checks
    come first; optionally a throwaway server is started on `start_port` and we wait for the
    recovery to finish.

Passwords come from PGPASSWORD, ~/.pgpass or the variable named by `password_env`; a password
written in the DSN is moved to the tools' environment. Never in argv, the catalog, logs or
error messages (DSNs are scrubbed).
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator

from insite_console import clock
from insite_console.errors import InsiteError, RestoreRefused, SourceError, UsageError
from insite_console.sources.base import Entry, Item, ScanContext, Source

EXACT_COUNT_MAX_BYTES = 256 * 1024 * 1024  # tables below this size are counted exactly
EXACT_COUNT_BUDGET = 60.0  # seconds spent on exact counts at most (unless exact_counts = true)
CONNECT_TIMEOUT = 10
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


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


def _exit_text(tool: str, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"{tool} was killed by signal {-code} ({name})"
    return f"{tool} exited with status {code}"


def _tail(handle, secrets: list, limit: int = 1500) -> str:
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


# --- baselines -------------------------------------------------------------------------------------

def table_counts(conn, exact: bool | None, budget: float = EXACT_COUNT_BUDGET) -> tuple[dict[str, int], dict[str, str]]:
    """Row count per table: exact when cheap (or exact=True), else pg_class.reltuples."""
    from psycopg import sql

    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.reltuples::bigint, pg_relation_size(c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2").fetchall()
    counts: dict[str, int] = {}
    kinds: dict[str, str] = {}
    deadline = time.monotonic() + budget
    for schema, name, estimate, size in rows:
        key = f"{schema}.{name}"
        cheap = size <= EXACT_COUNT_MAX_BYTES and time.monotonic() < deadline
        if exact is True or (exact is None and cheap):
            try:
                count = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name))).fetchone()[0]
                counts[key], kinds[key] = int(count), "exact"
                continue
            except Exception:
                pass  # e.g. an unpopulated materialized view, or no privilege
        counts[key], kinds[key] = max(int(estimate), 0), "estimate"
    return counts, kinds


# --- tar sniffing ----------------------------------------------------------------------------------

class TarSniffer(io.RawIOBase):
    """Pass a tar stream through unchanged while capturing a few small members by name."""

    def __init__(self, inner: BinaryIO, wanted: set[str], limit: int = 64 << 20):
        self.inner = inner
        self.wanted = wanted
        self.limit = limit
        self.captured: dict[str, bytes] = {}
        self.total = 0
        self._pending = b""  # unparsed bytes at a header boundary
        self._skip = 0  # bytes of member data (and padding) still to pass
        self._capture_name: str | None = None
        self._capture_left = 0
        self._capture_buf: list[bytes] = []
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        if not data:
            return 0
        self._parse(data)
        n = len(data)
        buffer[:n] = data
        self.total += n
        return n

    def _parse(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._ended:
            if self._skip:
                take = min(self._skip, len(view))
                if self._capture_name is not None and self._capture_left:
                    part = bytes(view[:min(take, self._capture_left)])
                    self._capture_buf.append(part)
                    self._capture_left -= len(part)
                    if not self._capture_left:
                        self.captured[self._capture_name] = b"".join(self._capture_buf)
                        self._capture_name, self._capture_buf = None, []
                self._skip -= take
                view = view[take:]
                continue
            need = 512 - len(self._pending)
            self._pending += bytes(view[:need])
            view = view[need:]
            if len(self._pending) < 512:
                return
            header, self._pending = self._pending, b""
            if header == b"\0" * 512:
                continue
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
            if prefix:
                name = prefix + "/" + name
            size_field = header[124:136]
            if size_field[0] & 0x80:
                size = int.from_bytes(size_field[1:], "big")
            else:
                text = size_field.split(b"\0", 1)[0].strip()
                size = int(text, 8) if text else 0
            self._skip = (size + 511) // 512 * 512
            if name.lstrip("./") in self.wanted and 0 < size <= self.limit:
                self._capture_name, self._capture_left, self._capture_buf = name.lstrip("./"), size, []
            elif name.lstrip("./") in self.wanted and size == 0:
                self.captured[name.lstrip("./")] = b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            out = []
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    return b"".join(out)
                out.append(chunk)
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])


def parse_backup_label(text: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        value = value.strip()
        if key == "START WAL LOCATION":
            match = re.match(r"([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", value)
            if match:
                info["start_lsn"], info["start_wal_file"] = match.group(1), match.group(2)
        elif key == "CHECKPOINT LOCATION":
            info["checkpoint_lsn"] = value
        elif key == "START TIMELINE":
            info["timeline"] = int(value)
        elif key == "START TIME":
            info["start_time_text"] = value
            match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (UTC|GMT)$", value)
            if match:
                info["start_time"] = clock.iso(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
                                               .replace(tzinfo=timezone.utc))
        elif key == "LABEL":
            info["label"] = value
        elif key == "BACKUP FROM":
            info["backup_from"] = value
    return info


# --- the source -------------------------------------------------------------------------------------

class PostgresSource(Source):
    type = "postgresql"

    def __init__(self, name: str, settings: dict[str, Any]):
        super().__init__(name, settings)
        self._meta: dict[str, Any] = {}
        self.proc: subprocess.Popen | None = None  # the running pg_dump / pg_basebackup (tests kill it)

    @property
    def mode(self) -> str:
        return self.settings.get("mode", "logical")

    def target(self) -> PgTarget:
        return PgTarget(self.settings["dsn"], self.settings.get("password_env"))

    def _server_facts(self, conn) -> dict[str, Any]:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                           "current_database(), pg_is_in_recovery()").fetchone()
        return {"server_version": row[0], "server_version_num": row[1], "database": row[2], "in_recovery": row[3]}

    def scan(self, ctx: ScanContext) -> Iterator[Item]:
        pg = self.target()
        with pg.connect() as conn:  # fail early, with a clear message, if the server is down
            facts = self._server_facts(conn)
            if self.mode == "physical":
                facts.update(self._physical_checks(conn, ctx))
        self._meta = {"mode": self.mode, "host": pg.host_port, **facts}
        now_ns = time.time_ns()
        if self.mode == "physical":
            entry = Entry(path="base.tar", type="file", mode=0o600, mtime_ns=now_ns)
            yield Item(entry=entry, open=lambda: self._open_basebackup(ctx))
        elif int(self.settings.get("jobs") or 1) > 1:
            yield from self._scan_directory_dump(ctx, facts["database"], int(self.settings["jobs"]))
        else:
            entry = Entry(path=f"{facts['database']}.pgdump", type="file", mode=0o600, mtime_ns=now_ns)
            yield Item(entry=entry, open=lambda: self._open_dump(ctx))

    def metadata(self) -> dict[str, Any]:
        cleanup = getattr(self, "_spool_cleanup", None)
        if cleanup is not None:
            cleanup()
        return dict(self._meta)

    def estimate_size(self) -> int | None:
        try:
            with self.target().connect() as conn:
                if self.mode == "physical":
                    return int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0])
                return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        except Exception:
            return None

    # ----- logical

    @contextmanager
    def _open_dump(self, ctx: ScanContext) -> Iterator[BinaryIO]:
        pg = self.target()
        conn = pg.connect()
        stderr = tempfile.TemporaryFile()
        proc = None
        try:
            snapshot = None
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            except Exception as exc:  # e.g. a standby before 10: dump without a shared snapshot
                ctx.warn(f"PostgreSQL at {pg.host_port}: cannot export a snapshot ({scrub(str(exc), pg.secrets())}); "
                         "row counts are taken outside the dump's snapshot")
                conn.execute("ROLLBACK")
            args = [pg_tool("pg_dump", self.settings), "--format=custom", "--compress=0", "--no-password",
                    "--dbname", pg.conninfo()]
            if snapshot:
                args += ["--snapshot", snapshot]
            try:
                proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=pg.env(),
                                        stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise SourceError(f"cannot run pg_dump: {exc.strerror}") from None
            self.proc = proc
            try:
                yield proc.stdout
            except BaseException:
                _kill(proc)
                raise
            # the engine read to the end: how did pg_dump finish?
            leftover = proc.stdout.read(1)
            if leftover:
                _kill(proc)
                raise SourceError(f"pg_dump of {pg.describe()}: output was not read to its end")
            code = proc.wait()
            if code != 0:
                raise SourceError(f"pg_dump of {pg.describe()} failed: {_exit_text('pg_dump', code)}"
                                  + (f": {_tail(stderr, pg.secrets())}" if _tail(stderr, pg.secrets()) else "")
                                  + " (the backup is incomplete)")
            exact = self.settings.get("exact_counts")
            if not snapshot:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            counts, kinds = table_counts(conn, True if exact else None)
            self._meta.update({"format": "custom", "baselines": counts, "baseline_kinds": kinds,
                               "baselines_in_dump_snapshot": bool(snapshot)})
            warnings = _tail(stderr, pg.secrets())
            if warnings:
                ctx.warn(f"pg_dump: {warnings[-500:]}")
        finally:
            if proc is not None and proc.poll() is None:
                _kill(proc)
            if proc is not None and proc.stdout:
                proc.stdout.close()
            stderr.close()
            try:
                conn.close()
            except Exception:
                pass
            self.proc = None

    def _scan_directory_dump(self, ctx: ScanContext, dbname: str, jobs: int) -> Iterator[Item]:
        """`jobs > 1`: `pg_dump -Fd -j N` into a local temporary directory (the directory format
        cannot go to a pipe), then every file of it as an item; the directory is removed after."""
        pg = self.target()
        conn = pg.connect()
        spool = tempfile.mkdtemp(prefix="insite-pgdump-")
        # The engine reads the files in reader threads, possibly after this generator is done:
        # the copy goes in metadata() (called once everything is read), on failure, or at exit.
        self._spool_cleanup = weakref.finalize(self, shutil.rmtree, spool, True)
        completed = False
        try:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            free = shutil.disk_usage(spool).free
            if free < size * 1.1:
                raise SourceError(f"parallel pg_dump (jobs = {jobs}) writes a temporary copy to {spool}: "
                                  f"{clock.human_bytes(free)} free for a {clock.human_bytes(size)} database; "
                                  "free space, set TMPDIR, or set jobs = 1 (streams without a copy)")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            out = os.path.join(spool, f"{dbname}.pgdir")
            stderr = tempfile.TemporaryFile()
            args = [pg_tool("pg_dump", self.settings), "--format=directory", "--compress=0", "--no-password",
                    f"--jobs={jobs}", "--snapshot", snapshot, "--file", out, "--dbname", pg.conninfo()]
            try:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                        env=pg.env())
            except OSError as exc:
                raise SourceError(f"cannot run pg_dump: {exc.strerror}") from None
            self.proc = proc
            try:
                ctx.reporter.update(phase="dumping", force=True)
                _wait_or_cancel(proc, ctx.cancel)
            finally:
                self.proc = None
            if proc.returncode != 0:
                raise SourceError(f"pg_dump of {pg.describe()} failed: {_exit_text('pg_dump', proc.returncode)}"
                                  + (f": {_tail(stderr, pg.secrets())}" if _tail(stderr, pg.secrets()) else "")
                                  + " (the backup is incomplete)")
            stderr.close()
            counts, kinds = table_counts(conn, True if self.settings.get("exact_counts") else None)
            self._meta.update({"format": "directory", "jobs": jobs, "baselines": counts, "baseline_kinds": kinds,
                               "baselines_in_dump_snapshot": True})
            conn.close()
            ctx.reporter.update(phase="reading", force=True)
            now_ns = time.time_ns()
            yield Item(entry=Entry(path=f"{dbname}.pgdir", type="dir", mode=0o700, mtime_ns=now_ns))
            for name in sorted(os.listdir(out), key=lambda n: n.encode()):
                path = os.path.join(out, name)
                entry = Entry(path=f"{dbname}.pgdir/{name}", type="file", mode=0o600, mtime_ns=now_ns,
                              size=os.path.getsize(path))
                yield Item(entry=entry, open=lambda path=path: open(path, "rb"))
            completed = True
        finally:
            try:
                conn.close()
            except Exception:
                pass
            if not completed:
                self._spool_cleanup()

    # ----- physical

    def _physical_checks(self, conn, ctx: ScanContext) -> dict[str, Any]:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'archive_command', "
            "'wal_segment_size', 'wal_level', 'archive_library')").fetchall())
        where = self.target().host_port
        if settings.get("archive_mode") == "off":
            raise SourceError(
                f"PostgreSQL at {where}: archive_mode is off; a physical backup needs WAL archiving: set "
                f"archive_mode = on and archive_command = 'insite-console -c CONFIG wal-push {self.name} %p' "
                "(then restart the server)")
        if "wal-push" not in (settings.get("archive_command") or ""):
            ctx.warn(f"PostgreSQL at {where}: archive_command does not call `insite-console wal-push {self.name}`; "
                     "point-in-time restore needs the WAL in this repository")
        sysid = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        return {"wal_segment_size": int(settings.get("wal_segment_size") or 16 * 1024 * 1024),
                "system_identifier": str(sysid), "archive_command_ok": "wal-push" in (settings.get("archive_command") or "")}

    @contextmanager
    def _open_basebackup(self, ctx: ScanContext) -> Iterator[BinaryIO]:
        pg = self.target()
        stderr = tempfile.TemporaryFile()
        started = clock.now()
        label = f"insite-console {self.name} {clock.iso(started)}"
        args = [pg_tool("pg_basebackup", self.settings), "--pgdata=-", "--format=tar", "--wal-method=none",
                "--checkpoint=fast", "--no-password", f"--label={label}", "--dbname", pg.conninfo()]
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=pg.env(),
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise SourceError(f"cannot run pg_basebackup: {exc.strerror}") from None
        self.proc = proc
        sniffer = TarSniffer(proc.stdout, {"backup_label", "backup_manifest"})
        try:
            try:
                yield io.BufferedReader(sniffer, buffer_size=1 << 20)
            except BaseException:
                _kill(proc)
                raise
            code = proc.wait()
            stopped = clock.now()
            if code != 0:
                raise SourceError(f"pg_basebackup of {pg.host_port} failed: {_exit_text('pg_basebackup', code)}"
                                  + (f": {_tail(stderr, pg.secrets())}" if _tail(stderr, pg.secrets()) else "")
                                  + " (the backup is incomplete)")
            if "backup_label" not in sniffer.captured:
                raise SourceError(f"pg_basebackup of {pg.host_port}: no backup_label in the tar stream")
            info = parse_backup_label(sniffer.captured["backup_label"].decode("utf-8", "replace"))
            info.setdefault("start_time", clock.iso(started))
            seg_size = self._meta.get("wal_segment_size", 16 * 1024 * 1024)
            stop_lsn = None
            manifest_text = sniffer.captured.get("backup_manifest")
            if manifest_text:
                try:
                    ranges = json.loads(manifest_text).get("WAL-Ranges") or []
                    if ranges:
                        stop_lsn = ranges[-1]["End-LSN"]
                        info.setdefault("timeline", int(ranges[-1]["Timeline"]))
                except (ValueError, KeyError, TypeError):
                    pass
            if stop_lsn is None:  # conservative: WAL up to now certainly covers the backup's end
                with pg.connect() as conn:
                    stop_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            timeline = int(info.get("timeline", 1))
            info["stop_lsn"] = stop_lsn
            info["stop_wal_file"] = wal_file_name(timeline, parse_lsn(stop_lsn), seg_size, end=True)
            info["stop_time"] = clock.iso_precise(stopped)
            info["tar_bytes"] = sniffer.total
            info["has_manifest"] = manifest_text is not None
            try:
                with pg.connect() as conn:
                    counts, kinds = table_counts(conn, None, budget=10.0)
                info["baselines"], info["baseline_kinds"] = counts, kinds
                info["baselines_note"] = "taken from the live database right after the base backup"
            except SourceError:
                pass
            self._meta.update(info)
        finally:
            if proc.poll() is None:
                _kill(proc)
            proc.stdout.close()
            stderr.close()
            self.proc = None


def _wait_or_cancel(proc: subprocess.Popen, cancel) -> None:
    """Wait for a tool; if the operator cancels (or anything interrupts), kill it first."""
    try:
        while proc.poll() is None:
            if cancel.cancelled:
                _kill(proc)
                cancel.check()
            time.sleep(0.05)
    except BaseException:
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


# =====================================================================================================
# restore
# =====================================================================================================

def restore(ctx) -> dict[str, Any]:
    info = ctx.manifest.get("source_info") or {}
    if info.get("mode") == "physical":
        return restore_physical(ctx)
    if ctx.at is not None:
        raise UsageError("--at needs a physical (base backup + WAL) PostgreSQL backup; this one is a logical dump")
    return restore_logical(ctx)


def _source_settings(ctx) -> dict:
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


def _run_fed(ctx, entry, args: list[str], env: dict, secrets: list, what: str) -> str:
    """Run a pg tool with the stored dump on stdin; return its stdout; raise on failure."""
    stderr = tempfile.TemporaryFile()
    stdout = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, env=env)
    except OSError as exc:
        raise SourceError(f"cannot run {args[0]}: {exc.strerror}") from None
    errors: list = []
    feeder = threading.Thread(target=_pump, args=(ctx, entry, proc.stdin, errors), daemon=True)
    feeder.start()
    _wait_or_cancel(proc, ctx.cancel)
    feeder.join(60)
    if errors:
        raise errors[0] if isinstance(errors[0], InsiteError) else SourceError(f"{what}: {errors[0]}")
    if proc.returncode != 0:
        raise SourceError(f"{what} failed: {_exit_text(os.path.basename(args[0]), proc.returncode)}: "
                          f"{_tail(stderr, secrets)}")
    stdout.seek(0)
    text = stdout.read().decode("utf-8", "replace")
    stderr.close()
    stdout.close()
    return text


# ----- logical ----------------------------------------------------------------------------------------

_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "FK CONSTRAINT", "CHECK CONSTRAINT",
    "CONSTRAINT", "DEFAULT ACL", "DEFAULT", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "VIEW", "INDEX ATTACH",
    "INDEX", "TRIGGER", "FUNCTION", "PROCEDURE", "AGGREGATE", "SCHEMA", "EXTENSION", "COMMENT", "ACL", "TYPE",
    "DOMAIN", "BLOBS", "BLOB", "BLOB METADATA", "LARGE OBJECT", "FOREIGN TABLE", "POLICY", "ROW SECURITY", "RULE",
    "EVENT TRIGGER", "PUBLICATION TABLE", "PUBLICATION", "SUBSCRIPTION", "COLLATION", "CONVERSION", "OPERATOR CLASS",
    "OPERATOR FAMILY", "OPERATOR", "CAST", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TABLE ATTACH",
    "STATISTICS", "SERVER", "USER MAPPING", "FOREIGN DATA WRAPPER", "ENCODING", "STDSTRINGS", "SEARCHPATH",
    "DATABASE", "DATABASE PROPERTIES", "SHELL TYPE", "ACCESS METHOD", "TRANSFORM", "LANGUAGE", "PROCEDURAL LANGUAGE",
], key=len, reverse=True)


class TocEntry:
    __slots__ = ("id", "line", "kind", "schema", "name", "owner")

    def __init__(self, line: str):
        match = _TOC_LINE.match(line)
        if not match:
            raise ValueError(line)
        self.id = int(match.group(1))
        self.line = line
        rest = match.group(4)
        self.kind = next((t for t in _TOC_TYPES if rest.startswith(t + " ")), rest.split(" ", 1)[0])
        rest = rest[len(self.kind) + 1:]
        schema, _, rest = rest.partition(" ")
        self.schema = None if schema == "-" else schema
        name, _, owner = rest.rpartition(" ")
        if not name:  # no owner field
            name, owner = owner, ""
        self.name = name
        self.owner = owner

    @property
    def table_token(self) -> str:
        """For CONSTRAINT/DEFAULT/TRIGGER/POLICY entries the name is 'table thing'."""
        return self.name.split(" ", 1)[0]

    def label(self) -> str:
        return f"{self.kind} {self.schema + '.' if self.schema else ''}{self.name}"


def _run_tool(ctx, args: list[str], env: dict, secrets: list, what: str) -> str:
    """Run a pg tool on a local archive (no stdin); return its stdout; raise on failure."""
    stderr = tempfile.TemporaryFile()
    stdout = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
    except OSError as exc:
        raise SourceError(f"cannot run {args[0]}: {exc.strerror}") from None
    _wait_or_cancel(proc, ctx.cancel)
    if proc.returncode != 0:
        raise SourceError(f"{what} failed: {_exit_text(os.path.basename(args[0]), proc.returncode)}: "
                          f"{_tail(stderr, secrets)}")
    stdout.seek(0)
    text = stdout.read().decode("utf-8", "replace")
    stderr.close()
    stdout.close()
    return text


class DumpArchive:
    """A stored dump as pg_restore's input: one custom-format stream (fed through stdin, or
    spooled to a file for `-j`), or a directory-format dump (written to a temporary directory)."""

    def __init__(self, ctx, entries: list):
        self.ctx = ctx
        streams = [e for e in entries if e.type == "file" and e.path.endswith(".pgdump")]
        dir_files = [e for e in entries if e.type == "file" and e.path.split("/", 1)[0].endswith(".pgdir")
                     and "/" in e.path]
        if streams:
            self.entry, self.files = streams[0], None
            self.size = streams[0].size
        elif dir_files:
            self.entry, self.files = None, dir_files
            self.size = sum(e.size for e in dir_files)
        else:
            raise SourceError(f"backup {ctx.backup['id']} holds no pg_dump archive")
        self.path: str | None = None
        self._spool: str | None = None

    @property
    def is_directory(self) -> bool:
        return self.files is not None

    def materialize(self) -> str:
        """A local copy pg_restore can seek in (free space checked first)."""
        if self.path:
            return self.path
        spool_dir = tempfile.gettempdir()
        free = shutil.disk_usage(spool_dir).free
        if free < self.size * 1.05 + (64 << 20):
            raise RestoreRefused(f"this restore needs a temporary copy of the dump in {spool_dir}, which has "
                                 f"{clock.human_bytes(free)} free for {clock.human_bytes(self.size)}; free space or "
                                 "set TMPDIR (a custom-format dump with jobs = 1 streams without a copy)")
        self._spool = tempfile.mkdtemp(prefix="insite-pgrestore-", dir=spool_dir)
        if self.files is None:
            targets = [(self.entry, os.path.join(self._spool, "dump.pgdump"))]
            self.path = targets[0][1]
        else:
            self.path = os.path.join(self._spool, "dump.pgdir")
            os.mkdir(self.path, 0o700)
            targets = [(e, os.path.join(self.path, e.path.split("/", 1)[1])) for e in self.files]
        for entry, dest in targets:
            name = os.path.basename(dest)
            if os.path.dirname(dest) not in (self.path, self._spool) or name in ("", ".", ".."):
                raise RestoreRefused(f"unexpected file {entry.path!r} in a directory-format dump")
            with open(dest, "wb") as out, self.ctx.open_entry(entry) as source:
                while True:
                    self.ctx.cancel.check()
                    block = source.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    self.ctx.reporter.advance(bytes_done=len(block))
        return self.path

    def run(self, args: list[str], env: dict, secrets: list, what: str, need_file: bool = False) -> str:
        if self.path or self.is_directory or need_file:
            return _run_tool(self.ctx, args + [self.materialize()], env, secrets, what)
        return _run_fed(self.ctx, self.entry, args, env, secrets, what)

    def close(self) -> None:
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = self.path = None


def read_toc(ctx, archive: DumpArchive, pg_restore: str) -> list[TocEntry]:
    text = archive.run([pg_restore, "--list"], dict(os.environ), [], "pg_restore --list")
    entries = []
    for line in text.splitlines():
        if line and not line.startswith(";"):
            try:
                entries.append(TocEntry(line))
            except ValueError:
                continue
    return entries


def _definitions(ctx, archive: DumpArchive, pg_restore: str, toc: list[TocEntry]) -> dict[tuple[str, str | None, str], str]:
    """SQL of INDEX / SEQUENCE / SEQUENCE OWNED BY entries, read from the archive's TOC only."""
    wanted = [e for e in toc if e.kind in ("INDEX", "SEQUENCE", "SEQUENCE OWNED BY")]
    if not wanted:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
        handle.write("\n".join(e.line for e in wanted) + "\n")
        list_path = handle.name
    try:
        text = archive.run([pg_restore, "--use-list", list_path, "--file", "-"], dict(os.environ), [],
                           "pg_restore (reading definitions)")
    finally:
        os.unlink(list_path)
    out: dict[tuple[str, str | None, str], str] = {}
    header = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$", re.M)
    matches = list(header.finditer(text))
    for i, match in enumerate(matches):
        body = text[match.end():matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        schema = None if match.group(3) == "-" else match.group(3)
        out[(match.group(2), schema, match.group(1))] = body
    return out


def select_entries(toc: list[TocEntry], includes: list[str], defs: dict,
                   missing_schemas: set[str] | frozenset = frozenset()) -> list[TocEntry]:
    """The TOC entries of the tables named by `includes` (globs on schema.table), with their data,
    sequences, defaults, constraints, indexes, triggers, policies, comments and grants."""
    def wanted(schema: str | None, table: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{schema}.{table}", pattern) for pattern in includes)

    tables = {(e.schema, e.name) for e in toc
              if e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE") and wanted(e.schema, e.name)}
    sequences: set[tuple[str | None, str]] = set()
    for (kind, schema, name), body in defs.items():
        if kind in ("SEQUENCE OWNED BY", "SEQUENCE"):
            for tschema, tname in tables:
                if re.search(rf"(OWNED BY|ALTER TABLE( ONLY)?) {re.escape(_qual(tschema, tname))}[. ]", body):
                    sequences.add((schema, name))
    indexes = set()
    for (kind, schema, name), body in defs.items():
        if kind == "INDEX":
            for tschema, tname in tables:
                if re.search(rf" ON (ONLY )?{re.escape(_qual(tschema, tname))} ", body):
                    indexes.add((schema, name))
    chosen = []
    for e in toc:
        key = (e.schema, e.name)
        if e.kind in ("TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
                      "FOREIGN TABLE") and key in tables:
            chosen.append(e)
        elif e.kind in ("SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET") and key in sequences:
            chosen.append(e)
        elif e.kind == "SCHEMA" and e.name in missing_schemas and e.name in {t[0] for t in tables}:
            chosen.append(e)
        elif e.kind == "INDEX" and key in indexes:
            chosen.append(e)
        elif e.kind in ("CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT", "ROW SECURITY") \
                and (e.schema, e.table_token) in tables:
            chosen.append(e)
        elif e.kind in ("COMMENT", "ACL") and e.name.startswith(("TABLE ", "VIEW ", "SEQUENCE ", "COLUMN ")):
            target = e.name.split(" ", 1)[1]
            target = target.split(".", 1)[0] if e.name.startswith("COLUMN ") else target
            if (e.schema, target) in tables or (e.schema, target) in sequences:
                chosen.append(e)
    return chosen


def skipped_dependents(toc: list[TocEntry], chosen: list[TocEntry]) -> list[TocEntry]:
    """Objects on the chosen tables that a partial restore leaves out because they depend on
    other objects (foreign keys, triggers, policies, rules), as `pg_restore -t` does."""
    tables = {(e.schema, e.name) for e in chosen if e.kind == "TABLE"}
    return [e for e in toc if e.kind in ("FK CONSTRAINT", "TRIGGER", "POLICY", "RULE")
            and (e.schema, e.table_token) in tables]


def _qual(schema: str | None, name: str) -> str:
    def q(ident: str) -> str:
        return ident if re.fullmatch(r"[a-z_][a-z0-9_$]*", ident) else '"' + ident.replace('"', '""') + '"'
    return f"{q(schema)}.{q(name)}" if schema else q(name)


def _target_objects(conn) -> dict[str, Any]:
    rels = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r','p','v','m','S','f') AND n.nspname NOT IN ('pg_catalog','information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'").fetchall()
    funcs = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog','information_schema')").fetchone()[0]
    los = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
    schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    return {"relations": {(s, n) for s, n, _k in rels}, "functions": int(funcs), "large_objects": int(los),
            "schemas": schemas}


def restore_logical(ctx) -> dict[str, Any]:
    settings = _source_settings(ctx)
    archive = DumpArchive(ctx, list(ctx.entries()))
    try:
        return _restore_logical(ctx, archive, settings)
    finally:
        archive.close()


def _restore_logical(ctx, archive: DumpArchive, settings: dict) -> dict[str, Any]:
    target_dsn = str(ctx.target)
    if "=" not in target_dsn and "://" not in target_dsn:
        raise UsageError(f"--target for a logical PostgreSQL backup is a DSN such as "
                         f"postgresql://user@host:5432/dbname, got {target_dsn!r}")
    pg = PgTarget(target_dsn, None)
    if pg.password is None and settings.get("password_env") and os.environ.get(settings["password_env"]):
        pg.password = os.environ[settings["password_env"]]
    pg_restore = pg_tool("pg_restore", settings)
    jobs = int(ctx.options.get("jobs") or settings.get("jobs") or 1)
    includes = list(ctx.includes or [])

    with pg.connect() as conn:  # the target must be reachable before we read anything
        existing = _target_objects(conn)

    ctx.reporter.update(phase="reading catalog of the dump", force=True)
    toc = read_toc(ctx, archive, pg_restore)
    if includes:
        defs = _definitions(ctx, archive, pg_restore, toc)
        missing = {e.name for e in toc if e.kind == "SCHEMA"} - existing["schemas"]
        chosen = select_entries(toc, includes, defs, missing)
        left_out = skipped_dependents(toc, chosen)
        if not any(e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE") for e in chosen):
            raise UsageError(f"--include {', '.join(includes)}: no table of backup {ctx.backup['id']} matches "
                             "(use schema.table, globs allowed: public.*)")
    else:
        chosen = toc
        left_out = []
    relations = existing["relations"]
    clashes = [e for e in chosen if e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE")
               and (e.schema, e.name) in relations]
    non_empty = bool(relations or existing["functions"] or existing["large_objects"])
    plan = []
    for e in chosen:
        exists = (e.schema, e.name) in relations
        action = "drop and recreate" if exists else ("load data" if e.kind.endswith("DATA") or e.kind in (
            "SEQUENCE SET", "BLOBS", "BLOB") else "create")
        plan.append({"action": action, "type": e.kind.lower(), "path": e.label(), "bytes": 0})
    baselines = (ctx.manifest.get("source_info") or {}).get("baselines") or {}
    selected_tables = {f"{e.schema}.{e.name}" for e in chosen if e.kind == "TABLE"}
    summary = {"objects": len(chosen), "tables": len(selected_tables),
               "existing_in_target": len(clashes), "target": pg.describe(), "jobs": jobs,
               "rows_expected": sum(v for k, v in baselines.items() if k in selected_tables),
               "left_out": [e.label() for e in left_out]}
    if ctx.dry_run:
        return {"files": len(selected_tables), "bytes_written": 0, "plan": plan, "details": summary}
    if not ctx.yes:
        if includes and clashes:
            names = ", ".join(e.label() for e in clashes[:5])
            raise RestoreRefused(f"target {pg.describe()} already has {names}; pass --yes to drop and recreate "
                                 "them, or --dry-run to see the plan")
        if not includes and non_empty:
            raise RestoreRefused(
                f"target database {pg.describe()} is not empty ({len(relations)} relations, "
                f"{existing['functions']} functions, {existing['large_objects']} large objects); restore into an "
                "empty database, or pass --yes to drop and recreate the dumped objects")

    args = [pg_restore, "--no-password", "--exit-on-error", "--dbname", pg.conninfo()]
    if ctx.yes and (clashes or (non_empty and not includes)):
        args += ["--clean", "--if-exists"]
    list_path = None
    if includes:
        with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
            handle.write("\n".join(e.line for e in chosen) + "\n")
            list_path = handle.name
        args += ["--use-list", list_path]
    ctx.reporter.update(phase="restoring", bytes_total=archive.size, bytes_done=0, force=True)
    try:
        if jobs > 1:  # pg_restore -j needs a file it can seek in: spooled (custom) or written (directory)
            archive.run(args + [f"--jobs={jobs}"], pg.env(), pg.secrets(), f"pg_restore into {pg.describe()}",
                        need_file=True)
        else:
            archive.run(args + ["--single-transaction"], pg.env(), pg.secrets(), f"pg_restore into {pg.describe()}")
    finally:
        if list_path:
            os.unlink(list_path)

    # the baselines next to the restored figures
    comparison = []
    with pg.connect() as conn:
        from psycopg import sql

        for key in sorted(selected_tables):
            schema, _, name = key.partition(".")
            try:
                count = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name))).fetchone()[0]
            except Exception:
                count = None
            expected = baselines.get(key)
            kind = ((ctx.manifest.get("source_info") or {}).get("baseline_kinds") or {}).get(key, "exact")
            comparison.append({"object": key, "backup": expected, "restored": count, "kind": kind,
                               "match": (expected == count) if kind == "exact" else None})
    mismatched = [c for c in comparison if c["match"] is False]
    notes = [f"restored {len(selected_tables)} tables into {pg.describe()}"]
    if left_out:
        notes.append("not restored by a partial restore (they depend on other objects; recreate them if needed): "
                     + ", ".join(e.label() for e in left_out[:20]))
    if mismatched:
        notes.append("row counts differ from the backup for: " + ", ".join(c["object"] for c in mismatched[:10]))
    return {"files": len(selected_tables), "bytes_written": archive.size, "baselines": comparison,
            "details": summary, "notes": notes}


# ----- physical ---------------------------------------------------------------------------------------

def restore_physical(ctx) -> dict[str, Any]:
    from insite_console import wal

    info = ctx.manifest.get("source_info") or {}
    source = ctx.manifest.get("source")
    target = os.path.abspath(str(ctx.target))
    at = ctx.at
    pause = bool(ctx.options.get("pause"))
    start_port = ctx.options.get("start_port")
    if ctx.includes:
        raise UsageError("--include does not apply to a physical PostgreSQL backup (it restores the whole cluster)")
    entry = next((e for e in ctx.entries() if e.type == "file" and e.path.endswith(".tar")), None)
    if entry is None:
        raise SourceError(f"backup {ctx.backup['id']} holds no base backup tar")

    # ---- pre-flight, before anything is written
    problems: list[str] = []
    if os.path.lexists(target):
        if not os.path.isdir(target) or os.path.islink(target):
            problems.append(f"target {target} exists and is not a directory")
        elif os.listdir(target):
            problems.append(f"target {target} is not empty; a physical restore needs an empty directory "
                            "(it becomes PGDATA)")
    stop_time = clock.parse_iso(info["stop_time"]) if info.get("stop_time") else None
    now = clock.now()
    if at is not None:
        if at > now:
            problems.append(f"--at {clock.iso_precise(at)} is in the future (now {clock.iso(now)})")
        if stop_time is not None and stop_time >= at:
            problems.append(f"base backup {ctx.backup['id']} ended at {clock.iso_precise(stop_time)}, not before "
                            f"the target {clock.iso_precise(at)}; pick an older base backup "
                            f"(`restore {source} --at ...` picks one)")
    seg_size = int(info.get("wal_segment_size") or 16 * 1024 * 1024)
    check = wal.check_continuity(ctx.ws, source, info.get("start_wal_file"), info.get("stop_wal_file"), at,
                                 seg_size, repo=ctx.repo)
    problems += check["problems"]
    parent = target if os.path.isdir(target) else os.path.dirname(target.rstrip("/")) or "/"
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    need = int(entry.size * 1.05) + check.get("wal_bytes_estimate", 0)
    if free < need:
        problems.append(f"not enough free space in {parent}: {clock.human_bytes(free)} free, about "
                        f"{clock.human_bytes(need)} needed (base backup + WAL to replay)")
    console = wal.console_command()
    config_path = os.path.abspath(str(ctx.ws.config.path))
    restore_command = f"{_shell_quote(console)} -c {_shell_quote(config_path)} wal-fetch {_shell_quote(source)} %f %p"
    settings = [
        "# added by insite-console restore of backup " + ctx.backup["id"],
        f"restore_command = '{_conf_escape(restore_command)}'",
        "archive_mode = off",
        "archive_command = ''",
    ]
    if at is not None:
        settings.append(f"recovery_target_time = '{at.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'")
        settings.append(f"recovery_target_action = '{'pause' if pause else 'promote'}'")
        settings.append("recovery_target_inclusive = true")
    plan = [{"action": "create", "type": "dir", "path": target, "bytes": entry.size,
             "what": "PGDATA from the base backup"},
            {"action": "create", "type": "file", "path": os.path.join(target, "recovery.signal"), "bytes": 0},
            {"action": "append", "type": "file", "path": os.path.join(target, "postgresql.auto.conf"), "bytes": 0,
             "settings": settings[1:]}]
    if start_port:
        plan.append({"action": "start", "type": "server", "path": f"127.0.0.1:{start_port}", "bytes": 0,
                     "what": "a throwaway PostgreSQL server, waiting for the recovery to finish"})
    summary = {"base_backup": ctx.backup["id"], "base_backup_end": info.get("stop_time"),
               "target_time": clock.iso_precise(at) if at else "end of the archived WAL",
               "wal_from": info.get("start_wal_file"), "wal_to": check.get("last_needed"),
               "wal_segments": check.get("segments"), "action": "pause" if pause else "promote"}
    if ctx.dry_run:
        notes = ([f"pre-flight problem: {problem}" for problem in problems] or ["pre-flight checks passed"])
        notes += [f"warning: {warning}" for warning in check.get("warnings", [])]
        return {"files": 1, "bytes_written": 0, "plan": plan, "details": summary, "problems": problems,
                "notes": notes}
    if problems:
        raise RestoreRefused("point-in-time restore pre-flight failed:\n  - " + "\n  - ".join(problems))

    # ---- lay out PGDATA
    owner = _data_owner(target)
    created = not os.path.exists(target)
    os.makedirs(target, mode=0o700, exist_ok=True)
    os.chmod(target, 0o700)
    ctx.reporter.update(phase="restoring", bytes_total=entry.size, force=True)
    try:
        files, written = _extract_tar(ctx, entry, target)
        for sub in ("pg_wal", "pg_wal/archive_status"):
            os.makedirs(os.path.join(target, sub), mode=0o700, exist_ok=True)
        with open(os.path.join(target, "recovery.signal"), "w"):
            pass
        with open(os.path.join(target, "postgresql.auto.conf"), "a") as handle:
            handle.write("\n" + "\n".join(settings) + "\n")
        for name in ("postmaster.pid", "postmaster.opts"):
            if os.path.exists(os.path.join(target, name)):
                os.unlink(os.path.join(target, name))
        if owner is not None:
            _chown_tree(target, *owner)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for name in os.listdir(target):
                path = os.path.join(target, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) and not os.path.islink(path) \
                    else os.unlink(path)
        raise
    notes = [f"PGDATA laid out in {target} from base backup {ctx.backup['id']}",
             "recovery replays WAL with: " + restore_command,
             "archive_mode = off: this restored server never pushes WAL into the production archive"]
    notes += [f"warning: {warning}" for warning in check.get("warnings", [])]
    result: dict[str, Any] = {"files": files, "bytes_written": written, "details": summary, "notes": notes}
    if start_port:
        result["recovery"] = start_recovery_server(ctx, target, int(start_port), owner, pause=pause and at is not None)
        if result["recovery"]["state"] == "promoted":  # segments prefetched past the target are not needed
            shutil.rmtree(os.path.join(target, "pg_wal", wal.SPOOL_DIR_NAME), ignore_errors=True)
        notes.append(f"server running on 127.0.0.1:{start_port} (data {target}); stop it with "
                     f"`pg_ctl -D {target} stop`")
    else:
        notes.append(f"start it with: pg_ctl -D {target} start (as the user owning {target})")
        if pause and at is not None:
            notes.append("recovery pauses at the target: check with SQL, then SELECT pg_wal_replay_resume() to promote")
    return result


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _conf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "''")


def _data_owner(target: str) -> tuple[int, int] | None:
    """Who must own the restored PGDATA: the owner of the (empty) target if it exists and is not
    root, else the `postgres` user when we run as root; None when not root (we own it already)."""
    if os.geteuid() != 0:
        return None
    probe = target
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.stat(probe)
    if st.st_uid != 0:
        return st.st_uid, st.st_gid
    import pwd

    try:
        user = pwd.getpwnam("postgres")
        return user.pw_uid, user.pw_gid
    except KeyError:
        return None


def _chown_tree(root: str, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _extract_tar(ctx, entry, target: str) -> tuple[int, int]:
    """Stream-extract the base backup into `target`: regular files, directories and symlinks that
    stay inside; no absolute paths, no '..', nothing written through a symlink."""
    root = os.path.realpath(target)
    files = 0
    written = 0
    with ctx.open_entry(entry) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                ctx.cancel.check()
                name = member.name
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if name.startswith("/") or ".." in parts:
                    raise RestoreRefused(f"base backup member {member.name!r} would escape {target}")
                if not parts:
                    continue
                dest = os.path.join(root, *parts)
                parent = os.path.dirname(dest)
                real_parent = os.path.realpath(parent)
                if real_parent != root and not real_parent.startswith(root + os.sep):
                    raise RestoreRefused(f"base backup member {member.name!r} would be written through a symlink "
                                         f"outside {target}")
                if member.isdir():
                    os.makedirs(dest, mode=0o700, exist_ok=True)
                    if os.path.islink(dest):
                        raise RestoreRefused(f"base backup member {member.name!r} is a symlink in the way")
                    os.chmod(dest, 0o700 if member.mode & 0o777 in (0, 0o700) else member.mode & 0o750)
                elif member.issym():
                    link = member.linkname
                    resolved = os.path.realpath(os.path.join(parent, link))
                    if os.path.isabs(link) or not (resolved == root or resolved.startswith(root + os.sep)):
                        raise RestoreRefused(f"base backup member {member.name!r} is a symlink to {link!r}, outside "
                                             f"{target} (tablespaces are not supported by a single-tar backup)")
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                    os.symlink(link, dest)
                elif member.isreg():
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                    fd = os.open(dest, flags, (member.mode & 0o640) or 0o600)
                    with os.fdopen(fd, "wb") as out:
                        source = archive.extractfile(member)
                        while True:
                            block = source.read(1 << 20)
                            if not block:
                                break
                            out.write(block)
                            written += len(block)
                            ctx.reporter.advance(bytes_done=len(block))
                    os.utime(dest, (member.mtime, member.mtime))
                    files += 1
                else:
                    raise RestoreRefused(f"base backup member {member.name!r} is a {member.type!r} entry; refusing")
    return files, written


def _as_user(owner: tuple[int, int] | None, args: list[str]) -> list[str]:
    if owner is None or os.geteuid() != 0:
        return args
    import pwd

    name = pwd.getpwuid(owner[0]).pw_name
    return ["runuser", "-u", name, "--"] + args


def start_recovery_server(ctx, target: str, port: int, owner, pause: bool, timeout: float = 600.0) -> dict[str, Any]:
    """Start a throwaway server on 127.0.0.1:port over the restored PGDATA and wait until the
    recovery is done (promoted, or paused at the target)."""
    import psycopg

    settings = _source_settings(ctx)
    pg_ctl = pg_tool("pg_ctl", settings)
    log = os.path.join(target, "insite-recovery.log")
    options = (f"-p {port} -k {target} -c listen_addresses=127.0.0.1 -c unix_socket_directories={target} "
               "-c logging_collector=off")
    ctx.reporter.update(phase="recovering", force=True)
    result = subprocess.run(_as_user(owner, [pg_ctl, "-D", target, "-l", log, "-o", options, "-W", "start"]),
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SourceError(f"pg_ctl start of the restored cluster in {target} failed: {result.stderr.strip()[-800:]}")
    deadline = time.monotonic() + timeout
    state = None
    last_error = ""
    pid_file = os.path.join(target, "postmaster.pid")
    appeared = time.monotonic() + 30
    while not os.path.exists(pid_file) and time.monotonic() < appeared:
        time.sleep(0.1)
    while time.monotonic() < deadline:
        ctx.cancel.check()
        if not os.path.exists(pid_file):
            raise SourceError(f"the restored server in {target} stopped during recovery: {_log_tail(log)}")
        # the log says it first, and needs no login (whatever the cluster's superuser is called)
        try:
            with open(log, errors="replace") as handle:
                text = handle.read()
        except OSError:
            text = ""
        if "database system is ready to accept connections" in text:
            state = "promoted"
            break
        if "recovery has paused" in text or "pausing at the end of recovery" in text:
            state = "paused"
            break
        try:
            with psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user=_superuser(target),
                                 connect_timeout=3, autocommit=True) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                if not in_recovery:
                    state = "promoted"
                    break
                paused = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
                if paused == "paused":
                    state = "paused"
                    break
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        time.sleep(0.3)
    if state is None:
        raise SourceError(f"recovery of {target} did not finish within {int(timeout)}s ({last_error}); "
                          f"see {log}")
    return {"state": state, "port": port, "log": log}


def _superuser(target: str) -> str:
    """The bootstrap superuser is normally `postgres`; overridable with PGUSER."""
    return os.environ.get("PGUSER", "postgres")


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            lines = handle.read().strip().splitlines()
    except OSError:
        return "(no log)"
    fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
    return " | ".join((fatal or lines)[-3:])


def pick_base_backup(ws, source: str, at: datetime | None) -> dict:
    """The newest successful physical base backup of `source` that ended before `at`."""
    candidates = []
    for backup in ws.catalog.backups(status="succeeded", source=source):
        info = backup.get("info") or {}
        if isinstance(info, str):
            info = json.loads(info)
        source_info = info.get("source_info") or {}
        if source_info.get("mode") != "physical":
            continue
        stop = source_info.get("stop_time")
        if at is None or (stop and clock.parse_iso(stop) < at):
            candidates.append((stop or backup["started_at"], backup))
    if not candidates:
        raise UsageError(f"no physical base backup of {source} ended before "
                         f"{clock.iso_precise(at) if at else 'now'}")
    candidates.sort(key=lambda item: item[0])
    return candidates[-1][1]
