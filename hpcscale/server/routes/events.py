"""The event log: what happened to tasks, workers and pools, newest first."""

from typing import Annotated

from fastapi import APIRouter, Query

from hpcscale.models import MAX_INT64, NO_NUL, Event, EventRequest
from hpcscale.server.dependencies import Manager, StoreDep, TaskReader
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["events"])


@router.get("/v1/events", responses=AUTH_ERRORS)
def list_events(
    _who: TaskReader,
    store: StoreDep,
    kind_prefix: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    task: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
) -> list[Event]:
    return store.events(kind_prefix=kind_prefix, limit=limit, task_id=task)


@router.post("/v1/events", status_code=201, responses=AUTH_ERRORS)
def add_event(body: EventRequest, _who: Manager, store: StoreDep) -> dict[str, str]:
    store.add_event(body.kind, body.detail)
    return {"status": "recorded"}
