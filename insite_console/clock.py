"""Time and identifiers in one place, so tests can fix both (snapshot tests need stable output)."""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timedelta, timezone

UTC = timezone.utc


def now() -> datetime:
    """The current time in UTC; INSITE_FAKE_NOW (ISO 8601) fixes it for tests and demos."""
    fixed = os.environ.get("INSITE_FAKE_NOW")
    if fixed:
        return parse_iso(fixed)
    return datetime.now(UTC)


def new_id() -> str:
    """A random 16-hex-digit identifier for backups, runs and restores."""
    return secrets.token_hex(8)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the JSON contract says."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_precise(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds, for ordering events within one second."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601; a time without an offset is refused, since it would be ambiguous."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset (add Z or +HH:MM)")
    return value.astimezone(UTC)


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'15m', '1h', '7d' -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 1h, 7d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def human_duration(seconds: float) -> str:
    """3725 -> '1h 2m'; short enough for a table cell."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
