"""Streaming WAL: `wal-stream SOURCE` runs pg_receivewal into a spool and pushes each completed
segment (and history file) into the source's archive, as `wal-push` would.

    insite-console -c CONFIG wal-stream main_db          # a long-running service (systemd, ...)

pg_receivewal connects with the replication protocol, through a physical replication slot
(`insite_<source>`, created if missing) so the server keeps the WAL the streamer has not
received yet, and writes the segment in progress as `NAME.partial` in the spool: on the
streaming host the data-loss window is seconds, not archive_timeout. A segment pg_receivewal
completes (renames from .partial) is pushed with the same checks as archive_command's
(encrypted, authenticated, the system identifier, never overwritten with other content; an
identical copy already pushed by archive_command is fine), then removed from the spool (the
newest pushed one is kept: pg_receivewal resumes after it). It runs alongside archive_command,
or instead of it.

A .history file has no header naming its cluster: it is checked against the system identifier
of the server streamed from (read at each pg_receivewal start) and refused when the archive is
another cluster's. Only completed segments and history files reach the repository; the
.partial stays in the spool.

`status.json` in the spool says what is being received (the .partial's name and size, when it
last grew) and what was last archived; `wal SOURCE` shows it. A heartbeat in the catalog
(wal_stream_beats: host, pid, last pushed, the .partial) lets `status` and the console tell
whether a streamer runs (stream_state); one seen but gone is a WARNING there. pg_receivewal is restarted (5 s
apart) when it stops, its error printed; SIGTERM or Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from insite_console import clock
from insite_console.errors import ConfigError, SourceError
from insite_console.events import CancelToken

_COMPLETED = re.compile(r"^[0-9A-F]{24}$|^[0-9A-F]{8}\.history$")
STATUS_FILE = "status.json"
RESTART_DELAY = 5.0
BEAT_INTERVAL = 5.0  # the catalog heartbeat (status: stale after STALE_SECONDS)
STALE_SECONDS = 60.0


def spool_dir(ws, source: str) -> Path:
    return ws.config.state_dir / "wal-stream" / source


def slot_name(source: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"insite_{source}".lower())[:63]


def stream_status(ws, source: str) -> dict[str, Any] | None:
    """The running (or last) streamer's status for `source`, if one streams into this state dir."""
    try:
        return json.loads((spool_dir(ws, source) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def run(ws, source: str, spool: str | None = None, slot: str | None = None, duration: float | None = None,
        cancel: CancelToken | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Stream until cancelled (or `duration` seconds); returns what was archived."""
    from insite_console import wal
    from insite_console.sources.pg_client import PgTarget, pg_tool, tail_text

    settings = ws.config.sources.get(source)
    if not settings or settings.get("type") != "postgresql":
        raise ConfigError(f"{ws.config.path}: source.{source} is not a postgresql source")
    wal.storage_for_source(ws, source)  # a source without a policy has no archive: say so now
    cancel = cancel or CancelToken()
    pg = PgTarget(settings["dsn"], settings.get("password_env"))
    directory = Path(spool) if spool else spool_dir(ws, source)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    slot = slot or slot_name(source)
    tool = pg_tool("pg_receivewal", settings)
    base = [tool, "--no-password", "--slot", slot, "--dbname", pg.conninfo()]
    created = subprocess.run(base + ["--create-slot", "--if-not-exists"], capture_output=True, text=True,
                             env=pg.env(), timeout=60)
    if created.returncode != 0:
        raise SourceError(f"pg_receivewal at {pg.host_port}: cannot create the replication slot {slot}: "
                          f"{created.stderr.strip()[-500:]} (the DSN's user needs the REPLICATION attribute and a "
                          "replication line in pg_hba.conf; max_replication_slots > 0)")
    archived: list[str] = []
    state: dict[str, Any] = {"source": source, "slot": slot, "spool": str(directory), "pid": os.getpid(),
                             "started_at": clock.iso(clock.now()), "last_archived": None, "errors": 0}
    deadline = time.monotonic() + duration if duration else None
    say(f"wal-stream {source}: pg_receivewal from {pg.host_port} (slot {slot}) into {directory}")
    proc = None
    stderr = None
    restart_at = beat_at = 0.0
    beaten = None
    try:
        while not cancel.cancelled and (deadline is None or time.monotonic() < deadline):
            if proc is None and time.monotonic() >= restart_at:
                # the cluster behind the DSN now: a .history file is checked against it (it has no
                # header of its own), and the DSN may point at another server after a restart
                state["system_identifier"] = _server_system_identifier(pg, source, say)
                stderr = tempfile.TemporaryFile()
                proc = subprocess.Popen(base + ["--directory", str(directory), "--no-loop", "--status-interval=1"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                        env=pg.env())
            _push_completed(ws, source, directory, archived, state, say)
            _write_status(directory, state)
            progress = (state.get("last_archived"), (state.get("partial") or {}).get("name"), state.get("last_error"))
            if time.monotonic() >= beat_at or progress != beaten:  # at once when it moved on
                _beat(ws, state, say)
                beat_at, beaten = time.monotonic() + BEAT_INTERVAL, progress
            if proc is not None and proc.poll() is not None:
                state["errors"] += 1
                say(f"wal-stream {source}: pg_receivewal exited with status {proc.returncode}: "
                    f"{tail_text(stderr, pg.secrets(), 500) or '(no message)'}; restarting in {RESTART_DELAY:g}s")
                stderr.close()
                proc, restart_at = None, time.monotonic() + RESTART_DELAY
            time.sleep(0.5)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # pg_receivewal flushes what it has and exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if stderr is not None:
            stderr.close()
        _push_completed(ws, source, directory, archived, state, say)
        state["stopped_at"] = clock.iso(clock.now())
        _write_status(directory, state)
        _beat(ws, state, say, stopped=True)
    return {"source": source, "slot": slot, "spool": str(directory), "archived": archived,
            "restarts": state["errors"]}


def _push_completed(ws, source: str, directory: Path, archived: list[str], state: dict, say) -> None:
    """Push every completed file in the spool (history files first, then in WAL order); remove
    the pushed ones but the newest segment (pg_receivewal resumes after it)."""
    from insite_console import wal

    names = sorted((p.name for p in directory.iterdir() if _COMPLETED.match(p.name)),
                   key=lambda n: (not n.endswith(".history"), n))
    pushed_segments = []
    for name in names:
        path = directory / name
        if name in state.setdefault("pushed", []):
            pushed_segments.append(name)
            continue
        try:
            if name.endswith(".history") and not state.get("system_identifier"):
                raise SourceError(f"the system identifier of the server streamed from is unknown; {name} "
                                  "is kept in the spool unchecked until it can be read")
            result = wal.push_file(ws, source, str(path), state.get("system_identifier"))
        except Exception as exc:  # noqa: BLE001 - kept in the spool, tried again next round
            state["errors"] += 1
            if state.get("last_error") != f"{name}: {exc}":  # once, not every half second
                say(f"wal-stream {source}: {name} not archived: {exc}")
            state["last_error"] = f"{name}: {exc}"
            break  # in order: a later segment waits for this one
        state["last_error"] = None
        archived.append(name)
        state["last_archived"] = name
        state["last_archived_at"] = clock.iso(clock.now())
        say(f"wal-stream {source}: {name} {result['status']} (streamed)")
        if name.endswith(".history"):
            path.unlink()
        else:
            state["pushed"].append(name)
            pushed_segments.append(name)
    for name in sorted(pushed_segments)[:-1]:
        (directory / name).unlink(missing_ok=True)
        state["pushed"].remove(name)
    partial = sorted(p for p in directory.iterdir() if p.name.endswith(".partial"))
    state["partial"] = None  # none between a completed segment and the first WAL of the next
    if partial:
        stat = partial[-1].stat()
        state["partial"] = {"name": partial[-1].name, "bytes": stat.st_size,
                            "updated_at": clock.iso_precise(datetime.fromtimestamp(stat.st_mtime, timezone.utc))}


def _server_system_identifier(pg, source: str, say) -> str | None:
    try:
        with pg.connect() as conn:
            return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception as exc:  # noqa: BLE001 - pg_receivewal will say why it cannot connect either
        say(f"wal-stream {source}: cannot read the server's system identifier: {exc}")
        return None


def _beat(ws, state: dict, say, stopped: bool = False) -> None:
    """The heartbeat in the catalog `status` and the console read (stream_state)."""
    try:
        ws.catalog.wal_stream_beat(state["source"], state["started_at"], state.get("last_archived"),
                                   state.get("last_archived_at"), (state.get("partial") or {}).get("name"),
                                   state.get("last_error"), stopped=stopped)
    except Exception as exc:  # noqa: BLE001 - a locked catalog: the next beat tries again
        say(f"wal-stream {state['source']}: heartbeat not recorded in the catalog: {exc}")


def stream_state(ws, source: str, now: datetime | None = None) -> dict[str, Any] | None:
    """Whether a wal-stream process streams `source`, from its catalog heartbeats: None when none
    ever ran (nothing to say), else `running` True/False with host, pid, the last segment pushed,
    the segment in progress and a line of text."""
    beats = ws.catalog.wal_stream_beats(source)
    if not beats:
        return None
    now = now or clock.now()
    beat = beats[0]
    age = (now - clock.parse_iso(beat["last_beat"])).total_seconds()
    where = f"on {beat['host']} (pid {beat['pid']})"
    facts = {key: beat[key] for key in ("host", "pid", "started_at", "last_beat", "last_archived",
                                        "last_archived_at", "partial", "last_error", "stopped_at")}
    facts["age_seconds"] = age
    pushed = f"last pushed {beat['last_archived'] or '-'}"
    if beat["stopped_at"] or not beat["alive"] or age > STALE_SECONDS:
        why = "stopped" if beat["stopped_at"] else ("its process is gone" if not beat["alive"] else "no heartbeat")
        return dict(facts, running=False, text=f"wal-stream not running ({why}; last seen "
                                               f"{clock.human_duration(age)} ago {where}); {pushed}")
    text = f"wal-stream running {where}: receiving {beat['partial'] or '-'}, {pushed}"
    if beat["last_error"]:
        text += f"; not archived: {beat['last_error']}"
    return dict(facts, running=True, text=text)


def _write_status(directory: Path, state: dict) -> None:
    temp = directory / f".{STATUS_FILE}.tmp"
    temp.write_text(json.dumps({k: v for k, v in state.items() if k != "pushed"}, indent=1))
    os.replace(temp, directory / STATUS_FILE)
