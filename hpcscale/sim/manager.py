"""The manager on the simulated clock: observe -> decide -> act for every pool, each cycle.

Why apart from the event loop (engine.py): this is the half of the simulation that must stay
the service's own (hpcscale/manager/loop.py): `policy.decide` on an `Observation` built as the
manager builds it, then sbatch and scancel as it decided. It runs a cycle at a time, not an event
at a time, so the engine only has to say when (every `poll_interval`, or at once when the
server's long-poll would wake it); the elements it asks for live on Slurm's side (cluster.py).
"""

from __future__ import annotations

from hpcscale import estimate
from hpcscale.config import ManagerConfig
from hpcscale.models import BreakerState
from hpcscale.policy import Decision, Observation, breaker_state, decide, effective_bounds
from hpcscale.schedule import active_window
from hpcscale.sim import limits
from hpcscale.sim.cluster import Slurm
from hpcscale.sim.results import Sample
from hpcscale.sim.state import CYCLE, Events, SimPool


class SimManager:
    """One manager for all the pools: its cycles, its decisions (when recorded), its breaker."""

    def __init__(
        self,
        config: ManagerConfig,
        events: Events,
        pools: list[SimPool],
        slurm: Slurm,
        record: bool,
    ) -> None:
        self.config = config
        self.events = events
        self.pools = pools
        self.slurm = slurm
        self.record = record
        self.gen = 0
        self.cycles = 0
        self.decisions: list[tuple[str, Observation, Decision]] = []

    def schedule_cycle(self, when: float) -> None:
        """(Re)plan the next cycle; an earlier plan is dropped, as the loop's sleep is cut."""
        self.gen += 1
        self.events.push(when, CYCLE, self._cycle, self.gen)

    def _cycle(self, gen: int) -> None:
        if gen != self.gen:
            return
        self.cycles += 1
        for pool in self.pools:
            self._cycle_pool(pool)
        self.schedule_cycle(self.events.now + self.config.poll_interval)

    def _cycle_pool(self, pool: SimPool) -> None:
        """observe -> decide -> act, as manager.ComputeManager._cycle_pool does."""
        now = self.events.now
        obs = self._observe(pool)
        decision = self.decide(pool.cfg.name, obs)
        floor = pool.cfg.floor_at(now) if pool.windows else pool.cfg.min_workers
        pool.floor = max(floor, decision.hold)  # what the manager tells the store next
        if decision.cancel_pending:
            self.slurm.cancel_pending(pool, decision.cancel_pending)
        if decision.submit > 0:
            self.slurm.submit(pool, decision.submit)
        cap = effective_bounds(pool.rules, obs)[1]
        pool.result.timeline.append(
            Sample(
                now,
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

    def _observe(self, pool: SimPool) -> Observation:
        """The Observation the manager builds for this pool now.

        As in the manager, the counts are taken before the failed starts found in the same
        look are cancelled, and those failures already count for the breaker.
        """
        now = self.events.now
        claimable = pool.backlog()
        est = pool.est_duration()
        counts = pool.counts()
        leaving = pool.leaving_soon(now, est)
        self._notice_failed_starts(pool)
        return Observation(
            now=now,
            claimable=claimable,
            claimable_slots=claimable,
            est_duration=est,
            unconfirmed=counts.unconfirmed,
            pending=counts.pending,
            starting=counts.starting,
            registered=counts.registered,
            leaving_soon=leaving,
            breaker=self._breaker(pool),
            tail=estimate.idle_overhead(pool.ended, pool.mean_duration()),
            startup=estimate.startup_overhead(pool.registrations),
            control=pool.control,
            max_workers_override=pool.override,
            window=active_window(pool.windows, now) if pool.windows else None,
            submit_allowance=limits.hourly_allowance(pool.asked, now, pool.cfg.submit_ceiling),
            budgets=pool.budgets(now),
        )

    def _notice_failed_starts(self, pool: SimPool) -> None:
        """Failed elements and those running unregistered past start_grace (then cancelled)."""
        now = self.events.now
        stuck = [e for e in pool.starting_els if now - e.started > self.config.start_grace]
        for element in stuck:
            self.slurm.end(element, "failed_start")
            pool.result.scancel_calls += 1
        seen = pool.unseen_failures + len(stuck)
        pool.unseen_failures = 0
        pool.failures.extend([now] * seen)
        pool.result.failed_starts += seen
        window = now - self.config.breaker_window
        if pool.failures and pool.failures[0] < window:
            pool.failures = [t for t in pool.failures if t >= window]

    def _breaker(self, pool: SimPool) -> BreakerState:
        c = self.config
        now = self.events.now
        return breaker_state(
            pool.failures, pool.last_registration, now, c.breaker_failures, c.breaker_cooldown
        )
