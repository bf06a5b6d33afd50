"""Cron times as the scheduler keeps them: schedules are wall-clock times in `[scheduler]
timezone` (default UTC), every instant returned is UTC. The scheduler, `status` (next and
missed runs, overdue regular tests) and `schedule --list` read the same clock."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from insite_console import clock


def timezone(ws) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(ws.config.scheduler.get("timezone", "UTC"))


def last_fire(expression: str, now: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """When the schedule last fired at or before `now`, read as wall-clock time in `tz`.

    DST as cron does it: a time skipped in spring fires at the first time after the gap (croniter
    does this); a time repeated in autumn fires once, unless the hour field is a wildcard
    (`*`, `*/2`), whose jobs run in both hours."""
    from croniter import croniter

    local = now.astimezone(tz)
    fire = croniter(expression, local).get_prev(datetime)
    following = croniter(expression, fire).get_next(datetime)
    if following <= local:  # get_prev is strictly before: a slot at exactly `now` has fired
        fire = following
    wall = fire.replace(tzinfo=None)
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    repeated = first.utcoffset() != second.utcoffset() and fire.utcoffset() == second.utcoffset()
    if repeated and not expression.split()[1].startswith("*"):
        fire = first  # the second 02:30 of the night the clocks go back is the same slot
    return fire.astimezone(clock.UTC)


def next_fire(expression: str | None, now: datetime, tz: zoneinfo.ZoneInfo) -> datetime | None:
    if not expression:
        return None
    from croniter import croniter

    return croniter(expression, now.astimezone(tz)).get_next(datetime).astimezone(clock.UTC)
