"""PostgreSQL WAL archive: `wal-push` (archive_command) and `wal-fetch` (restore_command).

    archive_command = 'insite-console -c /etc/insite/config.toml wal-push main_db %p'
    restore_command = 'insite-console -c /etc/insite/config.toml wal-fetch main_db %f %p'

Each segment (and each .history / .backup file) is compressed, encrypted and authenticated as
a sealed object `wal/<source>/<file name>` in the repository of the source's policy storage.
PostgreSQL's rules for an archive_command are kept: success only once the segment is durably
stored; pushing a segment that is already archived with identical content succeeds (a retry
after a crash); a different content under the same name fails, so nothing is overwritten; any
storage failure exits non-zero so PostgreSQL keeps the segment and retries.

wal-fetch exits 1 only when the asked file is not in the archive: PostgreSQL reads any exit
status of 125 or less as "not there" and ends recovery, promoting at that point. Every other
failure (a segment that fails authentication, a storage error, a wrong passphrase or config)
exits FETCH_FATAL (above 125), so PostgreSQL stops recovery instead, and leaves a note
(FETCH_FAILURE_NOTE in the spool directory) naming the segment and why, for the restore to report.

wal-fetch fetches the asked segment and the next few in parallel (PREFETCH) into a spool
directory beside %p, so the following restore_command calls are served locally: WAL fetch
latency, not bandwidth, is what makes point-in-time recovery slow.

The catalog records every pushed segment with its commit-time range (read with pg_waldump when
available), which gives the restorable window per source and the archive lag (the real RPO).
The table is created here (CREATE TABLE IF NOT EXISTS) on the catalog connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from insite_console import clock
from insite_console.errors import ConfigError, InsiteError, ObjectNotFound, StorageError

PREFETCH = 8  # segments fetched in parallel on a spool miss
SPOOL_DIR_NAME = ".insite-wal-prefetch"
FETCH_FATAL = 200  # above 125: PostgreSQL stops recovery (FATAL) instead of taking it as "not archived"
FETCH_FAILURE_NOTE = "wal-fetch-failed.json"
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
XLP_LONG_HEADER = 0x0002  # xlp_info bit: the page starts with the long header (system identifier)
_ARCHIVE_NAME = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")

class WalError(InsiteError):
    """A WAL archive operation failed (wal-push exits 1, so PostgreSQL retries)."""


class WalNotFound(WalError):
    """The asked WAL file is not in the archive (the normal end of recovery)."""


def wal_key(source: str, name: str) -> str:
    return f"wal/{source}/{name}"


def identity_key(source: str) -> str:
    """The sealed object naming the cluster a source's archive belongs to (its system identifier)."""
    return f"wal-info/{source}"


def storage_for_source(ws, source: str) -> str:
    """The storage holding a source's WAL: that of the first policy (by name) backing it up."""
    if source not in ws.config.sources:
        known = ", ".join(sorted(ws.config.sources)) or "none"
        raise ConfigError(f"{ws.config.path}: no source named {source!r} (sources: {known})")
    if ws.config.sources[source].get("type") != "postgresql":
        raise ConfigError(f"{ws.config.path}: source.{source} is not a postgresql source")
    for name in sorted(ws.config.policies):
        policy = ws.config.policies[name]
        if policy.get("source") == source:
            return policy["storage"]
    raise ConfigError(f"{ws.config.path}: no policy backs up source {source!r}, so it has no storage for its WAL")


# ----- catalog ------------------------------------------------------------------------------------

def _db(ws):
    return ws.catalog.db


def _record(ws, source: str, name: str, storage: str, size: int, digest: str,
            first: str | None, last: str | None) -> None:
    _db(ws).execute(
        "INSERT OR REPLACE INTO wal_segments (source, name, storage, size, sha256, archived_at, first_time, last_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (source, name, storage, size, digest, clock.iso_precise(clock.now()), first, last))


def list_segments(ws, source: str) -> list[dict[str, Any]]:
    """The catalog's WAL listing of a source, oldest first (`wal` command, TUI)."""
    rows = _db(ws).execute("SELECT * FROM wal_segments WHERE source = ? ORDER BY name", (source,)).fetchall()
    return [dict(row) for row in rows]


def sync_catalog(ws, source: str, names: dict[str, int] | None = None) -> dict[str, int]:
    """Make the catalog's listing match storage: add segments found there (times unknown), drop
    rows of segments no longer there. `names`: a listing already made (archived_names)."""
    storage = storage_for_source(ws, source)
    if names is None:
        names = archived_names(ws.repository(storage), source)
    known = {row["name"] for row in list_segments(ws, source)}
    added = removed = 0
    for name, size in names.items():
        if name not in known:
            _db(ws).execute(
                "INSERT OR IGNORE INTO wal_segments (source, name, storage, size, sha256, archived_at) "
                "VALUES (?, ?, ?, ?, '', ?)", (source, name, storage, size, clock.iso_precise(clock.now())))
            added += 1
    for name in known - set(names):
        _db(ws).execute("DELETE FROM wal_segments WHERE source = ? AND name = ?", (source, name))
        removed += 1
    return {"added": added, "removed": removed}


def archived_names(repo, source: str) -> dict[str, int]:
    """Names of the WAL files on storage for a source -> stored (sealed) size."""
    from insite_console.repo.repository import SEALED

    prefix = SEALED + wal_key(source, "")
    return {info.key[len(prefix):]: info.size for info in repo.storage.list(prefix)}


def is_archived(ws, source: str, name: str) -> bool:
    """Is this WAL file in the source's archive (on storage, not the catalog's word)?"""
    from insite_console.repo.repository import SEALED

    return ws.repository(storage_for_source(ws, source)).storage.exists(SEALED + wal_key(source, name))


# ----- push -----------------------------------------------------------------------------------------

def push(ws, source: str, path: str) -> int:
    """`insite-console wal-push SOURCE %p`: 0 when stored (or already stored identically); raises
    (exit 1) otherwise."""
    push_file(ws, source, path)
    return 0


def push_file(ws, source: str, path: str, server_system_identifier: str | None = None) -> dict[str, Any]:
    """archive_command: store the WAL file at `path` (relative to PGDATA, the cwd). Raises on any
    failure, so the CLI exits non-zero and PostgreSQL retries. `server_system_identifier`: the
    cluster a file outside PGDATA comes from (wal-stream's spool: a .history file has no header
    of its own and no global/pg_control beside it)."""
    name = os.path.basename(path)
    if not _ARCHIVE_NAME.match(name):
        raise WalError(f"wal-push {source}: {name!r} is not a WAL segment, .history, .backup or .partial file name")
    storage = storage_for_source(ws, source)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise WalError(f"wal-push {source}: cannot read {path}: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    repo = ws.repository(storage, sync_index=False)  # sealed objects only: the index is not needed
    check_system_identifier(ws, repo, source, name, system_identifier(name, data, path, server_system_identifier))
    if name.endswith(".history"):
        check_history_lineage(repo, source, name, data)
    elif int(name[:8], 16) > 1:
        check_segment_timeline(ws, repo, source, name, path, server_system_identifier)
    key = wal_key(source, name)
    where = f"{key} on storage {storage}"
    try:
        existing = repo.get_sealed(key)
    except ObjectNotFound:
        existing = None
    if existing is not None:
        if hashlib.sha256(existing).hexdigest() == digest:
            _record_quietly(ws, source, name, storage, len(data), digest, path)
            return {"name": name, "status": "already archived", "bytes": len(data), "sha256": digest}
        raise WalError(f"wal-push {source}: {where} is already archived with DIFFERENT content; refusing to "
                       "overwrite it (two clusters archiving into one source, or a restored server with "
                       "archive_mode on?)")
    repo.put_sealed(key, data)
    _record_quietly(ws, source, name, storage, len(data), digest, path)
    return {"name": name, "status": "archived", "bytes": len(data), "sha256": digest}


def system_identifier(name: str, data: bytes, path: str, server: str | None = None) -> str | None:
    """The system identifier of the cluster a WAL file comes from: a segment's first page (a long
    header that matches the file name), else `server` (the cluster the caller received it from),
    else the pushing cluster's global/pg_control (archive_command runs in PGDATA with
    %p = pg_wal/NAME). None when none can be read."""
    if _SEGMENT.match(name[:24]) and (len(name) == 24 or name.endswith(".partial")) and len(data) >= 40:
        info, timeline, pageaddr = struct.unpack_from("<2xHIQ", data, 0)
        sysid, seg_size = struct.unpack_from("<QI", data, 24)
        if (info & XLP_LONG_HEADER and timeline == int(name[:8], 16) and seg_size and seg_size & (seg_size - 1) == 0
                and pageaddr == segment_start_lsn(name[:24], seg_size)):
            return str(sysid)
    if server:
        return str(server)
    control = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "global", "pg_control")
    try:
        with open(control, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return str(struct.unpack("<Q", head)[0]) if len(head) == 8 else None


def check_system_identifier(ws, repo, source: str, name: str, sysid: str | None) -> None:
    """Refuse a WAL file from another cluster than the one the source's archive holds (pgBackRest's
    system-id check): its segments would be replayed into the wrong database. The archive's cluster
    is recorded (wal-info/<source>) at the first push, else taken from the catalog's base backups."""
    try:
        stored = json.loads(repo.get_sealed(identity_key(source)))
    except ObjectNotFound:
        stored = None
    expected = (stored or {}).get("system_identifier") or _backup_system_identifier(ws, source)
    if sysid is None:
        print(f"insite-console wal-push: warning: cannot read the system identifier of {name} (nor "
              "global/pg_control beside its pg_wal); it is archived unchecked", file=sys.stderr)
        return
    if expected and expected != sysid:
        raise WalError(f"wal-push {source}: {name} comes from the cluster with system identifier {sysid}, but the "
                       f"archive of source {source} belongs to cluster {expected}; refusing it (another cluster's "
                       "archive_command names this source? A new cluster needs a source of its own)")
    if stored is None:
        repo.put_sealed(identity_key(source), json.dumps({"system_identifier": sysid, "first_file": name}).encode())


def check_history_lineage(repo, source: str, name: str, data: bytes) -> None:
    """Refuse a timeline history that contradicts the archive's: PostgreSQL writes N.history as its
    parent's history plus one line, so when the parent's history is archived, the new one must
    begin with exactly its entries (else it is a sibling's timeline, e.g. another standby promoted
    to the same timeline number, and recovery would follow the wrong branch)."""
    from insite_console.sources.pg_client import format_lsn

    timeline = int(name[:8], 16)
    try:
        entries = parse_history(data.decode())
    except (UnicodeDecodeError, ValueError):
        raise WalError(f"wal-push {source}: {name} is not a timeline history file (unreadable lines)") from None
    if not entries or any(parent >= timeline for parent, _ in entries) or \
            [parent for parent, _ in entries] != sorted({parent for parent, _ in entries}):
        raise WalError(f"wal-push {source}: {name} does not list its parent timelines in order below {timeline}")
    parent = entries[-1][0]
    if parent < 2:
        return
    try:
        archived = parse_history(repo.get_sealed(wal_key(source, history_name(parent))).decode())
    except ObjectNotFound:
        return  # nothing to compare with (archive_check reports a missing history file)
    if archived != entries[:-1]:
        def text(chain):
            return ", ".join(f"timeline {tli} until {format_lsn(lsn)}" for tli, lsn in chain) or "nothing"
        raise WalError(f"wal-push {source}: {name} says timeline {parent} followed {text(entries[:-1])}, but the "
                       f"archived {history_name(parent)} says {text(archived)}; refusing it (two servers promoted "
                       "to the same timeline number? The archive keeps the first)")


def check_segment_timeline(ws, repo, source: str, name: str, path: str, server: str | None) -> None:
    """Refuse a segment of timeline T > 1 unless the pushing cluster's own T.history (beside it in
    pg_wal, or in wal-stream's spool) is the archived one. Two servers promoted to the same timeline
    number write different histories, and PostgreSQL does not promise to archive the history before
    the timeline's segments: without this, the second server's segments would enter the first's
    timeline. When the archive has no T.history yet, the local one is archived first (through its
    own checks), so a timeline's segments never reach the archive before its history."""
    timeline = int(name[:8], 16)
    history = history_name(timeline)
    try:
        archived = repo.get_sealed(wal_key(source, history))
    except ObjectNotFound:
        archived = None
    local_path = os.path.join(os.path.dirname(path), history)
    try:
        with open(local_path, "rb") as handle:
            local = handle.read()
    except FileNotFoundError:
        local = None
    except OSError as exc:
        raise WalError(f"wal-push {source}: cannot read {local_path} to check {name}'s timeline: {exc.strerror}") \
            from None
    if local is None:
        if archived is None:
            raise WalError(f"wal-push {source}: {name} is on timeline {timeline}, but {history} is neither in the "
                           f"archive nor beside it ({local_path}); refusing it: recovery could not follow a "
                           "timeline without its history file")
        if server is None:
            print(f"insite-console wal-push: warning: {local_path} is missing, so {name} cannot be checked "
                  f"against the archived {history}; it is archived trusting its system identifier",
                  file=sys.stderr)
        return
    if archived is None:
        push_file(ws, source, local_path, server)
        return
    if local != archived:
        raise WalError(f"wal-push {source}: {name} is on this cluster's timeline {timeline}, but the archived "
                       f"{history} is another server's (its history differs from {local_path}); refusing it "
                       "(two servers promoted to the same timeline number? The archive keeps the first)")


def _backup_system_identifier(ws, source: str) -> str | None:
    for backup in ws.catalog.backups(status="succeeded", source=source, limit=20):
        sysid = ((backup.get("info") or {}).get("source_info") or {}).get("system_identifier")
        if sysid:
            return str(sysid)
    return None


def _record_quietly(ws, source, name, storage, size, digest, path) -> None:
    first = last = None
    if _SEGMENT.match(name):
        first, last = segment_times(ws, source, path)
    try:
        _record(ws, source, name, storage, size, digest, first, last)
    except Exception as exc:  # the segment is safely stored; the catalog is a cache
        print(f"insite-console wal-push: warning: {name} archived but not recorded in the catalog "
              f"({ws.config.catalog_path}): {exc}", file=sys.stderr)


_COMMIT = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (?:UTC|GMT)")


def segment_times(ws, source: str, path: str) -> tuple[str | None, str | None]:
    """First and last commit/abort time in a segment (pg_waldump), as ISO UTC; None if unknown."""
    from insite_console.sources.pg_client import pg_tool

    try:
        tool = pg_tool("pg_waldump", ws.config.sources.get(source))
        result = subprocess.run([tool, "--rmgr=Transaction", path], capture_output=True, text=True, timeout=30,
                                env={**os.environ, "TZ": "UTC", "PGTZ": "UTC"})
    except (InsiteError, OSError, subprocess.TimeoutExpired):
        return None, None
    times = _COMMIT.findall(result.stdout)
    if not times:
        return None, None

    def iso(text: str) -> str:
        fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
        return clock.iso_precise(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc))

    return iso(times[0]), iso(times[-1])


# ----- fetch ----------------------------------------------------------------------------------------

def fetch(ws, source: str, name: str, dest: str) -> int:
    """`insite-console wal-fetch SOURCE %f %p`: 0 when placed; raises WalNotFound (exit 1) when
    missing; any other failure raises and must end in fetch_failed."""
    fetch_file(ws, source, name, dest)
    return 0


def spool_dir(dest: str) -> str:
    """The prefetch spool beside restore_command's %p (pg_wal/RECOVERYXLOG -> pg_wal/.insite-wal-prefetch)."""
    return os.environ.get("INSITE_WAL_SPOOL") or os.path.join(os.path.dirname(os.path.abspath(dest)), SPOOL_DIR_NAME)


def fetch_failed(source: str, name: str, dest: str, exc: BaseException) -> int:
    """wal-fetch failed for another reason than "not in the archive": say why on stderr (the
    server log), leave the note the restore reads, and return FETCH_FATAL so recovery stops."""
    why = str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}"
    print(f"error: wal-fetch {source}: cannot fetch {name}: {why}; exiting {FETCH_FATAL} so PostgreSQL stops "
          "recovery here instead of ending it early", file=sys.stderr)
    spool = spool_dir(dest)
    try:
        os.makedirs(spool, mode=0o700, exist_ok=True)
        _write_atomic(os.path.join(spool, FETCH_FAILURE_NOTE), json.dumps(
            {"segment": name, "source": source, "error": why, "at": clock.iso_precise(clock.now())}).encode())
    except OSError as err:
        print(f"error: wal-fetch {source}: cannot write the failure note in {spool}: {err.strerror}", file=sys.stderr)
    return FETCH_FATAL


def fetch_failure(pg_wal: str) -> dict[str, Any] | None:
    """The note a fatal wal-fetch left in the spool of `pg_wal` ({"segment", "error", ...}), if any."""
    try:
        with open(os.path.join(pg_wal, SPOOL_DIR_NAME, FETCH_FAILURE_NOTE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def fetch_file(ws, source: str, name: str, dest: str, prefetch: int = PREFETCH) -> dict[str, Any]:
    """restore_command: put WAL file `name` at `dest`. Raises WalNotFound when the archive does
    not have it (exit 1: PostgreSQL then ends recovery or tries the next timeline); anything
    else it raises must end in fetch_failed (exit FETCH_FATAL)."""
    spool = spool_dir(dest)
    with contextlib.suppress(OSError):  # a previous run's failure is no longer the story
        os.unlink(os.path.join(spool, FETCH_FAILURE_NOTE))
    spooled = os.path.join(spool, name)
    if os.path.exists(spooled):
        _place(spooled, dest, move=True)
        return {"name": name, "status": "from prefetch spool"}
    storage = storage_for_source(ws, source)
    repo = ws.repository(storage, sync_index=False)
    names = [name]
    if _SEGMENT.match(name) and prefetch > 1:
        seg_size = _segment_size(ws, source)
        timeline, segno = int(name[:8], 16), _segno(name, seg_size)
        names += [_segname(timeline, segno + i, seg_size) for i in range(1, prefetch)]
        _clean_spool(spool, name)

    def get(one: str) -> bytes | None:
        try:
            return repo.get_sealed(wal_key(source, one))
        except ObjectNotFound:
            return None

    with ThreadPoolExecutor(min(len(names), prefetch)) as pool:
        futures = [pool.submit(get, one) for one in names]
        first = futures[0].result()  # raises StorageError / IntegrityError: exit FETCH_FATAL
        if first is None:
            for future in futures[1:]:
                future.cancel()
            raise WalNotFound(f"wal-fetch {source}: {name} is not in the archive")
        _write_atomic(dest, first)
        prefetched = 0
        for one, future in zip(names[1:], futures[1:]):
            try:
                data = future.result()
            except InsiteError:
                data = None  # a prefetch failure only costs a later direct fetch
            if data is None:
                continue
            os.makedirs(spool, mode=0o700, exist_ok=True)
            _write_atomic(os.path.join(spool, one), data)
            prefetched += 1
    return {"name": name, "status": "fetched", "prefetched": prefetched}


def _segment_size(ws, source: str) -> int:
    """wal_segment_size from the newest physical backup's manifest info (default 16 MiB)."""
    for backup in ws.catalog.backups(status="succeeded", source=source, limit=5):
        size = ((backup.get("info") or {}).get("source_info") or {}).get("wal_segment_size")
        if size:
            return int(size)
    return 16 * 1024 * 1024


def _segno(name: str, seg_size: int) -> int:
    per_id = 0x100000000 // seg_size
    return int(name[8:16], 16) * per_id + int(name[16:24], 16)


def _segname(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_start_lsn(name: str, seg_size: int) -> int:
    """The WAL position (LSN, as an integer) where segment `name` begins."""
    return _segno(name, seg_size) * seg_size


def _clean_spool(spool: str, current: str) -> None:
    """Drop spooled segments older than the one asked for (a previous recovery's leftovers)."""
    try:
        for entry in os.listdir(spool):
            if _SEGMENT.match(entry) and entry[8:] < current[8:]:
                os.unlink(os.path.join(spool, entry))
    except OSError:
        pass


def _write_atomic(dest: str, data: bytes) -> None:
    temp = f"{dest}.insite-tmp"
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, dest)


def _place(spooled: str, dest: str, move: bool) -> None:
    try:
        os.replace(spooled, dest)
    except OSError:
        shutil.copyfile(spooled, dest + ".insite-tmp")
        os.replace(dest + ".insite-tmp", dest)
        os.unlink(spooled)


# ----- windows, continuity, lag ---------------------------------------------------------------------

def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: [(parent timeline, LSN where it was left)], oldest first."""
    from insite_console.sources.pg_client import parse_lsn

    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            entries.append((int(fields[0]), parse_lsn(fields[1])))
    return entries


def resolve_timeline(names, start_timeline: int, wanted: str | int | None) -> int:
    """The timeline recovery follows: `latest` (PostgreSQL's default: probe N+1.history in the
    archive from the base backup's timeline up), `current` (the base backup's), or a number."""
    if wanted in (None, "", "latest"):
        timeline = start_timeline
        while history_name(timeline + 1) in names:
            timeline += 1
        return timeline
    if wanted == "current":
        return start_timeline
    return int(wanted)


def timeline_path(repo, source: str, timeline: int, names) -> list[dict[str, Any]]:
    """The timelines recovery to `timeline` passes through, from its history file in the archive:
    [{"timeline", "begin": LSN or None, "end": LSN or None}], oldest first. Raises WalNotFound when
    a timeline above 1 has no history file."""
    if timeline == 1:
        return [{"timeline": 1, "begin": None, "end": None}]
    if history_name(timeline) not in names:
        raise WalNotFound(f"timeline {timeline} has no history file ({history_name(timeline)}) in the archive")
    path, begin = [], None
    for parent, switch in parse_history(repo.get_sealed(wal_key(source, history_name(timeline))).decode()):
        path.append({"timeline": parent, "begin": begin, "end": switch})
        begin = switch
    path.append({"timeline": timeline, "begin": begin, "end": None})
    return path


def _owner(path: list[dict], segno: int, seg_size: int) -> int:
    """The timeline whose copy of segment `segno` recovery along `path` reads (as PostgreSQL
    does: the newest timeline that had begun by that segment)."""
    owner = path[0]["timeline"]
    for entry in path:
        if entry["begin"] is None or segno >= entry["begin"] // seg_size:
            owner = entry["timeline"]
    return owner


def check_continuity(ws, source: str, start_wal: str | None, stop_wal: str | None, at: datetime | None,
                     seg_size: int, repo=None, target_timeline: str | int | None = None) -> dict[str, Any]:
    """Pre-flight of a point-in-time restore: is the WAL continuous from the base backup's start
    to the target, along the timelines to `target_timeline` (latest by default, through their
    history files), and does the archive reach the target? Returns problems (refuse) and notes."""
    problems: list[str] = []
    warnings: list[str] = []
    if not start_wal:
        return {"problems": ["the backup's manifest has no start WAL file; it is not a physical base backup"],
                "warnings": warnings}
    start_tli = int(start_wal[:8], 16)
    try:
        repo = repo or ws.repository(storage_for_source(ws, source))
        names = archived_names(repo, source)
        timeline = resolve_timeline(names, start_tli, target_timeline)
        path = timeline_path(repo, source, timeline, names)
    except (StorageError, WalNotFound) as exc:
        return {"problems": [f"cannot follow the WAL archive: {exc}"], "warnings": warnings}
    except InsiteError as exc:
        return {"problems": [f"cannot read the timeline history: {exc}"], "warnings": warnings}
    start_no = _segno(start_wal, seg_size)
    result: dict[str, Any] = {"problems": problems, "warnings": warnings, "timeline": timeline,
                              "timelines": [entry["timeline"] for entry in path]}
    on_path = next((entry for entry in path if entry["timeline"] == start_tli), None)
    if on_path is None:
        problems.append(f"timeline {timeline} does not descend from timeline {start_tli} of this base backup "
                        f"(its history: {' → '.join(str(e['timeline']) for e in path)}); pick another "
                        "--target-timeline or base backup")
        return result
    if on_path["end"] is not None and start_no > on_path["end"] // seg_size:
        problems.append(f"timeline {timeline} branched off timeline {start_tli} (in segment "
                        f"{_segname(start_tli, on_path['end'] // seg_size, seg_size)}) before this base backup "
                        f"started ({start_wal}): use --target-timeline current, or a base backup taken on "
                        f"timeline {timeline}")
        return result

    def name(no: int) -> str:
        return _segname(_owner(path, no, seg_size), no, seg_size)

    present = {no for no in (_segno(n, seg_size) for n in names if _SEGMENT.match(n)) if name(no) in names}
    stop_no = _segno(stop_wal, seg_size) if stop_wal else start_no
    last = start_no - 1
    while last + 1 in present:
        last += 1
    if last < start_no:
        problems.append(f"WAL segment {start_wal}, where the base backup starts, is not in the archive")
        return result
    if last < stop_no:
        problems.append(f"WAL is missing: segment {name(last + 1)} is needed to make the "
                        f"base backup consistent (up to {stop_wal}) but is not in the archive")
        return result
    rows = {row["name"]: row for row in list_segments(ws, source)} if ws is not None else {}
    needed_no = last
    newest = max(present)
    if at is None and newest > last:
        problems.append(f"WAL has a gap: segment {name(last + 1)} is missing, so a restore to "
                        f"the latest point would stop at {name(last)} although the archive "
                        f"goes on to {name(newest)} (see `insite-console wal {source}`)")
    if at is not None:
        timed = [(_segno(n, seg_size), row) for n, row in rows.items()
                 if _SEGMENT.match(n) and name(_segno(n, seg_size)) == n and row.get("last_time")]
        after = sorted(no for no, row in timed if clock.parse_iso(row["last_time"]) >= at and no >= start_no)
        if not timed:
            warnings.append("the catalog has no commit times for this source's WAL (was wal-push able to write "
                            "the catalog?); cannot check that the archive reaches the target time")
        elif not after:
            newest = max(clock.parse_iso(row["last_time"]) for _no, row in timed)
            problems.append(f"the target {clock.iso_precise(at)} is after the newest archived transaction "
                            f"on timeline {timeline} ({clock.iso_precise(newest)}); recovery would end before "
                            "reaching it. Archive lag or no activity since: wait for the next segment (or run "
                            "SELECT pg_switch_wal() on the server) and retry")
        else:
            needed_no = after[0]
            if needed_no > last:
                problems.append(f"WAL has a gap: segment {name(last + 1)} is missing, "
                                f"so the target {clock.iso_precise(at)} cannot be reached (the archive is "
                                f"continuous up to {name(last)})")
    result.update({"last_needed": name(needed_no), "last_contiguous": name(last),
                   "segments": needed_no - start_no + 1,
                   "wal_bytes_estimate": (needed_no - start_no + 1) * seg_size})
    return result


def archive_check(ws, source: str, deep: bool = False, sync: bool = True) -> dict[str, Any]:
    """Continuity (and with `deep`, integrity) of a source's WAL archive, timeline by timeline:
    every segment from the oldest kept base backup's start on that timeline (else the first
    archived one) to the newest archived one, and each base backup's start..stop. `sync` makes
    the catalog's listing match storage first. Returns {"source", "storage", "deep", "status":
    ok | gap | failed | unknown, "timelines", "gaps", "segments", "bytes", "problems", "checked_at"}."""
    storage = storage_for_source(ws, source)
    result: dict[str, Any] = {"source": source, "storage": storage, "deep": deep, "status": "unknown",
                              "timelines": [], "gaps": [], "segments": 0, "bytes": 0, "problems": [],
                              "checked_at": clock.iso(clock.now())}
    problems: list[str] = result["problems"]
    try:
        repo = ws.repository(storage)
        names = archived_names(repo, source)
    except InsiteError as exc:
        problems.append(f"cannot list the WAL archive of {source} on storage {storage}: {exc}")
        return result
    if sync:
        sync_catalog(ws, source, names)
    seg_size = _segment_size(ws, source)
    present: dict[int, set[int]] = {}
    for name in names:
        if _SEGMENT.match(name):
            present.setdefault(int(name[:8], 16), set()).add(_segno(name, seg_size))
    starts: dict[int, int] = {}
    for backup in ws.catalog.backups(status="succeeded", source=source):
        info = (backup.get("info") or {}).get("source_info") or {}
        start, stop = info.get("start_wal_file"), info.get("stop_wal_file") or info.get("start_wal_file")
        if info.get("mode") != "physical" or not start:
            continue
        timeline, start_no = int(start[:8], 16), _segno(start, seg_size)
        starts[timeline] = min(start_no, starts.get(timeline, start_no))
        lacking = [no for no in range(start_no, _segno(stop, seg_size) + 1) if no not in present.get(timeline, ())]
        if lacking:
            problems.append(f"base backup {backup['id']} cannot be made consistent: WAL segment "
                            f"{_segname(timeline, lacking[0], seg_size)} (of {start} … {stop}) is not in the archive")
            _add_gap(result, timeline, lacking[0], lacking[-1], seg_size)
    branches = _branches(repo, source, names, present, seg_size, result, problems)
    checked: list[str] = []
    for timeline in sorted(present):
        numbers = present[timeline]
        low, high = starts.get(timeline, min(numbers)), max(numbers)
        if timeline in branches:  # a timeline begins in the segment where it left its parent
            low = min(low, branches[timeline][1])
        kept = sorted(no for no in numbers if no >= low)
        row = {"timeline": timeline, "first": _segname(timeline, low, seg_size),
               "last": _segname(timeline, high, seg_size), "segments": len(kept)}
        if timeline in branches:
            row["parent"] = branches[timeline][0]
        result["timelines"].append(row)
        previous = low - 1
        for no in kept:
            if no > previous + 1:
                _add_gap(result, timeline, previous + 1, no - 1, seg_size)
                problems.append(f"WAL gap on timeline {timeline}: {_gap_text(timeline, previous + 1, no - 1, seg_size)} "
                                f"missing; recovery cannot pass {_segname(timeline, previous, seg_size)}")
            previous = no
        checked += [_segname(timeline, no, seg_size) for no in kept]
    result["segments"] = len(checked)
    damaged: list[str] = []
    if deep:
        digests = {row["name"]: row.get("sha256") for row in list_segments(ws, source)}

        def read(name: str) -> tuple[int, str | None]:
            try:
                data = repo.get_sealed(wal_key(source, name))
            except InsiteError as exc:
                return 0, f"WAL segment {name} is unreadable: {exc}"
            if digests.get(name) and hashlib.sha256(data).hexdigest() != digests[name]:
                return len(data), f"WAL segment {name} differs from what wal-push archived (SHA-256 mismatch)"
            return len(data), None

        with ThreadPoolExecutor(4, thread_name_prefix="insite-wal-verify") as pool:
            for size, problem in pool.map(read, checked):
                result["bytes"] += size
                if problem:
                    damaged.append(problem)
        problems += damaged
    result["status"] = "failed" if damaged else "gap" if result["gaps"] or problems else "ok"
    return result


def _branches(repo, source: str, names, present: dict[int, set[int]], seg_size: int, result: dict,
              problems: list[str]) -> dict[int, tuple[int, int]]:
    """Continuity across timelines, through their history files: timeline -> (parent, the segment
    where it branched off). The parent's segments up to that one must be archived; a timeline
    with segments but no history file, above one with segments, cannot be followed."""
    branches: dict[int, tuple[int, int]] = {}
    for timeline in sorted(present):
        if timeline == 1 or not any(lower < timeline for lower in present):
            continue
        try:
            path = timeline_path(repo, source, timeline, names)
        except WalNotFound:
            problems.append(f"timeline {timeline} has archived segments but no {history_name(timeline)} in the "
                            "archive: recovery cannot follow it (was it promoted without archiving?)")
            continue
        except InsiteError as exc:
            problems.append(f"cannot read {history_name(timeline)} from the archive: {exc}")
            continue
        parent, switch = path[-2]["timeline"], path[-1]["begin"] // seg_size
        branches[timeline] = (parent, switch)
        kept = present.get(parent)
        if kept and min(kept) < switch and max(kept) < switch - 1:
            _add_gap(result, parent, max(kept) + 1, switch - 1, seg_size)
            problems.append(f"WAL gap on timeline {parent}: {_gap_text(parent, max(kept) + 1, switch - 1, seg_size)} "
                            f"missing before timeline {timeline} branched off; recovery to timeline {timeline} "
                            f"cannot pass {_segname(parent, max(kept), seg_size)}")
    return branches


def _add_gap(result: dict, timeline: int, first: int, last: int, seg_size: int) -> None:
    gap = {"timeline": timeline, "first": _segname(timeline, first, seg_size),
           "last": _segname(timeline, last, seg_size), "count": last - first + 1}
    if gap not in result["gaps"]:
        result["gaps"].append(gap)


def _gap_text(timeline: int, first: int, last: int, seg_size: int) -> str:
    if first == last:
        return f"segment {_segname(timeline, first, seg_size)} is"
    return f"segments {_segname(timeline, first, seg_size)} … {_segname(timeline, last, seg_size)} ({last - first + 1}) are"


def restorable_window(ws, source: str, now: datetime | None = None) -> dict[str, Any]:
    """Per physical source: the window one can restore to and the archive lag (the real RPO).

    Returns {"source", "oldest": ISO of the oldest base backup's end, "newest": ISO of the newest
    archived commit (or, without commit times, when the newest segment was archived),
    "archive_lag_seconds": now - when the newest segment was archived, "segments", "base_backups"}.
    """
    backups = []
    for backup in ws.catalog.backups(status="succeeded", source=source):
        info = (backup.get("info") or {}).get("source_info") or {}
        if info.get("mode") == "physical" and info.get("stop_time"):
            backups.append(info["stop_time"])
    rows = list_segments(ws, source)
    newest_commit = max((row["last_time"] for row in rows if row.get("last_time")), default=None)
    newest_archived = max((row["archived_at"] for row in rows if row.get("archived_at")), default=None)
    lag = None
    if newest_archived:
        lag = ((now or clock.now()) - clock.parse_iso(newest_archived)).total_seconds()
    return {"source": source, "oldest": min(backups) if backups else None,
            "newest": newest_commit or newest_archived, "archive_lag_seconds": lag,
            "segments": len(rows), "base_backups": len(backups)}


def console_command() -> str:
    """The insite-console executable to name in restore_command / archive_command."""
    candidate = Path(sys.executable).parent / "insite-console"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("insite-console")
    if found:
        return found
    return f"{sys.executable} -m insite_console"


def prune(ws, source: str, dry_run: bool = False) -> dict[str, Any]:
    """WAL retention: delete archived segments older than the start of the oldest restorable
    (succeeded) physical base backup of `source`; they can no longer be replayed from any base
    backup. Keeps everything when there is no such backup. `.history` files are always kept."""
    from insite_console.repo.repository import SEALED

    starts = []
    for backup in ws.catalog.backups(status="succeeded", source=source):
        info = (backup.get("info") or {}).get("source_info") or {}
        if info.get("mode") == "physical" and info.get("start_wal_file"):
            starts.append(info["start_wal_file"])
    if not starts:
        return {"source": source, "deleted": [], "kept_from": None}
    oldest = min(starts, key=lambda name: (name[8:], name[:8]))
    storage = storage_for_source(ws, source)
    repo = ws.repository(storage)
    doomed = []
    for name in sorted(archived_names(repo, source)):
        segment = name[:24]
        if _SEGMENT.match(segment) and segment[8:] < oldest[8:]:
            doomed.append(name)
    if doomed and not dry_run:
        repo.storage.delete([SEALED + wal_key(source, name) for name in doomed])
        db = _db(ws)
        for name in doomed:
            db.execute("DELETE FROM wal_segments WHERE source = ? AND name = ?", (source, name))
    return {"source": source, "deleted": doomed, "kept_from": oldest, "dry_run": dry_run}
