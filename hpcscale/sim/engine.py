"""A discrete-event simulation of a cluster run by hpcscale, driving the REAL decision code.

Why: an admin tunes a pool (max_workers, max_pending, target_drain_time, the worker's
timeouts) before trusting it with an allocation, and a wrong guess costs core-hours or hours of
waiting. The simulator answers "what would this config do with this workload" in seconds, with
the very functions the service runs, so a number seen here is a number the manager would earn:

- decisions: `policy.decide` on `config.rules_from_pool(pool)`, fed an `Observation` built the
  way `manager.ComputeManager._cycle_pool` builds it (claimable per pool, the blended EWMA of
  `estimate.task_duration`, unconfirmed / pending / starting / registered / leaving-soon, the
  failed-start breaker); one cycle of all pools every `poll_interval`, plus an immediate cycle
  when a task arrives while its pool's backlog was empty (the server's long-poll wake-up);
- workers: `worker.rules`' stop_reason, may_claim and claim_size on a `WorkerProgress` per
  simulated worker: claims by priority then age, slots, max_tasks, max_time, no claim without
  time for a task (expected = p90 of the last 100 durations, as the worker asks the server),
  idle exit after max_empty_claims empty claims while the pool is above min_workers, release of
  running tasks END_GRACE before the job's end;
- Slurm: an array per sbatch call, a queue wait per element (fixed, exponential or drawn from an
  SWF trace), the array throttle (`%N`), a start latency before the worker registers, a
  probability that a start fails, the wall time, and optionally a delay before a submission is
  seen (`unconfirmed`).

- what the manager decides with besides (issue 15, sim/limits.py): the hourly ceiling
  (max_submit_per_hour over a rolling hour), `[pools.budget]` (burn from the workers'
  registration -> end, the worst case of what is in flight), scheduled windows (cron on the
  simulated clock read as seconds since the epoch, UTC; the floor also reaches the workers'
  surplus), an admin's pause/resume/drain/set-max at given times (ControlEvent), and the
  measured tail of ended workers the sizing rule reads.

Not modelled: task slots (every task takes one), task failures and max_attempts, heartbeats and
lease expiry, the crash-loop alarm, site limits, several managers; a config key the simulation
does not read is named in its notes (limits.unmodelled_keys). Time is simulated: a
10^5-task campaign runs in a few seconds (bench/simulate_speed.py). What it is fed is in
workloads.py, what it measured in results.py; `hpcscale simulate` is hpcscale/cli/simulate.py.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hpcscale import estimate
from hpcscale.config import ManagerConfig, PoolConfig, rules_from_pool
from hpcscale.errors import ConfigError
from hpcscale.models import BreakerState, Control, StopReason
from hpcscale.policy import (
    Budget,
    Decision,
    Observation,
    PoolRules,
    breaker_state,
    decide,
    effective_bounds,
    leaving_soon,
)
from hpcscale.schedule import active_window, pool_windows
from hpcscale.sim import limits
from hpcscale.sim.limits import ControlEvent
from hpcscale.sim.results import PoolResult, Sample, SimResult
from hpcscale.sim.workloads import DAY, ClusterModel, SimTask
from hpcscale.worker import rules as worker_rules
from hpcscale.worker.options import WorkerOptions

RECENT_DURATIONS = estimate.RECENT_DURATIONS  # as many as the store's queue_stats returns
RECENT_WAITS = 50  # statestore.manager_records.pool_history's limit on queue waits
P90_REFRESH = 60.0  # worker.loop's _expected_duration asks the server at most once a minute
WAKE_MODES = ("empty", "any", "none")

# Event classes: at equal times, arrivals first, then cluster and worker events, then the
# manager's cycle, so a cycle sees everything that happened at its instant.
_EVENT, _CYCLE = 1, 2
# Element states.
_UNCONFIRMED, _PENDING, _STARTING, _REGISTERED, _ENDED = range(5)


class PoolCounts(NamedTuple):
    """A pool's elements by state at one instant (for audits of the hard max)."""

    name: str
    unconfirmed: int
    pending: int
    starting: int
    registered: int
    max_workers: int
    max_pending: int


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
        self.ws: worker_rules.WorkerProgress | None = None
        self.running: dict[int, float] = {}  # task id -> start time
        self.claim_pending = False  # the worker sleeps until a scheduled claim


class _Pool:
    """The simulated state of one pool, counted the way the manager's view counts it."""

    def __init__(self, cfg: PoolConfig, rules: PoolRules, queues: list[_Queue]) -> None:
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
        self.live: set[_Element] = set()
        self.starting_els: set[_Element] = set()
        self.pending_els: list[_Element] = []
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
        controls: Sequence[ControlEvent] = (),
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
        for event in controls:
            self._push(event.at, _EVENT, self._control, event)
        unmodelled = limits.unmodelled_keys(pools, self.manager)
        if unmodelled:
            self.notes.append(
                f"not modelled (figures as if at their defaults): {', '.join(unmodelled)}"
            )

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
        floor = pool.cfg.floor_at(self.now) if pool.windows else pool.cfg.min_workers
        pool.floor = max(floor, decision.hold)  # what the manager tells the store next
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

    def _control(self, event: ControlEvent) -> None:
        """An admin's command reaches the store: the manager reads it at its next cycle, the
        workers at their next claim (drain: they stop taking tasks)."""
        for pool in self.pools:
            if event.pool in (None, pool.cfg.name):
                if event.control is not None:
                    pool.control = event.control
                if event.max_workers is not None:
                    pool.override = event.max_workers

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
            tail=estimate.idle_overhead(pool.ended, self._mean_duration(pool)),
            startup=estimate.startup_overhead(pool.registrations),
            control=pool.control,
            max_workers_override=pool.override,
            window=active_window(pool.windows, self.now) if pool.windows else None,
            submit_allowance=limits.hourly_allowance(pool.asked, self.now, pool.cfg.submit_ceiling),
            budgets=self._budgets(pool),
        )

    def _budgets(self, pool: _Pool) -> tuple[Budget, ...]:
        """As manager.safety.measure_budgets measures them from the store's worker records."""
        if pool.cfg.budget is None:
            return ()
        horizon = self.now - pool.cfg.budget.window
        if len(pool.spans) > 1024:  # ended before the window: they burn nothing any more
            pool.spans = [span for span in pool.spans if span[1] > horizon]
        live = [(e.ws.started, self.now) for e in pool.live if e.ws is not None]
        waiting = pool.unconfirmed + pool.pending + pool.starting
        ends = [e.started + pool.wall for e in pool.live]
        return limits.budgets(pool.cfg, self.now, [*pool.spans, *live], waiting, ends)

    def _est_duration(self, pool: _Pool) -> float:
        """As the manager estimates it (manager.observation.task_duration)."""
        per_queue = [(list(q.samples), len(q.heap)) for q in pool.queues]
        return estimate.pool_task_duration(per_queue, pool.cfg.task_duration_prior)

    def _mean_duration(self, pool: _Pool) -> float:
        """As the manager measures a worker's busy time (manager.observation.Measured.tail_of)."""
        samples = [q.samples for q in pool.queues]
        return estimate.mean_duration(samples, pool.cfg.task_duration_prior)

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

    def _breaker(self, pool: _Pool) -> BreakerState:
        m = self.manager
        return breaker_state(
            pool.failures, pool.last_registration, self.now, m.breaker_failures, m.breaker_cooldown
        )

    # -- Slurm -----------------------------------------------------------------------------

    def _submit(self, pool: _Pool, count: int) -> None:
        result = pool.result
        result.sbatch_calls += 1
        result.submitted += count
        pool.asked.append((self.now, count))
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
        """scancel of the newest pending elements (manager.act.cancel_as_decided)."""
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
            if element.ws is not None:
                done = element.ws.tasks_started - len(element.running)
                pool.ended.append((element.ws.started, self.now, done, pool.cfg.worker.slots))
                pool.spans.append((element.ws.started, self.now))
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
        element.ws = worker_rules.WorkerProgress(
            started=self.now, deadline=None if math.isinf(deadline) else deadline
        )
        pool.queue_waits.appendleft(self.now - element.submitted)
        pool.registrations.append((element.started, self.now))
        pool.last_registration = self.now
        if pool.result.first_worker_at is None:
            pool.result.first_worker_at = self.now
        if not math.isinf(deadline):
            when = max(self.now, deadline - worker_rules.END_GRACE)
            self._push(when, _EVENT, self._near_end, element)
        self._claim(element)

    def _claim(self, element: _Element) -> None:
        """One turn of worker.loop.WorkerLoop._loop: stop, wait for tasks, claim, or sleep."""
        element.claim_pending = False
        pool, ws, opts, now = element.pool, element.ws, element.pool.opts, self.now
        if ws is None:  # not registered: nothing to do
            return
        ws.running = len(element.running)
        ws.surplus = pool.registered > pool.floor  # what a heartbeat would say
        ws.control = pool.control
        reason = worker_rules.stop_reason(ws, opts, now)
        if reason is not None:
            if not element.running:
                self._end(element, reason)
            return  # running tasks finish first; _finish comes back here
        want = worker_rules.claim_size(ws, opts, opts.slots - ws.running)
        if want <= 0:
            return
        if not worker_rules.may_claim(ws, opts, now, self._expected(pool)):
            ws.claiming_stopped = StopReason.WALLTIME
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
        """END_GRACE before the job's end: running tasks are released (rules.must_abandon)."""
        if element.state != _REGISTERED:
            return
        self._requeue(element)
        self._end(element, "walltime")

    def _expected(self, pool: _Pool) -> float:
        """The worker loop's _expected_duration: the longest p90 of its queues (else the prior)."""
        longest = 0.0
        for queue in pool.queues:
            if self.now - queue.p90_at > P90_REFRESH:
                measured = estimate.p90(queue.samples)
                queue.p90 = pool.cfg.task_duration_prior if measured is None else measured
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
