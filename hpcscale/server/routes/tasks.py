"""Submitting, listing, showing and cancelling tasks."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as FPath
from starlette.exceptions import HTTPException

from hpcscale.config import PoolConfig
from hpcscale.models import (
    MAX_INT64,
    CancelReply,
    CancelRequest,
    QueueName,
    RetryReply,
    RetryRequest,
    SubmitReply,
    SubmitRequest,
    Task,
    TaskCount,
    TaskSpec,
    TaskState,
)
from hpcscale.server.dependencies import AnyReader, Context, StoreDep, Submitter, TaskReader
from hpcscale.server.errors import AUTH_ERRORS, error

router = APIRouter(tags=["tasks"])


@router.post("/v1/tasks", status_code=201, responses=AUTH_ERRORS)
def submit(body: SubmitRequest, _who: Submitter, context: Context, request: Request) -> SubmitReply:
    served: Sequence[PoolConfig] | None = getattr(request.app.state, "served_pools", None)
    if served is not None:  # `serve`: the pools are known, a task none can run is refused
        problems = unrunnable(body.tasks, served)
        if problems:
            raise HTTPException(422, "; ".join(problems))
    ids, duplicate = context.store.submit(body.tasks, body.idempotency_key)
    context.wakeups.new_work()  # this replica's long-polls, and on PostgreSQL every other's
    return SubmitReply(ids=ids, duplicate=duplicate)


@router.get("/v1/tasks", responses=AUTH_ERRORS)
def list_tasks(
    _who: TaskReader,
    store: StoreDep,
    state: TaskState | None = None,
    queue: QueueName | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
) -> list[Task]:
    return store.list_tasks(
        state=state.value if state else None, queue=queue, limit=limit, after_id=after
    )


@router.get("/v1/tasks/count", responses=AUTH_ERRORS)
def count_tasks(
    _who: AnyReader,
    store: StoreDep,
    state: TaskState | None = None,
    queue: QueueName | None = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
) -> TaskCount:
    """How many tasks a listing with these filters would show past id `after`: what a page
    of `tasks` did not show."""
    chosen = state.value if state else None
    return TaskCount(count=store.count_after(state=chosen, queue=queue, after_id=after))


@router.get("/v1/tasks/{task_id}", responses=AUTH_ERRORS | error(404, "no task with this id"))
def show_task(
    task_id: Annotated[int, FPath(ge=1, le=MAX_INT64)], _who: TaskReader, store: StoreDep
) -> Task:
    return store.get_task(task_id)


@router.post("/v1/tasks/cancel", responses=AUTH_ERRORS)
def cancel(body: CancelRequest, _who: Submitter, store: StoreDep) -> CancelReply:
    return CancelReply(cancelled=store.cancel(body.ids))


@router.post("/v1/tasks/retry", responses=AUTH_ERRORS)
def retry(body: RetryRequest, _who: Submitter, context: Context) -> RetryReply:
    """Dead, failed or cancelled tasks back to `waiting`, attempts from zero (a redrive)."""
    retried = context.store.retry(body.ids)
    context.wakeups.new_work()
    return RetryReply(retried=retried)


def unrunnable(specs: Sequence[TaskSpec], pools: Sequence[PoolConfig]) -> list[str]:
    """Why each task no pool can run would wait forever (and make a manager start workers that
    find nothing they can claim): a queue no pool serves, or more slots than any worker of the
    pools serving its queue has. At most a few lines, naming the keys to change."""
    problems: list[str] = []
    for number, spec in enumerate(specs):
        serving = [p for p in pools if spec.queue in p.queues]
        if not serving:
            queues = ", ".join(sorted({q for p in pools for q in p.queues})) or "none"
            problems.append(
                f"tasks.{number}.queue: no pool serves queue {spec.queue!r} (served: {queues})"
            )
        elif spec.slots > max(p.worker.slots for p in serving):
            most = max(serving, key=lambda p: p.worker.slots)
            problems.append(
                f"tasks.{number}.slots: {spec.slots} slots, but the workers of queue "
                f"{spec.queue!r} have at most {most.worker.slots} (pool {most.name}: "
                "[pools.worker] slots)"
            )
        if len(problems) >= 5:
            break
    return problems
