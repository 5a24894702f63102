"""The view of a pool's elements: the scheduler's elements joined with the store's submissions
and workers.

This join is where the hard max is kept or lost (invariant 3): an element counted twice submits
too few, one not counted at all submits too many. So it is pure over plain values, apart from
the requests that act on what it finds (the loop makes those), and the rules it applies are
stated once here: what a pending, starting, running or ended element counts as; when an intent
is confirmed by its tag or given up; which elements failed to start a worker and which workers
ended too quickly to count as healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hpcscale.models import (
    LIVE_WORKER_STATES,
    StopReason,
    Submission,
    SubmissionState,
    SubmissionUpdate,
    Worker,
    WorkerState,
)
from hpcscale.policy import leaving_soon
from hpcscale.schedulers import NORMAL_END, ElementState, ElementStatus

# Ends the site made (preemption, a node that died): a worker's normal end, never a failed
# start. A requeued element (back to pending, same id) is one too.
SITE_ENDS = frozenset({ElementState.PREEMPTED, ElementState.NODE_FAIL})
SITE_ENDED = "ended by the site"  # how such a worker's end reads in the store (end_reason)
JOB_ENDED = "its job ended"
INTENT_TIMEOUT = 180.0  # an intent the scheduler never showed by then did not happen
UNLISTED_AFTER = 60.0  # a confirmed submission the scheduler stopped listing has ended
# Why a worker may end at once without a task and still be healthy: ends it chose
# (invariant 6), never failed starts however early. UNREACHABLE is not one.
PLANNED_ENDS = frozenset(
    {
        StopReason.IDLE,
        StopReason.DRAIN,
        StopReason.EXIT,
        StopReason.SIGNAL,
        StopReason.MAX_TASKS,
        StopReason.MAX_TIME,
        StopReason.WALLTIME,
    }
)


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
    gone_why: dict[str, str] = field(default_factory=dict)  # worker id -> its end, as recorded
    # (job id, index) of elements the site ended or requeued: their workers' ends are no
    # quick ends, whatever the store recorded
    site_ended: set[tuple[str | None, int | None]] = field(default_factory=set)
    # workers whose job the site took back (requeued, preempted): their tasks keep the attempt
    # (a node that failed still costs one: a task may be what took its node down)
    attempt_kept: set[str] = field(default_factory=set)
    # (tag, change): the submission records to bring in line with what the scheduler shows
    updates: list[tuple[str, SubmissionUpdate]] = field(default_factory=list)


@dataclass
class StartWatch:
    """What the manager remembers of starts between cycles, in memory only: when each element
    was first seen running without a worker (start_grace counts from then), and the failed
    starts already counted (element ids, worker ids of quick ends, tags of refused submissions)
    so that each counts once. A restarted manager reloads the counted ones from the store's
    `pool.failed_start` events."""

    first_running: dict[str, float] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)
    # when each element was last seen pending: a worker that registered before belongs to an
    # earlier run of a requeued element (same id), not to the run now starting
    pending_seen: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolFacts:
    """What the join needs besides the three lists: the pool's rules and this cycle's store."""

    now: float
    start_grace: float
    max_tasks: int
    spent: frozenset[str]  # workers at max_tasks (the store's, of this cycle)
    est_duration: float
    read_at: float | None = None  # when the scheduler was read (default: now)


def reconcile(
    sub: Submission, elements: Sequence[ElementStatus], now: float
) -> SubmissionUpdate | None:
    """The change that brings a submission's record in line with what the scheduler shows for
    its tag, or None. An intent found by its tag is confirmed: an sbatch that timed out but
    created the job is not submitted twice."""
    age = now - sub.created_at
    if sub.state == SubmissionState.INTENT:
        if elements:
            return SubmissionUpdate(
                state=SubmissionState.CONFIRMED,
                job_ids=sorted({e.job_id for e in elements}),
                detail="found by tag after an uncertain sbatch",
            )
        if age > INTENT_TIMEOUT:
            return SubmissionUpdate(
                state=SubmissionState.FAILED, detail="never appeared in the scheduler"
            )
        return None
    if elements and all(e.terminal for e in elements):
        return SubmissionUpdate(state=SubmissionState.ENDED)
    if not elements and age > UNLISTED_AFTER:
        return SubmissionUpdate(
            state=SubmissionState.ENDED, detail="no longer listed by the scheduler"
        )
    return None


def view_pool(
    elements: Sequence[ElementStatus],
    submissions: Sequence[Submission],
    workers: Sequence[Worker],
    facts: PoolFacts,
    watch: StartWatch,
) -> PoolView:
    """Join the pool's submissions, their elements' states and the registered workers.
    `workers` follow only their state: which reached max_tasks comes in `facts.spent`."""
    view = PoolView()
    by_tag: dict[str, list[ElementStatus]] = {}
    for element in elements:
        by_tag.setdefault(element.tag, []).append(element)
    for sub in submissions:
        update = reconcile(sub, by_tag.get(sub.tag, []), facts.now)
        if update is not None:
            view.updates.append((sub.tag, update))
        elif sub.state == SubmissionState.INTENT:
            view.unconfirmed += sub.count  # may exist: it counts against the max
    live = {(w.job_id, w.array_index): w for w in workers}
    ever = set(live)
    for element in elements:
        if element.state == ElementState.PENDING:
            _pending(element, live, facts, watch, view)
        elif element.terminal:
            _ended(element, live, ever, watch, view)
        else:  # running, completing, unknown: holding a slot
            _holding(element, live, facts, watch, view)
    return view


def _pending(
    element: ElementStatus,
    live: dict[tuple[str | None, int | None], Worker],
    facts: PoolFacts,
    watch: StartWatch,
    view: PoolView,
) -> None:
    """A pending element; one that was running before has been requeued (same id, back to
    pending: preemption, `scontrol requeue`, a node failure): its next run gets a fresh
    start_grace, and a worker of its last run still alive in the store is gone (its tasks back
    now). Only a worker that registered before the scheduler was read: one registering since
    may be the new run's."""
    view.pending.append(element)
    key = (element.job_id, element.array_index)
    watch.first_running.pop(element.element_id, None)
    watch.pending_seen[element.element_id] = facts.now
    worker = live.get(key)
    read_at = facts.now if facts.read_at is None else facts.read_at
    if worker is None or worker.started_at >= read_at:
        return
    view.site_ended.add(key)
    if worker.state.value in LIVE_WORKER_STATES:
        view.gone_workers.append(worker.id)
        view.gone_why[worker.id] = f"{SITE_ENDED}: requeued ({element.reason or 'pending'})"
        view.attempt_kept.add(worker.id)


def _ended(
    element: ElementStatus,
    live: dict[tuple[str | None, int | None], Worker],
    ever: set[tuple[str | None, int | None]],
    watch: StartWatch,
    view: PoolView,
) -> None:
    """An ended element: its worker, if the store still has it alive, is gone (its tasks go
    back this cycle, not a lease TTL later); one that never had a worker and ended badly
    failed to start."""
    key = (element.job_id, element.array_index)
    watch.first_running.pop(element.element_id, None)
    watch.pending_seen.pop(element.element_id, None)
    by_site = element.state in SITE_ENDS
    if by_site:
        view.site_ended.add(key)
    worker = live.get(key)
    if worker is not None and worker.state.value in LIVE_WORKER_STATES:
        view.gone_workers.append(worker.id)
        view.gone_why[worker.id] = f"{SITE_ENDED}: {element.state.value}" if by_site else JOB_ENDED
        if element.state is ElementState.PREEMPTED:
            view.attempt_kept.add(worker.id)
    if (
        element.state not in NORMAL_END
        and not by_site
        and key not in ever
        and element.element_id not in watch.counted
    ):
        view.failed_starts.append(element.element_id)


def _holding(
    element: ElementStatus,
    live: dict[tuple[str | None, int | None], Worker],
    facts: PoolFacts,
    watch: StartWatch,
    view: PoolView,
) -> None:
    """An element holding a slot: registered when its worker lives, else starting (and a
    failed start once it has run start_grace without one). A worker of an earlier run of a
    requeued element is not this run's; one of this run that has ended leaves its element
    finishing, not failing to start."""
    view.running.append(element)
    worker = live.get((element.job_id, element.array_index))
    if worker is not None and worker.started_at < watch.pending_seen.get(element.element_id, 0):
        worker = None  # an earlier run's
    if worker is not None and worker.state.value in LIVE_WORKER_STATES:
        watch.first_running.pop(element.element_id, None)
        view.registered.append(worker)
        # The store lists the workers at max_tasks; their exact count is not needed.
        started = facts.max_tasks if worker.id in facts.spent else 0
        if leaving_soon(
            facts.now, worker.expected_end, worker.state == WorkerState.DRAINING,
            started, facts.max_tasks, facts.est_duration,
        ):  # fmt: skip
            view.leaving_soon += 1
        return
    view.starting.append(element)
    if worker is not None:  # its worker has ended: the job is finishing, unless it lingers
        if facts.now - (worker.ended_at or facts.now) > facts.start_grace:
            view.failed_starts.append(element.element_id)
        return
    first = watch.first_running.setdefault(element.element_id, facts.now)
    if facts.now - first > facts.start_grace:
        view.failed_starts.append(element.element_id)


def quick_end(worker: Worker, crash_seconds: float, counted: set[str]) -> float | None:
    """How long the worker lived, if it counts as a failed start not yet counted: it
    registered, did no task and ended within crash_seconds for no planned reason (crashed,
    lost, error). Registering is not enough to be healthy. Counted once (the event's id is its
    worker's)."""
    if worker.ended_at is None or worker.tasks_done or worker.id in counted:
        return None
    if (worker.end_reason or "").startswith(SITE_ENDED):
        return None  # preempted, requeued or its node died: not the worker's failure
    life = worker.ended_at - worker.started_at
    if life > crash_seconds or worker.end_reason in PLANNED_ENDS:
        return None
    return life
