"""Group backups: several policies backed up at one moment, recorded as one restore point.

`[group.NAME] policies = [...]` runs every member's backup at once, each in a workspace of its
own. Each member gets ready (connects, and for physical PostgreSQL takes its base backup) and
then waits at the group's moment; when all are there they take their snapshots together: a
logical dump exports its snapshot, Redis is asked for its RDB, the file walk starts, a physical
cluster gets a named restore point in its WAL. Each member's exact instant is recorded (its
source_info `point`), and the group restore point lists them all, so a platform recovery to it
has no skew beyond the measured spread of those instants. A member that fails before the
moment releases the others (they fail too: no half group is taken); the group restore point is
`succeeded` only when every member succeeded. Recorded in the catalog and sealed, as
`groups/<id>`, in every repository.
"""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable

from insite_console import clock, who
from insite_console.errors import Cancelled, InsiteError, SourceError
from insite_console.events import CancelToken, Progress
from insite_console.redact import redact

SEALED_PREFIX = "groups/"


class Moment:
    """A meeting point for the members: `wait()` returns when every member has arrived (the
    instant is `at`), raises when a member dropped out or the group was cancelled."""

    def __init__(self, members: list[str], cancel: CancelToken):
        self.expected = set(members)
        self.arrived: set[str] = set()
        self.failed: str | None = None
        self.at = None
        self.cancel = cancel
        self._cond = threading.Condition()

    def waiter(self, member: str) -> Callable[[], None]:
        def wait() -> None:
            with self._cond:
                self.arrived.add(member)
                if self.arrived >= self.expected and self.at is None:
                    self.at = clock.now()
                    self._cond.notify_all()
                while self.at is None:
                    if self.failed:
                        raise SourceError(f"group moment not reached: {self.failed}")
                    self.cancel.check()
                    self._cond.wait(0.2)
        return wait

    def drop(self, member: str, why: str) -> None:
        with self._cond:
            if self.at is None and self.failed is None:
                self.failed = f"{member} failed before it: {why}"
            self._cond.notify_all()


def _kind(ws, policy: str) -> str:
    settings = ws.config.sources[ws.config.policies[policy]["source"]]
    if settings["type"] == "postgresql":
        return "postgresql-" + settings.get("mode", "logical")
    return settings["type"]


def run(ws, name: str, progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None) -> dict[str, Any]:
    """Back up the group's members at one moment; the group restore point's record."""
    from insite_console import backup
    from insite_console.workspace import Workspace

    settings = ws.config.group(name)
    cancel = cancel or CancelToken()
    members = settings["policies"]
    moment = Moment(members, cancel)
    started = clock.now()
    record: dict[str, Any] = {
        "id": clock.new_id(), "group": name, "status": "running", "started_at": clock.iso_precise(started),
        "point_at": None, "finished_at": None, "skew_seconds": None, "user": who.user(), "host": socket.gethostname(),
        "origin": who.origin(), "error": None,
        "members": [{"policy": p, "source": ws.config.policies[p]["source"], "kind": _kind(ws, p),
                     "backup_id": None, "status": "pending", "point_at": None, "point": None, "error": None}
                    for p in members],
    }
    ws.catalog.insert_group_point(record)
    ws.catalog.event(record["id"], f"group backup {record['id']} of {name} started: {', '.join(members)}")

    def one(item: dict) -> None:
        policy = item["policy"]
        forward = (lambda p: progress(replace(p, operation=f"group:{policy}"))) if progress else None
        member_ws = Workspace(ws.config)
        item["status"] = "running"
        try:
            with who.acting_as(record["origin"]):  # a thread of its own: the origin does not follow by itself
                result = backup.run(member_ws, policy, progress=forward, cancel=cancel,
                                    group=(record["id"], moment.waiter(policy)))
            item["backup_id"] = result["id"]
            item["status"] = result["status"]
            item["error"] = result.get("error")
            row = member_ws.catalog.backup(result["id"]) or {}
            item["point"] = ((row.get("info") or {}).get("source_info") or {}).get("point")
            item["point_at"] = (item["point"] or {}).get("at")
            if item["status"] == "succeeded" and item["point_at"] is None:
                item["status"], item["error"] = "failed", "the backup recorded no instant for the group moment"
        except Cancelled as exc:
            item["status"], item["error"] = "cancelled", str(exc)
        except InsiteError as exc:
            item["status"], item["error"] = "failed", redact(str(exc))
        except Exception as exc:  # a bug in one member must not leave the others waiting
            item["status"], item["error"] = "failed", redact(f"{type(exc).__name__}: {exc}")
        finally:
            if item["status"] != "succeeded":
                moment.drop(policy, item["error"] or item["status"])
            elif policy not in moment.arrived:
                moment.drop(policy, "it finished without reaching the group moment")
            member_ws.close()

    with ThreadPoolExecutor(len(members), thread_name_prefix="insite-group") as pool:
        list(pool.map(one, record["members"]))
    return _finish(ws, record, moment)


def _finish(ws, record: dict, moment: Moment) -> dict[str, Any]:
    statuses = [m["status"] for m in record["members"]]
    if all(s == "succeeded" for s in statuses):
        record["status"] = "succeeded"
        points = [clock.parse_iso(m["point_at"]) for m in record["members"]]
        record["skew_seconds"] = round((max(points) - min(points)).total_seconds(), 6)
    else:
        record["status"] = "cancelled" if "cancelled" in statuses else "failed"
        record["error"] = "; ".join(f"{m['policy']}: {m['error'] or m['status']}" for m in record["members"]
                                    if m["status"] != "succeeded")
    record["point_at"] = clock.iso_precise(moment.at) if moment.at else None
    record["finished_at"] = clock.iso_precise(clock.now())
    ws.catalog.insert_group_point(record)
    ws.catalog.event(record["id"], f"group backup {record['id']} of {record['group']} {record['status']}"
                     + (f" at {record['point_at']}, members within {record['skew_seconds'] * 1000:.1f} ms"
                        if record["status"] == "succeeded" else f": {record['error']}"),
                     level="info" if record["status"] == "succeeded" else "error")
    record["stored_in"] = ws.seal_everywhere(SEALED_PREFIX + record["id"], json.dumps(record, sort_keys=True).encode())
    ws.catalog.insert_group_point(record)
    return record


def announce(ws, record: dict) -> None:
    """Each member's outcome to the alerts, as a backup of its policy (a cancelled one is not a failure)."""
    from insite_console import alerts

    for member in record["members"]:
        if member["status"] == "cancelled":
            continue
        row = ws.catalog.backup(member["backup_id"]) if member["backup_id"] else None
        alerts.backup_outcome(ws, member["policy"], row, error=None if row else (member["error"] or member["status"]))


def points(ws, name: str | None = None, limit: int = 50, status: str | None = None) -> list[dict]:
    """Group restore points, newest first."""
    return ws.catalog.group_points(group=name, limit=limit, status=status)
