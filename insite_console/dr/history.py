"""Drill history: each finished drill's record (its event timeline included) goes into the
catalog and, sealed, into every repository (`sealed/drills/<id>`), so a rebuilt catalog keeps
the drill history; `replay` plays a record's events back in their order at any speed."""

from __future__ import annotations

import json
import time
from typing import Callable

from insite_console import clock
from insite_console.errors import UsageError

PREFIX = "drills/"


def save(ws, record: dict) -> dict:
    """Into the catalog, then into each storage's repository; says where it went and what failed."""
    ws.catalog.insert_drill(record)
    where = ws.seal_everywhere(PREFIX + record["id"], json.dumps(record, sort_keys=True).encode())
    record["stored_in"] = where
    ws.catalog.insert_drill(record)
    return where


def get(ws, drill_id: str) -> dict:
    record = ws.catalog.drill(drill_id)
    if not record:
        raise UsageError(f"no drill {drill_id!r} (see `insite-console drill list --history`)")
    return record


def replay(record: dict, emit: Callable[[dict], None], speed: float = 1.0,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Hand the recorded events to `emit` in their recorded order, spaced by their drill time / speed."""
    if speed <= 0:
        raise UsageError("--speed must be more than 0")
    last = 0.0
    for event in sorted(record.get("events", []), key=lambda e: e["seq"]):
        gap = event["t"] - last
        if gap > 0:
            sleep(gap / speed)
        last = max(last, event["t"])
        emit(event)


def event_text(event: dict) -> str:
    """One event of a drill's timeline in words (the CLI's lines, the console's timeline)."""
    kind = event["type"]
    if kind == "step_started":
        return (f"start {event['step']}: {event['action']} ({event['role']}, "
                f"~{clock.human_duration(event['estimate_seconds'])})")
    if kind == "step_finished":
        return f"{event['status']} {event['step']}" + (f" by {event['by']}" if event.get("by") else "") \
            + (f": {event['note']}" if event.get("note") else "")
    if kind == "escalation":
        return f"ESCALATION level {event['level']} ({event['trigger']}): notify {', '.join(event['notify'])}"
    if kind == "inject":
        return f"INJECT ({event['by']}): {event['text']}"
    if kind == "response":
        return f"response to inject {event['inject']} ({event['by']}): {event['text']}"
    if kind == "finding":
        return f"FINDING ({event['by']}): {event['text']} — owner {event['owner']}" \
            + (f", due {event['due']}" if event.get("due") else "")
    if kind == "drill_started":
        return f"drill of {event['name']} started ({event['mode']}, speed {event['speed']:g})"
    if kind == "drill_finished":
        return f"drill {event['status'].upper()}"
    if kind == "step_missing":
        return f"step {event['step']} ({event['kind']}) is not in this drill: {event['why']}"
    return f"{kind}: " + ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("seq", "t", "at", "type"))
