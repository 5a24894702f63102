"""The simulated state: the clock and its events, the task queues, the pools and their array
elements, and what the manager and the workers read off one pool.

Why apart from the event loop (engine.py): the state is plain bookkeeping that every side of an
element's life changes (Slurm's in cluster.py, the manager's in manager.py, the worker's in
engine.py), and each reader here mirrors one function of the service (named in its docstring)
on one pool at one instant, so it can be held against that function without reading the loop.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hpcscale import estimate
from hpcscale.config import PoolConfig
from hpcscale.models import Control
from hpcscale.policy import Budget, PoolRules, leaving_soon
from hpcscale.schedule import pool_windows
from hpcscale.sim import limits
from hpcscale.sim.results import PoolResult
from hpcscale.sim.workloads import SimTask
from hpcscale.worker import rules as worker_rules
from hpcscale.worker.options import WorkerOptions

RECENT_DURATIONS = estimate.RECENT_DURATIONS  # as many as the store's queue_stats returns
RECENT_WAITS = 50  # statestore.manager_records.pool_history's limit on queue waits
P90_REFRESH = 60.0  # worker.loop's _expected_duration asks the server at most once a minute

# Event classes: at equal times, arrivals first, then cluster and worker events, then the
# manager's cycle, so a cycle sees everything that happened at its instant.
EVENT, CYCLE = 1, 2
# Element states.
UNCONFIRMED, PENDING, STARTING, REGISTERED, ENDED = range(5)


class Events:
    """The simulated clock and the events due, in order of (time, event class, sequence)."""

    __slots__ = ("heap", "now", "seq")

    def __init__(self, now: float) -> None:
        self.now = now
        self.heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self.seq = itertools.count()

    def push(self, when: float, kind: int, action: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self.heap, (when, kind, next(self.seq), action, arg))


class PoolCounts(NamedTuple):
    """A pool's elements by state at one instant (for audits of the hard max)."""

    name: str
    unconfirmed: int
    pending: int
    starting: int
    registered: int
    max_workers: int
    max_pending: int


class SimQueue:
    """A task queue as the store holds it: waiting tasks by (priority, id), recent run times."""

    __slots__ = ("heap", "name", "p90", "p90_at", "pools", "samples")

    def __init__(self, name: str) -> None:
        self.name = name
        self.heap: list[tuple[int, int]] = []  # (-priority, task id)
        self.samples: deque[float] = deque(maxlen=RECENT_DURATIONS)  # newest first
        self.pools: list[SimPool] = []
        self.p90 = 0.0
        self.p90_at = -math.inf

    def longest_run(self, start_latency: float) -> float:
        """The longest task a worker of the queue's pools can finish: its life minus grace."""
        best = 0.0
        for pool in self.pools:
            life = pool.wall - start_latency
            if pool.cfg.worker.max_time:
                life = min(life, pool.cfg.worker.max_time)
            best = max(best, life - worker_rules.END_GRACE)
        return best


def runnable(
    tasks: Sequence[SimTask], queues: dict[str, SimQueue], start_latency: float
) -> tuple[list[SimTask], list[str]]:
    """The tasks some pool can run, in arrival order (their rank will be their id: FIFO within a
    priority), and notes on those skipped."""
    runs = []
    longest = {name: q.longest_run(start_latency) for name, q in queues.items()}
    unserved: dict[str, int] = {}
    too_long = 0
    for task in tasks:
        if task.queue not in queues:
            unserved[task.queue] = unserved.get(task.queue, 0) + 1
        elif task.duration > longest[task.queue]:
            too_long += 1
        else:
            runs.append(task)
    notes = [
        f"{count} task(s) of queue {queue!r} skipped: no pool serves it"
        for queue, count in sorted(unserved.items())
    ]
    if too_long:
        notes.append(
            f"{too_long} task(s) skipped: longer than any worker's life (they would be "
            "released before the wall time and retried for ever)"
        )
    runs.sort(key=lambda t: t.arrival)
    return runs, notes


class ArraySubmission:
    """One sbatch --array: its throttle (%N) and the elements it holds back."""

    __slots__ = ("blocked", "running", "throttle")

    def __init__(self, throttle: int | None) -> None:
        self.throttle = throttle or 0
        self.running = 0
        self.blocked: deque[Element] = deque()


class Element:
    """One array element and, once it registers, the worker inside it."""

    __slots__ = ("claim_pending", "pool", "running", "started", "state", "sub", "submitted", "ws")

    def __init__(self, pool: SimPool, sub: ArraySubmission, now: float) -> None:
        self.pool = pool
        self.sub = sub
        self.state = UNCONFIRMED
        self.submitted = now
        self.started = math.nan
        self.ws: worker_rules.WorkerProgress | None = None
        self.running: dict[int, float] = {}  # task id -> start time
        self.claim_pending = False  # the worker sleeps until a scheduled claim


class SimPool:
    """The simulated state of one pool, counted the way the manager's view counts it."""

    def __init__(self, cfg: PoolConfig, rules: PoolRules, queues: list[SimQueue]) -> None:
        self.cfg = cfg
        self.rules = rules
        self.queues = queues
        self.opts = WorkerOptions(
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
        # Insertion-ordered (dicts as ordered sets): sums and cancellations over them must not
        # follow memory addresses, or a seed would not give the same figures run after run.
        self.live: dict[Element, None] = {}
        self.starting_els: dict[Element, None] = {}
        self.pending_els: list[Element] = []
        self.failures: list[float] = []  # failed starts seen by the manager (event times)
        self.unseen_failures = 0  # failed elements the next cycle will notice
        self.last_registration: float | None = None
        self.queue_waits: deque[float] = deque(maxlen=RECENT_WAITS)  # newest first
        self.asked: deque[tuple[float, int]] = deque()  # (time, workers): the hourly ceiling
        self.spans: list[tuple[float, float]] = []  # ended workers' registration -> end
        self.windows = pool_windows(cfg.schedule, cfg.max_workers)
        self.floor = cfg.min_workers  # what the store was told (PoolConfig.floor_at)
        self.control = Control.CONTINUE  # an admin's: pause, drain (ControlEvent)
        self.override: int | None = None  # `hpcscale set-max`
        # (registered at, ended at, tasks done, slots) of ended workers: the measured tail
        self.ended: deque[tuple[float, float, int, int]] = deque(maxlen=estimate.RECENT_WORKERS)
        # (job started at, registered at) of the newest registered workers: the start-up
        self.registrations: deque[tuple[float, float]] = deque(maxlen=estimate.RECENT_WORKERS)
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

    # -- as the manager reads the pool ---------------------------------------------------------

    def est_duration(self) -> float:
        """As the manager estimates it (manager.observation.task_duration)."""
        per_queue = [(list(q.samples), len(q.heap)) for q in self.queues]
        return estimate.pool_task_duration(per_queue, self.cfg.task_duration_prior)

    def mean_duration(self) -> float:
        """As the manager measures a worker's busy time (manager.observation.Measured.tail_of)."""
        samples = [q.samples for q in self.queues]
        return estimate.mean_duration(samples, self.cfg.task_duration_prior)

    def leaving_soon(self, now: float, est: float) -> int:
        """policy.leaving_soon, as the manager applies it to registered workers."""
        max_tasks = self.cfg.worker.max_tasks
        return sum(
            1
            for e in self.live
            if e.ws is not None
            and leaving_soon(now, e.ws.deadline, False, e.ws.tasks_started, max_tasks, est)
        )

    def budgets(self, now: float) -> tuple[Budget, ...]:
        """As manager.safety.measure_budgets measures them from the store's worker records."""
        if self.cfg.budget is None:
            return ()
        horizon = now - self.cfg.budget.window
        if len(self.spans) > 1024:  # ended before the window: they burn nothing any more
            self.spans = [span for span in self.spans if span[1] > horizon]
        live = [(e.ws.started, now) for e in self.live if e.ws is not None]
        waiting = self.unconfirmed + self.pending + self.starting
        ends = [e.started + self.wall for e in self.live]
        return limits.budgets(self.cfg, now, [*self.spans, *live], waiting, ends)

    # -- as a worker reads it ------------------------------------------------------------------

    def expected(self, now: float) -> float:
        """The worker loop's _expected_duration: the longest p90 of its queues (else the prior)."""
        longest = 0.0
        for queue in self.queues:
            if now - queue.p90_at > P90_REFRESH:
                measured = estimate.p90(queue.samples)
                queue.p90 = self.cfg.task_duration_prior if measured is None else measured
                queue.p90_at = now
            longest = max(longest, queue.p90)
        return longest
