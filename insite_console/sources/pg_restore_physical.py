"""Physical PostgreSQL restore: PGDATA from a base backup, WAL replay to a point in time.

Pre-flight checks come first (base backup ended before the target, WAL continuous up to it,
target not in the future of the archive, free space); then safe tar extraction into an empty
directory, recovery settings, and optionally a throwaway server waiting for recovery to end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from typing import Any

from insite_console import clock
from insite_console.errors import RestoreRefused, SourceError, UsageError
from insite_console.sources.pg_client import pg_tool, source_settings


def restore_physical(ctx) -> dict[str, Any]:
    from insite_console import wal

    info = ctx.manifest.get("source_info") or {}
    source = ctx.manifest.get("source")
    target = os.path.abspath(str(ctx.target))
    at = ctx.at
    pause = bool(ctx.options.get("pause"))
    start_port = ctx.options.get("start_port")
    as_primary = bool(ctx.options.get("as_primary"))
    delta = bool(ctx.options.get("delta"))
    target_timeline = str(ctx.options.get("target_timeline") or "latest")
    if target_timeline not in ("latest", "current") and not target_timeline.isdigit():
        raise UsageError(f"--target-timeline {target_timeline!r}: give latest, current or a timeline number")
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
        elif os.listdir(target) and not delta:
            problems.append(f"target {target} is not empty; a physical restore needs an empty directory "
                            "(it becomes PGDATA), or --delta to update a stopped data directory in place")
        elif os.listdir(target):
            problems += _delta_problems(target, lambda name: wal.is_archived(ctx.ws, source, name), source)
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
                                 seg_size, repo=ctx.repo, target_timeline=target_timeline)
    problems += check["problems"]
    parent = target if os.path.isdir(target) else os.path.dirname(target.rstrip("/")) or "/"
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    need = int(entry.size * 1.05) + check.get("wal_bytes_estimate", 0)
    if delta and os.path.isdir(target):  # files that stay are not written again
        need = max(0, need - _tree_size(target))
    if free < need:
        problems.append(f"not enough free space in {parent}: {clock.human_bytes(free)} free, about "
                        f"{clock.human_bytes(need)} needed (base backup + WAL to replay)")
    console = wal.console_command()
    config_path = os.path.abspath(str(ctx.ws.config.path))
    restore_command = f"{_shell_quote(console)} -c {_shell_quote(config_path)} wal-fetch {_shell_quote(source)} %f %p"
    settings = [
        "# added by insite-console restore of backup " + ctx.backup["id"],
        f"restore_command = '{_conf_escape(restore_command)}'",
        f"recovery_target_timeline = '{check.get('timeline', target_timeline)}'",
    ]
    if as_primary:  # the new primary archives its new timeline (its .history first) into the source's archive
        archive_command = (f"{_shell_quote(console)} -c {_shell_quote(config_path)} wal-push "
                           f"{_shell_quote(source)} %p")
        settings += ["archive_mode = on", f"archive_command = '{_conf_escape(archive_command)}'"]
    else:
        settings += ["archive_mode = off", "archive_command = ''"]
    if at is not None:
        settings.append(f"recovery_target_time = '{at.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'")
        settings.append(f"recovery_target_action = '{'pause' if pause else 'promote'}'")
        settings.append("recovery_target_inclusive = true")
    in_place = delta and os.path.isdir(target) and bool(os.listdir(target))
    plan = [{"action": "update" if in_place else "create", "type": "dir", "path": target, "bytes": entry.size,
             "what": "PGDATA updated in place: only files that differ from the base backup are written, the "
                     "others removed; the old pg_wal is moved aside (pg_wal.insite-old-<time>), never deleted"
                     if in_place else "PGDATA from the base backup"},
            {"action": "create", "type": "file", "path": os.path.join(target, "recovery.signal"), "bytes": 0},
            {"action": "append", "type": "file", "path": os.path.join(target, "postgresql.auto.conf"), "bytes": 0,
             "settings": settings[1:]}]
    if start_port:
        plan.append({"action": "start", "type": "server", "path": f"127.0.0.1:{start_port}", "bytes": 0,
                     "what": "a throwaway PostgreSQL server, waiting for the recovery to finish"})
    summary = {"base_backup": ctx.backup["id"], "base_backup_end": info.get("stop_time"),
               "target_time": clock.iso_precise(at) if at else "end of the archived WAL",
               "wal_from": info.get("start_wal_file"), "wal_to": check.get("last_needed"),
               "timelines": " → ".join(str(t) for t in check.get("timelines", [])) or None,
               "as_primary": as_primary,
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
    changes: dict | None = {} if in_place else None
    old_wal = _move_old_wal(target) if in_place else None
    try:
        files, written = _extract_tar(ctx, entry, target, delta=changes)
        if changes is not None:
            changes["removed"] = _remove_not_in_backup(target, changes.pop("seen"))
        verified = _verify_base_backup(ctx, target, in_place)
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
        _flush(target)
    except BaseException:
        if in_place:  # the old PGDATA is partly replaced already: left for a second --delta run
            raise
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for name in os.listdir(target):
                path = os.path.join(target, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) and not os.path.islink(path) \
                    else os.unlink(path)
        raise
    notes = [f"PGDATA laid out in {target} from base backup {ctx.backup['id']}", verified,
             "recovery replays WAL with: " + restore_command]
    summary["verified"] = verified
    if changes is not None:
        if old_wal:
            notes.append(f"the old pg_wal was moved aside to {old_wal}, not deleted (its segments were never "
                         "replayed by this restore): remove it once the restored cluster is checked")
        summary["delta"] = {"old_wal": old_wal, "files_written": files, "bytes_written": written,
                            "files_unchanged": changes.get("unchanged", 0),
                            "bytes_unchanged": changes.get("unchanged_bytes", 0), "removed": changes["removed"]}
        notes[0] = (f"PGDATA in {target} updated in place from base backup {ctx.backup['id']} (--delta): "
                    f"{files} file(s) written ({clock.human_bytes(written)}), {changes.get('unchanged', 0)} "
                    f"unchanged ({clock.human_bytes(changes.get('unchanged_bytes', 0))}, compared byte for byte), "
                    f"{changes['removed']} removed (not in the backup)")
    damaged = info.get("page_checksum_failures")
    if damaged:
        notes.append(f"warning: the base backup was taken with {damaged.get('total')} page checksum failure(s) in "
                     f"{', '.join(sorted(damaged.get('files') or {})[:5])}: those pages are restored as they were "
                     "on disk (damaged)")
    if as_primary:
        notes.append(f"restored as the new primary: it archives into {source}'s archive (archive_command "
                     "wal-push); at promotion its new timeline's history file is archived first, so a later "
                     "restore never picks that timeline again")
    else:
        notes.append("archive_mode = off: this restored server never pushes WAL into the production archive "
                     "(its new timeline stays its own; --as-primary to make it the new primary)")
    notes += [f"warning: {warning}" for warning in check.get("warnings", [])]
    result: dict[str, Any] = {"files": files, "bytes_written": written, "details": summary, "notes": notes}
    if start_port:
        result["recovery"] = start_recovery_server(ctx, target, int(start_port), owner, pause=pause and at is not None,
                                                   reach=check.get("last_needed"), seg_size=seg_size)
        if result["recovery"]["state"] == "promoted":  # segments prefetched past the target are not needed
            shutil.rmtree(os.path.join(target, "pg_wal", wal.SPOOL_DIR_NAME), ignore_errors=True)
            if as_primary:
                result["recovery"]["history_archived"] = _wait_history_archived(ctx, source, target,
                                                                                    int(start_port))
                notes.append(f"new timeline {result['recovery']['timeline']}: "
                             f"{result['recovery']['history_archived']} archived")
        notes.append(f"server running on 127.0.0.1:{start_port} (data {target}, log {result['recovery']['log']}); "
                     f"stop it with `pg_ctl -D {target} stop`")
        if result["recovery"]["state"] == "paused":
            notes.append(f"recovery is paused at the target: check the data (psql -h 127.0.0.1 -p {start_port} -U "
                         f"{_superuser(target)}), then resume and promote with SELECT pg_wal_replay_resume(); "
                         "or stop the server to discard it")
    else:
        notes.append(f"start it with: pg_ctl -D {target} start (as the user owning {target})")
        if pause and at is not None:
            notes.append("recovery pauses at the target: check with SQL, then SELECT pg_wal_replay_resume() to promote")
    return result


OLD_WAL_PREFIX = "pg_wal.insite-old-"  # a --delta moves the old pg_wal aside under this name, never deletes it


def _delta_problems(target: str, archived=lambda name: False, source: str = "SOURCE") -> list[str]:
    """--delta over a non-empty directory: it must be a PostgreSQL data directory, stopped, whose
    pg_wal is not a link elsewhere (it is moved aside), and holds no WAL file marked `.ready`
    (never archived: the damaged cluster's last transactions) that `archived(name)` does not
    find in the archive."""
    if not os.path.isfile(os.path.join(target, "PG_VERSION")):
        return [f"--delta: {target} is not a PostgreSQL data directory (no PG_VERSION); give an empty "
                "directory or a data directory"]
    problems = []
    pid_file = os.path.join(target, "postmaster.pid")
    try:
        with open(pid_file) as handle:
            pid = int(handle.readline().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
        if running:
            problems.append(f"--delta: a server is running on {target} (postmaster.pid, pid {pid}); stop it first "
                            f"(pg_ctl -D {target} stop)")
    if os.path.islink(os.path.join(target, "pg_wal")):
        problems.append(f"--delta: {target}/pg_wal is a symlink (to {os.readlink(os.path.join(target, 'pg_wal'))}); "
                        "a delta restore does not follow it: restore into an empty directory")
    status = os.path.join(target, "pg_wal", "archive_status")
    ready = sorted(name[:-len(".ready")] for name in (os.listdir(status) if os.path.isdir(status) else [])
                   if name.endswith(".ready"))
    unarchived = [name for name in ready if not archived(name)]
    if unarchived:
        shown = ", ".join(unarchived[:5]) + (f" and {len(unarchived) - 5} more" if len(unarchived) > 5 else "")
        problems.append(f"--delta: {target}/pg_wal holds {len(unarchived)} WAL file(s) never archived (.ready in "
                        f"pg_wal/archive_status): {shown}; they hold the cluster's last transactions: push them "
                        f"first (insite-console wal-push {source} {target}/pg_wal/NAME, oldest first), then run "
                        "the --delta restore again")
    return problems


def _flush(target: str) -> None:
    """The laid-out PGDATA is durable before the restore says so (pgBackRest fsyncs what it
    restores): a crash after `succeeded` must not leave a zeroed or missing file behind."""
    from insite_console.durable import flush_to_disk

    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flush_to_disk(fd)
    finally:
        os.close(fd)


def _move_old_wal(target: str) -> str | None:
    """Delta: the old pg_wal is moved aside (inside PGDATA, so the same file system), never
    deleted: segments not yet archived stay recoverable. Returns the new path, or None."""
    old = os.path.join(target, "pg_wal")
    if not os.path.isdir(old) or os.path.islink(old) or not any(names for _d, _s, names in os.walk(old)):
        return None
    base = os.path.join(target, OLD_WAL_PREFIX + clock.now().strftime("%Y%m%dT%H%M%SZ"))
    aside, n = base, 1
    while os.path.lexists(aside):
        aside, n = f"{base}-{n}", n + 1
    os.rename(old, aside)
    return aside


def _tree_size(root: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _verify_base_backup(ctx, target: str, in_place: bool = False) -> str:
    """pg_verifybackup of the extracted PGDATA against its backup_manifest, before anything
    starts on it: every file present, of the right size and checksum (WAL is checked by the
    pre-flight and recovery, so `--no-parse-wal`). Returns the note saying what was checked;
    raises naming the first differences."""
    manifest = os.path.join(target, "backup_manifest")
    if not os.path.exists(manifest):
        return "not verified with pg_verifybackup: the base backup carries no backup_manifest"
    try:
        tool = pg_tool("pg_verifybackup", source_settings(ctx))
    except SourceError as exc:
        return f"not verified with pg_verifybackup: {exc}"
    args = [tool, "--no-parse-wal", "--quiet"]
    try:
        with open(manifest, "rb") as handle:
            listed = [item.get("Path", "") for item in json.load(handle).get("Files") or []]
    except (OSError, ValueError, AttributeError):
        listed = []
    for path in listed:  # socket lock files are not restored (see _extract_tar)
        if "/" not in path and path.startswith(".s.PGSQL."):
            args += ["--ignore", path]
    for name in os.listdir(target):  # old pg_wal moved aside by --delta: not in the backup, kept on purpose
        if name.startswith(OLD_WAL_PREFIX):
            args += ["--ignore", name]
    ctx.reporter.update(phase="verifying the base backup", force=True)
    try:
        result = subprocess.run(args + [target], capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"pg_verifybackup of the restored base backup in {target} could not run: {exc}") from None
    if result.returncode != 0:
        lines = [line.removeprefix("pg_verifybackup: error: ") for line in result.stderr.strip().splitlines()]
        raise SourceError(f"pg_verifybackup: the restored base backup {ctx.backup['id']} does not match its "
                          f"backup_manifest: {'; '.join(lines[:10]) or f'exit status {result.returncode}'}; "
                          + ("no server was started (the data directory is partly updated: run the --delta "
                             "restore again)" if in_place else "the restored files were removed and no server was "
                             "started"))
    return f"verified with pg_verifybackup against its backup_manifest ({len(listed)} files)"


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


def _extract_tar(ctx, entry, target: str, delta: dict | None = None) -> tuple[int, int]:
    """Stream-extract the base backup into `target`: regular files, directories and symlinks that
    stay inside; no absolute paths, no '..', nothing written through a symlink.
    With `delta` (a dict it fills: a restore over an existing PGDATA), a file of the same size is
    compared byte for byte with the stream and left alone when equal; a different one is
    replaced (write beside, rename); `delta["seen"]` collects every path of the backup."""
    root = os.path.realpath(target)
    files = 0
    written = 0
    seen: set[str] = delta.setdefault("seen", set()) if delta is not None else set()
    with ctx.open_entry(entry) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                ctx.cancel.check()
                name = member.name
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if name.startswith("/") or ".." in parts:
                    raise RestoreRefused(f"base backup member {member.name!r} would escape {target}")
                if not parts or (len(parts) == 1 and parts[0].startswith(".s.PGSQL.")):
                    continue  # a socket lock file (socket dir = PGDATA) would block or confuse the new server
                dest = os.path.join(root, *parts)
                parent = os.path.dirname(dest)
                real_parent = os.path.realpath(parent)
                if real_parent != root and not real_parent.startswith(root + os.sep):
                    raise RestoreRefused(f"base backup member {member.name!r} would be written through a symlink "
                                         f"outside {target}")
                seen.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
                if delta is not None:
                    _clear_the_way(dest, member)
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
                    if not os.path.islink(dest):  # (delta: an equal link was left in place)
                        os.symlink(link, dest)
                elif member.isreg():
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                    source = archive.extractfile(member)
                    if delta is not None and os.path.isfile(dest) and not os.path.islink(dest):
                        same, count = _write_if_different(ctx, source, dest, member)
                        if same:
                            delta["unchanged"] = delta.get("unchanged", 0) + 1
                            delta["unchanged_bytes"] = delta.get("unchanged_bytes", 0) + member.size
                            continue
                    else:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        fd = os.open(dest, flags, (member.mode & 0o640) or 0o600)
                        with os.fdopen(fd, "wb") as out:
                            count = _copy_stream(ctx, source, out)
                    os.utime(dest, (member.mtime, member.mtime))
                    files += 1
                    written += count
                else:
                    raise RestoreRefused(f"base backup member {member.name!r} is a {member.type!r} entry; refusing")
    return files, written


def _copy_stream(ctx, source, out) -> int:
    count = 0
    while True:
        block = source.read(1 << 20)
        if not block:
            return count
        out.write(block)
        count += len(block)
        ctx.reporter.advance(bytes_done=len(block))


def _clear_the_way(dest: str, member) -> None:
    """Delta: remove what stands where the member goes and is of another kind (or another link)."""
    if not os.path.lexists(dest):
        return
    if os.path.islink(dest):
        if member.issym() and os.readlink(dest) == member.linkname:
            return
        os.unlink(dest)
    elif os.path.isdir(dest):
        if not member.isdir():
            shutil.rmtree(dest)
    elif not member.isreg():
        os.unlink(dest)


def _write_if_different(ctx, source, dest: str, member) -> tuple[bool, int]:
    """Delta: compare the member's bytes with the existing file as they stream by; equal (same
    size, same bytes): (True, 0), nothing written. Else the file is rebuilt beside it (the equal
    head copied from the old file, the rest from the stream) and renamed over it."""
    if os.path.getsize(dest) == member.size:
        offset = 0
        with open(dest, "rb") as old:
            while True:
                block = source.read(1 << 20)
                if not block:
                    return True, 0
                ctx.reporter.advance(bytes_done=len(block))
                if old.read(len(block)) != block:
                    break
                offset += len(block)
        head, first = offset, block
    else:
        head, first = 0, b""
    temp = dest + ".insite-delta"
    if os.path.lexists(temp):
        os.unlink(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (member.mode & 0o640) or 0o600)
    with os.fdopen(fd, "wb") as out:
        if head:
            with open(dest, "rb") as old:
                _copy_head(old, out, head)
        out.write(first)
        count = head + len(first) + _copy_stream(ctx, source, out)
    os.replace(temp, dest)
    return False, count


def _copy_head(old, out, length: int) -> None:
    while length:
        block = old.read(min(length, 1 << 20))
        if not block:
            raise OSError(f"{old.name} shrank while being compared")
        out.write(block)
        length -= len(block)


def _remove_not_in_backup(target: str, seen: set[str]) -> int:
    """Delta: remove what the existing PGDATA holds and the base backup does not (files of
    dropped relations, a stale postmaster.pid, logs); never an old pg_wal moved aside
    (`_move_old_wal`). Returns how many were removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(target, topdown=False):
        rel_dir = os.path.relpath(dirpath, target)
        for name in filenames + dirnames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in seen or rel.startswith(OLD_WAL_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
    return removed


def _as_user(owner: tuple[int, int] | None, args: list[str]) -> list[str]:
    if owner is None or os.geteuid() != 0:
        return args
    import pwd

    name = pwd.getpwuid(owner[0]).pw_name
    return ["runuser", "-u", name, "--"] + args


_TIMELINE = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"  # a primary's timeline


def start_recovery_server(ctx, target: str, port: int, owner, pause: bool, reach: str | None = None,
                          seg_size: int = 16 * 1024 * 1024, timeout: float = 600.0) -> dict[str, Any]:
    """Start a throwaway server on 127.0.0.1:port over the restored PGDATA and wait until the
    recovery is done (promoted, or paused at the target), judged on the live server only: a
    connection, pg_is_in_recovery(), and the replayed WAL position against `reach` (the last
    segment the pre-flight found needed). Never on log text: a base backup of a restored cluster
    carries old logs. The log goes beside PGDATA, not into it (nor into later base backups)."""
    import psycopg

    settings = source_settings(ctx)
    pg_ctl = pg_tool("pg_ctl", settings)
    log = _recovery_log(target, owner)
    options = (f"-p {port} -k {target} -c listen_addresses=127.0.0.1 -c unix_socket_directories={target} "
               "-c logging_collector=off")
    ctx.reporter.update(phase="recovering", force=True)
    with socket.socket() as probe:  # another server on the port would be judged instead of ours
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise SourceError(f"port {port} on 127.0.0.1 is in use: choose a free port to start the restored "
                              f"cluster in {target} on") from None
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
            raise SourceError(f"the restored server in {target} stopped during recovery: {_stop_reason(target, log)}")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user=_superuser(target),
                                 connect_timeout=3, autocommit=True) as conn:
                in_recovery, paused, replayed, timeline, datadir = conn.execute(
                    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END, "
                    f"pg_last_wal_replay_lsn(), CASE WHEN NOT pg_is_in_recovery() THEN {_TIMELINE} END, "
                    "current_setting('data_directory')").fetchone()
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            if any(word in last_error for word in ("authentication", "pg_hba.conf", "does not exist")):
                raise SourceError(f"cannot log in to the restored server on 127.0.0.1:{port} to check its recovery "
                                  f"({last_error}); its state is unknown: check it yourself (log {log}). "
                                  "Set PGUSER/PGPASSWORD for a superuser it accepts.") from None
            time.sleep(0.3)
            continue
        if os.path.realpath(datadir) != os.path.realpath(target):
            raise SourceError(f"the server on 127.0.0.1:{port} runs on {datadir}, not on the restored {target}: its "
                              f"state says nothing of this recovery (see {log})")
        if not in_recovery:
            state = "promoted"
        elif paused == "paused":
            state = "paused"
        else:
            time.sleep(0.3)
            continue
        if state == "paused" and not pause:
            raise SourceError(f"recovery of {target} paused although promotion was asked; the server is running "
                              f"on 127.0.0.1:{port}, see {log}")
        _check_reached(target, replayed, reach, seg_size, f"the server is running on 127.0.0.1:{port}, see {log}")
        break
    if state is None:
        raise SourceError(f"recovery of {target} did not finish within {int(timeout)}s ({last_error}); "
                          f"see {log}")
    return {"state": state, "port": port, "log": log, "replayed_to": str(replayed), "timeline": timeline}


def _wait_history_archived(ctx, source: str, target: str, port: int, timeout: float = 60.0) -> str:
    """A promoted new primary has archived its timeline's history file: checked in the archive
    itself, not on the server's word. Raises when it is not there in time."""
    import psycopg

    from insite_console import wal

    with psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user=_superuser(target),
                         connect_timeout=5, autocommit=True) as conn:
        name = wal.history_name(conn.execute(f"SELECT {_TIMELINE}").fetchone()[0])
    repo = ctx.ws.repository(wal.storage_for_source(ctx.ws, source))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in wal.archived_names(repo, source):
            return name
        time.sleep(0.5)
    raise SourceError(f"the restored server was promoted but its timeline history {name} did not reach the "
                      f"archive within {int(timeout)}s: a later restore could pick its timeline again; check its "
                      "archive_command in the server log")


def _recovery_log(target: str, owner) -> str:
    """A fresh log file beside PGDATA (`<target>.insite-recovery.log`), writable by the server's
    user; in the temp directory when the parent is not writable."""
    import tempfile

    path = target.rstrip("/") + ".insite-recovery.log"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        fd, path = tempfile.mkstemp(prefix="insite-recovery-", suffix=".log")
    os.close(fd)
    if owner is not None:
        os.chown(path, *owner)
    return path


def _lsn(text) -> int:
    high, low = str(text).split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _check_reached(target: str, replayed, reach: str | None, seg_size: int, where: str) -> None:
    """Recovery ended or paused: did it replay into the last segment it needed? (A fetch that
    ended recovery early, or WAL PostgreSQL could not read, leaves it short.)"""
    from insite_console import wal

    if reach is None:
        return
    needed = wal.segment_start_lsn(reach, seg_size)
    if replayed is None or _lsn(replayed) < needed:
        raise SourceError(f"recovery of {target} ended at WAL position {replayed}, before segment {reach} it needed "
                          f"(archived WAL was not all replayed): the data is not restored to the asked point; "
                          f"{where}")


def _superuser(target: str) -> str:
    """The bootstrap superuser is normally `postgres`; overridable with PGUSER."""
    return os.environ.get("PGUSER", "postgres")


def _stop_reason(target: str, log: str) -> str:
    """Why recovery stopped: the note a fatal wal-fetch left (segment and cause), else the log's end."""
    from insite_console import wal

    failure = wal.fetch_failure(os.path.join(target, "pg_wal"))
    if failure:
        return (f"WAL segment {failure.get('segment')} could not be fetched from the archive: "
                f"{failure.get('error')} (recovery stopped there rather than end early; see {log})")
    return _log_tail(log)


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
