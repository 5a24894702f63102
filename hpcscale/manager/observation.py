"""One pool's measurements, turned into the policy's `Observation`.

The policy decides on plain values and the simulator builds the same `Observation` from its
model, so this is the one place where what the manager measured in the world (the store's
answer, the view of the pool's elements, the safety inputs) becomes the policy's input. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcscale import estimate
from hpcscale.config import PoolConfig
from hpcscale.manager.elements import PoolView
from hpcscale.manager.safety import Health
from hpcscale.models import Backlog, Control, PoolInfo, PoolObservation, QueueStats, Worker
from hpcscale.policy import Budget, Observation
from hpcscale.schedule import active_window, pool_windows


@dataclass(frozen=True)
class Measured:
    """What one pool's cycle measured before deciding: the policy's inputs and the record's."""

    observed: PoolObservation  # the store's answer for the pool
    view: PoolView
    claimable: Backlog
    est_duration: float
    health: Health
    blocked: str | None  # the pre-flight's refusal
    budgets: tuple[Budget, ...]
    site: tuple[int | None, str | None] = (None, None)  # SiteWatch.allowance()
    # A worker's measured idle seconds beyond its start-up (estimate.idle_overhead; None: not
    # measured yet): the sizing rule's tail.
    tail: float | None = None
    # A worker's measured start-up, job start to registration (estimate.startup_overhead).
    startup: float | None = None

    @staticmethod
    def runnable(backlog: Sequence[Backlog], observed: PoolObservation) -> Sequence[Backlog]:
        """The claimable work the pool sizes on: the store's for the pool when it answered
        with it (the tasks its workers can run), else every queue's (an older server)."""
        return backlog if observed.claimable is None else observed.claimable

    @staticmethod
    def tail_of(
        pool: PoolConfig, stats_of: Sequence[QueueStats], workers: Sequence[Worker]
    ) -> float | None:
        """The measured tail (estimate.idle_overhead) from the pool's ended workers, their
        tasks counted at the mean of the pool's recent run times."""
        recent = [s.recent_durations for s in stats_of if s.queue in pool.queues]
        mean = estimate.mean_duration(recent, pool.task_duration_prior)
        ended = [(w.started_at, w.ended_at, w.tasks_done, w.slots) for w in workers if w.ended_at]
        return estimate.idle_overhead(ended, mean)

    @staticmethod
    def startup_of(workers: Sequence[Worker]) -> float | None:
        """The measured start-up (estimate.startup_overhead) of the pool's newest workers
        that registered with their job's start, live or ended."""
        known = [(w.job_started_at, w.started_at) for w in workers if w.job_started_at]
        return estimate.startup_overhead(known)


def observation(
    pool: PoolConfig, measured: Measured, info: PoolInfo | None, now: float
) -> Observation:
    """`info`: the pool's controls in the store (None until an admin set one)."""
    view, claimable = measured.view, measured.claimable
    submitted = measured.observed.submitted  # this rolling hour's, refused ones not counted
    return Observation(
        now=now,
        claimable=claimable.count,
        claimable_slots=claimable.slots,
        est_duration=measured.est_duration,
        unconfirmed=view.unconfirmed,
        pending=len(view.pending),
        starting=len(view.starting),
        registered=len(view.registered),
        leaving_soon=view.leaving_soon,
        control=info.control if info else Control.CONTINUE,
        max_workers_override=info.max_workers_override if info else None,
        breaker=measured.health.breaker,
        blocked=measured.blocked,
        window=active_window(pool_windows(pool.schedule, pool.max_workers), now),
        submit_allowance=max(0, pool.submit_ceiling - submitted),
        alarm=measured.health.alarm,
        budgets=measured.budgets,
        tail=measured.tail,
        startup=measured.startup,
        site_allowance=measured.site[0],
        site_limit=measured.site[1],
    )


def held_notes(pool: PoolConfig, observed: PoolObservation) -> list[str]:
    """For `why`: the waiting tasks the pool sizes on none of, being wider than its workers."""
    out = []
    for h in observed.held or []:
        need = (
            f"{h.fewest_slots}"
            if h.fewest_slots == h.most_slots
            else f"{h.fewest_slots}-{h.most_slots}"
        )
        tasks = "1 task" if h.count == 1 else f"{h.count} tasks"
        out.append(
            f"{tasks} in queue {h.queue} need{'s' if h.count == 1 else ''} {need} slots; this "
            f"pool's workers have {pool.worker.slots} — nothing submitted for them"
        )
    return out


def claimable_in(pool: PoolConfig, backlog: Sequence[Backlog]) -> Backlog:
    """The claimable work in the pool's queues, summed."""
    mine = [b for b in backlog if b.queue in pool.queues]
    return Backlog(
        queue=",".join(pool.queues),
        count=sum(b.count for b in mine),
        slots=sum(b.slots for b in mine),
        oldest_age=max((b.oldest_age for b in mine), default=0.0),
    )


def task_duration(
    pool: PoolConfig, backlog: Sequence[Backlog], stats_of: Sequence[QueueStats]
) -> float:
    """The pool's seconds per task: each queue's EWMA of recent run times (the pool's prior
    while it has none), then their mean weighted by each queue's backlog (the longest queue's
    when nothing waits)."""
    counts = {b.queue: b.count for b in backlog}
    known = {s.queue: s.recent_durations for s in stats_of}
    per_queue = [(known[queue], counts.get(queue, 0)) for queue in pool.queues]
    return estimate.pool_task_duration(per_queue, pool.task_duration_prior)
