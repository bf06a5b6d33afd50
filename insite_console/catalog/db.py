"""The local catalog: a SQLite file (WAL mode) indexing backups, runs, events, restores and
verifications. It is a cache of the repositories: `catalog rebuild` recreates the backup
rows from the manifests on storage. Schema changes are migrations keyed by PRAGMA user_version.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from insite_console import clock, process, who

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE backups (
        id TEXT PRIMARY KEY, policy TEXT NOT NULL, source TEXT NOT NULL, source_type TEXT NOT NULL,
        storage TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT, bytes_read INTEGER NOT NULL DEFAULT 0,
        bytes_stored INTEGER NOT NULL DEFAULT 0, files INTEGER NOT NULL DEFAULT 0,
        parent_id TEXT, error TEXT, repo_id TEXT, run_id TEXT, info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX backups_started ON backups(started_at DESC);
    CREATE INDEX backups_policy ON backups(policy, started_at DESC);
    CREATE TABLE backup_storages (
        backup_id TEXT NOT NULL, storage TEXT NOT NULL, copied_at TEXT NOT NULL,
        PRIMARY KEY (backup_id, storage)
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, status TEXT NOT NULL,
        pid INTEGER, host TEXT, started_at TEXT NOT NULL, finished_at TEXT, error TEXT,
        phase TEXT, bytes_done INTEGER DEFAULT 0, bytes_total INTEGER, files_done INTEGER DEFAULT 0,
        files_total INTEGER, current TEXT, updated_at TEXT
    );
    CREATE INDEX runs_started ON runs(started_at DESC);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, at TEXT NOT NULL,
        level TEXT NOT NULL, message TEXT NOT NULL
    );
    CREATE INDEX events_run ON events(run_id, id);
    CREATE TABLE restores (
        id TEXT PRIMARY KEY, backup_id TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
        files INTEGER NOT NULL DEFAULT 0, bytes_written INTEGER NOT NULL DEFAULT 0,
        started_at TEXT NOT NULL, finished_at TEXT, error TEXT, dry_run INTEGER NOT NULL DEFAULT 0,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE verifications (
        id TEXT PRIMARY KEY, backup_id TEXT NOT NULL, storage TEXT NOT NULL, deep INTEGER NOT NULL,
        status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, objects INTEGER DEFAULT 0,
        bytes INTEGER DEFAULT 0, problems TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX verifications_backup ON verifications(backup_id, started_at DESC);
    """,
    # 2: DR drills, each with its timed steps
    """
    CREATE TABLE drills (
        id TEXT PRIMARY KEY, scenario TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
        finished_at TEXT, rto_seconds REAL, rpo_seconds REAL, recovery_seconds REAL,
        data_loss_seconds REAL, steps TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX drills_scenario ON drills(scenario, started_at DESC);
    """,
    # 3: the PostgreSQL WAL archive (backup type transaction_log), with commit-time ranges
    """
    CREATE TABLE IF NOT EXISTS wal_segments (
        source TEXT NOT NULL, name TEXT NOT NULL, storage TEXT NOT NULL, size INTEGER NOT NULL,
        sha256 TEXT NOT NULL, archived_at TEXT NOT NULL, first_time TEXT, last_time TEXT,
        PRIMARY KEY (source, name)
    );
    """,
    # 4: an order that survives a rebuild (sub-second start, then id), the host of each backup
    # (retention groups by it), tombstones of forgotten backups (rebuild and sync never bring them
    # back), and the identity of a run's process (pid reuse after a reboot is not "alive")
    """
    ALTER TABLE backups ADD COLUMN started_at_precise TEXT;
    ALTER TABLE backups ADD COLUMN host TEXT;
    UPDATE backups SET started_at_precise = substr(started_at, 1, 19) || '.000000Z';
    CREATE TRIGGER backups_precise AFTER INSERT ON backups WHEN NEW.started_at_precise IS NULL
    BEGIN
        UPDATE backups SET started_at_precise = substr(NEW.started_at, 1, 19) || '.000000Z'
        WHERE rowid = NEW.rowid;
    END;
    CREATE INDEX backups_order ON backups(started_at_precise DESC, id DESC);
    CREATE INDEX backups_policy_order ON backups(policy, started_at_precise DESC, id DESC);
    CREATE TABLE forgotten (
        backup_id TEXT PRIMARY KEY, policy TEXT, forgotten_at TEXT NOT NULL, reason TEXT
    );
    ALTER TABLE runs ADD COLUMN process_start TEXT;
    ALTER TABLE runs ADD COLUMN boot_id TEXT;
    """,
    # 5: drills keep their whole record (mode, event timeline, what was missing) for show and
    # replay; a drill learnt back from a repository by `catalog rebuild` is the same record
    """
    ALTER TABLE drills ADD COLUMN mode TEXT;
    ALTER TABLE drills ADD COLUMN record TEXT NOT NULL DEFAULT '{}';
    """,
    # 6: scheduler heartbeats, so the console and `status` can tell whether one runs
    """
    CREATE TABLE IF NOT EXISTS scheduler_beats (
        host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL, last_tick TEXT NOT NULL,
        interval_seconds REAL, stopped_at TEXT, PRIMARY KEY (host, pid)
    );
    """,
    # 7: platform recoveries (recover PLAN): the summary columns for listing, the whole result as
    # `record` (per component backup, restore point, data loss, verification), who ran it and why
    """
    CREATE TABLE recoveries (
        id TEXT PRIMARY KEY, plan TEXT NOT NULL, status TEXT NOT NULL, at TEXT,
        started_at TEXT NOT NULL, finished_at TEXT, recovery_seconds REAL,
        user TEXT, host TEXT, reason TEXT, record TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX recoveries_started ON recoveries(started_at DESC);
    """,
    # 8: monitoring: each alert delivery with its outcome, the conditions already announced (a
    # breach is told once, and again when it ends), and one running backup per policy
    """
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, event TEXT NOT NULL, subject TEXT,
        alert TEXT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1, seconds REAL, error TEXT
    );
    CREATE INDEX alert_deliveries_at ON alert_deliveries(at DESC);
    CREATE TABLE alert_conditions (
        event TEXT NOT NULL, subject TEXT NOT NULL, since TEXT NOT NULL, message TEXT,
        PRIMARY KEY (event, subject)
    );
    CREATE TABLE policy_locks (
        policy TEXT PRIMARY KEY, run_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
        user TEXT, started_at TEXT NOT NULL, process_start TEXT, boot_id TEXT
    );
    """,
    # 9: who started each run (OS user and origin: console / cli / scheduler / drill; the host
    # is already there) and who cancelled it
    """
    ALTER TABLE runs ADD COLUMN user TEXT;
    ALTER TABLE runs ADD COLUMN origin TEXT;
    ALTER TABLE runs ADD COLUMN cancelled_by TEXT;
    """,
    # 10: status and metrics on 100k runs (bench/bench_status.py) answer from indexes: the newest
    # run of a kind and subject (a policy's last restore test), a policy's newest backup of a status
    # (the newest `running` one scanned every row of the policy), verifications by policy, and
    # failed backups counted as they fail (a Prometheus counter: forgetting old ones never lowers it)
    """
    CREATE INDEX IF NOT EXISTS runs_kind_subject ON runs(kind, subject, started_at DESC);
    CREATE INDEX IF NOT EXISTS backups_policy_status ON backups(policy, status, started_at_precise DESC, id DESC);
    ALTER TABLE verifications ADD COLUMN policy TEXT;
    UPDATE verifications SET policy = (SELECT policy FROM backups WHERE backups.id = verifications.backup_id);
    CREATE INDEX IF NOT EXISTS verifications_policy ON verifications(policy, started_at DESC);
    CREATE TABLE policy_failures (policy TEXT PRIMARY KEY, failures INTEGER NOT NULL);
    INSERT INTO policy_failures SELECT policy, COUNT(*) FROM backups WHERE status = 'failed' GROUP BY policy;
    CREATE TRIGGER backups_failed_insert AFTER INSERT ON backups WHEN NEW.status = 'failed'
    BEGIN
        INSERT INTO policy_failures VALUES (NEW.policy, 1)
            ON CONFLICT (policy) DO UPDATE SET failures = failures + 1;
    END;
    CREATE TRIGGER backups_failed_update AFTER UPDATE OF status ON backups
    WHEN NEW.status = 'failed' AND OLD.status != 'failed'
    BEGIN
        INSERT INTO policy_failures VALUES (NEW.policy, 1)
            ON CONFLICT (policy) DO UPDATE SET failures = failures + 1;
    END;
    """,
    # 11: group restore points (group.py): several policies backed up at one moment; the whole
    # record (each member's backup and exact instant) as `record`
    """
    CREATE TABLE group_points (
        id TEXT PRIMARY KEY, group_name TEXT NOT NULL, status TEXT NOT NULL, point_at TEXT,
        started_at TEXT NOT NULL, finished_at TEXT, record TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX group_points_started ON group_points(group_name, started_at DESC);
    """,
    # 12: the restore audit: who restored (user, host, origin), what (policy, includes), over
    # production or not, and why (a reason or ticket id, asked for over production)
    """
    ALTER TABLE restores ADD COLUMN user TEXT;
    ALTER TABLE restores ADD COLUMN host TEXT;
    ALTER TABLE restores ADD COLUMN origin TEXT;
    ALTER TABLE restores ADD COLUMN policy TEXT;
    ALTER TABLE restores ADD COLUMN includes TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE restores ADD COLUMN over_source INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE restores ADD COLUMN reason TEXT;
    """,
    # 13: wal-stream heartbeats (per source), so `status` and the console tell whether WAL is
    # being streamed, what was last pushed and which segment is in progress
    """
    CREATE TABLE wal_stream_beats (
        source TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL,
        last_beat TEXT NOT NULL, last_archived TEXT, last_archived_at TEXT, partial TEXT, last_error TEXT,
        stopped_at TEXT, PRIMARY KEY (source, host, pid)
    );
    """,
]

BACKUP_FIELDS = ("id", "policy", "source", "storage", "type", "status", "started_at", "finished_at",
                 "bytes_read", "bytes_stored", "files", "parent_id", "error")


class Catalog:
    """Thread-safe access to the catalog; each thread gets its own connection."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self.db
        self._wal_mode(db)
        self._migrate(db)

    @staticmethod
    def _wal_mode(db: sqlite3.Connection) -> None:
        """WAL once, for the catalog's life. Setting it needs a lock SQLite does not wait for
        (no busy handler on a journal-mode change): a catalog already in WAL is left alone, and a
        new one busy at that moment (another process opening it too) is tried again."""
        deadline = time.monotonic() + 30
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    return
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < number:
                    statement = ""
                    for part in script.split(";"):  # a trigger's body holds ";" too
                        statement += part + ";"
                        if sqlite3.complete_statement(statement):
                            if statement.strip(" \n;"):
                                db.execute(statement)
                            statement = ""
                    db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ----- runs and events -----------------------------------------------------------

    def start_run(self, run_id: str, kind: str, subject: str) -> None:
        now = clock.iso_precise(clock.now())
        self.db.execute(
            "INSERT INTO runs (id, kind, subject, status, pid, host, started_at, updated_at, phase, process_start, "
            "boot_id, user, origin) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, 'starting', ?, ?, ?, ?)",
            (run_id, kind, subject, os.getpid(), socket.gethostname(), now, now, process.start_ticks(os.getpid()),
             process.boot_id(), who.user(), who.origin()),
        )

    def update_run(self, run_id: str, **fields: Any) -> None:
        fields["updated_at"] = clock.iso_precise(clock.now())
        names = ", ".join(f"{key} = ?" for key in fields)
        self.db.execute(f"UPDATE runs SET {names} WHERE id = ?", (*map(_text, fields.values()), run_id))

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self.update_run(run_id, status=status, error=error, finished_at=clock.iso_precise(clock.now()),
                        phase="done" if status == "succeeded" else status)
        if status == "cancelled":  # by whoever asked first (the console), else by this process's user
            self.db.execute("UPDATE runs SET cancelled_by = COALESCE(cancelled_by, ?) WHERE id = ?",
                            (who.me(), run_id))

    def cancel_requested(self, run_id: str, by: str | None) -> None:
        """Record who asked a running run to stop (before the signal, so the run keeps it);
        None takes it back when the signal could not be sent."""
        self.db.execute("UPDATE runs SET cancelled_by = ? WHERE id = ? AND status = 'running'", (by, run_id))

    def event(self, run_id: str | None, message: str, level: str = "info") -> None:
        self.db.execute("INSERT INTO events (run_id, at, level, message) VALUES (?, ?, ?, ?)",
                        (run_id, clock.iso_precise(clock.now()), level, _text(message)))

    def runs(self, limit: int = 50, status: str | None = None) -> list[dict]:
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY started_at DESC LIMIT ?"
        args.append(limit)
        return [dict(row) for row in self.db.execute(sql, args)]

    def last_run(self, kind: str, subject: str) -> dict | None:
        """The newest run of `kind` on `subject` (a policy's last scheduled verify, say)."""
        row = self.db.execute("SELECT * FROM runs WHERE kind = ? AND subject = ? ORDER BY started_at DESC LIMIT 1",
                              (kind, subject)).fetchone()
        return dict(row) if row else None

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def events(self, run_id: str | None = None, limit: int = 100, after_id: int = 0) -> list[dict]:
        if run_id:
            rows = self.db.execute("SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id DESC LIMIT ?",
                                   (run_id, after_id, limit))
        else:
            rows = self.db.execute("SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", (after_id, limit))
        return [dict(row) for row in rows]

    def reap_dead_runs(self) -> list[str]:
        """Mark runs whose process died (kill -9, power loss) as failed, with their backups."""
        reaped = []
        host = socket.gethostname()
        for row in self.db.execute("SELECT * FROM runs WHERE status = 'running'").fetchall():
            ended = _run_ended(row) if row["host"] == host and row["pid"] else None
            if ended:
                message = f"interrupted: {ended}"
                self.finish_run(row["id"], "failed", message)
                self.db.execute("UPDATE backups SET status = 'failed', error = ?, finished_at = COALESCE(finished_at, ?) "
                                "WHERE run_id = ? AND status = 'running'", (message, clock.iso(clock.now()), row["id"]))
                self.db.execute("UPDATE restores SET status = 'failed', error = ? WHERE id = ? AND status = 'running'",
                                (message, row["id"]))
                reaped.append(row["id"])
        return reaped

    # ----- scheduler liveness ------------------------------------------------------------

    def scheduler_beat(self, started_at: str, interval: float | None, stopped: bool = False) -> None:
        """Record that this process's scheduler is alive (interval None: a one-shot `--once` run)."""
        now = clock.iso(clock.now())
        self.db.execute(
            "INSERT INTO scheduler_beats (host, pid, started_at, last_tick, interval_seconds, stopped_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, pid) DO UPDATE SET last_tick = excluded.last_tick, "
            "interval_seconds = excluded.interval_seconds, stopped_at = excluded.stopped_at",
            (socket.gethostname(), os.getpid(), started_at, now, interval, now if stopped else None))

    def scheduler_beats(self, limit: int = 5) -> list[dict]:
        """The newest heartbeats first, each with `alive` False when its process is gone from this host."""
        rows = [dict(row) for row in self.db.execute(
            "SELECT * FROM scheduler_beats ORDER BY last_tick DESC LIMIT ?", (limit,))]
        host = socket.gethostname()
        for row in rows:
            row["alive"] = not (row["host"] == host and not process.pid_alive(row["pid"]))
        return rows

    def wal_stream_beat(self, source: str, started_at: str, last_archived: str | None,
                        last_archived_at: str | None, partial: str | None, last_error: str | None,
                        stopped: bool = False) -> None:
        """Record that this process streams WAL for `source` (wal_stream.run), and how far it is."""
        now = clock.iso(clock.now())
        self.db.execute(
            "INSERT INTO wal_stream_beats (source, host, pid, started_at, last_beat, last_archived, last_archived_at, "
            "partial, last_error, stopped_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, host, pid) "
            "DO UPDATE SET last_beat = excluded.last_beat, last_archived = excluded.last_archived, "
            "last_archived_at = excluded.last_archived_at, partial = excluded.partial, "
            "last_error = excluded.last_error, stopped_at = excluded.stopped_at",
            (source, socket.gethostname(), os.getpid(), started_at, now, last_archived, last_archived_at, partial,
             last_error, now if stopped else None))

    def wal_stream_beats(self, source: str, limit: int = 5) -> list[dict]:
        """The newest wal-stream heartbeats of `source` first, `alive` False when the process is gone
        from this host."""
        rows = [dict(row) for row in self.db.execute(
            "SELECT * FROM wal_stream_beats WHERE source = ? ORDER BY last_beat DESC LIMIT ?", (source, limit))]
        host = socket.gethostname()
        for row in rows:
            row["alive"] = not (row["host"] == host and not process.pid_alive(row["pid"]))
        return rows

    def forget_wal_streams(self, source: str, stale_before: str) -> list[dict]:
        """Remove the heartbeats of `source`'s streamers that stopped, whose process is gone from
        this host, or that have not beaten since `stale_before` (a running one stays)."""
        gone = [row for row in self.wal_stream_beats(source, limit=1000)
                if row["stopped_at"] or not row["alive"] or row["last_beat"] < stale_before]
        for row in gone:
            self.db.execute("DELETE FROM wal_stream_beats WHERE source = ? AND host = ? AND pid = ?",
                            (source, row["host"], row["pid"]))
        return gone

    # ----- backups ---------------------------------------------------------------------

    def interrupted_since_success(self, policy: str) -> bool:
        """Whether a backup of `policy` was interrupted (its process died) after its last success:
        only then may it have left packs on storage that no index names."""
        row = self.db.execute(
            "SELECT 1 FROM backups WHERE policy = ? AND status = 'failed' AND error LIKE 'interrupted%' AND "
            "started_at >= COALESCE((SELECT MAX(started_at) FROM backups WHERE policy = ? AND status = 'succeeded'), '')"
            " LIMIT 1", (policy, policy)).fetchone()
        return row is not None

    def insert_backup(self, row: dict) -> None:
        row = dict(row)
        info = json.dumps(row.pop("info", {}) or {})
        names = list(row) + ["info"]
        self.db.execute(f"INSERT OR REPLACE INTO backups ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        (*map(_text, row.values()), info))

    def update_backup(self, backup_id: str, **fields: Any) -> None:
        if "info" in fields:
            fields["info"] = json.dumps(fields["info"])
        names = ", ".join(f"{key} = ?" for key in fields)
        self.db.execute(f"UPDATE backups SET {names} WHERE id = ?", (*map(_text, fields.values()), backup_id))

    def add_backup_storage(self, backup_id: str, storage: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO backup_storages VALUES (?, ?, ?)",
                        (backup_id, storage, clock.iso(clock.now())))

    def backup_storages(self, backup_id: str) -> list[str]:
        return [row[0] for row in self.db.execute(
            "SELECT storage FROM backup_storages WHERE backup_id = ? ORDER BY copied_at", (backup_id,))]

    def backup(self, backup_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone()
        if row is None:
            rows = self.db.execute("SELECT * FROM backups WHERE id LIKE ?", (backup_id + "%",)).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return _backup_dict(row) if row else None

    def backups(self, policy: str | None = None, status: str | None = None, source: str | None = None,
                search: str | None = None, limit: int | None = None, offset: int = 0,
                order: str = "started_at DESC") -> list[dict]:
        sql, args = self.backup_filter(policy, status, source, search)
        if order not in _ORDERS:
            order = "started_at DESC"
        sql = "SELECT * FROM backups" + sql + " ORDER BY " + _order_by(*order.split())
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [_backup_dict(row) for row in self.db.execute(sql, args)]

    def backups_page(self, start: int, count: int, total: int, column: str = "started_at", descending: bool = True,
                     policy: str | None = None, search: str | None = None,
                     search_statuses: Iterable[str] = ()) -> list[dict]:
        """Rows start..start+count of the sorted, filtered catalog, for a paged table.

        SQLite's OFFSET walks every skipped row, so a page in the second half is read from the
        other end (the exact reverse order, then flipped): the last page of 100,000 backups
        costs what the first one does. The id breaks ties, so pages never repeat or skip a row."""
        if f"{column} ASC" not in _ORDERS:
            column = "started_at"
        where, args = self.backup_filter(policy, None, None, search, search_statuses)
        end = min(total, start + count)
        reverse = start > total - end
        direction = "DESC" if descending != reverse else "ASC"
        rows = self.db.execute(
            f"SELECT * FROM backups{where} ORDER BY {_order_by(column, direction)} LIMIT ? OFFSET ?",
            [*args, max(0, end - start), total - end if reverse else start]).fetchall()
        page = [_backup_dict(row) for row in rows]
        return page[::-1] if reverse else page

    def count_backups(self, policy: str | None = None, status: str | None = None, source: str | None = None,
                      search: str | None = None, search_statuses: Iterable[str] = ()) -> int:
        sql, args = self.backup_filter(policy, status, source, search, search_statuses)
        return self.db.execute("SELECT COUNT(*) FROM backups" + sql, args).fetchone()[0]

    @staticmethod
    def backup_filter(policy, status, source, search, search_statuses: Iterable[str] = ()) -> tuple[str, list]:
        """WHERE for a listing. `search` matches the columns as stored and the start as a list
        shows it ("2026-11-27 06:00"); `search_statuses` are statuses whose displayed word the
        search matched (the console shows succeeded as "ok")."""
        clauses, args = [], []
        for column, value in (("policy", policy), ("status", status), ("source", source)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if search:
            shown = list(search_statuses)
            clauses.append("(id LIKE ? OR policy LIKE ? OR source LIKE ? OR type LIKE ? OR status LIKE ? OR storage LIKE ? "
                           "OR replace(started_at, 'T', ' ') LIKE ?"
                           + (f" OR status IN ({', '.join('?' * len(shown))})" if shown else "") + ")")
            args += [f"%{search}%"] * 7 + shown
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def last_backup(self, policy: str, status: str = "succeeded", types: Iterable[str] | None = None) -> dict | None:
        sql = "SELECT * FROM backups WHERE policy = ? AND status = ?"
        args: list[Any] = [policy, status]
        if types:
            types = list(types)
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            args += types
        row = self.db.execute(sql + " ORDER BY " + _order_by("started_at", "DESC") + " LIMIT 1", args).fetchone()
        return _backup_dict(row) if row else None

    def delete_backup(self, backup_id: str, reason: str = "forgotten") -> None:
        """Forget a backup: its row goes, a tombstone stays, so that `catalog rebuild` and
        `catalog sync` never bring it back from a storage that still holds its manifest."""
        policy = self.db.execute("SELECT policy FROM backups WHERE id = ?", (backup_id,)).fetchone()
        self.db.execute("INSERT OR REPLACE INTO forgotten VALUES (?, ?, ?, ?)",
                        (backup_id, policy[0] if policy else None, clock.iso(clock.now()), reason))
        self.db.execute("DELETE FROM backups WHERE id = ?", (backup_id,))
        self.db.execute("DELETE FROM backup_storages WHERE backup_id = ?", (backup_id,))

    def backup_statuses(self) -> dict[str, str]:
        """id -> status of every row, in one query (a sync compares thousands of manifests)."""
        return {row[0]: row[1] for row in self.db.execute("SELECT id, status FROM backups")}

    def forgotten_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT backup_id FROM forgotten")}

    def remove_backup_storage(self, backup_id: str, storage: str) -> None:
        self.db.execute("DELETE FROM backup_storages WHERE backup_id = ? AND storage = ?", (backup_id, storage))

    # ----- restores and verifications ------------------------------------------------

    def insert_restore(self, row: dict) -> None:
        row = dict(row)
        row["info"] = json.dumps(row.get("info", {}))
        if "includes" in row:
            row["includes"] = json.dumps(row["includes"] or [])
        names = list(row)
        self.db.execute(f"INSERT OR REPLACE INTO restores ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        tuple(map(_text, row.values())))

    def restores(self, limit: int = 50) -> list[dict]:
        return [_restore_dict(row) for row in
                self.db.execute("SELECT * FROM restores ORDER BY started_at DESC LIMIT ?", (limit,))]

    def restore(self, restore_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM restores WHERE id = ?", (restore_id,)).fetchone()
        return _restore_dict(row) if row else None

    def restore_ids(self) -> set[str]:
        return {row["id"] for row in self.db.execute("SELECT id FROM restores")}

    def restore_throughput(self) -> float | None:
        """Average bytes/s of past real restores, for a dry run's time estimate."""
        rows = self.db.execute(
            "SELECT bytes_written, started_at, finished_at FROM restores WHERE status = 'succeeded' AND dry_run = 0 "
            "AND bytes_written > 1048576 ORDER BY started_at DESC LIMIT 10").fetchall()
        total_bytes = total_seconds = 0.0
        for row in rows:
            seconds = (clock.parse_iso(row["finished_at"]) - clock.parse_iso(row["started_at"])).total_seconds()
            if seconds > 0:
                total_bytes += row["bytes_written"]
                total_seconds += seconds
        return total_bytes / total_seconds if total_seconds else None

    def insert_verification(self, row: dict) -> None:
        row = dict(row)
        row["problems"] = json.dumps(row.get("problems", []))
        if "policy" not in row:  # (kept with the row: a policy's newest verification is an index lookup)
            found = self.db.execute("SELECT policy FROM backups WHERE id = ?", (row["backup_id"],)).fetchone()
            row["policy"] = found[0] if found else None
        names = list(row)
        self.db.execute(f"INSERT OR REPLACE INTO verifications ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        tuple(row.values()))

    def failure_counts(self) -> dict[str, int]:
        """Backups per policy that failed since this catalog began counting (for the metrics
        counter): kept by triggers as rows fail, so it never decreases when retention or a sync
        forgets old failed backups, and costs one small table read."""
        return {row[0]: row[1] for row in self.db.execute("SELECT policy, failures FROM policy_failures")}

    def last_verification(self, policy: str) -> dict | None:
        """The newest verification of any backup of `policy` (for `verify_every` and status)."""
        row = self.db.execute(
            "SELECT v.* FROM verifications v JOIN backups b ON b.id = v.backup_id WHERE v.policy = ? "
            "ORDER BY v.started_at DESC LIMIT 1", (policy,)).fetchone()
        return dict(row) if row else None

    def verifications(self, backup_id: str | None = None, limit: int = 20) -> list[dict]:
        if backup_id:
            rows = self.db.execute("SELECT * FROM verifications WHERE backup_id = ? ORDER BY started_at DESC LIMIT ?",
                                   (backup_id, limit))
        else:
            rows = self.db.execute("SELECT * FROM verifications ORDER BY started_at DESC LIMIT ?", (limit,))
        result = []
        for row in rows:
            item = dict(row)
            item["problems"] = json.loads(item["problems"])
            item["deep"] = bool(item["deep"])
            result.append(item)
        return result


    # ----- platform recoveries ----------------------------------------------------------

    def insert_recovery(self, record: dict) -> None:
        """A platform recovery's result (recovery.py), replaced as it progresses."""
        row = {k: record.get(k) for k in ("id", "plan", "status", "at", "started_at", "finished_at",
                                          "recovery_seconds", "user", "host", "reason")}
        row["record"] = json.dumps(record)
        names = list(row)
        self.db.execute(f"INSERT OR REPLACE INTO recoveries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        tuple(map(_text, row.values())))

    def recoveries(self, plan: str | None = None, limit: int = 50) -> list[dict]:
        """Whole records, newest first."""
        if plan:
            rows = self.db.execute("SELECT record FROM recoveries WHERE plan = ? ORDER BY started_at DESC LIMIT ?",
                                   (plan, limit))
        else:
            rows = self.db.execute("SELECT record FROM recoveries ORDER BY started_at DESC LIMIT ?", (limit,))
        return [json.loads(row["record"]) for row in rows]

    def recovery_ids(self) -> set[str]:
        return {row["id"] for row in self.db.execute("SELECT id FROM recoveries")}

    # ----- group restore points ------------------------------------------------------------

    def insert_group_point(self, record: dict) -> None:
        """A group backup's record (group.py), replaced as it progresses."""
        self.db.execute("INSERT OR REPLACE INTO group_points (id, group_name, status, point_at, started_at, "
                        "finished_at, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (record["id"], record["group"], record["status"], record.get("point_at"),
                         record["started_at"], record.get("finished_at"), json.dumps(record)))

    def group_points(self, group: str | None = None, limit: int = 50, status: str | None = None,
                     id_prefix: str | None = None) -> list[dict]:
        """Whole records, newest first."""
        where, args = [], []
        if id_prefix:
            where.append("id LIKE ? ESCAPE '\\'")
            args.append(id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if group:
            where.append("group_name = ?")
            args.append(group)
        if status:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT record FROM group_points" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY started_at DESC LIMIT ?", (*args, limit))
        return [json.loads(row["record"]) for row in rows]

    def group_point_ids(self) -> set[str]:
        return {row["id"] for row in self.db.execute("SELECT id FROM group_points")}

    # ----- alerts and policy locks ------------------------------------------------------

    def record_delivery(self, row: dict) -> None:
        names = list(row)
        self.db.execute(f"INSERT INTO alert_deliveries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        tuple(map(_text, row.values())))

    def deliveries(self, limit: int = 50) -> list[dict]:
        return [dict(row) for row in self.db.execute("SELECT * FROM alert_deliveries ORDER BY id DESC LIMIT ?",
                                                     (limit,))]

    def set_condition(self, event: str, subject: str, active: bool, message: str = "") -> bool:
        """Record whether a condition (an RPO breach of a policy, say) holds; True when that
        changed. Atomic, so of two processes seeing the same breach only one announces it."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            held = db.execute("SELECT 1 FROM alert_conditions WHERE event = ? AND subject = ?",
                              (event, subject)).fetchone() is not None
            if active and not held:
                db.execute("INSERT INTO alert_conditions VALUES (?, ?, ?, ?)",
                           (event, subject, clock.iso(clock.now()), _text(message)))
            elif held and not active:
                db.execute("DELETE FROM alert_conditions WHERE event = ? AND subject = ?", (event, subject))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return active != held

    def conditions(self, event: str) -> list[str]:
        """The subjects for which the condition `event` is announced and not yet over."""
        return [row[0] for row in self.db.execute("SELECT subject FROM alert_conditions WHERE event = ?", (event,))]

    def claim_policy(self, policy: str, run_id: str) -> dict | None:
        """Take the policy's run lock for this process; returns the live holder instead when
        another process has it. A holder whose process is gone (on this host) is taken over."""
        import getpass

        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            holder = db.execute("SELECT * FROM policy_locks WHERE policy = ?", (policy,)).fetchone()
            if holder is not None and holder["host"] == socket.gethostname() and _run_ended(holder):
                holder = None  # its process died: the lock is ours to take
            if holder is not None:
                db.execute("COMMIT")
                return dict(holder)
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = str(os.getuid())
            db.execute("INSERT OR REPLACE INTO policy_locks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (policy, run_id, socket.gethostname(), os.getpid(), user, clock.iso_precise(clock.now()),
                        process.start_ticks(os.getpid()), process.boot_id()))
            db.execute("COMMIT")
            return None
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def release_policy(self, policy: str, run_id: str) -> None:
        self.db.execute("DELETE FROM policy_locks WHERE policy = ? AND run_id = ?", (policy, run_id))

    # ----- DR drills --------------------------------------------------------------------

    def insert_drill(self, record: dict) -> None:
        """A drill's record (drill.py); its summary columns are for listing and the report."""
        row = {k: record.get(k) for k in ("id", "scenario", "status", "started_at", "finished_at", "rto_seconds",
                                          "rpo_seconds", "recovery_seconds", "data_loss_seconds", "mode")}
        row["steps"] = json.dumps(record.get("steps", []))
        row["record"] = json.dumps(record)
        names = list(row)
        self.db.execute(f"INSERT OR REPLACE INTO drills ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        tuple(map(_text, row.values())))

    def drills(self, scenario: str | None = None, limit: int = 20, finished: bool = False) -> list[dict]:
        """Newest first; `finished`: without the drills still running (another console's, live)."""
        where = " AND ".join(w for w, on in (("scenario = ?", scenario), ("status != 'running'", finished)) if on)
        rows = self.db.execute(f"SELECT * FROM drills {'WHERE ' + where if where else ''} ORDER BY started_at DESC "
                               "LIMIT ?", ((scenario,) if scenario else ()) + (limit,))
        return [{**dict(row), "steps": json.loads(row["steps"]), "record": json.loads(row["record"] or "{}")}
                for row in rows]

    def drill(self, drill_id: str) -> dict | None:
        """A drill's whole record by id or unique id prefix."""
        rows = self.db.execute("SELECT record FROM drills WHERE id LIKE ? ORDER BY id LIMIT 2",
                               (drill_id.replace("%", "") + "%",)).fetchall()
        return json.loads(rows[0]["record"]) if len(rows) == 1 else None

    def drill_process(self) -> dict:
        """This process's identity, kept in a running drill's record (see drill_ended)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process.start_ticks(os.getpid()),
                "boot_id": process.boot_id()}

    def drill_ended(self, record: dict) -> str | None:
        """Why a `running` drill's process is gone (it died without finishing), or None if it may
        still run (it runs, or runs on another host)."""
        held = record.get("process") or {}
        if held.get("host") != socket.gethostname() or not held.get("pid"):
            return None
        return _run_ended({**held, "started_at": record["started_at"]})

    def drill_ids(self) -> set[str]:
        return {row["id"] for row in self.db.execute("SELECT id FROM drills")}


_ORDERS = {f"{column} {direction}" for column in ("started_at", "finished_at", "policy", "source", "type", "status",
                                                   "bytes_read", "bytes_stored", "files", "storage", "id")
           for direction in ("ASC", "DESC")}


def _order_by(column: str, direction: str) -> str:
    """ORDER BY for a listing: the start is compared to the microsecond and ties break by id,
    so the order is total and the same after `catalog rebuild` (rowids are not)."""
    if column == "started_at":
        column = "started_at_precise"
    return f"{column} {direction}, id {direction}" if column != "id" else f"id {direction}"


def order_key(backup: dict) -> tuple[str, str]:
    """The catalog's order as a sort key (newest last), for lists merged in Python."""
    return backup.get("started_at_precise") or clock.iso_precise(clock.parse_iso(backup["started_at"])), backup["id"]


def _restore_dict(row: sqlite3.Row) -> dict:
    item = dict(row)
    item["info"] = json.loads(item.get("info") or "{}")
    item["includes"] = json.loads(item.get("includes") or "[]")
    item["over_source"] = bool(item.get("over_source"))
    item["dry_run"] = bool(item.get("dry_run"))
    return item


def _backup_dict(row: sqlite3.Row) -> dict:
    item = dict(row)
    item["info"] = json.loads(item.get("info") or "{}")
    return item


def public_backup(item: dict, storages: list[str] | None = None) -> dict:
    """The contract's JSON object for a backup."""
    result = {key: item.get(key) for key in BACKUP_FIELDS}
    if storages is not None:
        result["storages"] = storages
    return result


def _text(value: Any) -> Any:
    """File names may hold bytes that are not UTF-8 (kept as surrogate escapes); SQLite
    needs valid UTF-8, so such bytes are shown as \\xNN in the catalog's messages."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _run_ended(row: sqlite3.Row) -> str | None:
    """Why the process of a run on this host is gone, or None if it is still running.

    A pid alone is not an identity: after a reboot or enough forks another process holds it,
    and the run would stay `running` forever (the scheduler then skips its policy). A process
    instance is its pid, its start time (/proc/PID/stat) and the boot it belongs to."""
    pid = row["pid"]
    boot = process.boot_id()
    if row["boot_id"] and boot and row["boot_id"] != boot:
        return f"the host restarted after process {pid} began"
    if not process.pid_alive(pid):
        return f"process {pid} ended without finishing"
    ticks = process.start_ticks(pid)
    if ticks is None:  # no /proc (not Linux): the pid is all there is to go by
        return None
    if row["process_start"]:
        same = row["process_start"] == ticks
    else:  # a row from before process identities were recorded: started before the run did?
        boot_time = _boot_time()
        same = boot_time is None or (boot_time + int(ticks) / os.sysconf("SC_CLK_TCK")
                                     <= clock.parse_iso(row["started_at"]).timestamp() + 2)
    return None if same else f"process {pid} ended without finishing (its pid now belongs to another process)"


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
