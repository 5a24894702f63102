"""Submitting, listing, showing and cancelling tasks."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as FPath

from hpcscale.models import (
    MAX_INT64,
    CancelReply,
    CancelRequest,
    QueueName,
    SubmitReply,
    SubmitRequest,
    Task,
    TaskState,
)
from hpcscale.server.dependencies import AnyReader, Context, StoreDep, Submitter
from hpcscale.server.errors import AUTH_ERRORS, error

router = APIRouter(tags=["tasks"])


@router.post("/v1/tasks", status_code=201, responses=AUTH_ERRORS)
def submit(body: SubmitRequest, _who: Submitter, context: Context) -> SubmitReply:
    ids, duplicate = context.store.submit(body.tasks, body.idempotency_key)
    with context.new_work:
        context.new_work.notify_all()
    return SubmitReply(ids=ids, duplicate=duplicate)


@router.get("/v1/tasks", responses=AUTH_ERRORS)
def list_tasks(
    _who: AnyReader,
    store: StoreDep,
    state: TaskState | None = None,
    queue: QueueName | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
) -> list[Task]:
    return store.list_tasks(
        state=state.value if state else None, queue=queue, limit=limit, after_id=after
    )


@router.get("/v1/tasks/{task_id}", responses=AUTH_ERRORS | error(404, "no task with this id"))
def show_task(
    task_id: Annotated[int, FPath(ge=1, le=MAX_INT64)], _who: AnyReader, store: StoreDep
) -> Task:
    return store.get_task(task_id)


@router.post("/v1/tasks/cancel", responses=AUTH_ERRORS)
def cancel(body: CancelRequest, _who: Submitter, store: StoreDep) -> CancelReply:
    return CancelReply(cancelled=store.cancel(body.ids))
