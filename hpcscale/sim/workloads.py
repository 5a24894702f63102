"""What a simulation is fed: the tasks (built-in scenarios, CSV traces) and the cluster they meet.

Why apart from the engine: an admin's question is "this workload on this cluster", and both
halves are plain values read from flags and files (traces, SWF logs) with their own errors; the
event loop only consumes them. Same seed, same tasks, whatever the cluster model.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hpcscale.config import PoolConfig, SlurmConfig, WorkerConfig
from hpcscale.errors import ConfigError
from hpcscale.units import parse_duration

DAY = 86400.0
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


class SimTask(NamedTuple):
    """One task of a workload: when it is submitted, how long it runs, where it goes."""

    arrival: float
    duration: float
    queue: str = "default"
    priority: int = 0


@dataclass(frozen=True)
class Scenario:
    """A named synthetic workload; `make(rng, size)` returns its tasks."""

    name: str
    about: str
    size: int
    make: Callable[[random.Random, int], list[SimTask]]


def _burst(rng: random.Random, size: int) -> list[SimTask]:
    return [SimTask(0.0, rng.uniform(60.0, 180.0)) for _ in range(size)]


def _steady(rng: random.Random, size: int) -> list[SimTask]:
    tasks, now = [], 0.0
    for _ in range(size):
        now += rng.expovariate(0.5)
        tasks.append(SimTask(now, max(1.0, rng.expovariate(1 / 60.0))))
    return tasks


def _diurnal(rng: random.Random, size: int) -> list[SimTask]:
    """Arrivals over one day at a rate ∝ 1 - 0.9·cos(2πt/day): quiet at night, 19x at noon."""
    tasks: list[SimTask] = []
    while len(tasks) < size:
        when = rng.uniform(0.0, DAY)
        if rng.random() * 1.9 <= 1.0 - 0.9 * math.cos(2 * math.pi * when / DAY):
            tasks.append(SimTask(when, rng.uniform(60.0, 600.0)))
    return sorted(tasks)


def _long_tail(rng: random.Random, size: int) -> list[SimTask]:
    """Lognormal run times (median 1 min, σ 1.5), cut at 45 min so a 1 h job can finish each."""
    return [SimTask(0.0, min(2700.0, rng.lognormvariate(math.log(60.0), 1.5))) for _ in range(size)]


def _bursty_gpu(rng: random.Random, size: int) -> list[SimTask]:
    """Bursts of 50 long tasks every 30 min on queue `gpu` (slow to start, costly to hold)."""
    return [SimTask((i // 50) * 1800.0, rng.uniform(600.0, 1200.0), "gpu", 0) for i in range(size)]


def _bursts(rng: random.Random, size: int) -> list[SimTask]:
    """Issue 15's workload W (bench/peers): three equal bursts 120 s apart, uniform(1, 6) s."""
    third = max(1, size // 3)
    return [SimTask((i // third) * 120.0, rng.uniform(1.0, 6.0)) for i in range(size)]


def _trickle(rng: random.Random, size: int) -> list[SimTask]:
    """A task about every 20 s, uniform(1, 9) s: a worker idles most of its time."""
    return [SimTask(i * 20.0 + rng.uniform(0.0, 5.0), rng.uniform(1.0, 9.0)) for i in range(size)]


def _few_long(rng: random.Random, size: int) -> list[SimTask]:
    """A handful of long tasks at once: the prior decides before anything is measured."""
    return [SimTask(0.0, rng.uniform(300.0, 900.0)) for _ in range(size)]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("burst", "all at t=0, uniform(60, 180) s", 1000, _burst),
        Scenario(
            "steady", "Poisson arrivals 0.5/s, exponential run times (mean 60 s)", 3600, _steady
        ),
        Scenario(
            "diurnal",
            "one day, arrival rate from 0.1x at night to 1.9x at noon, uniform(60, 600) s",
            5000,
            _diurnal,
        ),
        Scenario(
            "long-tail",
            "all at t=0, lognormal run times (median 60 s, σ 1.5, ≤ 45 min)",
            2000,
            _long_tail,
        ),
        Scenario(
            "bursty-gpu",
            "50 tasks every 30 min on queue gpu, uniform(600, 1200) s",
            400,
            _bursty_gpu,
        ),
        Scenario("bursts", "3 bursts 120 s apart, uniform(1, 6) s (bench/peers' W)", 600, _bursts),
        Scenario("trickle", "a task about every 20 s, uniform(1, 9) s", 180, _trickle),
        Scenario("few-long", "all at t=0, uniform(300, 900) s", 10, _few_long),
    )
}


def scenario_tasks(name: str, seed: int = 1, size: int | None = None) -> list[SimTask]:
    """A scenario's tasks; the same seed gives the same tasks whatever the cluster model."""
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ConfigError(
            [f"--scenario: unknown {name!r} (known: {', '.join(SCENARIOS)})"]
        ) from None
    if size is not None and size < 1:
        raise ConfigError(["--tasks: must be ≥ 1"])
    rng = random.Random(f"workload-{seed}")  # noqa: S311 - a simulation, not cryptography
    return scenario.make(rng, scenario.size if size is None else size)


def read_trace(path: str | Path) -> list[SimTask]:
    """Tasks from a CSV of `arrival,duration[,queue[,priority]]`, header optional.

    Times are seconds or durations such as `5m`; an empty queue is `default`; blank lines and
    lines starting with `#` are skipped.
    """
    try:
        with Path(path).open(newline="") as handle:
            rows = [
                (number, row)
                for number, row in enumerate(csv.reader(handle), start=1)
                if "".join(row).strip() and not row[0].lstrip().startswith("#")
            ]
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    columns = ["arrival", "duration", "queue", "priority"]
    if rows and not _is_number(rows[0][1][0]):
        columns = [c.strip().lower() for c in rows[0][1]]
        rows = rows[1:]
        missing = {"arrival", "duration"} - set(columns)
        if missing:
            raise ConfigError([f"{path}: the header lacks {', '.join(sorted(missing))}"])
    tasks = [_trace_row(path, n, dict(zip(columns, row, strict=False))) for n, row in rows]
    if not tasks:
        raise ConfigError([f"{path}: no tasks"])
    return tasks


def _trace_row(path: str | Path, number: int, row: dict[str, str]) -> SimTask:
    try:
        arrival = parse_duration(row["arrival"].strip())
        duration = parse_duration(row["duration"].strip())
        priority = int(row.get("priority") or 0)
    except (ValueError, KeyError) as exc:
        raise ConfigError([f"{path}:{number}: {exc}"]) from exc
    queue = (row.get("queue") or "").strip() or "default"
    return SimTask(arrival, max(0.0, duration), queue, priority)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_swf_waits(path: str | Path) -> list[float]:
    """Queue waits (field 3) of a Parallel Workloads Archive SWF file; unknown (-1) skipped."""
    waits = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        try:
            wait = float(fields[2])
        except (IndexError, ValueError) as exc:
            raise ConfigError([f"{path}:{number}: not an SWF record ({exc})"]) from exc
        if wait >= 0:
            waits.append(wait)
    if not waits:
        raise ConfigError([f"{path}: no job with a known wait time"])
    return waits


# -- the cluster -------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueWait:
    """Seconds an array element waits in Slurm's queue: fixed, exponential, or from a trace."""

    kind: str = "fixed"  # fixed | exp | trace
    mean: float = 30.0
    samples: tuple[float, ...] = ()
    origin: str = ""  # where the samples were measured, when not in a trace file

    def draw(self, rng: random.Random) -> float:
        if self.kind == "trace":
            return rng.choice(self.samples)
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.mean) if self.mean > 0 else 0.0
        return self.mean

    @classmethod
    def parse(cls, text: str) -> QueueWait:
        """`fixed:30s`, `exp:2m` (exponential with that mean), or a bare duration (fixed)."""
        kind, _, value = text.partition(":") if ":" in text and text[0].isalpha() else ("", "", "")
        if not kind:
            kind, value = "fixed", text
        if kind not in ("fixed", "exp"):
            raise ConfigError([f"--queue-wait: {text!r}: use fixed:SECONDS or exp:MEAN"])
        try:
            return cls(kind, parse_duration(value))
        except ValueError as exc:
            raise ConfigError([f"--queue-wait: {exc}"]) from exc

    @classmethod
    def from_samples(cls, samples: Sequence[float], origin: str = "") -> QueueWait:
        """Waits drawn from measured ones (an SWF log's, the store's); their mean describes them."""
        return cls("trace", _mean(samples), tuple(samples), origin)

    def describe(self) -> str:
        if self.kind == "trace":
            counted = f"{len(self.samples)} waits (mean {_mean(self.samples):.0f}s)"
            return f"{self.origin}: {counted}" if self.origin else f"trace of {counted}"
        return f"{self.kind} {self.mean:g}s"


@dataclass(frozen=True)
class ClusterModel:
    """How the batch system behaves, as far as the pool can tell."""

    queue_wait: QueueWait = field(default_factory=QueueWait)
    start_latency: float = 5.0  # job start -> worker registered
    failed_start: float = 0.0  # probability that a started element never registers
    sbatch_latency: float = 0.0  # submission -> elements visible (unconfirmed meanwhile)
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE


def example_pool() -> PoolConfig:
    """The built-in pool when the config has none: config/example.toml's `cpu` pool."""
    return PoolConfig(
        name="cpu",
        queues=["default"],
        max_workers=50,
        max_pending=10,
        max_submit_per_cycle=20,
        target_drain_time=1800.0,
        task_duration_prior=300.0,
        slurm=SlurmConfig(time="01:00:00"),
        worker=WorkerConfig(),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
