"""Times as operators type them (clock.parse_when), with a fixed now and zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from insite_console import clock

NOW = clock.parse_iso("2026-12-01T19:20:00Z")  # 20:20 in Paris
PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize("text, expected", [
    ("2026-12-01T18:59:30Z", "2026-12-01T18:59:30Z"),
    ("2026-12-01T18:59:30+01:00", "2026-12-01T17:59:30Z"),
    ("2026-12-01T18:59:30", "2026-12-01T17:59:30Z"),  # no zone: local (Paris)
    ("2026-12-01 18:59", "2026-12-01T17:59:00Z"),
    ("14:05", "2026-12-01T13:05:00Z"),  # today, local
    ("00:30:10", "2026-11-30T23:30:10Z"),  # today in Paris is still yesterday in UTC
    ("-2h", "2026-12-01T17:20:00Z"),
    ("-30m", "2026-12-01T18:50:00Z"),
    ("-1d", "2026-11-30T19:20:00Z"),
    ("yesterday 14:00", "2026-11-30T13:00:00Z"),
    ("  Yesterday  14:00  ", "2026-11-30T13:00:00Z"),
])
def test_parse_when_reads_what_operators_type(text, expected):
    assert clock.iso(clock.parse_when(text, NOW, PARIS)) == expected


def test_summer_time_is_read_in_the_zone_of_that_day():
    assert clock.iso(clock.parse_when("2026-07-01 12:00", NOW, PARIS)) == "2026-07-01T10:00:00Z"


@pytest.mark.parametrize("text", ["", "foo", "25:00", "-2x", "yesterday", "2026-13-01", "2h ago please"])
def test_parse_when_refuses_with_the_forms_that_work(text):
    with pytest.raises(ValueError) as caught:
        clock.parse_when(text, NOW, PARIS)
    message = str(caught.value)
    assert "use one of" in message and "-2h" in message and "yesterday 14:00" in message and "14:05" in message
    assert "isoformat" not in message and "Invalid" not in message


def test_local_zone_follows_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert clock.zone_name(clock.local_zone()) == "Asia/Tokyo"
