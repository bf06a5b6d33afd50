"""Time and identifiers in one place, so tests can fix both (snapshot tests need stable output)."""

from __future__ import annotations

import os
import re
import secrets
import zoneinfo
from datetime import datetime, time, timedelta, timezone, tzinfo

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


def local_zone() -> tzinfo:
    """The operator's zone, for times typed without one: $TZ when it names a zone, else the system's."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return datetime.now().astimezone().tzinfo or UTC


def zone_name(zone: tzinfo) -> str:
    """'Europe/Paris' for a named zone, else its abbreviation ('UTC', 'CET')."""
    return getattr(zone, "key", None) or zone.tzname(None) or str(zone)


WHEN_FORMS = ("2026-11-27T02:15:00Z or +01:00 (ISO 8601 with a zone)",
              "2026-11-27 02:15 (ISO 8601 without a zone: local time)",
              "14:05 (today, local time)",
              "-2h, -30m, -1d (before now)",
              "yesterday 14:00 (local time)")
_CLOCK_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_when(text: str, now: datetime, local_tz: tzinfo) -> datetime:
    """A point in time as an operator types it (see WHEN_FORMS), in UTC. A time without a zone
    is read in local_tz; anything else is refused with the forms that work."""
    words = text.strip().lower().split()
    try:
        if len(words) == 1 and words[0].startswith("-"):
            return (now - parse_duration(words[0][1:])).astimezone(UTC)
        if len(words) in (1, 2) and _CLOCK_TIME.match(words[-1]) and words[:-1] in ([], ["today"], ["yesterday"]):
            hour, minute, second = (int(g or 0) for g in _CLOCK_TIME.match(words[-1]).groups())
            day = now.astimezone(local_tz).date() - timedelta(days=1 if words[:-1] == ["yesterday"] else 0)
            return datetime.combine(day, time(hour, minute, second), local_tz).astimezone(UTC)
        if len(words) in (1, 2) and words[0][:1].isdigit():
            value = datetime.fromisoformat(" ".join(words).upper().replace("Z", "+00:00"))
            return (value if value.tzinfo else value.replace(tzinfo=local_tz)).astimezone(UTC)
    except ValueError:
        pass
    raise ValueError(f"{text.strip()!r} is not a point in time; use one of: " + "; ".join(WHEN_FORMS))


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'15m', '1h', '7d' -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 1h, 7d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def human_duration(seconds: float | None) -> str:
    """3725 -> '1h 2m'; short enough for a table cell. None (a drill that stopped before it
    measured its recovery) -> 'not measured'."""
    if seconds is None:
        return "not measured"
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
