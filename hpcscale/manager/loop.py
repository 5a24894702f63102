"""The manager: observe -> decide -> act -> record, for every pool, every cycle.

It keeps no state of its own (invariant 5). Every cycle it reads the picture from the store in
one request and one snapshot (backlog, workers, its open submissions, controls, history: a
`CycleView`) and from ONE scheduler query per kind of scheduler (all pools at once), so a
restarted manager knows exactly what is in flight. Its workers and open submissions come as
changes to a copy it holds (feed.py), which a restart rebuilds with one full read.
Submissions are recorded as intents before `sbatch` and reconciled by tag afterwards: an sbatch
that timed out but created the job is found, not submitted twice (invariant 3).

The four operations of the alchemiscale compute-manager design keep their names:
`register`, `request_claimable`, `check_managed_compute_services`, `create_compute_service`.
Errors never stop the loop for good (invariant 4): a failed cycle is logged, backed off and
retried; a pool whose workers keep failing to start has its breaker opened, probed after a
cooldown and closed by the first worker that registers.

This module is the cycle and its order; the parts it runs are apart: elements.py (the view of
a pool's elements, failed starts and quick ends), safety.py (pre-flight, budgets, breaker and
alarm: cost safety, issue 8), observation.py (the policy's input), act.py (submitting and
cancelling), record.py (the decision records), registration.py (one live instance per name).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, rules_from_pool
from hpcscale.errors import ConfigError, HpcscaleError, SchedulerError
from hpcscale.jobscript import render
from hpcscale.manager.act import (
    FAILED_START,
    cancel_as_decided,
    read_elements,
    settle_ends,
    submit_array,
    worker_token,
)
from hpcscale.manager.elements import PoolFacts, PoolView, StartWatch, view_pool
from hpcscale.manager.feed import Mirror
from hpcscale.manager.grants import GlobalCap
from hpcscale.manager.observation import Measured, claimable_in, observation, task_duration
from hpcscale.manager.record import DecisionLog, decision_extra
from hpcscale.manager.registration import dead_predecessor
from hpcscale.manager.safety import Preflight, measure_budgets, newly_exhausted, pool_health
from hpcscale.manager.site import SiteWatch, site_binds
from hpcscale.manager.waits import stale_surplus
from hpcscale.models import (
    Backlog,
    CycleView,
    ManagerRegistration,
    ObserveRequest,
    PoolInfo,
    PoolObservation,
    PoolQuestion,
    Submission,
    SubmissionIntent,
    Worker,
)
from hpcscale.policy import (
    Budget,
    Decision,
    Observation,
    PoolRules,
    decide,
)
from hpcscale.schedulers import ElementStatus, Scheduler, make_scheduler

log = logging.getLogger("hpcscale.manager")

HISTORY_WINDOW = 3600.0
CEILING_WINDOW = 3600.0  # max_submit_per_hour counts the submissions of this rolling window


@dataclass
class CycleResult:
    """What a cycle did, per pool: for `run --once`'s exit code, the bench and the tests."""

    decisions: dict[str, Decision]
    errors: dict[str, str]
    submitted: dict[str, int]


class ComputeManager:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        scheduler_factory: Callable[[PoolConfig], Scheduler] | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.client = client
        self.dry_run = dry_run
        self.clock = clock
        self.out = out
        self.name = settings.manager.name
        self.instance = uuid.uuid4().hex
        state_dir = Path(settings.manager.state_dir).expanduser()
        factory = scheduler_factory or (lambda p: make_scheduler(p, self.name, state_dir))
        self.schedulers: dict[str, Scheduler] = {p.name: factory(p) for p in settings.pools}
        self.starts = StartWatch()
        self.seq = 0
        self.stop = threading.Event()
        self.last: dict[str, Decision] = {}
        self._registered = False
        self.mirror = Mirror(window=HISTORY_WINDOW)
        self.decision_log = DecisionLog(self.name, dry_run, out)
        self.cycle_started = time.monotonic()
        self.scheduler_seconds = 0.0
        self.preflight = Preflight(settings, self.name)
        self.sites = {p.name: SiteWatch() for p in settings.pools}
        self.elements_read_at = 0.0
        self.denied_hosts: list[str] = []
        self.global_cap = GlobalCap(client, settings, self.instance)  # issue 17: grants.py

    # ------------------------------------------------------------------ the four operations

    def register(self) -> None:
        """Claim the manager's name in the store (refused while another instance lives)."""
        host = socket.gethostname()
        registration = ManagerRegistration(
            instance=self.instance,
            host=host,
            pid=os.getpid(),
            pools={  # the floor now (a window's) and the idle workers the last decision holds
                p.name: max(p.floor_at(self.clock()), getattr(self.last.get(p.name), "hold", 0))
                for p in self.settings.pools
            },
            stale_after=max(90.0, 3 * self.settings.manager.poll_interval),
            takeover_from=None if self._registered else self._takeover(host),
        )
        self.client.register_manager(self.name, registration)
        if not self._registered:  # failed starts counted before a restart stay counted
            for event in self.client.events(kind_prefix=FAILED_START, limit=1000):
                self.starts.counted.add((event.detail or "").split(" ")[-1])
        self._registered = True

    def _takeover(self, host: str) -> str | None:
        """A manager killed with -9 and restarted need not wait out the stale period."""
        return dead_predecessor(self.client, self.name, self.instance, host)

    def request_claimable(self, pool: PoolConfig, backlog: Sequence[Backlog]) -> Backlog:
        """The claimable work in the pool's queues, summed."""
        return claimable_in(pool, backlog)

    def check_managed_compute_services(
        self,
        pool: PoolConfig,
        elements: Sequence[ElementStatus],
        submissions: Sequence[Submission],
        workers: Sequence[Worker],
        est_duration: float,
        observed: PoolObservation,
    ) -> PoolView:
        """Join the pool's submissions, their elements' states and the registered workers
        (elements.view_pool), and bring the submission records in line with the scheduler.
        Which workers reached max_tasks is the store's of this cycle (`observed.spent`): the
        copies in `workers` follow only their state."""
        facts = PoolFacts(
            now=self.clock(),
            start_grace=self.settings.manager.start_grace,
            max_tasks=pool.worker.max_tasks,
            spent=frozenset(observed.spent),
            est_duration=est_duration,
            read_at=self.elements_read_at,
        )
        view = view_pool(elements, submissions, workers, facts, self.starts)
        for tag, update in view.updates:
            self.client.update_submission(tag, update)
        return view

    def create_compute_service(self, pool: PoolConfig, count: int) -> Submission | None:
        """One array submission of `count` workers: intent, sbatch, confirm (act.submit_array)."""
        tag = f"{self.name}.{pool.name}.{int(self.clock())}.{uuid.uuid4().hex[:6]}"
        count = self.global_cap.ask(pool, tag, count, self.dry_run)  # the store's global cap
        if count == 0:
            return None
        token_file = worker_token(self.settings, self.client, pool, self.dry_run)
        job = render(pool, self.settings, tag, count, token_file, self.denied_hosts)
        if self.dry_run:
            self.out(f"[dry-run] pool {pool.name}: would submit {count} worker(s):")
            self.out("  " + " ".join(job.sbatch_argv))
            return None
        intent = SubmissionIntent(tag=tag, manager=self.name, pool=pool.name, count=count)
        site = self.sites[pool.name]
        made = submit_array(self.client, self.schedulers[pool.name], job, intent, self.starts, site)
        if made is None:  # refused or uncertain: the test says whether it was for good
            self.preflight.soon(pool.name)
        return made

    # ------------------------------------------------------------------ the cycle

    def cycle(self) -> CycleResult:
        """One pass over every pool. Errors of one pool do not stop the others."""
        result = CycleResult({}, {}, {})
        self.cycle_started = time.monotonic()
        self.register()
        asked = time.monotonic()
        self.elements_read_at = self.clock()
        elements, unreadable = read_elements(self.settings.pools, self.schedulers)
        self.scheduler_seconds = time.monotonic() - asked
        # After the scheduler: a worker that ends between the two reads is seen ended, not as
        # live with its job gone (which would report it lost).
        view = self.observe()
        # Slurm would place new workers on a node denied claims again: new jobs exclude it.
        self.denied_hosts = view.denied_hosts
        pools = {p.name: p for p in view.pools}
        per_pool = {p.pool: p for p in view.per_pool}
        try:
            for pool in self.settings.pools:
                try:
                    if pool.scheduler in unreadable:
                        raise SchedulerError(unreadable[pool.scheduler])
                    decision = self._cycle_pool(
                        pool,
                        view,
                        per_pool[pool.name],
                        [e for e in elements if e.pool == pool.name],
                        pools.get(pool.name),
                    )
                    result.decisions[pool.name] = decision
                    result.submitted[pool.name] = decision.submit
                except HpcscaleError as exc:
                    log.warning("pool %s: cycle failed: %s", pool.name, exc)
                    result.errors[pool.name] = str(exc)
                    self._record(pool, None, None, [f"cycle failed, submitting nothing: {exc}"])
        finally:
            self.decision_log.flush(self.client)
        return result

    def observe(self) -> CycleView:
        """The cycle's reads; the workers and submissions changed since the last cycle go into
        the mirror."""
        now = self.clock()
        questions = [
            PoolQuestion(
                pool=pool.name,
                queues=pool.queues,
                history_since=max(0.0, now - self.settings.manager.breaker_window),
                submitted_since=max(0.0, now - CEILING_WINDOW),
                max_tasks=pool.worker.max_tasks,
                slots=pool.worker.slots,  # the store leaves wider tasks out (issue 16)
            )
            for pool in self.settings.pools
        ]
        since = max(0.0, now - HISTORY_WINDOW)
        ask = ObserveRequest(pools=questions, since=since, cursor=self.mirror.cursor)
        view = self.client.observe(self.name, ask)
        if not self.mirror.apply(view, now):
            log.info("the store's feed is another (server restarted?): reading all")
            view = self.client.observe(self.name, ask.model_copy(update={"cursor": None}))
            self.mirror.apply(view, now)
        return view

    def _cycle_pool(
        self,
        pool: PoolConfig,
        cycle: CycleView,
        observed: PoolObservation,
        elements: Sequence[ElementStatus],
        info: PoolInfo | None,
    ) -> Decision:
        """One pool's pass: measure, decide, act, record."""
        now = self.clock()
        measured = self._measure(pool, cycle, observed, elements, now)
        obs = observation(pool, measured, info, now)
        decision = self.decide(pool, obs)
        site = self.sites[pool.name]
        site.binding = site_binds(obs, decision)
        self._note_budget_exhausted(pool, decision, measured.budgets)
        opened = {s.tag: s for s in self.mirror.open_submissions(pool.name)}
        stale = stale_surplus(measured.view.pending, opened, obs, decision, now)
        self._act(pool, decision, measured.view, info, stale)
        extra = decision_extra(pool, decision, measured, site, stale)
        reasons = [*decision.reasons, *self.global_cap.reasons(pool.name)]  # issue 17
        self._record(pool, decision, obs, reasons, extra)
        self.last[pool.name] = decision
        return decision

    def _measure(
        self,
        pool: PoolConfig,
        cycle: CycleView,
        observed: PoolObservation,
        elements: Sequence[ElementStatus],
        now: float,
    ) -> Measured:
        """The pool's view of its elements, acted on at once where it found ends and failed
        starts, then the safety inputs: pre-flight, breaker and alarm, budgets."""
        backlog = Measured.runnable(cycle.backlog, observed)  # what the pool's workers can run
        claimable = self.request_claimable(pool, backlog)
        est = task_duration(pool, backlog, cycle.queue_stats)
        workers = self.mirror.workers_of(pool.name)
        submissions = self.mirror.open_submissions(pool.name)
        view = self.check_managed_compute_services(
            pool, elements, submissions, workers, est, observed
        )
        scheduler, site = self.schedulers[pool.name], self.sites[pool.name]
        workers, recorded = settle_ends(
            self.client, scheduler, self.mirror, self.starts, pool, view, self.settings,
            self.dry_run,
        )  # fmt: skip
        if site.read(scheduler, now):
            self.preflight.soon(pool.name)  # a limit changed: the test may pass (or not) now
        blocked = self.preflight.check(pool, scheduler, self.clock(), self._event, site)
        health = pool_health(
            observed.history, recorded, workers, self.starts.counted, self.settings.manager, now
        )
        budgets = measure_budgets(
            pool, view, now, lambda since: self.client.list_workers(pool=pool.name, since=since),
            scheduler.accounted_seconds,
        )  # fmt: skip
        tail = Measured.tail_of(pool, cycle.queue_stats, workers)  # the sizing rule's
        return Measured(
            observed, view, claimable, est, health, blocked, budgets, site.allowance(), tail,
            Measured.startup_of(workers),
        )  # fmt: skip

    def _note_budget_exhausted(
        self, pool: PoolConfig, decision: Decision, budgets: tuple[Budget, ...]
    ) -> None:
        """An event when the pool's budget starts holding it (not every cycle it does)."""
        spent = newly_exhausted(self.last.get(pool.name), decision, budgets)
        if spent is not None:
            log.warning("pool %s: budget exhausted, submitting nothing: %s", pool.name, spent)
            self._event("pool.budget_exhausted", f"{pool.name} {spent}")

    def _act(
        self,
        pool: PoolConfig,
        decision: Decision,
        view: PoolView,
        info: PoolInfo | None,
        stale: Sequence[str],
    ) -> None:
        """A dry run submits nothing (it prints the sbatch) and cancels nothing."""
        if decision.submit > 0:
            self.create_compute_service(pool, decision.submit)
        if not self.dry_run:
            scheduler = self.schedulers[pool.name]
            cancel_as_decided(scheduler, pool.name, decision, view, info, stale)

    def _record(
        self,
        pool: PoolConfig,
        decision: Decision | None,
        obs: Observation | None,
        reasons: list[str],
        extra: dict[str, object] | None = None,
    ) -> None:
        """Every record carries how long the cycle and its scheduler query took so far."""
        timings: dict[str, object] = {
            "cycle_seconds": round(time.monotonic() - self.cycle_started, 4),
            "scheduler_seconds": round(self.scheduler_seconds, 4),
        }
        ts = self.clock()
        self.decision_log.add(pool.name, ts, decision, obs, reasons, {**timings, **(extra or {})})

    # ------------------------------------------------------------------ helpers

    def decide(self, pool: PoolConfig, obs: Observation) -> Decision:
        """The decision on one observation; the simulator's `decide` must agree (tested on a
        recorded sequence)."""
        return decide(self._rules(pool), obs)

    def _rules(self, pool: PoolConfig) -> PoolRules:
        return rules_from_pool(pool, self.schedulers[pool.name].max_array_size)

    def _event(self, kind: str, detail: str) -> None:
        """An event in the store (printed instead on a dry run, which writes nothing)."""
        if self.dry_run:
            self.out(f"[dry-run] event {kind}: {detail}")
            return
        self.client.add_event(kind, detail[:4000])

    # ------------------------------------------------------------------ the loop

    def run(self, once: bool = False) -> int:
        """Cycle until stopped; never give up on an error (back off instead)."""
        backoff = 1.0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                result = self.cycle()
                backoff = 1.0
            except HpcscaleError as exc:  # the store, the scheduler, or a live twin (409)
                log.warning("cycle failed: %s; retrying in %.0fs", exc, backoff)
                if once:
                    return 1
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.manager.poll_interval)
                continue
            log.debug("cycle took %.3fs: %s", time.monotonic() - started, result.submitted)
            if once:
                return 1 if result.errors else 0
            self._sleep()
        return 0

    def _sleep(self) -> None:
        """Until the poll interval passes or new tasks arrive (the server's long-poll)."""
        deadline = time.monotonic() + self.settings.manager.poll_interval
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                reply = self.client.wait_for_work(self.seq, min(left, 5.0))
            except HpcscaleError:
                self.stop.wait(min(left, 5.0))
                continue
            changed = reply.seq > self.seq
            self.seq = reply.seq
            if changed:
                return


def run_manager(
    settings: Settings,
    token: str,
    *,
    once: bool = False,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> int:
    if not settings.pools:
        raise ConfigError(["pools: no [[pools]] in the config: nothing to manage"])
    with Client(
        settings.server.url, token, retry_for=10.0, verify=settings.server.verify
    ) as client:
        manager = ComputeManager(settings, client, dry_run=dry_run)
        if stop is not None:
            manager.stop = stop
        elif threading.current_thread() is threading.main_thread():
            # `systemctl stop`: finish the cycle under way, then leave (nothing to save).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda _s, _f: manager.stop.set())
        return manager.run(once=once)
