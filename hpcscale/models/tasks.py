"""Tasks on the wire: what a submitter sends, a worker claims and reports, a listing shows."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from hpcscale.models.common import (
    MAX_ARGV_BYTES,
    MAX_BATCH,
    MAX_INT64,
    NO_NUL,
    QueueName,
    TaskId,
    TaskState,
    Text,
    _Wire,
)


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


class RetryRequest(_Wire):
    """Ended tasks to send back to `waiting` (dead, failed or cancelled; others are left)."""

    ids: list[TaskId] = Field(min_length=1, max_length=MAX_BATCH)


class RetryReply(_Wire):
    retried: list[int]


class TaskCount(_Wire):
    count: int
