"""Value types shared by the store, the server, the client, the manager and the worker.

They are the API's wire format too, so every bound here is a bound on what a client may send.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# No NUL in any string: argv and environment strings cannot hold one, and PostgreSQL text cannot
# store one (it would be a 500 there, and pass on SQLite).
NO_NUL = r"^[^\x00]*$"
QueueName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
Text = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]
MAX_BATCH = 10_000
# The largest integers the stores keep: ids and fences are 64-bit (SQLite INTEGER, PostgreSQL
# BIGINT), counts 32-bit (PostgreSQL INTEGER). A bigger number names nothing stored: a 422
# naming the field, not a database overflow.
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
TaskId = Annotated[int, Field(ge=1, le=MAX_INT64)]
# A command's argv in all (UTF-8, a NUL after each string as exec counts them): the kernel's
# ARG_MAX (2 MiB by default) must also hold the environment, so a bigger argv could never run.
MAX_ARGV_BYTES = 1024 * 1024
MAX_DATA_DEPTH = 32  # DecisionRecord.data
WorkerId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]


class TaskState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED}
)


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    WORKER = "worker"
    SUBMITTER = "submitter"


class _Wire(BaseModel):
    # No NaN or Infinity: JSON has neither, they would come back as null where the schema says
    # a number, and a NaN where the store wants a value is a NOT NULL violation.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TaskSpec(_Wire):
    """What a user submits: an argv command, never a shell string."""

    command: list[Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL)]] = Field(
        min_length=1, max_length=4096
    )
    env: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)], Text
    ] = Field(default_factory=dict, max_length=1024)
    cwd: Text | None = None
    queue: QueueName = "default"
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    slots: int = Field(default=1, ge=1, le=4096)
    max_attempts: int = Field(default=3, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0, le=365 * 86400)

    @field_validator("command")
    @classmethod
    def _argv_fits(cls, command: list[str]) -> list[str]:
        size = sum(len(arg.encode()) + 1 for arg in command)
        if size > MAX_ARGV_BYTES:
            raise ValueError(f"argv is {size} bytes in all, over the limit of {MAX_ARGV_BYTES}")
        return command


class SubmitRequest(_Wire):
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_BATCH)
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL)] | None
    ) = None


class SubmitReply(_Wire):
    ids: list[int]
    duplicate: bool = False


class Task(_Wire):
    id: int
    queue: str
    priority: int
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    slots: int
    max_attempts: int
    timeout: float | None
    attempts: int
    state: TaskState
    lease_owner: str | None
    lease_expiry: float | None
    fence: int
    exit_code: int | None
    output_tail: str | None
    reason: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None


class Backlog(_Wire):
    """Claimable work in one queue, what the manager sizes pools from."""

    queue: str
    count: int
    slots: int
    oldest_age: float


class QueueStats(_Wire):
    """Recent run times in a queue (seconds, newest first) for throughput estimates."""

    queue: str
    recent_durations: list[float]
    mean: float | None
    p90: float | None


class ClaimRequest(_Wire):
    queues: list[QueueName] = Field(min_length=1, max_length=256)
    max_tasks: int = Field(default=1, ge=1, le=1000)
    free_slots: int = Field(default=1, ge=1, le=4096)


class ClaimedTask(_Wire):
    id: int
    queue: str
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    slots: int
    timeout: float | None
    attempts: int
    fence: int
    lease_expiry: float


class TaskResult(_Wire):
    task_id: TaskId
    fence: int = Field(ge=0, le=MAX_INT64)
    success: bool
    exit_code: int | None = Field(default=None, ge=-255, le=255)
    output_tail: Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL)] | None = None
    reason: Text | None = None
    retryable: bool = Field(
        default=True, description="false: the task cannot succeed by retrying (ends `failed`)"
    )


class ResultsRequest(_Wire):
    results: list[TaskResult] = Field(min_length=1, max_length=MAX_BATCH)


class ResultOutcome(_Wire):
    task_id: int
    outcome: Literal["succeeded", "requeued", "dead", "failed", "stale"]


class ResultsReply(_Wire):
    outcomes: list[ResultOutcome]


class Lease(_Wire):
    task_id: TaskId
    fence: int = Field(ge=0, le=MAX_INT64)


class ReleaseRequest(_Wire):
    """Leases to give back; None gives back every lease the worker holds."""

    leases: list[Lease] | None = Field(default=None, max_length=MAX_BATCH)
    reason: Text = "released"
    attempt_used: bool = Field(
        default=False,
        description="count the attempt (a run cut short by the wall time): a task too long for "
        "any worker then ends `dead` instead of being retried forever",
    )


class ReleaseReply(_Wire):
    released: list[int]


class CancelRequest(_Wire):
    ids: list[TaskId] = Field(min_length=1, max_length=MAX_BATCH)


class CancelReply(_Wire):
    cancelled: list[int]


class WorkerRegistration(_Wire):
    pool: QueueName
    queues: list[QueueName] = Field(default_factory=lambda: ["default"], min_length=1)
    host: Text = ""
    slots: int = Field(default=1, ge=1, le=4096)
    job_id: Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)] | None = None
    array_index: int | None = Field(default=None, ge=0, le=MAX_INT32)
    submission: Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)] | None = None
    expected_end: float | None = None


class WorkerState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    ENDED = "ended"
    LOST = "lost"


# A worker that may still claim: its job holds a slot.
LIVE_WORKER_STATES = (WorkerState.ACTIVE.value, WorkerState.DRAINING.value)


class Worker(_Wire):
    id: str
    pool: str
    queues: list[str]
    host: str
    slots: int
    job_id: str | None
    array_index: int | None
    submission: str | None
    started_at: float
    expected_end: float | None
    last_heartbeat: float
    state: WorkerState
    tasks_done: int
    busy_slots: int
    end_reason: str | None
    ended_at: float | None = None


class HostInfo(_Wire):
    """A worker host as the store judges it: denied claims after failing task after task."""

    host: str
    denied: bool = Field(description="no claims from this host's workers until denied_until")
    denied_until: float | None = None
    fail_streak: int = Field(description="failed tasks in a row (a success resets it)")
    streak_started: float | None = None
    last_failure: float | None = None
    last_detail: str | None = None
    denials: int = 0


class Control(StrEnum):
    """A pool's orders. Workers act on drain and exit; pause only stops new submissions.
    exit is `drain --cancel-running`: the manager also cancels the running workers."""

    CONTINUE = "continue"
    PAUSE = "pause"
    DRAIN = "drain"
    EXIT = "exit"


class HeartbeatRequest(_Wire):
    running: list[TaskId] = Field(default_factory=list, max_length=4096)
    busy_slots: int = Field(default=0, ge=0, le=4096)


class HeartbeatReply(_Wire):
    renewed: list[int]
    lost: list[int] = Field(description="tasks this worker runs whose lease it no longer holds")
    control: Control
    surplus: bool = Field(description="the pool has more live workers than its min_workers")
    lease_ttl: float


class PoolUpdate(_Wire):
    """Set what the store holds about a pool; fields left out stay as they are."""

    control: Control | None = None
    min_workers: int | None = Field(default=None, ge=0, le=1_000_000)
    max_workers: int | None = Field(default=None, ge=0, le=1_000_000)
    manager: Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)] | None = None


class PoolInfo(_Wire):
    name: str
    manager: str | None
    min_workers: int
    control: Control
    max_workers_override: int | None
    updated_at: float


class DeregisterRequest(_Wire):
    reason: Text = "ended"


class Event(_Wire):
    id: int
    ts: float
    kind: str
    task_id: int | None
    worker_id: str | None
    detail: str | None


class TokenRequest(_Wire):
    role: Role
    queues: list[QueueName] | None = Field(default=None, max_length=256)
    name: Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)] = ""


class TokenReply(_Wire):
    token: str
    role: Role
    queues: list[str] | None


class TokenInfo(_Wire):
    id: int
    role: Role
    queues: list[str] | None
    name: str


# ----------------------------------------------------------------------------- the manager


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


class PoolObservation(_Wire):
    pool: str
    history: PoolHistory
    submitted: int = Field(description="workers asked since submitted_since, refused ones not")
    spent: list[str] = Field(description="live workers that started max_tasks tasks")


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


class WaitReply(_Wire):
    seq: int
    changed: bool


class EventRequest(_Wire):
    """An event the manager records (pool.* and manager.* kinds only)."""

    kind: Annotated[str, StringConstraints(pattern=r"^(pool|manager|submission)\.[a-z_.]{1,48}$")]
    detail: Text | None = None
