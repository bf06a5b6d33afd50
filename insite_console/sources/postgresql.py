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

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator

from insite_console import clock
from insite_console.errors import SourceError, UsageError
from insite_console.sources.base import Entry, Item, ScanContext, Source, point
from insite_console.sources.pg_client import (
    GLOBALS_FILE,
    PgTarget,
    stop_tool,
    exit_text,
    parse_lsn,
    pg_tool,
    scrub,
    tail_text,
    wait_or_cancel,
    wal_file_name,
)

EXACT_COUNT_MAX_BYTES = 256 * 1024 * 1024  # tables below this size are counted exactly
EXACT_COUNT_BUDGET = 60.0  # seconds spent on exact counts at most (unless exact_counts = true)
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


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
            return
        globals_sql = self._dump_globals(ctx)
        if globals_sql is not None:
            entry = Entry(path=GLOBALS_FILE, type="file", mode=0o600, mtime_ns=now_ns, size=len(globals_sql))
            yield Item(entry=entry, open=lambda: contextlib.nullcontext(io.BytesIO(globals_sql)))
        if int(self.settings.get("jobs") or 1) > 1:
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

    def _dump_globals(self, ctx: ScanContext) -> bytes | None:
        """Roles, memberships, role settings and tablespaces (`pg_dumpall --globals-only`), stored
        beside each logical dump: a database restored into a fresh cluster needs its owners. Without
        the right to read pg_authid the roles go without passwords (a warning says so); if pg_dumpall
        fails altogether the backup goes on without globals, warned (source_info.globals = false)."""
        pg = self.target()
        args = [pg_tool("pg_dumpall", self.settings), "--globals-only", "--no-password", "--dbname", pg.conninfo()]
        errors = []
        for extra in ([], ["--no-role-passwords"]):
            try:
                result = subprocess.run(args + extra, capture_output=True, env=pg.env(), stdin=subprocess.DEVNULL,
                                        timeout=300)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
                break
            if result.returncode == 0:
                if extra:
                    ctx.warn(f"pg_dumpall --globals-only: no right to read role passwords on {pg.host_port} "
                             f"({errors[-1][:200]}); roles are backed up without passwords")
                self._meta.update({"globals": True, "globals_role_passwords": not extra})
                return result.stdout
            errors.append(scrub(result.stderr.decode("utf-8", "replace").strip(), pg.secrets()))
        ctx.warn(f"pg_dumpall --globals-only of {pg.host_port} failed ({errors[-1][:300]}); this backup carries "
                 "no roles or tablespaces (a restore into a fresh cluster needs them created first)")
        self._meta["globals"] = False
        return None

    @contextmanager
    def _open_dump(self, ctx: ScanContext) -> Iterator[BinaryIO]:
        pg = self.target()
        conn = pg.connect()
        stderr = tempfile.TemporaryFile()
        proc = None
        try:
            snapshot = None
            ctx.moment()
            try:
                snapshot = self._export_snapshot(conn)
            except Exception as exc:  # e.g. a standby before 10: dump without a shared snapshot
                ctx.warn(f"PostgreSQL at {pg.host_port}: cannot export a snapshot ({scrub(str(exc), pg.secrets())}); "
                         "row counts are taken outside the dump's snapshot")
                conn.execute("ROLLBACK")
                self._meta["point"] = point("pg_dump started (no exported snapshot)")
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
                stop_tool(proc)
                raise
            # the engine read to the end: how did pg_dump finish?
            leftover = proc.stdout.read(1)
            if leftover:
                stop_tool(proc)
                raise SourceError(f"pg_dump of {pg.describe()}: output was not read to its end")
            code = proc.wait()
            if code != 0:
                raise SourceError(f"pg_dump of {pg.describe()} failed: {exit_text('pg_dump', code)}"
                                  + (f": {tail_text(stderr, pg.secrets())}" if tail_text(stderr, pg.secrets()) else "")
                                  + " (the backup is incomplete)")
            exact = self.settings.get("exact_counts")
            if not snapshot:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            counts, kinds = table_counts(conn, True if exact else None)
            self._meta.update({"format": "custom", "baselines": counts, "baseline_kinds": kinds,
                               "baselines_in_dump_snapshot": bool(snapshot)})
            warnings = tail_text(stderr, pg.secrets())
            if warnings:
                ctx.warn(f"pg_dump: {warnings[-500:]}")
        finally:
            if proc is not None and proc.poll() is None:
                stop_tool(proc)
            if proc is not None and proc.stdout:
                proc.stdout.close()
            stderr.close()
            try:
                conn.close()
            except Exception:
                pass
            self.proc = None

    def _export_snapshot(self, conn) -> str:
        """The dump's snapshot, exported from a REPEATABLE READ transaction: the instant the
        backup stands at (server clock and ours)."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, server_time = conn.execute("SELECT pg_export_snapshot(), clock_timestamp()").fetchone()
        self._meta["point"] = point("snapshot exported", snapshot=snapshot,
                                    server_time=clock.iso_precise(server_time.astimezone(clock.UTC)))
        return snapshot

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
            ctx.moment()
            snapshot = self._export_snapshot(conn)
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
                wait_or_cancel(proc, ctx.cancel)
            finally:
                self.proc = None
            if proc.returncode != 0:
                raise SourceError(f"pg_dump of {pg.describe()} failed: {exit_text('pg_dump', proc.returncode)}"
                                  + (f": {tail_text(stderr, pg.secrets())}" if tail_text(stderr, pg.secrets()) else "")
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
                stop_tool(proc)
                raise
            code = proc.wait()
            stopped = clock.now()
            failures = _checksum_failures(stderr) if code == 1 else None
            if failures is not None and {"backup_label", "backup_manifest"} <= set(sniffer.captured):
                # pg_basebackup sends the whole backup (manifest and archived WAL included), then
                # reports page checksum failures: a complete backup of damaged pages, kept and marked
                # (as pgBackRest does), never a silent success nor a lost backup
                self._meta["page_checksum_failures"] = failures
                pages = ", ".join(f"{f['file']} block {f['block']}" for f in failures["pages"][:10])
                ctx.warn(f"pg_basebackup of {pg.host_port}: {failures['total']} page checksum failure(s) in "
                         f"{len(failures['files'])} file(s) ({pages}); the backup is complete but holds those "
                         "pages as they are on disk (damaged): check the cluster's storage")
            elif code != 0:
                raise SourceError(f"pg_basebackup of {pg.host_port} failed: {exit_text('pg_basebackup', code)}"
                                  + (f": {tail_text(stderr, pg.secrets())}" if tail_text(stderr, pg.secrets()) else "")
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
            if info.get("backup_from") == "standby":
                info["stop_wal_archived"] = self._wait_stop_segment(ctx, info["stop_wal_file"])
            if ctx.group:
                info["point"] = self._mark_wal_position(ctx)
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
                stop_tool(proc)
            proc.stdout.close()
            stderr.close()
            self.proc = None


    def _mark_wal_position(self, ctx: ScanContext) -> dict[str, Any]:
        """A group's moment for a physical member: after its base backup has ended (replay to an
        instant before the end is impossible), a named restore point in the WAL and a segment
        switch, so the archive holds that position; the member comes back by replay to it."""
        pg = self.target()
        with pg.connect() as conn:
            ctx.moment()
            try:
                lsn, server_time = conn.execute("SELECT pg_create_restore_point(%s)::text, clock_timestamp()",
                                                (f"insite-group-{ctx.group}",)).fetchone()
                named = f"insite-group-{ctx.group}"
            except Exception as exc:  # not a superuser: the position without a name
                ctx.warn(f"PostgreSQL at {pg.host_port}: cannot create a named restore point "
                         f"({scrub(str(exc), pg.secrets())}); the group point is the WAL position alone")
                lsn, server_time = conn.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()").fetchone()
                named = None
            facts = point("WAL position", wal_lsn=lsn, restore_point_name=named)
            # replay stops at commit timestamps, written by the server's clock
            facts["at"] = clock.iso_precise(server_time.astimezone(clock.UTC))
            try:
                conn.execute("SELECT pg_switch_wal()")
            except Exception as exc:
                ctx.warn(f"PostgreSQL at {pg.host_port}: cannot switch WAL ({scrub(str(exc), pg.secrets())}); "
                         "the group point can be replayed to once its segment has been archived")
        return facts

    def _wait_stop_segment(self, ctx: ScanContext, name: str) -> bool:
        """A base backup from a standby is restorable once its stop segment is archived, and
        pg_basebackup does not wait for it there (a standby archives nothing; the primary archives
        the segment when it switches): wait up to `archive_wait` (5m), checked on storage."""
        archived = ctx.extra.get("wal_archived")
        where = self.target().host_port
        if archived is None:
            ctx.warn(f"base backup from the standby at {where}: whether its stop segment {name} is archived was "
                     "not checked; the backup is restorable only once it is")
            return False
        wait = clock.parse_duration(str(self.settings.get("archive_wait") or "5m")).total_seconds()
        ctx.reporter.update(phase=f"waiting for {name} to be archived", force=True)
        deadline = time.monotonic() + wait
        while not archived(name):
            ctx.cancel.check()
            if time.monotonic() >= deadline:
                raise SourceError(f"base backup from the standby at {where}: its stop segment {name} was not "
                                  f"archived within {clock.human_duration(wait)} (archive_wait), so the backup "
                                  "could not be restored: the primary archives it when it switches segment (set "
                                  "archive_timeout there, or run SELECT pg_switch_wal() on the primary)")
            time.sleep(0.5)
        return True


_CHECKSUM_PAGE = re.compile(r'checksum verification failed in file "([^"]+)", block (\d+)')
_CHECKSUM_FILE = re.compile(r'file "([^"]+)" has a total of (\d+) checksum verification failure')


def _checksum_failures(stderr) -> dict[str, Any] | None:
    """Page checksum failures pg_basebackup reported (its WARNING lines), when they are why it
    exited 1 ("checksum error occurred"); None for any other failure."""
    try:
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    if "checksum error occurred" not in text:
        return None
    pages = [{"file": m.group(1).removeprefix("./"), "block": int(m.group(2))} for m in _CHECKSUM_PAGE.finditer(text)]
    files = {m.group(1).removeprefix("./"): int(m.group(2)) for m in _CHECKSUM_FILE.finditer(text)}
    for page in pages:
        files.setdefault(page["file"], sum(1 for p in pages if p["file"] == page["file"]))
    return {"total": sum(files.values()) or len(pages), "files": files, "pages": pages[:100]}


# =====================================================================================================
# restore
# =====================================================================================================

def restore(ctx) -> dict[str, Any]:
    """Restore a PostgreSQL backup: pg_restore into a database (pg_restore_logical.py), or
    PGDATA plus WAL replay to a point in time (pg_restore_physical.py)."""
    info = ctx.manifest.get("source_info") or {}
    if info.get("mode") == "physical":
        from insite_console.sources.pg_restore_physical import restore_physical

        return restore_physical(ctx)
    if ctx.at is not None:
        raise UsageError("--at needs a physical (base backup + WAL) PostgreSQL backup; this one is a logical dump")
    from insite_console.sources.pg_restore_logical import restore_logical

    return restore_logical(ctx)
