"""Durations and Slurm time strings, read and written the same way everywhere.

The config, every command-line flag that takes a duration, the simulator's traces and the job
scripts all speak "30s", "5m", "01:00:00": one parser keeps them agreeing on what a string
means, and one formatter writes what sbatch reads back. Pure (the standard library and the
error tree), so the pure modules (policy, estimate) may use it.
"""

from __future__ import annotations

import re

from hpcscale.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_CLOCK_RE = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")
_EXAMPLES = "a duration such as 30s, 5m, 2h or 01:00:00"


def parse_duration(value: object) -> float:
    """Seconds from "30s", "5m", "2h", "1d", "01:00:00", "1-12:00:00" (Slurm's form) or a number."""
    if isinstance(value, bool):
        raise ValueError(f"must be {_EXAMPLES}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"must be {_EXAMPLES}")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _parse_duration_text(text: str) -> float:
    match = _DURATION_RE.match(text)
    if match:
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    clock = _CLOCK_RE.match(text.strip())
    if clock:
        days, first, second, third = clock.groups()
        if third is None:  # MM:SS
            hours, minutes, seconds = 0, int(first), int(second)
        else:
            hours, minutes, seconds = int(first), int(second), int(third)
        return float(int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds)
    raise ValueError(f"{text!r} is not {_EXAMPLES}")


def duration_flag(flag: str, value: str) -> float:
    """A command-line duration, or a ConfigError that names the flag (`--max-time: ...`), so a
    typo reads as one line instead of a traceback."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError([f"{flag}: {exc}"]) from exc


def format_slurm_time(seconds: float) -> str:
    """Slurm's D-HH:MM:SS (rounded up to a whole minute is not needed: Slurm takes seconds)."""
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def format_seconds(value: float) -> str:
    """Seconds as a job script's argv writes them: "1800", "0.5" (no trailing ".0")."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def worker_lifetime(max_time: float, wall: float) -> float:
    """How long a worker may live: its max_time capped at the job's wall time (0: no max_time,
    the wall time). The job script hands it to the worker as --max-time, and the sizing rule
    plans with it, so a worker never plans past the end of its job."""
    return min(max_time, wall) if max_time > 0 else wall
