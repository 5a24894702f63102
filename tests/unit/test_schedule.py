"""Scheduled windows: cron parsing and matching, and which window is open when (pure)."""

from __future__ import annotations

import time

import pytest

from hpcscale.config import from_mapping
from hpcscale.errors import ConfigError
from hpcscale.schedule import Window, active_window, parse_cron, pool_windows


def at(text: str) -> float:
    """Local time 'YYYY-mm-dd HH:MM' as a timestamp (cron is local time)."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))


@pytest.mark.parametrize(
    ("expr", "when", "hit"),
    [
        ("0 8 * * *", "2026-11-23 08:00", True),
        ("0 8 * * *", "2026-11-23 08:01", False),
        ("*/15 * * * *", "2026-11-23 10:45", True),
        ("*/15 * * * *", "2026-11-23 10:44", False),
        ("0 8 * * 1-5", "2026-11-23 08:00", True),  # a Monday
        ("0 8 * * 1-5", "2026-11-22 08:00", False),  # a Sunday
        ("0 8 * * 0", "2026-11-22 08:00", True),
        ("0 8 * * 7", "2026-11-22 08:00", True),  # 7 is Sunday too
        ("30 6 1,15 * *", "2026-11-15 06:30", True),
        ("0 0 1 * 1", "2026-11-23 00:00", True),  # both day fields set: either matches
        ("0 0 1 12 *", "2026-11-01 00:00", False),
    ],
)
def test_cron_matches(expr: str, when: str, hit: bool) -> None:
    assert parse_cron(expr).matches(at(when)) is hit


@pytest.mark.parametrize(
    ("expr", "says"),
    [("0 8 * *", "5 fields"), ("61 * * * *", "minute field"), ("* 24 * * *", "hour field"),
     ("* * * * mon", "day of week field"), ("*/0 * * * *", "minute field"),
     ("5-1 * * * *", "minute field")],
)  # fmt: skip
def test_bad_cron_names_the_field(expr: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_cron(expr)


def test_a_window_is_open_for_its_duration_after_each_fire() -> None:
    morning = Window(parse_cron("0 8 * * *"), 2 * 3600, min_workers=5, max_workers=20)
    assert active_window([morning], at("2026-11-23 07:59")) is None
    assert active_window([morning], at("2026-11-23 08:00")) == (5, 20)
    assert active_window([morning], at("2026-11-23 09:59")) == (5, 20)
    assert active_window([morning], at("2026-11-23 10:00")) is None


def test_overlapping_windows_take_the_highest_floor_and_lowest_cap() -> None:
    always = Window(parse_cron("* * * * *"), 120, min_workers=1, max_workers=8)
    burst = Window(parse_cron("0 8 * * *"), 3600, min_workers=4, max_workers=50)
    assert active_window([always, burst], at("2026-11-23 08:30")) == (4, 8)


def test_schedule_in_the_config() -> None:
    settings = from_mapping({"pools": [{"name": "cpu", "max_workers": 30, "schedule": [
        {"cron": "0 8 * * 1-5", "duration": "10h", "min_workers": 6}]}]})  # fmt: skip
    windows = pool_windows(settings.pools[0].schedule, settings.pools[0].max_workers)
    assert active_window(windows, at("2026-11-23 12:00")) == (6, 30)
    with pytest.raises(ConfigError) as bad:
        from_mapping({"pools": [{"name": "cpu", "schedule": [
            {"cron": "0 25 * * *", "duration": "1h"}]}]})  # fmt: skip
    assert bad.value.problems == ["pools[0].schedule[0].cron: hour field '25' must lie within 0-23"]
