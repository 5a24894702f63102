"""PURE: scheduled windows. `[[pools.schedule]]` raises a pool's floor (and may lower its cap)
for `duration` after each time a cron expression fires: warm workers before a known burst,
fewer at night. No I/O and no clock of its own; the manager passes `now`.

Cron: five fields (minute hour day-of-month month day-of-week), each `*`, a number, a range
`a-b`, a list `a,b`, or a step `*/n` / `a-b/n`; day-of-week 0-6 with 0 (or 7) Sunday. When both
day fields are restricted, either may match (as in Vixie cron). Local time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcscale.config import ScheduleConfig

_LIMITS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")


@dataclass(frozen=True)
class Cron:
    fields: tuple[frozenset[int], ...]
    any_day: bool  # day of month is '*'
    any_weekday: bool  # day of week is '*'

    def matches(self, ts: float) -> bool:
        t = time.localtime(ts)
        minute, hour, mday, month, wday = self.fields
        if t.tm_min not in minute or t.tm_hour not in hour or t.tm_mon not in month:
            return False
        weekday = (t.tm_wday + 1) % 7  # Python: Monday 0; cron: Sunday 0
        day_ok = t.tm_mday in mday
        wday_ok = weekday in wday or (weekday == 0 and 7 in wday)
        if self.any_day or self.any_weekday:
            return day_ok and wday_ok
        return day_ok or wday_ok


def parse_cron(text: str) -> Cron:
    """A Cron, or ValueError naming the field that is wrong."""
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"{text!r}: a cron expression has 5 fields, not {len(parts)}")
    fields = tuple(
        _field(p, lo, hi, name) for p, (lo, hi), name in zip(parts, _LIMITS, _NAMES, strict=True)
    )
    return Cron(fields, parts[2] == "*", parts[4] == "*")


def _field(text: str, lo: int, hi: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = lo, hi
            elif "-" in span:
                first, last = span.split("-", 1)
                start, end = int(first), int(last)
            else:
                start = end = int(span)
        except ValueError as exc:
            raise ValueError(f"{name} field {text!r} is not a number, range or step") from exc
        if step < 1 or start < lo or end > hi or start > end:
            raise ValueError(f"{name} field {text!r} must lie within {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Window:
    cron: Cron
    duration: float
    min_workers: int
    max_workers: int


def active_window(windows: Sequence[Window], now: float) -> tuple[int, int] | None:
    """(min, max) of the windows open at `now` (several: the highest floor, the lowest cap)."""
    open_now = [w for w in windows if _open(w, now)]
    if not open_now:
        return None
    return max(w.min_workers for w in open_now), min(w.max_workers for w in open_now)


def _open(window: Window, now: float) -> bool:
    """Did the cron fire within the last `duration`? (Minute by minute, newest first.)"""
    minute = now - now % 60
    for back in range(int(window.duration // 60) + 1):
        if minute - back * 60 <= now - window.duration:
            break
        if window.cron.matches(minute - back * 60):
            return True
    return False


def pool_windows(schedule: Sequence[ScheduleConfig], max_workers: int) -> list[Window]:
    return [
        Window(
            parse_cron(entry.cron),
            entry.duration,
            entry.min_workers,
            max_workers if entry.max_workers is None else entry.max_workers,
        )
        for entry in schedule
    ]
