"""The manager: observe -> decide -> act -> record, for every pool, every cycle.

It keeps no state of its own (invariant 5). Every cycle it reads the picture from the store in
one request and one snapshot (backlog, workers, its open submissions, controls, history: a
`CycleView`) and from ONE scheduler query per kind of scheduler (all pools at once), so a
restarted manager knows exactly what is in flight. Its workers and open submissions come as
changes to a copy it holds (mirror.py), which a restart rebuilds with one full read.
Submissions are recorded as intents before `sbatch` and reconciled by tag afterwards: an sbatch
that timed out but created the job is found, not submitted twice (invariant 3).

The four operations of the alchemiscale compute-manager design keep their names:
`register`, `request_claimable`, `check_managed_compute_services`, `create_compute_service`.
Errors never stop the loop for good (invariant 4): a failed cycle is logged, backed off and
retried; a pool whose workers keep failing to start has its breaker opened, probed after a
cooldown and closed by the first worker that registers.

Cost safety (issue 8): at start and every `preflight_interval` each pool's real job script goes
through the scheduler's own test (`sbatch --test-only`); a refused pool submits nothing and
shows degraded with the scheduler's message while the others run (the outcome is held in memory
only: a restarted manager checks again before its first decision). Submissions per rolling hour
are counted from the store (a restart does not reset them) and capped by the pool's
`max_submit_per_hour`; `[pools.budget]` caps them by what the worst case of new elements may
still burn (`budget-exhausted`; running workers are never cancelled). A worker that registers
and ends within `crash_seconds` without a task (not idle, drained or told to stop) counts as a
failed start, and enough quick ends in the breaker window raise the pool's crash-loop alarm.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcscale import estimate
from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, gpus_of, worker_token_file
from hpcscale.errors import (
    ClientError,
    ConfigError,
    HpcscaleError,
    PermanentSubmitError,
    PreflightUnsupported,
    SchedulerError,
    TransientSchedulerError,
)
from hpcscale.jobscript import render
from hpcscale.manager.feed import Mirror
from hpcscale.models import (
    LIVE_WORKER_STATES,
    Backlog,
    Control,
    CycleView,
    DecisionRecord,
    ManagerRegistration,
    ObserveRequest,
    PoolHistory,
    PoolInfo,
    PoolObservation,
    PoolQuestion,
    QueueStats,
    Role,
    Submission,
    SubmissionIntent,
    SubmissionState,
    SubmissionUpdate,
    Worker,
)
from hpcscale.policy import (
    Budget,
    Decision,
    Observation,
    PoolRules,
    PoolState,
    breaker_state,
    crash_alarm,
    decide,
    effective_bounds,
    leaving_soon,
    rules_from_pool,
)
from hpcscale.schedule import active_window, pool_windows
from hpcscale.schedulers import (
    NORMAL_END,
    ElementState,
    ElementStatus,
    Scheduler,
    make_scheduler,
)
from hpcscale.tokens import write_secret

log = logging.getLogger("hpcscale.manager")

INTENT_TIMEOUT = 180.0  # an intent the scheduler never showed by then did not happen
HISTORY_WINDOW = 3600.0
CEILING_WINDOW = 3600.0  # max_submit_per_hour counts the submissions of this rolling window
PREFLIGHT_RETRY = 60.0  # a pre-flight the scheduler could not answer is tried again this soon
# Why a worker may end at once without a task and still be healthy (not a crash).
PLANNED_ENDS = frozenset({"idle", "drain", "exit", "signal", "max_tasks", "max_time", "walltime"})


@dataclass
class PoolView:
    """What `check_managed_compute_services` found for one pool."""

    unconfirmed: int = 0
    pending: list[ElementStatus] = field(default_factory=list)
    starting: list[ElementStatus] = field(default_factory=list)
    running: list[ElementStatus] = field(default_factory=list)
    registered: list[Worker] = field(default_factory=list)
    leaving_soon: int = 0
    failed_starts: list[str] = field(default_factory=list)
    gone_workers: list[str] = field(default_factory=list)


@dataclass
class CycleResult:
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
        self.first_running: dict[str, float] = {}  # element id -> first seen running (memory)
        self.counted_failures: set[str] = set()
        self.seq = 0
        self.stop = threading.Event()
        self.last: dict[str, Decision] = {}
        self._registered = False
        self.mirror = Mirror(window=HISTORY_WINDOW)
        self.records: list[DecisionRecord] = []  # this cycle's, sent together at its end
        self.cycle_started = time.monotonic()
        self.scheduler_seconds = 0.0
        # pool -> (when the next pre-flight is due, the scheduler's refusal or None)
        self.preflight: dict[str, tuple[float, str | None]] = {}
        self.denied_hosts: list[str] = []

    # ------------------------------------------------------------------ the four operations

    def register(self) -> None:
        """Claim the manager's name in the store (refused while another instance lives)."""
        host = socket.gethostname()
        registration = ManagerRegistration(
            instance=self.instance,
            host=host,
            pid=os.getpid(),
            pools={p.name: p.min_workers for p in self.settings.pools},
            stale_after=max(90.0, 3 * self.settings.manager.poll_interval),
            takeover_from=self._dead_predecessor(host),
        )
        self.client.register_manager(self.name, registration)
        if not self._registered:  # failed starts counted before a restart stay counted
            for event in self.client.events(kind_prefix="pool.failed_start", limit=1000):
                self.counted_failures.add((event.detail or "").split(" ")[-1])
        self._registered = True

    def _dead_predecessor(self, host: str) -> str | None:
        """The instance to replace at once: ours on this host whose process is gone (a
        manager killed with -9 and restarted need not wait out the stale period)."""
        if self._registered:
            return None
        for info in self.client.managers():
            mine = info.name == self.name and info.instance != self.instance
            if mine and info.host == host and info.pid and not _pid_alive(info.pid):
                return info.instance
        return None

    def request_claimable(self, pool: PoolConfig, backlog: Sequence[Backlog]) -> Backlog:
        """The claimable work in the pool's queues, summed."""
        mine = [b for b in backlog if b.queue in pool.queues]
        return Backlog(
            queue=",".join(pool.queues),
            count=sum(b.count for b in mine),
            slots=sum(b.slots for b in mine),
            oldest_age=max((b.oldest_age for b in mine), default=0.0),
        )

    def check_managed_compute_services(
        self,
        pool: PoolConfig,
        elements: Sequence[ElementStatus],
        submissions: Sequence[Submission],
        workers: Sequence[Worker],
        est_duration: float,
        observed: PoolObservation,
    ) -> PoolView:
        """Join the pool's submissions, their elements' states and the registered workers.
        Which workers reached max_tasks is the store's of this cycle (`observed.spent`): the
        copies in `workers` follow only their state."""
        now = self.clock()
        view = PoolView()
        by_tag: dict[str, list[ElementStatus]] = {}
        for element in elements:
            by_tag.setdefault(element.tag, []).append(element)
        for sub in submissions:
            self._reconcile(sub, by_tag.get(sub.tag, []), view, now)
        max_tasks, spent = pool.worker.max_tasks, set(observed.spent)
        live = {(w.job_id, w.array_index): w for w in workers}
        ever = {(w.job_id, w.array_index) for w in workers}
        for element in elements:
            key = (element.job_id, element.array_index)
            if element.state == ElementState.PENDING:
                view.pending.append(element)
            elif element.terminal:
                self.first_running.pop(element.element_id, None)
                worker = live.get(key)
                if worker is not None and worker.state.value in LIVE_WORKER_STATES:
                    view.gone_workers.append(worker.id)
                if (
                    element.state not in NORMAL_END
                    and key not in ever
                    and element.element_id not in self.counted_failures
                ):
                    view.failed_starts.append(element.element_id)
            else:  # running, completing, unknown: holding a slot
                view.running.append(element)
                worker = live.get(key)
                if worker is not None and worker.state.value in LIVE_WORKER_STATES:
                    view.registered.append(worker)
                    # The store lists the workers at max_tasks; their exact count is not needed.
                    started = max_tasks if worker.id in spent else 0
                    if leaving_soon(
                        now, worker.expected_end, worker.state.value == "draining",
                        started, max_tasks, est_duration,
                    ):  # fmt: skip
                        view.leaving_soon += 1
                else:
                    first = self.first_running.setdefault(element.element_id, now)
                    if now - first > self.settings.manager.start_grace:
                        view.failed_starts.append(element.element_id)
                    view.starting.append(element)
        return view

    def create_compute_service(self, pool: PoolConfig, count: int) -> Submission | None:
        """One array submission of `count` workers: intent, sbatch, confirm."""
        tag = f"{self.name}.{pool.name}.{int(self.clock())}.{uuid.uuid4().hex[:6]}"
        token_file = self._worker_token(pool)
        job = render(pool, self.settings, tag, count, token_file, self.denied_hosts)
        if self.dry_run:
            self.out(f"[dry-run] pool {pool.name}: would submit {count} worker(s):")
            self.out("  " + " ".join(job.sbatch_argv))
            return None
        self.client.record_intent(
            SubmissionIntent(tag=tag, manager=self.name, pool=pool.name, count=count)
        )
        scheduler = self.schedulers[pool.name]
        try:
            created = scheduler.submit(job.script, count, tag)
        except PermanentSubmitError as exc:
            self._fail(pool, tag, f"refused by the scheduler: {exc}")
            return None
        except TransientSchedulerError as exc:
            log.warning(
                "pool %s: submission %s uncertain (%s); reconciling next cycle", pool.name, tag, exc
            )
            return None
        except SchedulerError as exc:
            self._fail(pool, tag, str(exc))
            return None
        log.info(
            "pool %s: submitted %d worker(s) as %s (jobs %s)",
            pool.name,
            created.count,
            tag,
            ",".join(created.job_ids),
        )
        return self.client.update_submission(
            tag,
            SubmissionUpdate(
                state=SubmissionState.CONFIRMED, job_ids=created.job_ids, count=created.count
            ),
        )

    # ------------------------------------------------------------------ the cycle

    def cycle(self) -> CycleResult:
        """One pass over every pool. Errors of one pool do not stop the others."""
        result = CycleResult({}, {}, {})
        self.cycle_started = time.monotonic()
        self.register()
        asked = time.monotonic()
        elements, unreadable = self._elements()
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
                    self._record(pool, None, {}, [f"cycle failed, submitting nothing: {exc}"])
        finally:
            self._flush_records()
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

    def _elements(self) -> tuple[list[ElementStatus], dict[str, str]]:
        """Every element of this manager: one status() per kind of scheduler."""
        elements: list[ElementStatus] = []
        unreadable: dict[str, str] = {}
        asked: set[str] = set()
        for pool in self.settings.pools:
            if pool.scheduler in asked:
                continue
            asked.add(pool.scheduler)
            try:
                elements += self.schedulers[pool.name].status()
            except SchedulerError as exc:
                unreadable[pool.scheduler] = f"scheduler status unreadable: {exc}"
        return elements, unreadable

    def _cycle_pool(
        self,
        pool: PoolConfig,
        cycle: CycleView,
        observed: PoolObservation,
        elements: Sequence[ElementStatus],
        info: PoolInfo | None,
    ) -> Decision:
        now = self.clock()
        claimable = self.request_claimable(pool, cycle.backlog)
        est = self._duration(pool, cycle.backlog, cycle.queue_stats)
        workers = self.mirror.workers_of(pool.name)
        submissions = self.mirror.open_submissions(pool.name)
        view = self.check_managed_compute_services(
            pool, elements, submissions, workers, est, observed
        )
        for worker_id in view.gone_workers:
            released = self.client.worker_gone(worker_id, "its job ended")
            log.info("pool %s: worker %s's job ended; requeued %s", pool.name, worker_id, released)
        recorded = sum(self._failed_start(pool, e) for e in view.failed_starts)
        if view.gone_workers:  # read them back as ended: a quick end counts this cycle
            self.mirror.update([self.client.worker(w) for w in view.gone_workers])
            workers = self.mirror.workers_of(pool.name)
        recorded += sum(self._quick_end(pool, w) for w in workers)
        blocked = self._preflight(pool)
        history = observed.history
        # The history was read before this cycle recorded its failed starts: they count now.
        failures = [*history.failed_starts, *[now] * recorded]
        breaker = self._breaker(failures, self._last_healthy_registration(workers, history), now)
        alarm = crash_alarm(
            failures,
            now,
            self.settings.manager.breaker_window,
            self.settings.manager.breaker_failures,
        )
        submitted = observed.submitted  # this rolling hour's, refused submissions not counted
        budgets = self._budgets(pool, view, now)
        burning = len(view.starting) + len(view.registered)  # elements running now
        rules = self._rules(pool)
        obs = Observation(
            now=now,
            claimable=claimable.count,
            claimable_slots=claimable.slots,
            est_duration=est,
            unconfirmed=view.unconfirmed,
            pending=len(view.pending),
            starting=len(view.starting),
            registered=len(view.registered),
            leaving_soon=view.leaving_soon,
            control=info.control.value if info else "continue",
            max_workers_override=info.max_workers_override if info else None,
            breaker=breaker,
            blocked=blocked,
            window=active_window(pool_windows(pool.schedule, pool.max_workers), now),
            submit_allowance=max(0, pool.submit_ceiling - submitted),
            alarm=alarm,
            budgets=budgets,
        )
        decision = self.decide(pool, obs)
        previous = self.last.get(pool.name)
        if decision.state == PoolState.BUDGET_EXHAUSTED and (
            previous is None or previous.state != PoolState.BUDGET_EXHAUSTED
        ):
            spent = "; ".join(b.describe() for b in budgets if b.allowance == 0)
            log.warning("pool %s: budget exhausted, submitting nothing: %s", pool.name, spent)
            self._event("pool.budget_exhausted", f"{pool.name} {spent}")
        self._act(pool, decision, view, info)
        wait = estimate.queue_wait(history.queue_waits)
        self._record(
            pool,
            decision,
            asdict(obs),
            list(decision.reasons),
            extra={
                "queue_wait": wait,
                "cap": effective_bounds(rules, obs)[1],
                "submitted_last_hour": submitted,
                "max_submit_per_hour": pool.submit_ceiling,
                "alarm": alarm,
                "preflight": blocked or "ok",
                "budget": {
                    b.kind: {
                        "limit_hours": b.limit / 3600,
                        "burned_hours": b.burned / 3600,
                        "reserved_hours": b.reserved / 3600,
                        "left_hours": b.left / 3600,
                        "per_worker_hours": b.per_worker / 3600,
                        **_exhaustion(b, burning),
                    }
                    for b in budgets
                },
            },
        )
        self.last[pool.name] = decision
        return decision

    def _act(
        self, pool: PoolConfig, decision: Decision, view: PoolView, info: PoolInfo | None
    ) -> None:
        if decision.submit > 0:
            self.create_compute_service(pool, decision.submit)
        scheduler = self.schedulers[pool.name]
        if decision.cancel_pending and view.pending and not self.dry_run:
            newest = sorted(view.pending, key=lambda e: (e.job_id, e.array_index), reverse=True)
            ids = [e.element_id for e in newest[: decision.cancel_pending]]
            scheduler.cancel(ids, pending_only=True)
            log.info("pool %s: cancelled pending %s", pool.name, ids)
        if info is not None and info.control == Control.EXIT and view.running and not self.dry_run:
            ids = [e.element_id for e in view.running]
            scheduler.cancel(ids)
            log.info("pool %s: drain --cancel-running: cancelled %s", pool.name, ids)

    # ------------------------------------------------------------------ helpers

    def decide(self, pool: PoolConfig, obs: Observation) -> Decision:
        """The decision on one observation; the simulator's `decide` must agree (tested on a
        recorded sequence)."""
        return decide(self._rules(pool), obs)

    def _rules(self, pool: PoolConfig) -> PoolRules:
        return rules_from_pool(pool, self.schedulers[pool.name].max_array_size)

    def _duration(
        self, pool: PoolConfig, backlog: Sequence[Backlog], stats_of: Sequence[QueueStats]
    ) -> float:
        counts = {b.queue: b.count for b in backlog}
        known = {s.queue: s for s in stats_of}
        per_queue = []
        for queue in pool.queues:
            stats = known[queue]
            duration = estimate.task_duration(stats.recent_durations, pool.task_duration_prior)
            per_queue.append((duration, counts.get(queue, 0)))
        default = max((d for d, _ in per_queue), default=pool.task_duration_prior)
        return estimate.blended_duration(per_queue, default)

    def _breaker(
        self, failures: Sequence[float], last_registration: float | None, now: float
    ) -> str:
        cfg = self.settings.manager
        return breaker_state(
            failures, last_registration, now, cfg.breaker_failures, cfg.breaker_cooldown
        )

    def _reconcile(
        self, sub: Submission, elements: list[ElementStatus], view: PoolView, now: float
    ) -> None:
        """Bring a submission's record in line with what the scheduler shows for its tag."""
        age = now - sub.created_at
        if sub.state == SubmissionState.INTENT:
            if elements:
                job_ids = sorted({e.job_id for e in elements})
                self.client.update_submission(
                    sub.tag,
                    SubmissionUpdate(
                        state=SubmissionState.CONFIRMED,
                        job_ids=job_ids,
                        detail="found by tag after an uncertain sbatch",
                    ),
                )
                return
            if age > INTENT_TIMEOUT:
                self.client.update_submission(
                    sub.tag,
                    SubmissionUpdate(
                        state=SubmissionState.FAILED, detail="never appeared in the scheduler"
                    ),
                )
                return
            view.unconfirmed += sub.count  # may exist: it counts against the max
            return
        if elements and all(e.terminal for e in elements):
            self.client.update_submission(sub.tag, SubmissionUpdate(state=SubmissionState.ENDED))
        elif not elements and age > 60:
            self.client.update_submission(
                sub.tag,
                SubmissionUpdate(
                    state=SubmissionState.ENDED, detail="no longer listed by the scheduler"
                ),
            )

    def _failed_start(self, pool: PoolConfig, element_id: str) -> bool:
        """Record (once) and cancel an element that failed to start a worker; True if new."""
        if element_id in self.counted_failures:
            return False
        self.counted_failures.add(element_id)
        log.warning("pool %s: element %s failed to start a worker", pool.name, element_id)
        self.client.add_event("pool.failed_start", f"{pool.name} {element_id}")
        if not self.dry_run:
            try:
                self.schedulers[pool.name].cancel([element_id])
            except SchedulerError as exc:
                log.warning("could not cancel %s: %s", element_id, exc)
        return True

    def _quick_end(self, pool: PoolConfig, worker: Worker) -> bool:
        """A worker that registered, did no task and ended within crash_seconds for no planned
        reason (crashed, lost, error) counts as a failed start: registering is not enough to
        be healthy. Recorded once (the event's id is its worker's); True if recorded now."""
        if worker.ended_at is None or worker.tasks_done or worker.id in self.counted_failures:
            return False
        life = worker.ended_at - worker.started_at
        if life > self.settings.manager.crash_seconds or worker.end_reason in PLANNED_ENDS:
            return False
        self.counted_failures.add(worker.id)
        log.warning(
            "pool %s: worker %s ended %.0fs after registering without a task (%s)",
            pool.name, worker.id, life, worker.end_reason or "no reason",
        )  # fmt: skip
        self.client.add_event("pool.failed_start", f"{pool.name} {worker.id}")
        return True

    def _last_healthy_registration(
        self, workers: Sequence[Worker], history: PoolHistory
    ) -> float | None:
        """What closes the breaker: the last registration of a worker that did not end at once
        without a task. Registering alone does not prove a pool healthy (a crash loop of workers
        that register would otherwise never open it). Workers are listed for HISTORY_WINDOW,
        longer than the breaker's window, so an older registration changes nothing."""
        quick = {w.id for w in workers if w.id in self.counted_failures}
        healthy = [w.started_at for w in workers if w.submission and w.id not in quick]
        if healthy:
            return max(healthy)
        return None if quick else history.last_registration

    def _budgets(self, pool: PoolConfig, view: PoolView, now: float) -> tuple[Budget, ...]:
        """`[pools.budget]` measured: burn from the store's worker records of the pool
        (registration to end, clipped to the window; so a restart forgets nothing), and the
        worst case still to come from what is in flight (pending, unconfirmed and starting
        elements: a whole wall time each; registered workers: until their job's end)."""
        cfg = pool.budget
        if cfg is None or (cfg.core_hours is None and cfg.gpu_hours is None):
            return ()
        wall = pool.slurm.wall_seconds
        start = now - cfg.window
        workers = self.client.list_workers(pool=pool.name, since=start - wall)
        seconds = 0.0
        for worker in workers:
            live = worker.state.value in LIVE_WORKER_STATES
            end = worker.ended_at or (now if live else worker.last_heartbeat)
            seconds += max(0.0, min(end, now) - max(worker.started_at, start))
        waiting = view.unconfirmed + len(view.pending) + len(view.starting)
        ahead = waiting * wall + sum(
            max(0.0, (w.expected_end or w.started_at + wall) - now) for w in view.registered
        )
        out = []
        for kind, hours, per in (
            ("core", cfg.core_hours, pool.slurm.cpus_per_task),
            ("gpu", cfg.gpu_hours, gpus_of(pool.slurm)),
        ):
            if hours is not None and per > 0:
                out.append(Budget(kind, hours * 3600, per * seconds, per * ahead, per * wall, per))
        return tuple(out)

    def _preflight(self, pool: PoolConfig) -> str | None:
        """The scheduler's own test of the pool's real job script, at start and every
        preflight_interval: None when it passes, else the scheduler's message."""
        now = self.clock()
        due, blocked = self.preflight.get(pool.name, (0.0, None))
        if pool.name in self.preflight and now < due:
            return blocked
        tag = f"{self.name}.{pool.name}.{int(now)}.test"  # no longer than a real submission's
        count = max(1, min(pool.max_workers, pool.max_submit_per_cycle))
        try:
            token_file = worker_token_file(self.settings, pool.name)  # its path: nothing created
            job = render(pool, self.settings, tag, count, token_file)
            self.schedulers[pool.name].test_submit(job.script, count, tag)
            refusal = None
        except PreflightUnsupported as exc:
            log.warning("pool %s: no pre-flight check: %s", pool.name, exc)
            self.preflight[pool.name] = (now + self.settings.manager.preflight_interval, None)
            return None
        except TransientSchedulerError as exc:
            log.warning("pool %s: pre-flight could not ask the scheduler: %s", pool.name, exc)
            self.preflight[pool.name] = (now + PREFLIGHT_RETRY, blocked)
            return blocked
        except (SchedulerError, ConfigError) as exc:
            refusal = str(exc)
        self.preflight[pool.name] = (now + self.settings.manager.preflight_interval, refusal)
        if refusal is not None:
            log.error("pool %s: pre-flight failed, submitting nothing: %s", pool.name, refusal)
            self._event("pool.preflight_failed", f"{pool.name} {refusal}")
        elif blocked is not None:
            log.info("pool %s: pre-flight passes again", pool.name)
            self._event("pool.preflight_passed", pool.name)
        return refusal

    def _event(self, kind: str, detail: str) -> None:
        if self.dry_run:
            self.out(f"[dry-run] event {kind}: {detail}")
            return
        self.client.add_event(kind, detail[:4000])

    def _fail(self, pool: PoolConfig, tag: str, why: str) -> None:
        log.error("pool %s: submission %s failed: %s", pool.name, tag, why)
        self.client.update_submission(
            tag, SubmissionUpdate(state=SubmissionState.FAILED, detail=why[:4000])
        )
        self.counted_failures.add(tag)
        self.client.add_event("pool.failed_start", f"{pool.name} {tag}")

    def _worker_token(self, pool: PoolConfig) -> Path:
        """The pool's worker token file (0600), created through the API when missing."""
        path = worker_token_file(self.settings, pool.name)
        if path.exists() or self.dry_run:
            return path
        try:
            reply = self.client.create_token(Role.WORKER, pool.queues, f"workers of {pool.name}")
        except ClientError as exc:
            raise ConfigError(
                [
                    f"pools.{pool.name}: no worker token at {path} and this manager's token may "
                    f"not create one ({exc}); run: hpcscale token create --role worker --queues "
                    f"{','.join(pool.queues)} --output {path}"
                ]
            ) from exc
        write_secret(path, reply.token)
        return path

    def _record(
        self,
        pool: PoolConfig,
        decision: Decision | None,
        obs: dict[str, object],
        reasons: list[str],
        extra: dict[str, object] | None = None,
    ) -> None:
        data: dict[str, object] = {
            "reasons": reasons,
            "observation": obs,
            "cycle_seconds": round(time.monotonic() - self.cycle_started, 4),
            "scheduler_seconds": round(self.scheduler_seconds, 4),
            **(extra or {}),
        }
        if decision is not None:
            data.update(
                desired=decision.desired,
                submit=decision.submit,
                cancel_pending=decision.cancel_pending,
                state=decision.state.value,
                needed=decision.needed,
                in_flight=decision.in_flight,
            )
        else:
            data.update(state="degraded", submit=0)
        if self.dry_run:
            self.out(f"pool {pool.name}: " + "; ".join(reasons))
            return
        record = DecisionRecord(manager=self.name, pool=pool.name, ts=self.clock(), data=data)
        self.records.append(record)

    def _flush_records(self) -> None:
        """The cycle's decisions in one request, after every pool has acted."""
        records, self.records = self.records, []
        if records:
            try:
                self.client.record_decisions(records)
            except HpcscaleError as exc:
                log.warning("could not record the decisions: %s", exc)

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


def _exhaustion(budget: Budget, running: int) -> dict[str, float | None]:
    """The current burn rate (resource-hours per hour: what the running elements hold) and the
    hours until the budget is burned at that rate (None while nothing runs)."""
    rate = float(running * budget.resources)
    remaining = (budget.limit - budget.burned) / 3600
    return {
        "rate_per_hour": rate,
        "hours_to_exhaustion": max(0.0, remaining) / rate if rate > 0 else None,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True
