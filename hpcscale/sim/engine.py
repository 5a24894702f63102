"""A discrete-event simulation of a cluster run by hpcscale, driving the REAL decision code.

Why: an admin tunes a pool (max_workers, max_pending, target_drain_time, the worker's
timeouts) before trusting it with an allocation, and a wrong guess costs core-hours or hours of
waiting. The simulator answers "what would this config do with this workload" in seconds, with
the very functions the service runs, so a number seen here is a number the manager would earn:

- decisions (manager.py): `policy.decide` on `config.rules_from_pool(pool)`, fed an
  `Observation` built the way `manager.ComputeManager._cycle_pool` builds it (claimable per
  pool, the blended EWMA of `estimate.task_duration`, unconfirmed / pending / starting /
  registered / leaving-soon, the failed-start breaker); one cycle of all pools every
  `poll_interval`, plus an immediate cycle when a task arrives while its pool's backlog was
  empty (the server's long-poll wake-up);
- workers: `worker.rules`' stop_reason, may_claim and claim_size on a `WorkerProgress` per
  simulated worker: claims by priority then age, slots, max_tasks, max_time, no claim without
  time for a task (expected = p90 of the last 100 durations, as the worker asks the server),
  idle exit after max_empty_claims empty claims while the pool is above min_workers, release of
  running tasks END_GRACE before the job's end;
- Slurm (cluster.py): an array per sbatch call, a queue wait per element (fixed, exponential
  or drawn from an SWF trace), the array throttle (`%N`), a start latency before the worker
  registers, a probability that a start fails, the wall time, and optionally a delay before a
  submission is seen (`unconfirmed`).

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
workloads.py, the pools, queues and elements it moves in state.py, what it measured in
results.py; `hpcscale simulate` is hpcscale/cli/simulate.py. Here: the event loop, the tasks,
and the workers that claim them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

from hpcscale import estimate
from hpcscale.config import ManagerConfig, PoolConfig, rules_from_pool
from hpcscale.errors import ConfigError
from hpcscale.models import StopReason
from hpcscale.sim import limits
from hpcscale.sim.cluster import Slurm
from hpcscale.sim.limits import ControlEvent
from hpcscale.sim.manager import SimManager
from hpcscale.sim.results import SimResult
from hpcscale.sim.state import (
    EVENT,
    REGISTERED,
    STARTING,
    Element,
    Events,
    PoolCounts,
    SimPool,
    SimQueue,
    runnable,
)
from hpcscale.sim.workloads import DAY, ClusterModel, SimTask
from hpcscale.worker import rules as worker_rules

__all__ = ["WAKE_MODES", "PoolCounts", "Simulation", "simulate"]

WAKE_MODES = ("empty", "any", "none")


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
        self.cluster = cluster or ClusterModel()
        self.seed, self.horizon, self.wake, self.audit = seed, horizon, wake, audit
        self.source = source
        self.queues: dict[str, SimQueue] = {}
        self.pools = [self._pool(cfg) for cfg in pools]
        self._load(tasks)
        self.events = Events(self.arrival[0] if self.arrival else 0.0)
        self.slurm = Slurm(
            self.events, self.cluster, seed, self.pools, self._register, self._requeue
        )
        config = manager or ManagerConfig()
        self.manager = SimManager(config, self.events, self.pools, self.slurm, record)
        self.horizon = self.now + horizon  # from the first task: traces may use epoch times
        self.done = 0
        self.last_done: float | None = None
        self.requeued = 0
        for event in controls:
            self.events.push(event.at, EVENT, self._control, event)
        unmodelled = limits.unmodelled_keys(pools, config)
        if unmodelled:
            self.notes.append(
                f"not modelled (figures as if at their defaults): {', '.join(unmodelled)}"
            )

    @property
    def now(self) -> float:
        """The simulated time (audits read it after every event)."""
        return self.events.now

    # -- setup -----------------------------------------------------------------------------

    def _pool(self, cfg: PoolConfig) -> SimPool:
        queues = [self.queues.setdefault(name, SimQueue(name)) for name in cfg.queues]
        pool = SimPool(cfg, rules_from_pool(cfg, self.cluster.max_array_size), queues)
        for queue in queues:
            queue.pools.append(pool)
        return pool

    def _load(self, tasks: Sequence[SimTask]) -> None:
        """The runnable tasks, by arrival (a task's id is its rank there), column by column."""
        runs, self.notes = runnable(tasks, self.queues, self.cluster.start_latency)
        self.arrival = [t.arrival for t in runs]
        self.duration = [t.duration for t in runs]
        self.task_queue = [self.queues[t.queue] for t in runs]
        self.priority = [t.priority for t in runs]
        self.first_start = [math.nan] * len(runs)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> SimResult:
        events, arrival = self.events, self.arrival
        heap = events.heap
        total, index = len(arrival), 0
        pop = heapq.heappop
        if total:
            self.manager.schedule_cycle(arrival[0] + self.manager.config.poll_interval)
        while True:
            if index < total and (not heap or arrival[index] <= heap[0][0]):
                if arrival[index] > self.horizon:
                    events.now = self.horizon
                    break
                events.now = arrival[index]
                self._arrive(index)
                index += 1
            elif heap:
                when, _, _, action, arg = pop(heap)
                if when > self.horizon:
                    events.now = self.horizon  # jobs still running are charged up to here
                    break
                events.now = when
                action(arg)
            else:
                break
            if self.audit is not None:
                self.audit(self)
            if self.done == total and index == total and self._settled():
                break
        return self._result(total)

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
            self.manager.schedule_cycle(self.events.now)  # the server's long-poll wakes it
        heapq.heappush(queue.heap, (-self.priority[task], task))

    def _requeue(self, element: Element) -> None:
        """Running tasks go back to waiting (released, or killed at the end of the job)."""
        busy = 0.0
        for task, started in element.running.items():
            busy += self.events.now - started
            queue = self.task_queue[task]
            heapq.heappush(queue.heap, (-self.priority[task], task))
            self.requeued += 1
        element.pool.result.busy_slot_seconds += busy
        element.running.clear()

    # -- the admin -------------------------------------------------------------------------

    def _control(self, event: ControlEvent) -> None:
        """An admin's command reaches the store: the manager reads it at its next cycle, the
        workers at their next claim (drain: they stop taking tasks)."""
        for pool in self.pools:
            if event.pool in (None, pool.cfg.name):
                if event.control is not None:
                    pool.control = event.control
                if event.max_workers is not None:
                    pool.override = event.max_workers

    # -- workers ---------------------------------------------------------------------------

    def _register(self, element: Element) -> None:
        if element.state != STARTING:
            return
        now = self.events.now
        pool = element.pool
        pool.starting -= 1
        pool.starting_els.pop(element, None)
        pool.registered += 1
        pool.live[element] = None
        element.state = REGISTERED
        max_time = pool.cfg.worker.max_time
        deadline = min(now + max_time if max_time else math.inf, element.started + pool.wall)
        element.ws = worker_rules.WorkerProgress(
            started=now, deadline=None if math.isinf(deadline) else deadline
        )
        pool.queue_waits.appendleft(now - element.submitted)
        pool.registrations.append((element.started, now))
        pool.last_registration = now
        if pool.result.first_worker_at is None:
            pool.result.first_worker_at = now
        if not math.isinf(deadline):
            when = max(now, deadline - worker_rules.END_GRACE)
            self.events.push(when, EVENT, self._near_end, element)
        self._claim(element)

    def _claim(self, element: Element) -> None:
        """One turn of worker.loop.WorkerLoop._loop: stop, wait for tasks, claim, or sleep."""
        element.claim_pending = False
        pool, ws, opts, now = element.pool, element.ws, element.pool.opts, self.events.now
        if ws is None:  # not registered: nothing to do
            return
        ws.running = len(element.running)
        ws.surplus = pool.registered > pool.floor  # what a heartbeat would say
        ws.control = pool.control
        reason = worker_rules.stop_reason(ws, opts, now)
        if reason is not None:
            if not element.running:
                self.slurm.end(element, reason)
            return  # running tasks finish first; _finish comes back here
        want = worker_rules.claim_size(ws, opts, opts.slots - ws.running)
        if want <= 0:
            return
        if not worker_rules.may_claim(ws, opts, now, pool.expected(now)):
            ws.claiming_stopped = StopReason.WALLTIME
            if not element.running:
                self.slurm.end(element, "walltime")
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
            self.slurm.end(element, "idle")

    def _sleep(self, element: Element) -> None:
        element.claim_pending = True
        wake_at = self.events.now + element.pool.opts.empty_claim_sleep
        self.events.push(wake_at, EVENT, self._wake, element)

    def _wake(self, element: Element) -> None:
        if element.state == REGISTERED:
            self._claim(element)

    def _take(self, element: Element, want: int) -> int:
        """The store's claim: up to `want` waiting tasks of the pool's queues by priority, age."""
        now, queues = self.events.now, element.pool.queues
        got = 0
        while got < want:
            if len(queues) == 1:
                queue: SimQueue | None = queues[0] if queues[0].heap else None
            else:
                queue = min((q for q in queues if q.heap), key=lambda q: q.heap[0], default=None)
            if queue is None:
                break
            task = heapq.heappop(queue.heap)[1]
            element.running[task] = now
            if math.isnan(self.first_start[task]):
                self.first_start[task] = now
            self.events.push(now + self.duration[task], EVENT, self._finish, (element, task))
            got += 1
        if element.ws is not None:
            element.ws.tasks_started += got
        return got

    def _finish(self, arg: tuple[Element, int]) -> None:
        element, task = arg
        started = element.running.pop(task, None)
        if started is None or element.state != REGISTERED:
            return  # released earlier: this run did not finish
        ran = self.events.now - started
        element.pool.result.busy_slot_seconds += ran
        self.task_queue[task].samples.appendleft(ran)
        self.done += 1
        self.last_done = self.events.now
        if not element.claim_pending:
            self._claim(element)

    def _near_end(self, element: Element) -> None:
        """END_GRACE before the job's end: running tasks are released (rules.must_abandon)."""
        if element.state != REGISTERED:
            return
        self._requeue(element)
        self.slurm.end(element, "walltime")

    # -- the end ---------------------------------------------------------------------------

    def _result(self, total: int) -> SimResult:
        now = self.events.now
        for pool in self.pools:  # still running at the end: count their time so far
            for element in [*pool.starting_els, *pool.live]:
                pool.result.busy_slot_seconds += sum(now - t for t in element.running.values())
                element.running.clear()
                self.slurm.end(element, "still_running")
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
            ended_at=now,
            task_waits=waits,
            requeued=self.requeued,
            cycles=self.manager.cycles,
            events=next(self.events.seq) + total,
            max_in_flight=self.slurm.max_in_flight,
            pools=[p.result for p in self.pools],
            notes=self.notes,
            decisions=self.manager.decisions,
        )


def simulate(
    tasks: Sequence[SimTask],
    pools: Sequence[PoolConfig],
    **options: Any,
) -> SimResult:
    """Run a workload through the pools; options as for `Simulation`."""
    return Simulation(tasks, pools, **options).run()
