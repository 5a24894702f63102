"""What a manager records and reads: submissions, registration, decisions, one cycle's view."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from hpcscale.models.common import (
    MAX_DATA_DEPTH,
    MAX_INT32,
    MAX_INT64,
    NO_NUL,
    QueueName,
    Text,
    _Wire,
)
from hpcscale.models.tasks import Backlog, QueueStats
from hpcscale.models.workers import PoolInfo, Worker


class BreakerState(StrEnum):
    """A pool's circuit breaker over failed starts (invariant 4)."""

    CLOSED = "closed"
    OPEN = "open"  # repeated failed starts: submit nothing until the cooldown ends
    PROBE = "probe"  # cooldown over: one worker tests the waters


class SubmissionState(StrEnum):
    INTENT = "intent"  # recorded before sbatch: may or may not exist in the scheduler
    CONFIRMED = "confirmed"  # job ids known
    ENDED = "ended"  # every element has ended
    FAILED = "failed"  # the scheduler refused it, or it never appeared


OPEN_SUBMISSION_STATES = frozenset({SubmissionState.INTENT, SubmissionState.CONFIRMED})
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
]


class SubmissionIntent(_Wire):
    tag: Tag
    manager: QueueName
    pool: QueueName
    count: int = Field(ge=1, le=1_000_000)


class SubmissionUpdate(_Wire):
    state: SubmissionState
    job_ids: list[Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]] | None = Field(
        default=None, max_length=10_000
    )
    count: int | None = Field(default=None, ge=0, le=1_000_000)
    detail: Text | None = None


class Submission(_Wire):
    tag: str
    manager: str
    pool: str
    count: int
    job_ids: list[str]
    state: SubmissionState
    created_at: float
    updated_at: float
    detail: str | None


class ManagerRegistration(_Wire):
    instance: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
    host: Text = ""
    pools: dict[QueueName, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict, description="pool name -> min_workers", max_length=1000
    )
    stale_after: float = Field(default=90.0, gt=0, le=86400)
    pid: int = Field(default=0, ge=0, le=MAX_INT32)
    takeover_from: Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)] | None = Field(
        default=None,
        description="an instance the caller found dead (same host, its pid gone): replace it now",
    )


class ManagerInfo(_Wire):
    name: str
    instance: str
    host: str
    pid: int = 0
    started_at: float
    heartbeat_at: float


class DecisionRecord(_Wire):
    manager: QueueName
    pool: QueueName
    ts: float = 0.0
    data: dict[str, object] = Field(
        default_factory=dict, description=f"free-form, at most {MAX_DATA_DEPTH} levels deep"
    )

    @field_validator("data")
    @classmethod
    def _shallow(cls, data: dict[str, object]) -> dict[str, object]:
        """Stored as given and served back: deeper than pydantic serializes (~255 levels) it
        would break every later listing of the pool's decisions, so it is refused here."""
        level: list[dict[str, object] | list[object]] = [data]
        for depth in range(1, MAX_DATA_DEPTH + 2):
            level = [
                child
                for node in level
                for child in (node.values() if isinstance(node, dict) else node)
                if isinstance(child, dict | list)
            ]
            if not level:
                return data
            if depth > MAX_DATA_DEPTH:
                break
        raise ValueError(f"nested deeper than the limit of {MAX_DATA_DEPTH} levels")


class DecisionBatch(_Wire):
    """A cycle's decisions, one a pool, recorded in one request and transaction."""

    records: list[DecisionRecord] = Field(min_length=1, max_length=256)


class PoolHistory(_Wire):
    """What the manager measures over time for one pool, rebuilt from the store each cycle."""

    queue_waits: list[float] = Field(description="seconds from submission to registration")
    failed_starts: list[float] = Field(description="times of failed starts in the window")
    last_registration: float | None


class PoolQuestion(_Wire):
    """What a manager asks the store about one of its pools each cycle."""

    pool: QueueName
    queues: list[QueueName] = Field(max_length=64)
    history_since: float = Field(ge=0, description="failed starts since (the breaker's window)")
    submitted_since: float = Field(ge=0, description="workers asked since (the hourly ceiling)")
    max_tasks: int = Field(
        default=0, ge=0, le=MAX_INT32, description="list the live workers that started this many"
    )
    slots: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="the pool's worker slots: its claimable work leaves out wider tasks (issue 16)",
    )


MAX_OBSERVED_QUEUES = 1024  # distinct queues of one observe: a range of ix_tasks_ended each


class ObserveRequest(_Wire):
    pools: list[PoolQuestion] = Field(max_length=256)
    since: float = Field(ge=0, description="workers that ended are listed if started since")
    cursor: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INT64,
        description="list only the workers changed since this (the previous reply's cursor)",
    )

    @field_validator("pools")
    @classmethod
    def _few_queues(cls, pools: list[PoolQuestion]) -> list[PoolQuestion]:
        if len({q for p in pools for q in p.queues}) > MAX_OBSERVED_QUEUES:
            raise ValueError(f"more than {MAX_OBSERVED_QUEUES} distinct queues")
        if len({p.pool for p in pools}) < len(pools):
            raise ValueError("a pool is asked about twice")
        return pools


class HeldTasks(_Wire):
    """Waiting tasks of one queue wider than a pool's workers: the pool sizes on none of them."""

    queue: str
    count: int
    fewest_slots: int = Field(description="the narrowest of them")
    most_slots: int = Field(description="the widest of them")


class PoolObservation(_Wire):
    """`claimable` and `held` only when the questions gave the pools' slots: an older manager,
    which does not, gets a reply without them (UNASKED)."""

    pool: str
    history: PoolHistory
    submitted: int = Field(description="workers asked since submitted_since, refused ones not")
    spent: list[str] = Field(description="live workers that started max_tasks tasks")
    claimable: list[Backlog] | None = Field(
        default=None, description="the pool's queues' claimable tasks its workers can run"
    )
    held: list[HeldTasks] | None = Field(
        default=None, description="per queue, the waiting tasks wider than the pool's workers"
    )


# What a reply leaves out when no question gave slots: an older manager refuses unknown fields.
UNASKED = {"per_pool": {"__all__": {"claimable", "held"}}}


class CycleView(_Wire):
    """All a manager's cycle reads, in one request and one read transaction of the store.

    `workers` and `submissions` are change feeds: a worker's row comes again when it registers
    or its state, end or deadline changes, not at heartbeats, claims or results; its
    tasks_done and busy_slots are as of that change (final once it has ended). The workers at
    max_tasks come per pool (`spent`) instead."""

    backlog: list[Backlog]
    denied_hosts: list[str]
    submissions: list[Submission] = Field(
        description="the manager's open submissions; with a cursor, its submissions changed "
        "since (ended and failed ones too: they are no longer open)"
    )
    pools: list[PoolInfo]
    queue_stats: list[QueueStats]
    per_pool: list[PoolObservation]
    workers: list[Worker]
    cursor: int = Field(description="send it back to get only the workers changed since")
    feed: str = Field(description="what the cursor is valid in: when it changes, read them all")


class WorkerGone(_Wire):
    reason: Text = "job ended"
    # False when the site took the job back (requeued, preempted): not the task's doing, so
    # its tasks get their attempt back, as a release gives it.
    attempt_used: bool = True


class WaitReply(_Wire):
    seq: int
    changed: bool


class EventRequest(_Wire):
    """An event the manager records (pool.* and manager.* kinds only)."""

    kind: Annotated[str, StringConstraints(pattern=r"^(pool|manager|submission)\.[a-z_.]{1,48}$")]
    detail: Text | None = None
