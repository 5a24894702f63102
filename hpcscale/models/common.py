"""Bounds every wire type shares, the task and role enums, and the wire base class.

They are the API's wire format too, so every bound here is a bound on what a client may send.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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
    READER = "reader"  # monitoring: /metrics and status, never task contents; changes nothing


class _Wire(BaseModel):
    # No NaN or Infinity: JSON has neither, they would come back as null where the schema says
    # a number, and a NaN where the store wants a value is a NOT NULL violation.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
