"""A discrete-event simulation of a cluster run by hpcscale, driving the REAL decision code.

Why: an admin tunes a pool (max_workers, max_pending, target_drain_time, the worker's
timeouts) before trusting it with an allocation, and a wrong guess costs core-hours or hours of
waiting. The simulator answers "what would this config do with this workload" in seconds, with
the very functions the service runs, so a number seen here is a number the manager would earn:

- decisions: `policy.decide` on `policy.rules_from_pool(pool)`, fed an `Observation` built the
  way `manager.ComputeManager._cycle_pool` builds it (claimable per pool, the blended EWMA of
  `estimate.task_duration`, unconfirmed / pending / starting / registered / leaving-soon, the
  failed-start breaker); one cycle of all pools every `poll_interval`, plus an immediate cycle
  when a task arrives while its pool's backlog was empty (the server's long-poll wake-up);
- workers: `worker.stop_reason`, `worker.may_claim` and `worker.claim_size` on a
  `worker.WorkerState` per simulated worker: claims by priority then age, slots, max_tasks,
  max_time, no claim without time for a task (expected = p90 of the last 100 durations, as the
  worker asks the server), idle exit after max_empty_claims empty claims while the pool is above
  min_workers, release of running tasks END_GRACE before the job's end;
- Slurm: an array per sbatch call, a queue wait per element (fixed, exponential or drawn from an
  SWF trace), the array throttle (`%N`), a start latency before the worker registers, a
  probability that a start fails, the wall time, and optionally a delay before a submission is
  seen (`unconfirmed`).

Not modelled: task slots (every task takes one), task failures and max_attempts, heartbeats and
lease expiry, drain/pause controls, scheduled windows, several managers. Time is simulated: a
10^5-task campaign runs in a few seconds (bench/simulate_speed.py).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hpcscale import config, estimate
from hpcscale.config import ManagerConfig, PoolConfig, SlurmConfig, WorkerConfig
from hpcscale.errors import ConfigError, HpcscaleError
from hpcscale.policy import (
    Decision,
    Observation,
    PoolRules,
    breaker_state,
    decide,
    effective_bounds,
    leaving_soon,
    rules_from_pool,
)
from hpcscale.worker import loop as worker_rules

DAY = 86400.0
RECENT_DURATIONS = 100  # statestore.store.RECENT_DURATIONS: what queue_stats returns
RECENT_WAITS = 50  # manager_records.pool_history's limit on queue waits
P90_REFRESH = 60.0  # worker._expected_duration asks the server at most once a minute
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
WAKE_MODES = ("empty", "any", "none")

# Event classes: at equal times, arrivals first, then cluster and worker events, then the
# manager's cycle, so a cycle sees everything that happened at its instant.
_EVENT, _CYCLE = 1, 2
# Element states.
_UNCONFIRMED, _PENDING, _STARTING, _REGISTERED, _ENDED = range(5)


# ---------------------------------------------------------------------------- workloads


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
        arrival = config.parse_duration(row["arrival"].strip())
        duration = config.parse_duration(row["duration"].strip())
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


# ---------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class QueueWait:
    """Seconds an array element waits in Slurm's queue: fixed, exponential, or from a trace."""

    kind: str = "fixed"  # fixed | exp | trace
    mean: float = 30.0
    samples: tuple[float, ...] = ()

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
            return cls(kind, config.parse_duration(value))
        except ValueError as exc:
            raise ConfigError([f"--queue-wait: {exc}"]) from exc

    def describe(self) -> str:
        if self.kind == "trace":
            return f"trace of {len(self.samples)} waits (mean {_mean(self.samples):.0f}s)"
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


# ---------------------------------------------------------------------------- results


class PoolCounts(NamedTuple):
    """A pool's elements by state at one instant (for audits of the hard max)."""

    name: str
    unconfirmed: int
    pending: int
    starting: int
    registered: int
    max_workers: int
    max_pending: int


class Sample(NamedTuple):
    """The pool at one manager cycle, for plots."""

    t: float
    backlog: int
    pending: int  # unconfirmed + pending
    starting: int
    registered: int
    cap: int


@dataclass
class PoolResult:
    name: str
    cap: int
    max_pending: int
    max_in_flight: int = 0
    max_pending_seen: int = 0
    worker_seconds: float = 0.0
    busy_slot_seconds: float = 0.0
    slots: int = 1
    peak_workers: int = 0
    sbatch_calls: int = 0
    submitted: int = 0
    scancel_calls: int = 0
    cancelled_pending: int = 0
    failed_starts: int = 0
    first_worker_at: float | None = None
    end_reasons: dict[str, int] = field(default_factory=dict)
    est_duration: float = 0.0
    queue_wait_estimate: float = 0.0
    timeline: list[Sample] = field(default_factory=list)

    @property
    def idle_worker_seconds(self) -> float:
        return self.worker_seconds - self.busy_slot_seconds / self.slots

    @property
    def busy_share(self) -> float:
        allocated = self.worker_seconds * self.slots
        return self.busy_slot_seconds / allocated if allocated else 0.0

    def to_dict(self, origin: float) -> dict[str, Any]:
        first = None if self.first_worker_at is None else self.first_worker_at - origin
        return _rounded(
            {
                "name": self.name,
                "cap": self.cap,
                "max_in_flight": self.max_in_flight,
                "max_pending": self.max_pending,
                "max_pending_seen": self.max_pending_seen,
                "worker_seconds": self.worker_seconds,
                "busy_worker_seconds": self.busy_slot_seconds / self.slots,
                "idle_worker_seconds": self.idle_worker_seconds,
                "busy_share": self.busy_share,
                "peak_workers": self.peak_workers,
                "sbatch_calls": self.sbatch_calls,
                "workers_submitted": self.submitted,
                "scancel_calls": self.scancel_calls,
                "cancelled_pending": self.cancelled_pending,
                "failed_starts": self.failed_starts,
                "first_task_to_first_worker": first,
                "worker_end_reasons": dict(sorted(self.end_reasons.items())),
                "est_duration_at_end": self.est_duration,
                "queue_wait_estimate_at_end": self.queue_wait_estimate,
            }
        )


@dataclass
class SimResult:
    source: str
    seed: int
    tasks: int
    tasks_done: int
    first_arrival: float
    last_done: float | None
    ended_at: float
    task_waits: list[float]
    requeued: int
    cycles: int
    events: int
    max_in_flight: int
    pools: list[PoolResult]
    notes: list[str] = field(default_factory=list)
    decisions: list[tuple[str, Observation, Decision]] = field(default_factory=list)

    @property
    def makespan(self) -> float | None:
        """First arrival -> last task done; None while tasks are left."""
        if self.tasks_done < self.tasks or self.last_done is None:
            return None
        return self.last_done - self.first_arrival

    def to_dict(self) -> dict[str, Any]:
        """The metrics as plain JSON values (what `--json` prints)."""
        worker_s = sum(p.worker_seconds for p in self.pools)
        busy_s = sum(p.busy_slot_seconds / p.slots for p in self.pools)
        slot_s = sum(p.worker_seconds * p.slots for p in self.pools)
        firsts = [p.first_worker_at for p in self.pools if p.first_worker_at is not None]
        waits = sorted(self.task_waits)
        return _rounded(
            {
                "source": self.source,
                "seed": self.seed,
                "tasks": self.tasks,
                "tasks_done": self.tasks_done,
                "makespan": self.makespan,
                "worker_seconds": worker_s,
                "busy_worker_seconds": busy_s,
                "idle_worker_seconds": worker_s - busy_s,
                "busy_share": sum(p.busy_slot_seconds for p in self.pools) / slot_s
                if slot_s
                else 0.0,
                "first_task_to_first_worker": min(firsts) - self.first_arrival if firsts else None,
                "peak_workers": sum(p.peak_workers for p in self.pools),
                "sbatch_calls": sum(p.sbatch_calls for p in self.pools),
                "max_in_flight": self.max_in_flight,
                "cap": sum(p.cap for p in self.pools),
                "task_wait_mean": _mean(waits) if waits else None,
                "task_wait_p95": waits[min(len(waits) - 1, int(0.95 * len(waits)))]
                if waits
                else None,
                "requeued": self.requeued,
                "cycles": self.cycles,
                "events": self.events,
                "simulated_seconds": self.ended_at - self.first_arrival,
                "pools": [p.to_dict(self.first_arrival) for p in self.pools],
                "notes": list(self.notes),
            }
        )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


# ---------------------------------------------------------------------------- the engine


class _Queue:
    """A task queue as the store holds it: waiting tasks by (priority, id), recent run times."""

    __slots__ = ("heap", "name", "p90", "p90_at", "pools", "samples")

    def __init__(self, name: str) -> None:
        self.name = name
        self.heap: list[tuple[int, int]] = []  # (-priority, task id)
        self.samples: deque[float] = deque(maxlen=RECENT_DURATIONS)  # newest first
        self.pools: list[_Pool] = []
        self.p90 = 0.0
        self.p90_at = -math.inf


class _Submission:
    """One sbatch --array: its throttle (%N) and the elements it holds back."""

    __slots__ = ("blocked", "running", "throttle")

    def __init__(self, throttle: int | None) -> None:
        self.throttle = throttle or 0
        self.running = 0
        self.blocked: deque[_Element] = deque()


class _Element:
    """One array element and, once it registers, the worker inside it."""

    __slots__ = ("claim_pending", "pool", "running", "started", "state", "sub", "submitted", "ws")

    def __init__(self, pool: _Pool, sub: _Submission, now: float) -> None:
        self.pool = pool
        self.sub = sub
        self.state = _UNCONFIRMED
        self.submitted = now
        self.started = math.nan
        self.ws: worker_rules.WorkerState | None = None
        self.running: dict[int, float] = {}  # task id -> start time
        self.claim_pending = False  # the worker sleeps until a scheduled claim


class _Pool:
    """The simulated state of one pool, counted the way the manager's view counts it."""

    def __init__(self, cfg: PoolConfig, rules: PoolRules, queues: list[_Queue]) -> None:
        self.cfg = cfg
        self.rules = rules
        self.queues = queues
        self.opts = worker_rules.WorkerOptions(
            pool=cfg.name,
            url="http://simulated",
            token_file="-",  # noqa: S106 - nothing is contacted
            queues=tuple(cfg.queues),
            slots=cfg.worker.slots,
            max_tasks=cfg.worker.max_tasks,
            max_time=cfg.worker.max_time,
            max_empty_claims=cfg.worker.max_empty_claims,
            empty_claim_sleep=cfg.worker.empty_claim_sleep,
            claim_margin=cfg.worker.claim_margin,
            task_duration_prior=cfg.task_duration_prior,
        )
        self.wall = cfg.slurm.wall_seconds
        self.unconfirmed = self.pending = self.starting = self.registered = 0
        self.live: set[_Element] = set()
        self.starting_els: set[_Element] = set()
        self.pending_els: list[_Element] = []
        self.failures: list[float] = []  # failed starts seen by the manager (event times)
        self.unseen_failures = 0  # failed elements the next cycle will notice
        self.last_registration: float | None = None
        self.queue_waits: deque[float] = deque(maxlen=RECENT_WAITS)  # newest first
        self.result = PoolResult(cfg.name, cfg.max_workers, cfg.max_pending, slots=cfg.worker.slots)

    def backlog(self) -> int:
        return sum(len(q.heap) for q in self.queues)

    def counts(self) -> PoolCounts:
        return PoolCounts(
            self.cfg.name,
            self.unconfirmed,
            self.pending,
            self.starting,
            self.registered,
            self.rules.max_workers,
            self.rules.max_pending,
        )


class Simulation:
    """The event loop. Build it, `run()` it once; `simulate()` does both."""

    def __init__(
        self,
        tasks: Sequence[SimTask],
        pools: Sequence[PoolConfig],
        *,
        manager: ManagerConfig | None = None,
        cluster: ClusterModel | None = None,
        seed: int = 1,
        horizon: float = 30 * DAY,
        wake: str = "empty",
        audit: Callable[[Simulation], None] | None = None,
        record: bool = False,
        source: str = "tasks",
    ) -> None:
        if not pools:
            raise ConfigError(["pools: nothing to simulate"])
        if wake not in WAKE_MODES:
            raise ConfigError([f"--wake: must be one of {', '.join(WAKE_MODES)}"])
        self.manager = manager or ManagerConfig()
        self.cluster = cluster or ClusterModel()
        self.rng = random.Random(f"cluster-{seed}")  # noqa: S311 - a simulation
        self.seed, self.horizon, self.wake, self.audit = seed, horizon, wake, audit
        self.record, self.source = record, source
        self.notes: list[str] = []
        self.queues: dict[str, _Queue] = {}
        self.pools = [self._pool(cfg) for cfg in pools]
        self._load(tasks)
        self.heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self.seq = itertools.count()
        self.now = self.arrival[0] if self.arrival else 0.0
        self.horizon = self.now + horizon  # from the first task: traces may use epoch times
        self.gen = 0
        self.done = 0
        self.last_done: float | None = None
        self.requeued = 0
        self.cycles = 0
        self.max_in_flight = 0  # all pools together
        self.decisions: list[tuple[str, Observation, Decision]] = []

    # -- setup -----------------------------------------------------------------------------

    def _pool(self, cfg: PoolConfig) -> _Pool:
        queues = [self.queues.setdefault(name, _Queue(name)) for name in cfg.queues]
        pool = _Pool(cfg, rules_from_pool(cfg, self.cluster.max_array_size), queues)
        for queue in queues:
            queue.pools.append(pool)
        return pool

    def _load(self, tasks: Sequence[SimTask]) -> None:
        """Tasks in arrival order (their id is their rank: FIFO within a priority)."""
        runnable = []
        longest = {name: self._longest_run(q) for name, q in self.queues.items()}
        unserved: dict[str, int] = {}
        too_long = 0
        for task in tasks:
            if task.queue not in self.queues:
                unserved[task.queue] = unserved.get(task.queue, 0) + 1
            elif task.duration > longest[task.queue]:
                too_long += 1
            else:
                runnable.append(task)
        for queue, count in sorted(unserved.items()):
            self.notes.append(f"{count} task(s) of queue {queue!r} skipped: no pool serves it")
        if too_long:
            self.notes.append(
                f"{too_long} task(s) skipped: longer than any worker's life (they would be "
                "released before the wall time and retried for ever)"
            )
        runnable.sort(key=lambda t: t.arrival)
        self.arrival = [t.arrival for t in runnable]
        self.duration = [t.duration for t in runnable]
        self.task_queue = [self.queues[t.queue] for t in runnable]
        self.priority = [t.priority for t in runnable]
        self.first_start = [math.nan] * len(runnable)

    def _longest_run(self, queue: _Queue) -> float:
        """The longest task a worker of the queue's pools can finish: its life minus grace."""
        best = 0.0
        for pool in queue.pools:
            life = pool.wall - self.cluster.start_latency
            if pool.cfg.worker.max_time:
                life = min(life, pool.cfg.worker.max_time)
            best = max(best, life - worker_rules.END_GRACE)
        return best

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> SimResult:
        heap, arrival = self.heap, self.arrival
        total, index = len(arrival), 0
        pop = heapq.heappop
        if total:
            self._schedule_cycle(arrival[0] + self.manager.poll_interval)
        while True:
            if index < total and (not heap or arrival[index] <= heap[0][0]):
                if arrival[index] > self.horizon:
                    self.now = self.horizon
                    break
                self.now = arrival[index]
                self._arrive(index)
                index += 1
            elif heap:
                when, _, _, action, arg = pop(heap)
                if when > self.horizon:
                    self.now = self.horizon  # jobs still running are charged up to here
                    break
                self.now = when
                action(arg)
            else:
                break
            if self.audit is not None:
                self.audit(self)
            if self.done == total and index == total and self._settled():
                break
        return self._result(total)

    def _push(self, when: float, kind: int, action: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self.heap, (when, kind, next(self.seq), action, arg))

    def _settled(self) -> bool:
        """All work done and every pool down to its floor: nothing left worth simulating."""
        return all(
            p.unconfirmed + p.pending + p.starting == 0 and p.registered <= p.rules.min_workers
            for p in self.pools
        )

    def pool_counts(self) -> list[PoolCounts]:
        """Each pool's elements by state now (audits call this after every event)."""
        return [p.counts() for p in self.pools]

    # -- tasks -----------------------------------------------------------------------------

    def _arrive(self, task: int) -> None:
        queue = self.task_queue[task]
        if self.wake == "any" or (
            self.wake == "empty" and any(p.backlog() == 0 for p in queue.pools)
        ):
            self._schedule_cycle(self.now)  # the server's long-poll wakes the manager
        heapq.heappush(queue.heap, (-self.priority[task], task))

    def _requeue(self, element: _Element) -> None:
        """Running tasks go back to waiting (released, or killed at the end of the job)."""
        busy = 0.0
        for task, started in element.running.items():
            busy += self.now - started
            queue = self.task_queue[task]
            heapq.heappush(queue.heap, (-self.priority[task], task))
            self.requeued += 1
        element.pool.result.busy_slot_seconds += busy
        element.running.clear()

    # -- the manager -----------------------------------------------------------------------

    def _schedule_cycle(self, when: float) -> None:
        """(Re)plan the next cycle; an earlier plan is dropped, as the loop's sleep is cut."""
        self.gen += 1
        self._push(when, _CYCLE, self._cycle, self.gen)

    def _cycle(self, gen: int) -> None:
        if gen != self.gen:
            return
        self.cycles += 1
        for pool in self.pools:
            self._cycle_pool(pool)
        self._schedule_cycle(self.now + self.manager.poll_interval)

    def _cycle_pool(self, pool: _Pool) -> None:
        """observe -> decide -> act, as manager.ComputeManager._cycle_pool does."""
        obs = self._observe(pool)
        decision = self.decide(pool.cfg.name, obs)
        if decision.cancel_pending:
            self._cancel_pending(pool, decision.cancel_pending)
        if decision.submit > 0:
            self._submit(pool, decision.submit)
        cap = effective_bounds(pool.rules, obs)[1]
        pool.result.timeline.append(
            Sample(
                self.now,
                obs.claimable,
                pool.unconfirmed + pool.pending,
                pool.starting,
                pool.registered,
                cap,
            )
        )
        pool.result.est_duration = obs.est_duration
        if self.record:
            self.decisions.append((pool.cfg.name, obs, decision))

    def decide(self, pool_name: str, obs: Observation) -> Decision:
        """The decision on one observation; the manager's `decide` must agree (tested on a
        recorded sequence)."""
        pool = next(p for p in self.pools if p.cfg.name == pool_name)
        return decide(pool.rules, obs)

    def _observe(self, pool: _Pool) -> Observation:
        """The Observation the manager builds for this pool now.

        As in the manager, the counts are taken before the failed starts found in the same
        look are cancelled, and those failures already count for the breaker.
        """
        claimable = pool.backlog()
        est = self._est_duration(pool)
        counts = pool.counts()
        leaving = self._leaving_soon(pool, est)
        self._notice_failed_starts(pool)
        return Observation(
            now=self.now,
            claimable=claimable,
            claimable_slots=claimable,
            est_duration=est,
            unconfirmed=counts.unconfirmed,
            pending=counts.pending,
            starting=counts.starting,
            registered=counts.registered,
            leaving_soon=leaving,
            breaker=self._breaker(pool),
        )

    def _est_duration(self, pool: _Pool) -> float:
        """manager._duration: per queue EWMA (else the prior), blended by backlog."""
        prior = pool.cfg.task_duration_prior
        per_queue = [
            (estimate.task_duration(list(q.samples), prior), len(q.heap)) for q in pool.queues
        ]
        default = max((d for d, _ in per_queue), default=prior)
        return estimate.blended_duration(per_queue, default)

    def _leaving_soon(self, pool: _Pool, est: float) -> int:
        """policy.leaving_soon, as the manager applies it to registered workers."""
        max_tasks = pool.cfg.worker.max_tasks
        return sum(
            1
            for e in pool.live
            if e.ws is not None
            and leaving_soon(self.now, e.ws.deadline, False, e.ws.tasks_started, max_tasks, est)
        )

    def _notice_failed_starts(self, pool: _Pool) -> None:
        """Failed elements and those running unregistered past start_grace (then cancelled)."""
        now = self.now
        stuck = [e for e in pool.starting_els if now - e.started > self.manager.start_grace]
        for element in stuck:
            self._end(element, "failed_start")
            pool.result.scancel_calls += 1
        seen = pool.unseen_failures + len(stuck)
        pool.unseen_failures = 0
        pool.failures.extend([now] * seen)
        pool.result.failed_starts += seen
        window = now - self.manager.breaker_window
        if pool.failures and pool.failures[0] < window:
            pool.failures = [t for t in pool.failures if t >= window]

    def _breaker(self, pool: _Pool) -> str:
        m = self.manager
        return breaker_state(
            pool.failures, pool.last_registration, self.now, m.breaker_failures, m.breaker_cooldown
        )

    # -- Slurm -----------------------------------------------------------------------------

    def _submit(self, pool: _Pool, count: int) -> None:
        result = pool.result
        result.sbatch_calls += 1
        result.submitted += count
        sub = _Submission(pool.cfg.slurm.array_throttle)
        elements = [_Element(pool, sub, self.now) for _ in range(count)]
        pool.unconfirmed += count
        in_flight = pool.unconfirmed + pool.pending + pool.starting + pool.registered
        result.max_in_flight = max(result.max_in_flight, in_flight)
        total = sum(p.unconfirmed + p.pending + p.starting + p.registered for p in self.pools)
        self.max_in_flight = max(self.max_in_flight, total)
        if self.cluster.sbatch_latency > 0:
            self._push(self.now + self.cluster.sbatch_latency, _EVENT, self._confirm, elements)
        else:
            self._confirm(elements)

    def _confirm(self, elements: list[_Element]) -> None:
        """The elements show up in the queue, each with its own wait."""
        pool = elements[0].pool
        for element in elements:
            if element.state != _UNCONFIRMED:
                continue
            element.state = _PENDING
            pool.unconfirmed -= 1
            pool.pending += 1
            pool.pending_els.append(element)
            wait = self.cluster.queue_wait.draw(self.rng)
            self._push(self.now + wait, _EVENT, self._eligible, element)
        if len(pool.pending_els) > 2 * pool.pending + 64:  # drop started / cancelled ones
            pool.pending_els = [e for e in pool.pending_els if e.state == _PENDING]
        result = pool.result
        result.max_pending_seen = max(result.max_pending_seen, pool.pending + pool.unconfirmed)

    def _eligible(self, element: _Element) -> None:
        if element.state != _PENDING:
            return  # cancelled meanwhile
        sub = element.sub
        if sub.throttle and sub.running >= sub.throttle:
            sub.blocked.append(element)
            return
        self._start(element)

    def _start(self, element: _Element) -> None:
        pool = element.pool
        pool.pending -= 1
        pool.starting += 1
        pool.starting_els.add(element)
        element.state = _STARTING
        element.started = self.now
        element.sub.running += 1
        pool.result.peak_workers = max(pool.result.peak_workers, pool.starting + pool.registered)
        failed = self.cluster.failed_start > 0 and self.rng.random() < self.cluster.failed_start
        latency = self.cluster.start_latency
        self._push(self.now + latency, _EVENT, self._fail if failed else self._register, element)
        self._push(self.now + pool.wall, _EVENT, self._wall_end, element)

    def _fail(self, element: _Element) -> None:
        if element.state == _STARTING:
            self._end(element, "failed_start")
            element.pool.unseen_failures += 1

    def _wall_end(self, element: _Element) -> None:
        """Slurm ends the job at its wall time: whatever still runs is killed and requeued."""
        if element.state in (_STARTING, _REGISTERED):
            self._requeue(element)
            self._end(element, "wall_time_kill")

    def _cancel_pending(self, pool: _Pool, count: int) -> None:
        """scancel of the newest pending elements (manager._act)."""
        pool.pending_els = [e for e in pool.pending_els if e.state == _PENDING]
        victims = pool.pending_els[-count:]
        for element in victims:
            element.state = _ENDED
            pool.pending -= 1
        del pool.pending_els[len(pool.pending_els) - len(victims) :]
        pool.result.scancel_calls += 1
        pool.result.cancelled_pending += len(victims)

    def _end(self, element: _Element, reason: str) -> None:
        """The job is gone: its slot of the allocation is free, a held-back sibling may start."""
        pool = element.pool
        if element.state == _STARTING:
            pool.starting -= 1
            pool.starting_els.discard(element)
        elif element.state == _REGISTERED:
            pool.registered -= 1
            pool.live.discard(element)
        element.state = _ENDED
        pool.result.worker_seconds += self.now - element.started
        pool.result.end_reasons[reason] = pool.result.end_reasons.get(reason, 0) + 1
        sub = element.sub
        sub.running -= 1
        while sub.blocked and sub.running < sub.throttle:
            waiting = sub.blocked.popleft()
            if waiting.state == _PENDING:
                self._start(waiting)

    # -- workers ---------------------------------------------------------------------------

    def _register(self, element: _Element) -> None:
        if element.state != _STARTING:
            return
        pool = element.pool
        pool.starting -= 1
        pool.starting_els.discard(element)
        pool.registered += 1
        pool.live.add(element)
        element.state = _REGISTERED
        max_time = pool.cfg.worker.max_time
        deadline = min(self.now + max_time if max_time else math.inf, element.started + pool.wall)
        element.ws = worker_rules.WorkerState(
            started=self.now, deadline=None if math.isinf(deadline) else deadline
        )
        pool.queue_waits.appendleft(self.now - element.submitted)
        pool.last_registration = self.now
        if pool.result.first_worker_at is None:
            pool.result.first_worker_at = self.now
        if not math.isinf(deadline):
            when = max(self.now, deadline - worker_rules.END_GRACE)
            self._push(when, _EVENT, self._near_end, element)
        self._claim(element)

    def _claim(self, element: _Element) -> None:
        """One turn of worker.Worker._loop: stop, wait for tasks, claim, or sleep."""
        element.claim_pending = False
        pool, ws, opts, now = element.pool, element.ws, element.pool.opts, self.now
        if ws is None:  # not registered: nothing to do
            return
        ws.running = len(element.running)
        ws.surplus = pool.registered > pool.rules.min_workers  # what a heartbeat would say
        reason = worker_rules.stop_reason(ws, opts, now)
        if reason is not None:
            if not element.running:
                self._end(element, reason)
            return  # running tasks finish first; _finish comes back here
        want = worker_rules.claim_size(ws, opts, opts.slots - ws.running)
        if want <= 0:
            return
        if not worker_rules.may_claim(ws, opts, now, self._expected(pool)):
            ws.claiming_stopped = "walltime"
            if not element.running:
                self._end(element, "walltime")
            return
        got = self._take(element, want)
        if got:
            ws.empty_claims = 0
            if got < want:  # the next claim, at once, finds nothing and sleeps
                self._sleep(element)
            return
        if not element.running:
            ws.empty_claims += 1
        if worker_rules.stop_reason(ws, opts, now) is None:
            self._sleep(element)
        elif not element.running:
            self._end(element, "idle")

    def _sleep(self, element: _Element) -> None:
        element.claim_pending = True
        self._push(self.now + element.pool.opts.empty_claim_sleep, _EVENT, self._wake, element)

    def _wake(self, element: _Element) -> None:
        if element.state == _REGISTERED:
            self._claim(element)

    def _take(self, element: _Element, want: int) -> int:
        """The store's claim: up to `want` waiting tasks of the pool's queues by priority, age."""
        queues = element.pool.queues
        got = 0
        while got < want:
            if len(queues) == 1:
                queue: _Queue | None = queues[0] if queues[0].heap else None
            else:
                queue = min((q for q in queues if q.heap), key=lambda q: q.heap[0], default=None)
            if queue is None:
                break
            task = heapq.heappop(queue.heap)[1]
            element.running[task] = self.now
            if math.isnan(self.first_start[task]):
                self.first_start[task] = self.now
            self._push(self.now + self.duration[task], _EVENT, self._finish, (element, task))
            got += 1
        if element.ws is not None:
            element.ws.tasks_started += got
        return got

    def _finish(self, arg: tuple[_Element, int]) -> None:
        element, task = arg
        started = element.running.pop(task, None)
        if started is None or element.state != _REGISTERED:
            return  # released earlier: this run did not finish
        ran = self.now - started
        element.pool.result.busy_slot_seconds += ran
        self.task_queue[task].samples.appendleft(ran)
        self.done += 1
        self.last_done = self.now
        if not element.claim_pending:
            self._claim(element)

    def _near_end(self, element: _Element) -> None:
        """END_GRACE before the job's end: running tasks are released (worker.must_abandon)."""
        if element.state != _REGISTERED:
            return
        self._requeue(element)
        self._end(element, "walltime")

    def _expected(self, pool: _Pool) -> float:
        """worker._expected_duration: the longest p90 of its queues (else the prior)."""
        longest = 0.0
        for queue in pool.queues:
            if self.now - queue.p90_at > P90_REFRESH:
                ordered = sorted(queue.samples)
                queue.p90 = (
                    ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
                    if ordered
                    else pool.cfg.task_duration_prior
                )
                queue.p90_at = self.now
            longest = max(longest, queue.p90)
        return longest

    # -- the end ---------------------------------------------------------------------------

    def _result(self, total: int) -> SimResult:
        for pool in self.pools:  # still running at the end: count their time so far
            for element in [*pool.starting_els, *pool.live]:
                pool.result.busy_slot_seconds += sum(self.now - t for t in element.running.values())
                element.running.clear()
                self._end(element, "still_running")
            pool.result.queue_wait_estimate = estimate.queue_wait(list(pool.queue_waits))
        if self.done < total:
            self.notes.append(f"{total - self.done} task(s) not done by the horizon")
        waits = [
            s - a for s, a in zip(self.first_start, self.arrival, strict=True) if not math.isnan(s)
        ]
        return SimResult(
            source=self.source,
            seed=self.seed,
            tasks=total,
            tasks_done=self.done,
            first_arrival=self.arrival[0] if self.arrival else 0.0,
            last_done=self.last_done,
            ended_at=self.now,
            task_waits=waits,
            requeued=self.requeued,
            cycles=self.cycles,
            events=next(self.seq) + total,
            max_in_flight=self.max_in_flight,
            pools=[p.result for p in self.pools],
            notes=self.notes,
            decisions=self.decisions,
        )


def simulate(
    tasks: Sequence[SimTask],
    pools: Sequence[PoolConfig],
    **options: Any,
) -> SimResult:
    """Run a workload through the pools; options as for `Simulation`."""
    return Simulation(tasks, pools, **options).run()


# ---------------------------------------------------------------------------- output


def format_text(result: SimResult) -> str:
    """The metrics for people: one line each, then one block per pool."""
    data = result.to_dict()
    lines = [f"simulated {data['tasks']} tasks ({data['source']}, seed {data['seed']})"]
    for key in (
        "tasks_done",
        "makespan",
        "worker_seconds",
        "busy_worker_seconds",
        "idle_worker_seconds",
        "busy_share",
        "first_task_to_first_worker",
        "peak_workers",
        "sbatch_calls",
        "task_wait_mean",
        "task_wait_p95",
        "requeued",
        "cycles",
    ):
        lines.append(f"  {key:<28} {_show(data[key])}")
    lines.append(f"  {'max_in_flight / cap':<28} {data['max_in_flight']} / {data['cap']}")
    for pool in data["pools"]:
        lines.append(f"pool {pool['name']}:")
        for key, value in pool.items():
            if key != "name":
                lines.append(f"  {key:<28} {_show(value)}")
    lines += [f"note: {note}" for note in data["notes"]]
    return "\n".join(lines)


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return str(value)


def plot(result: SimResult, path: str | Path) -> None:
    """Backlog, workers by state and the cap over time, one pair of panels per pool."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise HpcscaleError(
            "--plot needs matplotlib: pip install 'hpcscale[plot]' (or pip install matplotlib)"
        ) from exc
    span = max(1.0, result.ended_at - result.first_arrival)
    unit, scale = ("h", 3600.0) if span > 3 * 3600 else ("min", 60.0) if span > 600 else ("s", 1.0)
    figure = Figure(figsize=(10, 4.5 * len(result.pools)), layout="constrained")
    axes = figure.subplots(2 * len(result.pools), 1, sharex=True, squeeze=False)[:, 0]
    for i, pool in enumerate(result.pools):
        t = [(s.t - result.first_arrival) / scale for s in pool.timeline]
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top.step(t, [s.backlog for s in pool.timeline], where="post", color="tab:gray")
        top.set_ylabel("claimable tasks")
        top.set_title(f"pool {pool.name}: {result.source}")
        bottom.stackplot(
            t,
            [s.registered for s in pool.timeline],
            [s.starting for s in pool.timeline],
            [s.pending for s in pool.timeline],
            labels=["registered", "starting", "pending"],
            step="post",
            colors=["tab:green", "tab:orange", "tab:blue"],
            alpha=0.8,
        )
        bottom.step(
            t,
            [s.cap for s in pool.timeline],
            where="post",
            color="tab:red",
            linestyle="--",
            label="cap (max_workers)",
        )
        bottom.set_ylabel("workers")
        bottom.legend(
            loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize="small", frameon=False
        )
    axes[-1].set_xlabel(f"time since the first task ({unit})")
    figure.savefig(str(path), dpi=100)


# ---------------------------------------------------------------------------- command line


def add_command(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    """Register `hpcscale simulate` on the main parser's subcommands."""
    p = sub.add_parser(
        "simulate",
        parents=[common, listing],
        help="simulate the pools of a config on a workload, with the real policy",
        description="A discrete-event simulation of the config's pools (or a built-in example "
        "pool) on a synthetic scenario or a trace: the manager's real decisions, workers that "
        "claim and end themselves as the real ones do, a model of Slurm's queue. Scenarios: "
        + "; ".join(f"{s.name}: {s.about} ({s.size} tasks)" for s in SCENARIOS.values()),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", choices=list(SCENARIOS), help="a built-in workload")
    source.add_argument("--trace", metavar="FILE.csv", help="CSV: arrival,duration[,queue]")
    p.add_argument("--tasks", type=int, help="the scenario's size (default: its own)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--pool", action="append", help="simulate only this pool (repeatable)")
    p.add_argument("--queue-wait", default="fixed:30s", help="fixed:D or exp:MEAN (fixed:30s)")
    p.add_argument(
        "--queue-wait-trace",
        metavar="FILE.swf",
        help="draw queue waits from an SWF trace's wait times",
    )
    p.add_argument("--start-latency", default="5s", help="job start -> worker registered (5s)")
    p.add_argument(
        "--failed-starts",
        type=float,
        default=0.0,
        help="probability that a started job never registers a worker (0)",
    )
    p.add_argument("--sbatch-latency", default="0s", help="sbatch -> jobs visible (0s)")
    p.add_argument(
        "--max-array-size",
        type=int,
        default=DEFAULT_MAX_ARRAY_SIZE,
        help=f"Slurm's MaxArraySize ({DEFAULT_MAX_ARRAY_SIZE})",
    )
    p.add_argument(
        "--wake",
        choices=WAKE_MODES,
        default="empty",
        help="cycle at once when a task arrives: into an empty backlog (empty, the default), "
        "on every new task (any: what the manager's long-poll on the submit sequence does), "
        "never (none: every poll_interval only)",
    )
    p.add_argument(
        "--horizon", default="30d", help="stop simulating this long after the first task (30d)"
    )
    p.add_argument("--plot", metavar="OUT.png", help="draw backlog and workers over time")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    pools = _pools(settings, args.pool)
    tasks, source, notes = _workload(args, pools)
    cluster = ClusterModel(
        queue_wait=_queue_wait(args),
        start_latency=_duration_arg("--start-latency", args.start_latency),
        failed_start=_probability(args.failed_starts),
        sbatch_latency=_duration_arg("--sbatch-latency", args.sbatch_latency),
        max_array_size=max(1, args.max_array_size),
    )
    result = simulate(
        tasks,
        pools,
        manager=settings.manager,
        cluster=cluster,
        seed=args.seed,
        horizon=_duration_arg("--horizon", args.horizon),
        wake=args.wake,
        source=source,
    )
    result.notes[:0] = [*notes, f"queue wait {cluster.queue_wait.describe()}"]
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_text(result))
    return 0


def _pools(settings: config.Settings, names: Sequence[str] | None) -> list[PoolConfig]:
    pools = list(settings.pools) or [example_pool()]
    if names:
        known = {p.name: p for p in pools}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                [f"--pool: no pool named {', '.join(missing)} (known: {', '.join(known)})"]
            )
        pools = [known[n] for n in names]
    return pools


def _workload(
    args: argparse.Namespace, pools: Sequence[PoolConfig]
) -> tuple[list[SimTask], str, list[str]]:
    """The tasks; a scenario's queue no pool serves moves to the first pool's first queue."""
    if args.trace:
        return read_trace(args.trace), f"trace {args.trace}", []
    tasks = scenario_tasks(args.scenario, args.seed, args.tasks)
    served = {q for p in pools for q in p.queues}
    target = pools[0].queues[0]
    moved = sorted({t.queue for t in tasks if t.queue not in served})
    if moved:
        tasks = [t if t.queue in served else t._replace(queue=target) for t in tasks]
    notes = [f"scenario queue {q!r} runs on queue {target!r} (no pool serves it)" for q in moved]
    return tasks, f"scenario {args.scenario}", notes


def _queue_wait(args: argparse.Namespace) -> QueueWait:
    if args.queue_wait_trace:
        samples = tuple(read_swf_waits(args.queue_wait_trace))
        return QueueWait("trace", _mean(samples), samples)
    return QueueWait.parse(args.queue_wait)


def _duration_arg(name: str, value: str) -> float:
    try:
        return config.parse_duration(value)
    except ValueError as exc:
        raise ConfigError([f"{name}: {exc}"]) from exc


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(["--failed-starts: must be a probability between 0 and 1"])
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """`hpcscale simulate` on its own (tests, `python -m hpcscale.sim.engine`)."""
    from hpcscale.cli.main import main as cli_main

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
