"""Restore a backup: plan first, then write in parallel, never outside the target.

A file-tree restore streams the stored tree twice: once to plan (what is created, what would
be overwritten, what is already identical and skipped), once to write. Every file is written
to a temporary name and renamed into place, so an interrupted restore leaves whole files
only, and running it again fetches just what is missing. Directories are opened component by
component with O_NOFOLLOW relative to the target, so no manifest can make a restore write
through a symlink or outside its target.
"""

from __future__ import annotations

import collections
import errno
import functools
import os
import secrets
import socket
import stat
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

from insite_console import alerts, audit, clock, globs, who, workers
from insite_console.durable import flush_to_disk, flushing_along
from insite_console.errors import Cancelled, InsiteError, IntegrityError, RestoreRefused, UsageError
from insite_console.events import Budget, CancelToken, ProgressCallback, ProgressReporter
from insite_console.redact import redact, redact_all
from insite_console.repo.crypto import Cipher
from insite_console.repo.index import BlobLocation
from insite_console.repo.packs import pack_key
from insite_console.repo.repository import Repository, open_sealed_blob
from insite_console.repo.tree import TreeReader, in_blocks
from insite_console.sources import source_module
from insite_console.storage.local import LocalStorage, OpenObjects
from insite_console.repo.entry import Entry

DEFAULT_THROUGHPUT = 150 * 1024 * 1024  # bytes/s assumed for an estimate before any restore was measured
PLAN_LIMIT = 1000  # plan items listed in full; the totals always count everything
_TEMP = ".insite-restore-"


@dataclass
class RestoreContext:
    """Everything a source's restore function needs."""

    ws: Any
    repo: Repository
    backup: dict
    manifest: dict
    target: str
    includes: list[str]
    dry_run: bool
    yes: bool
    at: datetime | None
    reporter: ProgressReporter
    cancel: CancelToken
    options: dict[str, Any] = field(default_factory=dict)

    def entries(self) -> Iterator[Entry]:
        return iter(TreeReader(self.repo, self.manifest["tree"]))

    def open_entry(self, entry: Entry):
        return self.repo.open_chunks(entry.chunks or [])

    def estimate_seconds(self, byte_count: int) -> tuple[float, str]:
        measured = self.ws.catalog.restore_throughput()
        rate = measured or DEFAULT_THROUGHPUT
        basis = "measured from past restores" if measured else "assumed 150 MiB/s (no restore measured yet)"
        return byte_count / rate, basis


def taken_at(backup: dict) -> datetime:
    """When a restore point was taken: its start (what lists and `--at` compare against)."""
    return clock.parse_iso(backup["started_at"])


def resolve_backup(ws, reference: str, at: datetime | None) -> dict:
    """A backup id (or unique prefix); or a policy/source name, then the newest restore point
    at or before `at` (or the newest of all)."""
    catalog = ws.catalog
    backup = catalog.backup(reference)
    physical = [name for name, settings in ws.config.sources.items()
                if settings["type"] == "postgresql" and settings.get("mode") == "physical"]
    if backup is None and at is not None:
        source = ws.config.policies[reference]["source"] if reference in ws.config.policies else reference
        if source in physical:  # PITR: the newest base backup that *ended* before the target
            from insite_console.sources.pg_restore_physical import pick_base_backup

            return pick_base_backup(ws, source, at)
    if backup is None:
        candidates = [b for b in catalog.backups(status="succeeded")
                      if reference in (b["policy"], b["source"])]
        if at is not None:
            candidates = [b for b in candidates if taken_at(b) <= at]
        if not candidates:
            raise UsageError(f"no backup {reference!r}: not a backup id, or no restorable backup of a policy or "
                             "source by that name" + (f" before {clock.iso(at)}" if at else ""))
        backup = candidates[0]
    if at is not None and taken_at(backup) > at:  # never restore data newer than the time asked
        raise RestoreRefused(f"restore point {backup['id']} was taken at {backup['started_at']}, after the time "
                             f"asked ({clock.iso(at)}); choose one taken before it, or give the policy or source "
                             "name to pick the newest one before it")
    if backup["status"] != "succeeded":
        raise RestoreRefused(f"backup {backup['id']} is {backup['status']}"
                             + (f" ({backup['error']})" if backup.get("error") else "")
                             + "; it is not a restore point")
    return backup


def over_source(ws, backup: dict, target: str) -> bool:
    """Whether `target` is where the backup's source lives (a restore over production): a file
    tree restored into / (its paths are stored from the root), a database or Redis restored
    into the source's own DSN or URL, a Redis RDB into the source's `data_dir`, a physical
    PostgreSQL base backup into a data directory of the same cluster (its `global/pg_control`
    system identifier is the backup's), unless an earlier restore made it as a copy."""
    settings = ws.config.sources.get(backup["source"], {})
    kind = settings.get("type", backup.get("source_type"))
    target = str(target).strip()
    if not target:
        return False
    if kind == "files":
        return os.path.realpath(target) == "/"
    own = settings.get("dsn") or settings.get("url")
    if own and _server_of(target) == _server_of(str(own)):
        return True
    sysid = ((backup.get("info") or {}).get("source_info") or {}).get("system_identifier")
    if sysid and "://" not in target and _pg_control_system_identifier(target) == str(sysid):
        return not _restored_copy(target)
    data_dir = settings.get("data_dir")
    return bool(data_dir) and "://" not in target and os.path.realpath(target) == os.path.realpath(data_dir)


_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432}


def _pg_control_system_identifier(path: str) -> str | None:
    """The system identifier of the PostgreSQL data directory at `path` (the first 8 bytes of
    global/pg_control, in the machine's byte order), or None when it is no data directory."""
    import sys

    try:
        with open(os.path.join(path, "global", "pg_control"), "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return str(int.from_bytes(head, sys.byteorder)) if len(head) == 8 else None


def _restored_copy(path: str) -> bool:
    """A data directory an earlier restore laid out as a copy (its postgresql.auto.conf's last
    insite-console block sets archive_mode = off): same system identifier as production, but
    not production. One restored `--as-primary` (archive_mode = on) is the new production."""
    try:
        with open(os.path.join(path, "postgresql.auto.conf"), errors="replace") as handle:
            text = handle.read()
    except OSError:
        return False
    marker = text.rfind("# added by insite-console restore of backup")
    return marker >= 0 and "archive_mode = off" in text[marker:]


def _pg_server_of(address: str) -> tuple | None:
    """A PostgreSQL URL or key=value DSN as ("postgresql", host, port, dbname) with libpq's
    defaults filled in (no host: the local socket; port 5432; dbname: the user, else postgres),
    or None when it does not parse as one."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(address)
    except (ProgrammingError, ValueError):
        return None
    host = str(params.get("host") or params.get("hostaddr") or "local socket").lower()
    host = "127.0.0.1" if host in ("localhost", "::1") else host
    port = int(params["port"]) if str(params.get("port") or "").isdigit() else 5432
    return ("postgresql", host, port, str(params.get("dbname") or params.get("user") or "postgres"))


def _server_of(address: str) -> tuple | str:
    """A DSN or URL as (scheme, host, port, database), defaults filled in and credentials left
    out, so `redis://localhost:6379` and `redis://u:p@127.0.0.1:6379/0` are the same server, and
    a PostgreSQL key=value DSN the same as its URL; anything else as its stripped text."""
    from urllib.parse import urlsplit

    address = address.strip()
    if address.split("://", 1)[0].lower() in ("postgresql", "postgres") or ("://" not in address and "=" in address):
        return _pg_server_of(address) or address
    if "://" not in address:
        return address
    try:
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "localhost").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return address
    host = "127.0.0.1" if host in ("localhost", "::1") else host
    database = parts.path.strip("/") or ("0" if scheme.startswith("redis") else "")
    return ("postgresql" if scheme == "postgres" else scheme, host, port, database)


def run(ws, backup_ref: str, target: str, includes: list[str] | None = None, dry_run: bool = False,
        yes: bool = False, at: datetime | None = None, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None, options: dict[str, Any] | None = None,
        storage: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Restore a backup (or plan it with dry_run); returns the contract's restore JSON.
    `storage` reads it from that storage's copy instead of the first one that holds it.
    A restore over production (`over_source`) needs a `reason` (a ticket id will do); the
    reason, who restored and the outcome go into the catalog and, sealed, every repository."""
    backup = resolve_backup(ws, backup_ref, at)
    production = over_source(ws, backup, target)
    reason = redact(reason.strip()) if reason and reason.strip() else None
    shown = redact(str(target))  # what is printed and stored: never a password typed into a target URL
    if production and not dry_run and reason is None:
        raise RestoreRefused(f"{shown} is where {backup['source']} lives: a restore over production needs a reason "
                             "or ticket id (--reason \"INC-123: ...\"); nothing was written")
    cancel = cancel or CancelToken()
    catalog = ws.catalog
    restore_id = clock.new_id()
    started = clock.now()
    reporter = ProgressReporter("restore", [progress])
    reporter.update(run_id=restore_id, phase="planning", force=True)
    row = {"id": restore_id, "backup_id": backup["id"], "target": shown, "status": "running",
           "started_at": clock.iso(started), "dry_run": int(dry_run), "user": who.user(),
           "host": socket.gethostname(), "origin": who.origin(), "policy": backup["policy"],
           "includes": list(includes or []), "over_source": int(production), "reason": reason}
    if not dry_run:
        from insite_console.events import catalog_writer

        catalog.start_run(restore_id, "restore", backup["id"])
        catalog.insert_restore(row)
        reporter.add_callback(catalog_writer(catalog, restore_id))
        catalog.event(restore_id, f"restore of {backup['id']} into {shown} started")
        alerts.fire(ws, "restore_started", backup["policy"], f"restore {restore_id} of {backup['id']} into {shown} "
                    "started", {"restore_id": restore_id, "backup_id": backup["id"], "target": shown})
    try:
        repo = ws.repository(storage or ws.storage_for_backup(backup))
        with repo.lock(f"restore of {backup['id']}"):
            manifest = repo.load_manifest(backup["id"])
            ctx = RestoreContext(ws, repo, backup, manifest, target, list(includes or []), dry_run, yes, at,
                                 reporter, cancel, dict(options or {}))
            if manifest["source_type"] == "files":
                outcome = restore_files(ctx)
            else:
                outcome = source_module(manifest["source_type"]).restore(ctx)
    except BaseException as exc:
        if not dry_run:
            status = "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed"
            message = redact(str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}")
            catalog.insert_restore({**row, "status": status, "error": message,
                                    "finished_at": clock.iso(clock.now())})
            catalog.finish_run(restore_id, status, message)
            audit.seal_restore(ws, restore_id)
            catalog.event(restore_id, f"restore {restore_id} {status}: {message}",
                          level="warning" if status == "cancelled" else "error")
            alerts.fire(ws, "restore_finished", backup["policy"], f"restore {restore_id} of {backup['id']} {status}: "
                        f"{message}", {"restore_id": restore_id, "backup_id": backup["id"], "target": shown,
                                       "status": status, "error": message})
        raise
    finished = clock.now()
    result = {"id": restore_id, "backup_id": backup["id"], "status": "planned" if dry_run else "succeeded",
              "target": shown, "files": outcome.get("files", 0), "bytes_written": outcome.get("bytes_written", 0),
              "started_at": clock.iso(started), "finished_at": clock.iso(finished), "error": None,
              "over_source": production, "reason": reason}
    # notes and details name the target; the plan lists stored paths, shown as they are
    outcome = {key: value if key == "plan" else redact_all(value) for key, value in outcome.items()}
    for key, value in outcome.items():
        if key not in result:
            result[key] = value
    if not dry_run:
        catalog.insert_restore({**row, "status": "succeeded", "files": result["files"],
                                "bytes_written": result["bytes_written"], "finished_at": clock.iso(finished),
                                "info": {k: v for k, v in outcome.items() if k not in ("plan",)}})
        catalog.finish_run(restore_id, "succeeded")
        audit.seal_restore(ws, restore_id)
        catalog.event(restore_id, f"restore {restore_id} succeeded: {result['files']} files, "
                      f"{result['bytes_written']} bytes into {shown}")
        alerts.fire(ws, "restore_finished", backup["policy"], f"restore {restore_id} of {backup['id']} succeeded: "
                    f"{result['files']} files into {shown}", {"restore_id": restore_id, "backup_id": backup["id"],
                                                              "target": shown, "status": "succeeded", "error": None})
    reporter.update(phase="done", force=True)
    return result


# ----- file trees ----------------------------------------------------------------------


def check_relative_path(path: str) -> list[str]:
    """The path's components, or RestoreRefused if it could escape the target."""
    if not path or "\x00" in path or path.startswith("/"):
        raise RestoreRefused(f"refusing stored path {path!r}: absolute or empty")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RestoreRefused(f"refusing stored path {path!r}: contains '..', '.' or an empty component")
    return parts


def _selected(entry: Entry, includes: list[str]) -> bool:
    if not includes:
        return True
    path = "/" + entry.path
    if any(globs.matches(p, path) for p in includes):
        return True
    return entry.type == "dir" and any(globs.could_match_below(p, path) for p in includes)


def _same_content(repo: Repository, fd: int, entry: Entry) -> bool:
    """Is the open file byte-identical to the stored entry? Hash it along the stored chunk boundaries."""
    for chunk_id, length in entry.chunks or []:
        data = os.read(fd, length) if length else b""
        while len(data) < length:
            more = os.read(fd, length - len(data))
            if not more:
                return False
            data += more
        if repo.blob_id(data).hex() != chunk_id:
            return False
    return os.read(fd, 1) == b""


#: folders of the target kept open while restoring (well under the usual limit of 1024 descriptors)
_DIR_CACHE = 64


class _Target:
    """The target directory, opened once; every path below it is reached without following symlinks.

    Folders opened are kept open (the most recent `_DIR_CACHE` of them), so a file's folder
    costs one dup instead of an open per path component: a descriptor, once checked, stays
    the folder it was, whatever is renamed or swapped in above it later."""

    def __init__(self, root: str, create: bool):
        if create:
            os.makedirs(root, exist_ok=True)
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._lock = threading.Lock()
        self._dirs: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()
        #: a folder of each filesystem reached below the target (mount points inside it), to flush
        self._filesystems: dict[int, int] = {os.fstat(self.fd).st_dev: os.dup(self.fd)}

    def devices(self) -> list[int]:
        """The filesystems (st_dev) the restore reached."""
        with self._lock:
            return list(self._filesystems)

    def filesystems(self) -> list[int]:
        """A descriptor on each filesystem the restore reached (the target's first)."""
        with self._lock:
            return list(self._filesystems.values())

    def close(self) -> None:
        with self._lock:
            for fd in [*self._dirs.values(), *self._filesystems.values()]:
                os.close(fd)
            self._dirs.clear()
            self._filesystems.clear()
        os.close(self.fd)

    def _keep(self, key: tuple[str, ...], fd: int) -> None:
        with self._lock:
            if key in self._dirs:
                return
            self._dirs[key] = os.dup(fd)
            if len(self._dirs) > _DIR_CACHE:
                os.close(self._dirs.popitem(last=False)[1])

    def open_dir(self, parts: list[str], create: bool) -> int | None:
        """fd of the directory T/parts..., creating missing ones; None if missing and not create.
        The caller closes it."""
        key = tuple(parts)
        with self._lock:
            depth = len(key)
            while depth and key[:depth] not in self._dirs:
                depth -= 1
            if depth:
                self._dirs.move_to_end(key[:depth])
            fd = os.dup(self._dirs[key[:depth]] if depth else self.fd)
        try:
            for i in range(depth, len(parts)):
                part = parts[i]
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = os.path.join(self.root, *parts[: i + 1])
                        raise RestoreRefused(f"refusing to write through {where}: it is a symlink or not a "
                                             "directory") from None
                    raise
                os.close(fd)
                fd = nxt
                self._keep(key[: i + 1], fd)
                device = os.fstat(fd).st_dev
                with self._lock:
                    if device not in self._filesystems:
                        self._filesystems[device] = os.dup(fd)
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise

    def leftovers(self, parts: list[str]) -> list[str]:
        """The temporary files in folder T/parts that a restore killed while writing left there
        (no process of that pid is alive)."""
        fd = self.open_dir(parts, create=False)
        if fd is None:
            return []
        try:
            with os.scandir(fd) as listing:
                return ["/".join([*parts, item.name]) for item in listing if item.name.startswith(_TEMP)
                        and not item.is_dir(follow_symlinks=False) and not _writer_alive(item.name)]
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        parts = path.split("/")
        dir_fd = self.open_dir(parts[:-1], create=False)
        if dir_fd is not None:
            try:
                os.unlink(parts[-1], dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(dir_fd)

    def lstat(self, parts: list[str]) -> os.stat_result | None:
        dir_fd = self.open_dir(parts[:-1], create=False)
        if dir_fd is None:
            return None
        try:
            return os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)


@dataclass
class _LinkGroup:
    """A hard-link group: its content (the leader's) and the member restored first, which the
    others are linked to."""

    chunks: list[tuple[str, int]] | None
    size: int
    xattrs: dict[str, bytes] | None = None
    writer: str | None = None
    writer_action: str = "create"


def _temp_name() -> str:
    """A temporary name saying which process writes it (`.insite-restore-PID-HEX`), so that a
    later restore removes what a killed one left behind, and never what a running one writes."""
    return f"{_TEMP}{os.getpid()}-{secrets.token_hex(6)}"


def _writer_alive(name: str) -> bool:
    pid, dash, _ = name[len(_TEMP):].partition("-")
    if not dash or not pid.isdigit():
        return False  # not a name this version writes: from an older one, long gone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process holds that pid (or a pid from elsewhere): kept
    return True


def _group_of(entry: Entry, groups: dict[str, _LinkGroup]) -> _LinkGroup | None:
    """Record a leader; give a member its group's content. None: not hard-linked, or a member
    whose leader is not in the tree (it could not be read when backed up)."""
    if entry.type != "file" or entry.hardlink is None:
        return None
    if not entry.link_member:
        groups[entry.path] = _LinkGroup(entry.chunks, entry.size, entry.xattrs)
    group = groups.get(entry.hardlink)
    if group is not None:
        entry.chunks, entry.size, entry.xattrs = group.chunks, group.size, group.xattrs
    return group


def _same_node(entry: Entry, existing: os.stat_result, target: _Target, parts: list[str]) -> bool:
    """Does the existing non-file node already hold what the entry stores (metadata aside)?"""
    if entry.type == "dir":
        return stat.S_ISDIR(existing.st_mode)
    if entry.type == "symlink":
        if not stat.S_ISLNK(existing.st_mode):
            return False
        dir_fd = target.open_dir(parts[:-1], create=False)
        try:
            return os.readlink(parts[-1], dir_fd=dir_fd) == entry.target
        finally:
            os.close(dir_fd)
    if entry.type == "fifo":
        return stat.S_ISFIFO(existing.st_mode)
    is_type = stat.S_ISCHR if entry.type == "chardev" else stat.S_ISBLK
    return is_type(existing.st_mode) and entry.rdev == (os.major(existing.st_rdev), os.minor(existing.st_rdev))


def _plan_files(ctx: RestoreContext, target: _Target | None) -> dict[str, Any]:
    """Classify every selected entry: create, overwrite, repair (same content, other metadata)
    or skip (already identical)."""
    plan: list[dict] = []
    counts = {"create": 0, "overwrite": 0, "repair": 0, "skip": 0}
    byte_counts = {"create": 0, "overwrite": 0, "repair": 0, "skip": 0}
    identical: set[str] = set()
    overwrite_examples: list[str] = []
    groups: dict[str, _LinkGroup] = {}
    orphans: list[str] = []
    leftovers: list[str] = []  # temporary files of a killed restore, removed by this one
    files = 0  # regular files to write (hard links included), as a backup counts them
    for entry in ctx.entries():
        ctx.cancel.check()
        group = _group_of(entry, groups)
        if not _selected(entry, ctx.includes):
            continue
        parts = check_relative_path(entry.path)
        if entry.link_member and group is None:
            orphans.append("/" + entry.path)
            continue
        linked = group is not None and group.writer is not None  # restored as a link to the writer
        existing = target.lstat(parts) if target is not None else None
        action = "create"
        if existing is not None and entry.type == "dir" and stat.S_ISDIR(existing.st_mode):
            leftovers.extend(target.leftovers(parts))
        if existing is not None:
            if linked:
                writer = target.lstat(check_relative_path(group.writer))
                same = writer is not None and (writer.st_dev, writer.st_ino) == (existing.st_dev, existing.st_ino)
                action = "skip" if same and group.writer_action == "skip" else "overwrite"
            elif entry.type != "file":
                action = "skip" if _same_node(entry, existing, target, parts) else "overwrite"
            elif stat.S_ISREG(existing.st_mode) and existing.st_size == entry.size:
                dir_fd = target.open_dir(parts[:-1], create=False)
                try:
                    fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
                    try:
                        action = "skip" if _same_content(ctx.repo, fd, entry) else "overwrite"
                    finally:
                        os.close(fd)
                finally:
                    os.close(dir_fd)
            else:
                action = "overwrite"
        if action == "skip" and not linked and entry.type != "dir" and _metadata_differs(target, entry, parts):
            action = "repair"  # same content; mode, owner, times or extended attributes differ
            # (existing folders are merged into, as tar does: their metadata is put back unasked)
        if group is not None and group.writer is None:
            group.writer, group.writer_action = entry.path, "skip" if action == "repair" else action
        if action in ("skip", "repair") and entry.type != "dir":
            identical.add(entry.path)
        if action in ("overwrite", "repair") and len(overwrite_examples) < 5:
            overwrite_examples.append(os.path.join(ctx.target, entry.path))
        size = entry.size if entry.type == "file" and not linked else 0
        counts[action] += 1
        byte_counts[action] += size
        files += entry.type == "file" and action in ("create", "overwrite")
        if len(plan) < PLAN_LIMIT:
            plan.append({"path": "/" + entry.path, "type": entry.type, "action": action, "bytes": size})
    return {"plan": plan, "counts": counts, "bytes": byte_counts, "files": files, "identical": identical,
            "overwrite_examples": overwrite_examples, "orphans": orphans, "leftovers": leftovers}


VERIFICATION = ("every chunk was authenticated (AES-GCM, bound to its id) as it was read and each file's "
                "length checked against the backup; files already identical were hashed along the stored "
                "chunks; everything written was flushed to disk (syncfs of each filesystem written to) "
                "before the restore was reported done. Modes, owners, times and extended attributes were applied, not read back.")


def restore_files(ctx: RestoreContext) -> dict[str, Any]:
    target_exists = os.path.isdir(ctx.target)
    if os.path.lexists(ctx.target) and not target_exists:
        raise RestoreRefused(f"target {ctx.target} exists and is not a directory")
    target = _Target(ctx.target, create=False) if target_exists else None
    try:
        planned = _plan_files(ctx, target)
    finally:
        if target is not None:
            target.close()
    counts, byte_counts = planned["counts"], planned["bytes"]
    to_write = byte_counts["create"] + byte_counts["overwrite"]
    seconds, basis = ctx.estimate_seconds(to_write)
    summary = {
        "to_create": counts["create"], "to_overwrite": counts["overwrite"], "to_repair": counts["repair"],
        "identical": counts["skip"],
        "bytes_to_write": to_write, "estimated_seconds": round(seconds, 1), "estimate_basis": basis,
    }
    warnings = _Warnings()
    for path in planned["orphans"]:
        warnings.add("not restored: a hard link whose first file could not be read when backed up", path)
    for path in planned["leftovers"]:
        warnings.add(("to remove" if ctx.dry_run else "removed")
                     + ": a temporary file left by a restore that was killed while writing", "/" + path)
    if ctx.dry_run:
        return {"files": planned["files"], "bytes_written": 0, "summary": summary,
                "plan": planned["plan"], "plan_truncated": sum(counts.values()) > PLAN_LIMIT,
                **({"warnings": warnings.lines()} if warnings else {})}
    if (counts["overwrite"] or counts["repair"]) and not ctx.yes:
        examples = ", ".join(planned["overwrite_examples"])
        what = " and ".join(text for count, text in (
            (counts["overwrite"], f"overwrite {counts['overwrite']} existing item(s)"),
            (counts["repair"], f"change the mode, owner, times or attributes of {counts['repair']} identical "
                               "item(s)")) if count)
        raise RestoreRefused(f"refusing to {what} in {ctx.target} (e.g. {examples}); use --yes to "
                             "overwrite, or --dry-run to see the plan")
    ctx.reporter.update(phase="restoring", bytes_total=to_write, files_total=planned["files"], force=True)
    try:
        target = _Target(ctx.target, create=True)
    except OSError as exc:
        raise RestoreRefused(f"cannot create target {ctx.target}: {exc.strerror}") from None
    try:
        for path in planned["leftovers"]:
            target.remove(path)
        with flushing_along(ctx.target):
            written = _write_tree(ctx, target, planned["identical"], warnings)
        for fd in target.filesystems():  # a mount point inside the target is another filesystem
            flush_to_disk(fd)
    finally:
        target.close()
    outcome = {"files": written["files"], "symlinks": written["symlinks"], "special": written["special"],
               "bytes_written": written["bytes"], "summary": summary,
               "skipped_identical": counts["skip"], "metadata_repaired": written["repaired"],
               "verified": True, "verification": VERIFICATION}
    if warnings:
        outcome["warnings"] = warnings.lines()
    return outcome


class _Warnings:
    """Problems that do not fail a restore (an xattr the target refuses, a device as non-root),
    one line per kind with a count and an example, however many files have them."""

    def __init__(self) -> None:
        self._kinds: dict[str, list] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, path: str) -> None:
        with self._lock:
            self._kinds.setdefault(kind, [0, path])[0] += 1

    def __bool__(self) -> bool:
        return bool(self._kinds)

    def kinds(self) -> dict[str, list]:
        with self._lock:
            return {kind: list(value) for kind, value in self._kinds.items()}

    def merge(self, kinds: dict[str, list]) -> None:
        """Add what a worker process counted."""
        with self._lock:
            for kind, (count, path) in kinds.items():
                self._kinds.setdefault(kind, [0, path])[0] += count

    def lines(self) -> list[str]:
        return [f"{path}: {kind}" if count == 1 else f"{count} items: {kind} (e.g. {path})"
                for kind, (count, path) in self._kinds.items()]


#: entries read ahead of the writers, so their small files' chunks are located together
LOCATE_AHEAD = 512
#: large files queued for the writer threads, weighed as one plus their chunks: the tree goes on
#: to the small files (for the workers) while the threads write the large ones, instead of
#: waiting for them (with two threads on a local disk: a cold restore of the bench tree 4.1-4.3
#: -> 3.7-4.2 s). A queued file holds its chunk list and their locations (~400 bytes a chunk),
#: so the bound is on chunks, not files (~6 MiB at most): 4096 queued files of a few thousand
#: chunks each held gigabytes.
LARGE_QUEUED = 16384


def _write_tree(ctx: RestoreContext, target: _Target, identical: set[str], warnings: _Warnings) -> dict[str, int]:
    threads = int(ctx.ws.config.engine.get("restore_threads", 0)) or ctx.repo.storage.restore_threads
    done = {"files": 0, "symlinks": 0, "special": 0, "bytes": 0, "repaired": 0}
    lock = threading.Lock()
    dirs: list[Entry] = []
    links: list[tuple[Entry, list[str], list[str]]] = []  # hard links, made once their writer is written
    groups: dict[str, _LinkGroup] = {}
    queued = Budget(LARGE_QUEUED)
    futures: list[Future] = []
    failure: list[BaseException] = []

    def finished(future: Future, weight: int) -> None:
        queued.release(weight)
        if future.exception() is not None and not failure:
            failure.append(future.exception())
            ctx.cancel.cancel("a file failed to restore")

    def count_file(entry: Entry, size: int) -> None:
        with lock:
            done["files"] += 1
            done["bytes"] += size
        ctx.reporter.advance(bytes_done=size, files_done=1, current="/" + entry.path)

    def write_file(entry: Entry, parts: list[str], located_here: dict[bytes, BlobLocation]) -> None:
        ctx.cancel.check()
        count_file(entry, _restore_file(ctx, target, entry, parts, warnings, located_here))

    # on a local repository the workers read the small files' chunks from the packs themselves
    local = ctx.repo.storage if type(ctx.repo.storage) is LocalStorage else None
    initial = {"encryption_key": ctx.repo.sealing_keys()["encryption_key"],
               "storage": local and (local.name, str(local.root))}
    small = workers.Batches(workers.process_count(ctx.ws.config.engine), _write_small_files, "restore",
                            initial=initial, bulky=local is None)
    written_by_workers: collections.deque = collections.deque()  # (entry, parts, handle), in order

    def collect(wait: bool) -> None:
        """Count the small files workers have written, oldest first; raise what one failed with."""
        while written_by_workers and (wait or written_by_workers[0][2].done()):
            entry, parts, handle = written_by_workers.popleft()
            answer = handle.result()
            if answer[0] == "failed":
                raise answer[1]
            _, size, kinds, devices = answer
            warnings.merge(kinds)
            if not set(devices) <= set(target.devices()):  # a mount point inside the target: flushed too
                os.close(target.open_dir(parts[:-1], create=True))
            count_file(entry, size)

    located: dict[bytes, BlobLocation] = {}  # where the one-chunk files read ahead lie

    def entries() -> Iterator[Entry]:
        """The tree in order, read LOCATE_AHEAD entries ahead to locate their small files'
        chunks in a few index queries instead of one per file."""
        for block in in_blocks(ctx.entries(), LOCATE_AHEAD):
            located.clear()
            located.update(ctx.repo.locate_many(
                bytes.fromhex(e.chunks[0][0]) for e in block if e.type == "file" and len(e.chunks or []) == 1))
            yield from block

    def locate(entry: Entry, blob_id: bytes) -> BlobLocation:
        """Where a chunk of the file lies; a missing one fails the restore, naming the file."""
        try:
            return located.get(blob_id) or ctx.repo.locate(blob_id)
        except IntegrityError as exc:
            raise IntegrityError(f"{os.path.join(ctx.target, entry.path)}: {exc}") from None

    def small_blob(entry: Entry) -> tuple | None:
        """What a worker needs to write a small file's content: its chunk's id and location,
        and the chunk as stored unless the worker reads it from the local pack itself."""
        if not entry.chunks:
            return None
        blob_id = bytes.fromhex(entry.chunks[0][0])
        location = locate(entry, blob_id)
        return blob_id, location, None if local else ctx.repo.read_sealed(location)

    def located_all(entry: Entry) -> dict[bytes, BlobLocation]:
        """A large file's chunks, looked up before it is queued (one query) and handed to the
        thread that writes it: one missing fails the restore here, before the tree goes on
        past it (the threads may be far behind)."""
        ids = [bytes.fromhex(chunk_id) for chunk_id, _ in entry.chunks or []]
        found = ctx.repo.locate_many(ids)
        for blob_id in ids:
            if blob_id not in found:
                locate(entry, blob_id)  # raises, naming the file and why
        return found

    with ThreadPoolExecutor(threads, thread_name_prefix="insite-restore") as pool:
        try:
            for entry in entries():
                if failure:
                    break
                ctx.cancel.check()
                group = _group_of(entry, groups)
                if not _selected(entry, ctx.includes):
                    continue
                parts = check_relative_path(entry.path)
                if entry.link_member and group is None:
                    continue  # reported by the plan
                if group is not None and group.writer is not None:
                    if entry.path not in identical:
                        links.append((entry, parts, check_relative_path(group.writer)))
                    continue
                if group is not None:
                    group.writer = entry.path
                if entry.type == "dir":
                    fd = target.open_dir(parts, create=True)
                    os.close(fd)
                    dirs.append(entry)
                elif entry.path in identical:
                    if _reapply_metadata(target, entry, parts, warnings):
                        done["repaired"] += 1
                elif entry.type == "file" and len(entry.chunks or []) <= 1 and small.wanted(entry.size):
                    handle = small.add((ctx.target, entry, parts, small_blob(entry)), entry.size)
                    written_by_workers.append((entry, parts, handle))
                    collect(wait=False)
                elif entry.type == "file":
                    chunks_located = located_all(entry)
                    weight = 1 + len(entry.chunks or [])
                    queued.acquire(weight)  # the threads release it, failing or cancelled too
                    future = pool.submit(write_file, entry, parts, chunks_located)
                    future.add_done_callback(functools.partial(finished, weight=weight))
                    futures.append(future)
                    if len(futures) > 1000:
                        futures = [f for f in futures if not f.done()]
                elif _restore_node(ctx, target, entry, parts, warnings):
                    with lock:
                        done["symlinks" if entry.type == "symlink" else "special"] += 1
            collect(wait=True)
        finally:
            small.close()
            wait(futures, return_when=FIRST_EXCEPTION if failure else "ALL_COMPLETED")
    if failure:
        raise failure[0]
    for future in futures:
        future.result()
    for entry, parts, writer_parts in links:
        count_file(entry, _restore_link(ctx, target, entry, parts, writer_parts, warnings))
    # Directory modes and mtimes last (deepest first): writing files inside changes them.
    for entry in reversed(dirs):
        fd = target.open_dir(check_relative_path(entry.path), create=True)
        try:
            _Node(entry, fd=fd).apply(warnings)
        finally:
            os.close(fd)
    return done


_IS_ROOT = os.geteuid() == 0
#: labels the system assigns (SELinux, Smack, AppArmor, IMA/EVM): a restore sets them when the
#: backup has them and leaves them alone otherwise; every other extra attribute is removed
_SYSTEM_LABELS = "security."
_CAPABILITY = "security.capability"


class _Node:
    """One restored node, reached by its descriptor (files, folders) or by its name in its
    folder (symlinks, FIFOs, devices: opening those could block, act, or follow)."""

    def __init__(self, entry: Entry, fd: int | None = None, dir_fd: int | None = None, name: str | None = None):
        self.entry, self.fd, self.dir_fd, self.name = entry, fd, dir_fd, name
        # xattr calls take no dir_fd: the folder's /proc link reaches the same inode race-free
        self._xpath: Any = fd if fd is not None else f"/proc/self/fd/{dir_fd}/{name}"
        self._nofollow = {} if fd is not None else {"follow_symlinks": False}

    def stat(self) -> os.stat_result:
        if self.fd is not None:
            return os.fstat(self.fd)
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def differs(self, before: os.stat_result) -> bool:
        """Would `apply` change anything? Mode, times, owner (when root restores) and extended
        attributes, read only: the plan of a restore over an existing tree counts these."""
        if self._stat_differs(before):
            return True
        wanted = self.entry.xattrs or {}
        try:
            present = [name for name in os.listxattr(self._xpath, **self._nofollow)
                       if name in wanted or not _system_label(name)]
            return set(present) != set(wanted) or any(
                os.getxattr(self._xpath, name, **self._nofollow) != value for name, value in wanted.items())
        except OSError:
            return bool(wanted)  # cannot read them: apply will try, and warn if it cannot

    def _stat_differs(self, before: os.stat_result) -> bool:
        entry = self.entry
        return ((entry.type != "symlink" and stat.S_IMODE(before.st_mode) != entry.mode & 0o7777)
                or before.st_mtime_ns != entry.mtime_ns
                or (_IS_ROOT and (before.st_uid, before.st_gid) != (entry.uid, entry.gid)))

    def apply(self, warnings: _Warnings, before: os.stat_result | None = None) -> bool:
        """Put back owner, extended attributes, mode and times, in that order (a chown clears
        setuid bits and capabilities; an ACL sets the group bits). With `before` (the node's
        state), whether anything differed."""
        entry, path = self.entry, "/" + self.entry.path
        differed = before is not None and self._stat_differs(before)
        if _IS_ROOT:  # owners come back only when root restores (root's own 0:0 included)
            try:
                if self.fd is not None:
                    os.fchown(self.fd, entry.uid, entry.gid)
                else:
                    os.chown(self.name, entry.uid, entry.gid, dir_fd=self.dir_fd, follow_symlinks=False)
            except OSError as exc:
                warnings.add(f"owner not restored: {exc.strerror}", path)
        differed = self._put_xattrs(warnings) or differed
        if self.fd is not None:
            os.fchmod(self.fd, entry.mode & 0o7777)
        elif entry.type != "symlink":  # a symlink's mode cannot be set on Linux
            os.chmod(self.name, entry.mode & 0o7777, dir_fd=self.dir_fd, follow_symlinks=False)
        ns = (entry.mtime_ns, entry.mtime_ns)
        try:
            if self.fd is not None:
                os.utime(self.fd, ns=ns)
            else:
                os.utime(self.name, ns=ns, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            warnings.add(f"times not restored: {exc.strerror}", path)
        return differed

    def _put_xattrs(self, warnings: _Warnings) -> bool:
        wanted = self.entry.xattrs or {}
        path = "/" + self.entry.path
        try:
            present = os.listxattr(self._xpath, **self._nofollow)
        except OSError as exc:
            if wanted:
                warnings.add(f"extended attributes not restored: {exc.strerror}", path)
            return False
        changed = False
        for name in present:
            if name in wanted or _system_label(name):
                continue
            try:
                os.removexattr(self._xpath, name, **self._nofollow)
                changed = True
            except OSError as exc:
                warnings.add(f"extended attribute {name} not removed: {exc.strerror}", path)
        for name, value in wanted.items():
            try:
                if name in present and os.getxattr(self._xpath, name, **self._nofollow) == value:
                    continue
                os.setxattr(self._xpath, name, value, **self._nofollow)
                changed = True
            except OSError as exc:
                warnings.add(f"extended attribute {name} not restored: {exc.strerror}", path)
        return changed


def _system_label(name: str) -> bool:
    """An attribute the system assigns (an SELinux label): left as it is when the backup lacks it."""
    return name.startswith(_SYSTEM_LABELS) and name != _CAPABILITY


def _reapply_metadata(target: _Target, entry: Entry, parts: list[str], warnings: _Warnings) -> bool:
    """An identical node keeps its content, but its owner, mode, times and extended attributes
    are put back (a restore over a tampered tree repairs them); True if any differed."""
    return _on_existing(target, entry, parts, lambda node, before: node.apply(warnings, before))


def _metadata_differs(target: _Target, entry: Entry, parts: list[str]) -> bool:
    return _on_existing(target, entry, parts, lambda node, before: node.differs(before))


def _on_existing(target: _Target, entry: Entry, parts: list[str], use) -> bool:
    """`use(node, its stat)` on the existing node at `parts`: a file by its descriptor (opened
    without following a symlink or blocking on a FIFO), any other node by its name."""
    dir_fd = target.open_dir(parts[:-1], create=False)
    if dir_fd is None:
        return False
    try:
        if entry.type != "file":
            node = _Node(entry, dir_fd=dir_fd, name=parts[-1])
            return use(node, node.stat())
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise RestoreRefused(f"{os.path.join(target.root, entry.path)} changed during the restore")
            return use(_Node(entry, fd=fd), before)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


_HOLE = 4096  # a sparse file's all-zero blocks of this size are left unwritten


def _write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        count = os.pwrite(fd, view, offset)
        view, offset = view[count:], offset + count


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write a chunk at `offset`, skipping its all-zero blocks: they stay holes, read as zeros."""
    if data.count(0) == len(data):
        return
    run = None  # start of the pending run of data blocks
    pos = 0
    while pos < len(data):
        end = min(len(data), pos + _HOLE - (offset + pos) % _HOLE)
        if data.count(0, pos, end) == end - pos:
            if run is not None:
                _write_at(fd, memoryview(data)[run:pos], offset + run)
                run = None
        elif run is None:
            run = pos
        pos = end
    if run is not None:
        _write_at(fd, memoryview(data)[run:], offset + run)


def _restore_file(ctx: RestoreContext, target: _Target, entry: Entry, parts: list[str], warnings: _Warnings,
                  located: dict[bytes, BlobLocation] | None = None) -> int:
    chunks = ctx.repo.iter_chunks(entry.chunks or [], located=located)
    return _write_file(target, entry, parts, chunks, warnings, ctx.cancel.check)


def _write_file(target: _Target, entry: Entry, parts: list[str], contents: Iterable[bytes], warnings: _Warnings,
                check: Callable[[], None] = lambda: None) -> int:
    """Write a file's content under a temporary name, put its metadata on, rename it into
    place; the bytes written."""
    dir_fd = target.open_dir(parts[:-1], create=True)
    temp = _temp_name()
    written = 0
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            try:
                for data in contents:
                    check()
                    if entry.sparse:
                        _write_sparse(fd, data, written)
                    else:
                        _write_at(fd, data, written)
                    written += len(data)
            except IntegrityError as exc:
                raise IntegrityError(f"{os.path.join(target.root, entry.path)}: {exc}") from None
            if written != entry.size:
                raise IntegrityError(f"{os.path.join(target.root, entry.path)}: restored {written} bytes, "
                                     f"expected {entry.size}")
            if entry.sparse:
                os.ftruncate(fd, written)  # a trailing hole
            _Node(entry, fd=fd).apply(warnings)
        finally:
            os.close(fd)
        _replace(target.root, dir_fd, temp, parts[-1], entry, "a file")
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(dir_fd)
    return written


def _write_small_files(jobs: list[tuple[str, Entry, list[str], tuple | None]]) -> list:
    """In a worker process: write each small file, its one chunk read here from a local pack
    or sent as stored by the parent, authenticated here. Per file: ("written", bytes, warnings
    by kind, filesystems this worker has reached) or ("failed", error)."""
    if "cipher" not in workers.state:
        workers.state["cipher"] = Cipher(workers.state["encryption_key"])
        workers.state["packs"] = workers.state["storage"] and OpenObjects(LocalStorage(*workers.state["storage"]))
    answers: list = []
    for root, entry, parts, blob in jobs:
        target = workers.state.get(root)
        try:
            if target is None:
                target = workers.state[root] = _Target(root, create=True)
            data = b"" if blob is None else _open_small_blob(root, entry, *blob)
            warnings = _Warnings()
            size = _write_file(target, entry, parts, [data], warnings)
            answers.append(("written", size, warnings.kinds(), tuple(target.devices())))
        except Exception as exc:
            answers.append(("failed", exc))
    return answers


def _open_small_blob(root: str, entry: Entry, blob_id: bytes, location: BlobLocation, sealed: bytes | None) -> bytes:
    if sealed is None:
        sealed = workers.state["packs"].get(pack_key(location.pack), location.offset, location.length)
    try:
        return open_sealed_blob(workers.state["cipher"], blob_id, location, sealed)
    except IntegrityError as exc:
        raise IntegrityError(f"{os.path.join(root, entry.path)}: {exc}") from None


def _replace(root: str, dir_fd: int, temp: str, name: str, entry: Entry, what: str) -> None:
    """Rename the finished temporary node over the entry's name, never over a folder: the
    kernel refuses that itself (EISDIR), so no lstat is spent per file to check first."""
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        raise RestoreRefused(f"{os.path.join(root, entry.path)} is a directory; not replacing it with {what}") from None


def _restore_node(ctx: RestoreContext, target: _Target, entry: Entry, parts: list[str], warnings: _Warnings) -> bool:
    """A symlink, FIFO or device, made under a temporary name and renamed into place; False
    if it could not be made (a device when not root: a warning)."""
    if entry.type in ("chardev", "blockdev") and not _IS_ROOT:
        warnings.add("device file not recreated: that needs root", "/" + entry.path)
        return False
    dir_fd = target.open_dir(parts[:-1], create=True)
    temp = _temp_name()
    try:
        if entry.type == "symlink":
            os.symlink(entry.target or "", temp, dir_fd=dir_fd)
        elif entry.type == "fifo":
            os.mkfifo(temp, 0o600, dir_fd=dir_fd)
        elif entry.type in ("chardev", "blockdev"):
            kind = stat.S_IFCHR if entry.type == "chardev" else stat.S_IFBLK
            os.mknod(temp, kind | 0o600, os.makedev(*(entry.rdev or (0, 0))), dir_fd=dir_fd)
        else:
            raise RestoreRefused(f"refusing stored entry /{entry.path}: unknown type {entry.type!r}")
        try:
            _Node(entry, dir_fd=dir_fd, name=temp).apply(warnings)
            _replace(ctx.target, dir_fd, temp, parts[-1], entry, f"a {entry.type}")
        except BaseException:
            os.unlink(temp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
    return True


def _restore_link(ctx: RestoreContext, target: _Target, entry: Entry, parts: list[str],
                  writer_parts: list[str], warnings: _Warnings) -> int:
    """A hard link to the group's first restored file (same or another folder of the target);
    a copy of it if the two folders are on different filesystems of the target (what tar
    cannot do either). The bytes written: 0 for a link."""
    src_fd = target.open_dir(writer_parts[:-1], create=False)
    if src_fd is None:
        raise RestoreRefused(f"/{entry.path}: the file it is hard-linked to was not restored")
    dir_fd = target.open_dir(parts[:-1], create=True)
    temp = _temp_name()
    try:
        try:
            os.link(writer_parts[-1], temp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            warnings.add("restored as a copy, not a hard link: the file it is linked to is on another "
                         "filesystem of the target", "/" + entry.path)
            return _restore_file(ctx, target, entry, parts, warnings)
        try:
            _replace(ctx.target, dir_fd, temp, parts[-1], entry, "a hard link")
        except BaseException:
            os.unlink(temp, dir_fd=dir_fd)
            raise
    finally:
        os.close(src_fd)
        os.close(dir_fd)
    return 0


