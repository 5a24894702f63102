"""What the three drivers share: workload W, its schedule, and the result file. Stdlib only.

The drivers run in three different interpreters (the project's venv for hpcscale, Parsl's and
dask-jobqueue's own venvs), each as `python -m bench.peers.<driver>` from the repository root,
so this module must import nothing but the standard library.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEED = 42  # fixed: W's 600 durations add up to 2,105.5 s
BURST_AT = (0.0, 120.0, 240.0)
BURST_TASKS = 200
QUICK_AT = (0.0, 30.0, 60.0)
QUICK_TASKS = 20
LOW, HIGH = 1.0, 6.0  # each task sleeps uniform(LOW, HIGH) seconds
CAP = 8  # workers (1-CPU Slurm jobs) at most
WALLTIME = "00:30:00"  # every system's jobs: far longer than any worker needs here
PARTITION = "debug"


@dataclass(frozen=True)
class Burst:
    at: float  # seconds after the first submit
    durations: list[float]


@dataclass(frozen=True)
class Workload:
    name: str  # "W" or "W-quick"
    seed: int
    cap: int
    walltime: str
    partition: str
    bursts: list[Burst]

    @property
    def busy(self) -> float:
        return sum(sum(b.durations) for b in self.bursts)

    @property
    def tasks(self) -> int:
        return sum(len(b.durations) for b in self.bursts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        raw = json.loads(text)
        bursts = [Burst(float(b["at"]), [float(d) for d in b["durations"]]) for b in raw["bursts"]]
        return cls(
            raw["name"], int(raw["seed"]), int(raw["cap"]), raw["walltime"], raw["partition"],
            bursts,
        )  # fmt: skip


def workload(quick: bool = False, seed: int = SEED) -> Workload:
    """W: bursts of 200 tasks at 0, 120, 240 s (quick: 20 tasks at 0, 30, 60 s), in one stream
    of uniform(1, 6) s durations drawn from one seeded generator, burst after burst."""
    rng = random.Random(seed)
    at, count = (QUICK_AT, QUICK_TASKS) if quick else (BURST_AT, BURST_TASKS)
    bursts = [Burst(t, [round(rng.uniform(LOW, HIGH), 3) for _ in range(count)]) for t in at]
    return Workload("W-quick" if quick else "W", seed, CAP, WALLTIME, PARTITION, bursts)


# Issue 15's other workloads, to stress what W does not (same cap, wall time and partition):
# a trickle (a task every 10 s for 5 minutes: workers idle most of the time) and a few long
# tasks at once (the prior decides before anything is measured).
TRICKLE_EVERY, TRICKLE_TASKS = 10.0, 30
LONG_TASKS, LONG_LOW, LONG_HIGH = 10, 60.0, 180.0


def other_workload(name: str, seed: int = SEED) -> Workload:
    """`trickle` or `long` (each its own seeded draws)."""
    rng = random.Random(seed)
    if name == "trickle":
        bursts = [Burst(i * TRICKLE_EVERY, [round(rng.uniform(LOW, HIGH), 3)])
                  for i in range(TRICKLE_TASKS)]  # fmt: skip
    elif name == "long":
        bursts = [
            Burst(0.0, [round(rng.uniform(LONG_LOW, LONG_HIGH), 3) for _ in range(LONG_TASKS)])
        ]
    else:
        raise ValueError(f"no workload {name!r}")
    return Workload(name, seed, CAP, WALLTIME, PARTITION, bursts)


def ideal_makespan(work: Workload) -> float:
    """The makespan with `cap` workers always ready and zero overhead: list scheduling of each
    burst in submission order (what every system here does), bursts starting at their time."""
    free = [0.0] * work.cap
    end = 0.0
    for burst in work.bursts:
        free = [max(f, burst.at) for f in free]
        for duration in burst.durations:
            i = min(range(len(free)), key=free.__getitem__)
            free[i] += duration
            end = max(end, free[i])
    return end


@dataclass
class DriverResult:
    """What a driver writes: wall-clock times (time.time(), this host) of every submit and
    every task's end, in the workload's order, plus anything system-specific in `extra`."""

    system: str
    versions: dict[str, str]
    t0: float = 0.0  # the first submit
    submitted: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)  # 0.0: never finished
    failed: int = 0
    jobs_gone: float | None = None  # when the driver saw no job of its own left in squeue
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> DriverResult:
        return cls(**json.loads(path.read_text()))


def run_bursts(
    work: Workload, submit: Callable[[int, list[float]], None], lead: float = 1.0
) -> float:
    """Call submit(first_index, durations) for each burst at its time; returns t0 (wall clock)."""
    t0 = time.time() + lead
    index = 0
    for burst in work.bursts:
        delay = t0 + burst.at - time.time()
        if delay > 0:
            time.sleep(delay)
        submit(index, burst.durations)
        index += len(burst.durations)
    return t0


def live_jobs(name_prefix: str) -> list[str]:
    """Ids of this lab's jobs named name_prefix* that still hold or wait for a CPU."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "PD,CF,R,CG,S", "-o", "%i|%j"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    ids = []
    for line in out.stdout.splitlines():
        job, _, name = line.partition("|")
        if name.strip().startswith(name_prefix):
            ids.append(job.strip())
    return ids


def wait_jobs_gone(name_prefix: str, timeout: float, every: float = 0.5) -> float | None:
    """Until no job named name_prefix* is pending or running; the time it happened, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not live_jobs(name_prefix):
                return time.time()
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(every)
    return None


def wait_done(done: list[float], timeout: float, every: float = 0.2) -> bool:
    """Until every entry of `done` is set (non-zero), or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(done):
            return True
        time.sleep(every)
    return all(done)


def driver_args(argv: list[str] | None = None) -> tuple[Workload, Path, Path, float]:
    """--workload FILE --out FILE --workdir DIR --timeout S, shared by the drivers."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=900.0, help="tasks + jobs gone, s")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return Workload.from_json(args.workload.read_text()), args.out, args.workdir, args.timeout


def version_of(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def python_version() -> str:
    import platform

    return platform.python_version()
