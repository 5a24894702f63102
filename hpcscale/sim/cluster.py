"""Slurm's side of an array element's life: sbatch, the queue, the throttle, the start, the
wall time, scancel and the end of the job.

Why apart from the event loop (engine.py): what the batch system does to an element is the
model of the cluster (workloads.ClusterModel: queue waits, start latency, failed starts, sbatch
latency), not hpcscale's code; the manager (manager.py) asks for elements and the engine drives
the worker inside one. All share the clock (state.Events); Slurm hands an element back to the
engine when it starts (`register`) and before the wall time kills it (`release`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hpcscale.sim.state import (
    ENDED,
    EVENT,
    PENDING,
    REGISTERED,
    STARTING,
    UNCONFIRMED,
    ArraySubmission,
    Element,
    Events,
    SimPool,
)
from hpcscale.sim.workloads import ClusterModel


class Slurm:
    """The batch system every pool submits to, on the simulated clock."""

    def __init__(
        self,
        events: Events,
        model: ClusterModel,
        seed: int,
        pools: list[SimPool],
        register: Callable[[Element], None],
        release: Callable[[Element], None],
    ) -> None:
        self.events = events
        self.model = model
        self.rng = random.Random(f"cluster-{seed}")  # noqa: S311 - a simulation
        self.pools = pools
        self.register = register  # the job runs: the worker inside registers
        self.release = release  # the job is killed: its running tasks go back to waiting
        self.max_in_flight = 0  # all pools together

    def submit(self, pool: SimPool, count: int) -> None:
        now = self.events.now
        result = pool.result
        result.sbatch_calls += 1
        result.submitted += count
        pool.asked.append((now, count))
        sub = ArraySubmission(pool.cfg.slurm.array_throttle)
        elements = [Element(pool, sub, now) for _ in range(count)]
        pool.unconfirmed += count
        in_flight = pool.unconfirmed + pool.pending + pool.starting + pool.registered
        result.max_in_flight = max(result.max_in_flight, in_flight)
        total = sum(p.unconfirmed + p.pending + p.starting + p.registered for p in self.pools)
        self.max_in_flight = max(self.max_in_flight, total)
        if self.model.sbatch_latency > 0:
            self.events.push(now + self.model.sbatch_latency, EVENT, self._confirm, elements)
        else:
            self._confirm(elements)

    def _confirm(self, elements: list[Element]) -> None:
        """The elements show up in the queue, each with its own wait."""
        pool = elements[0].pool
        for element in elements:
            if element.state != UNCONFIRMED:
                continue
            element.state = PENDING
            pool.unconfirmed -= 1
            pool.pending += 1
            pool.pending_els.append(element)
            wait = self.model.queue_wait.draw(self.rng)
            self.events.push(self.events.now + wait, EVENT, self._eligible, element)
        if len(pool.pending_els) > 2 * pool.pending + 64:  # drop started / cancelled ones
            pool.pending_els = [e for e in pool.pending_els if e.state == PENDING]
        result = pool.result
        result.max_pending_seen = max(result.max_pending_seen, pool.pending + pool.unconfirmed)

    def _eligible(self, element: Element) -> None:
        if element.state != PENDING:
            return  # cancelled meanwhile
        sub = element.sub
        if sub.throttle and sub.running >= sub.throttle:
            sub.blocked.append(element)
            return
        self._start(element)

    def _start(self, element: Element) -> None:
        now = self.events.now
        pool = element.pool
        pool.pending -= 1
        pool.starting += 1
        pool.starting_els[element] = None
        element.state = STARTING
        element.started = now
        element.sub.running += 1
        pool.result.peak_workers = max(pool.result.peak_workers, pool.starting + pool.registered)
        failed = self.model.failed_start > 0 and self.rng.random() < self.model.failed_start
        latency = self.model.start_latency
        self.events.push(now + latency, EVENT, self._fail if failed else self.register, element)
        self.events.push(now + pool.wall, EVENT, self._wall_end, element)

    def _fail(self, element: Element) -> None:
        if element.state == STARTING:
            self.end(element, "failed_start")
            element.pool.unseen_failures += 1

    def _wall_end(self, element: Element) -> None:
        """Slurm ends the job at its wall time: whatever still runs is killed and requeued."""
        if element.state in (STARTING, REGISTERED):
            self.release(element)
            self.end(element, "wall_time_kill")

    def cancel_pending(self, pool: SimPool, count: int) -> None:
        """scancel of the newest pending elements (manager.act.cancel_as_decided)."""
        pool.pending_els = [e for e in pool.pending_els if e.state == PENDING]
        victims = pool.pending_els[-count:]
        for element in victims:
            element.state = ENDED
            pool.pending -= 1
        del pool.pending_els[len(pool.pending_els) - len(victims) :]
        pool.result.scancel_calls += 1
        pool.result.cancelled_pending += len(victims)

    def end(self, element: Element, reason: str) -> None:
        """The job is gone: its slot of the allocation is free, a held-back sibling may start."""
        now = self.events.now
        pool = element.pool
        if element.state == STARTING:
            pool.starting -= 1
            pool.starting_els.pop(element, None)
        elif element.state == REGISTERED:
            pool.registered -= 1
            pool.live.pop(element, None)
            if element.ws is not None:
                done = element.ws.tasks_started - len(element.running)
                pool.ended.append((element.ws.started, now, done, pool.cfg.worker.slots))
                pool.spans.append((element.ws.started, now))
        element.state = ENDED
        pool.result.worker_seconds += now - element.started
        pool.result.end_reasons[reason] = pool.result.end_reasons.get(reason, 0) + 1
        sub = element.sub
        sub.running -= 1
        while sub.blocked and sub.running < sub.throttle:
            waiting = sub.blocked.popleft()
            if waiting.state == PENDING:
                self._start(waiting)
