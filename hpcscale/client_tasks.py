"""The client's task calls and the small Python API on them (a mixin of client.Client, kept
apart so that client.py stays one readable file).

    from hpcscale.client import Client

    with Client.from_config() as client:              # the CLI's config and token
        handles = client.submit(["python", "run.py", "7"], cwd="/scratch/me/project")
        for handle in handles:
            outcome = handle.result(timeout=3600)     # waits; state, exit code, output tail
            print(handle.id, outcome.state, outcome.exit_code, outcome.output_tail)

`submit` takes an argv (one task, keys of TaskSpec as keywords) or a list of TaskSpec; a task
runs in `cwd` (default: this process's directory, as `hpcscale submit` does). What Globus
Compute's futures, dask's and submitit's jobs give: a handle per task that waits.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel

from hpcscale.errors import ClientError
from hpcscale.models import (
    RetryReply,
    RetryRequest,
    SubmitReply,
    SubmitRequest,
    Task,
    TaskCount,
    TaskSpec,
    TaskState,
)

if TYPE_CHECKING:
    from hpcscale.client import Client

ENDED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED})


class WaitTimeout(ClientError):
    """The task had not ended when the wait's timeout passed (it keeps running)."""


@dataclass(frozen=True)
class Outcome:
    """How a task ended: its state, its exit code (None: killed, timed out or never started),
    the tail of its stdout and stderr, and the reason when it did not succeed."""

    state: TaskState
    exit_code: int | None
    output_tail: str | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.state == TaskState.SUCCEEDED


class TaskHandle:
    """One submitted task: ask its state, wait for its end, read its outcome."""

    def __init__(self, client: Client, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id})"

    def task(self) -> Task:
        return self.client.get_task(self.id)

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> Task:
        """The task once ended; WaitTimeout after `timeout` seconds (None: no limit). Polls,
        from `poll` seconds up to 5 s apart."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.task()
            if task.state in ENDED:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {self.id} is still {task.state.value} after {timeout:g}s")
            time.sleep(
                poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            )
            poll = min(5.0, poll * 1.5)

    def result(self, timeout: float | None = None) -> Outcome:
        task = self.wait(timeout)
        return Outcome(task.state, task.exit_code, task.output_tail, task.reason)


class Submitted(list[TaskHandle]):
    """The handles of one submit, in the order given; `.ids` and `.duplicate` as the reply's."""

    duplicate: bool = False

    @property
    def ids(self) -> list[int]:
        return [handle.id for handle in self]


class TaskCalls:
    """Submit (with handles), count and retry tasks."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        retry_for: float | None = None,
    ) -> Any:
        raise NotImplementedError  # client.Client's

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Self:
        """A client as the CLI makes one: the config's [server] url, its token file, its CA."""
        from hpcscale import config
        from hpcscale.tokens import token_for

        settings = config.load(path)
        token = token_for(settings.server.token_file)
        return cls(settings.server.url, token, verify=settings.server.verify)  # type: ignore[call-arg]

    def submit(
        self,
        specs: Sequence[TaskSpec] | Sequence[str],
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Submitted:
        """Submit tasks: a list of TaskSpec, or one task's argv with TaskSpec's keys as keywords
        (its cwd defaults to this process's directory)."""
        if specs and all(isinstance(s, str) for s in specs):
            fields.setdefault("cwd", str(Path.cwd()))
            specs = [TaskSpec(command=[str(s) for s in specs], **fields)]
        key = idempotency_key or uuid.uuid4().hex
        request = SubmitRequest(
            tasks=[s for s in specs if isinstance(s, TaskSpec)], idempotency_key=key
        )
        reply = SubmitReply.model_validate(self._request("POST", "/v1/tasks", body=request))
        handles = Submitted(TaskHandle(self, i) for i in reply.ids)  # type: ignore[arg-type]
        handles.duplicate = reply.duplicate
        return handles

    def count_tasks(
        self, *, state: str | None = None, queue: str | None = None, after: int = 0
    ) -> int:
        params = {k: v for k, v in {"state": state, "queue": queue, "after": after}.items() if v}
        raw = self._request("GET", "/v1/tasks/count", params=params)
        return TaskCount.model_validate(raw).count

    def retry(self, ids: Sequence[int]) -> list[int]:
        """Dead, failed or cancelled tasks back to `waiting`; the ids that went back."""
        raw = self._request("POST", "/v1/tasks/retry", body=RetryRequest(ids=list(ids)))
        return RetryReply.model_validate(raw).retried
