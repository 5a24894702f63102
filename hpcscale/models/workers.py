"""Workers, their hosts and their pools' controls on the wire; the event log's entries; tokens."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from hpcscale.models.common import (
    MAX_INT32,
    NO_NUL,
    QueueName,
    Role,
    TaskId,
    Text,
    _Wire,
)


class WorkerRegistration(_Wire):
    pool: QueueName
    queues: list[QueueName] = Field(default_factory=lambda: ["default"], min_length=1)
    host: Text = ""
    slots: int = Field(default=1, ge=1, le=4096)
    job_id: Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)] | None = None
    array_index: int | None = Field(default=None, ge=0, le=MAX_INT32)
    submission: Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)] | None = None
    expected_end: float | None = None
    job_age: float | None = Field(
        default=None,
        ge=0,
        le=366 * 86400,
        description="seconds since the job started, by the node's clock, as the worker registers:"
        " its paid start-up (the sizing rule measures it); older workers send none",
    )


class WorkerState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    ENDED = "ended"
    LOST = "lost"


# A worker that may still claim: its job holds a slot.
LIVE_WORKER_STATES = (WorkerState.ACTIVE.value, WorkerState.DRAINING.value)


class StopReason(StrEnum):
    """Why a worker ended, as it tells the server when it deregisters (invariant 6)."""

    MAX_TASKS = "max_tasks"
    MAX_TIME = "max_time"
    WALLTIME = "walltime"  # no time left in the job for another task
    IDLE = "idle"  # max_empty_claims empty claims while the pool is above its floor
    DRAIN = "drain"
    EXIT = "exit"
    SIGNAL = "signal"  # SIGTERM, SIGINT, or SIGUSR1 close to the end
    UNREACHABLE = "unreachable"  # the server could not be reached for unreachable_timeout


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
    # When its job started (the store's clock: registration less job_age); left out of the
    # reply when unknown, so a worker of an older release still reads its registration.
    job_started_at: float | None = Field(default=None, exclude_if=lambda v: v is None)


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
