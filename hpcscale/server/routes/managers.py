"""The manager's records: its long-poll for new work, its registration, the one-snapshot
observe, submissions, workers it saw end, pool history and decisions.

Everything a manager needs to keep no state of its own (invariant 5): a restarted manager
reads it all back from here.
"""

import time
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from hpcscale.models import (
    MAX_INT64,
    CycleView,
    DecisionBatch,
    DecisionRecord,
    ManagerInfo,
    ManagerRegistration,
    ObserveRequest,
    PoolHistory,
    QueueName,
    ReleaseReply,
    Submission,
    SubmissionIntent,
    SubmissionUpdate,
    Tag,
    WaitReply,
    WorkerGone,
    WorkerId,
)
from hpcscale.models.manager import UNASKED
from hpcscale.server.dependencies import AnyReader, Context, Manager, Monitor, StoreDep
from hpcscale.server.errors import AUTH_ERRORS, error

router = APIRouter(tags=["manager"])


@router.get("/v1/wait", responses=AUTH_ERRORS)
def wait_for_work(
    _who: Manager,
    context: Context,
    since: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    timeout: Annotated[float, Query(ge=0, le=60)] = 30.0,
) -> WaitReply:
    """Long-poll: answers as soon as tasks newer than `since` exist, else at `timeout`.

    A submission through any replica wakes it: this process's directly, another's through
    PostgreSQL's LISTEN/NOTIFY (server/wakeups.py). The store is read again at least every 5 s
    whatever the wake-ups do."""
    deadline = time.monotonic() + timeout
    seen = context.wakeups.generation()
    seq = context.store.submit_seq()
    while seq <= since:
        left = deadline - time.monotonic()
        if left <= 0:
            return WaitReply(seq=seq, changed=False)
        context.wakeups.wait(seen, min(left, 5.0))
        seen = context.wakeups.generation()
        seq = context.store.submit_seq()
    return WaitReply(seq=seq, changed=True)


@router.post(
    "/v1/managers/{name}/register",
    responses=AUTH_ERRORS | error(409, "another instance holds this name and is alive"),
)
def register_manager(
    name: QueueName, body: ManagerRegistration, _who: Manager, store: StoreDep
) -> ManagerInfo:
    return store.register_manager(name, body)


@router.post("/v1/managers/{name}/observe", response_model=CycleView, responses=AUTH_ERRORS)
def observe(name: QueueName, body: ObserveRequest, _who: Manager, store: StoreDep) -> Response:
    """Everything a manager's cycle reads, from one snapshot of the store, its workers as a
    change feed (statestore/observe.py). Serialized once, as /v1/workers."""
    view = store.observe(name, body)
    unasked = UNASKED if all(p.slots is None for p in body.pools) else None
    return Response(view.model_dump_json(exclude=unasked), media_type="application/json")


@router.get("/v1/managers", responses=AUTH_ERRORS)
def list_managers(_who: AnyReader, store: StoreDep) -> list[ManagerInfo]:
    return store.list_managers()


@router.post(
    "/v1/submissions",
    status_code=201,
    responses=AUTH_ERRORS | error(409, "a submission with this tag is already recorded"),
)
def record_intent(body: SubmissionIntent, _who: Manager, store: StoreDep) -> Submission:
    return store.record_intent(body)


@router.post(
    "/v1/submissions/{tag}",
    responses=AUTH_ERRORS
    | error(404, "no submission with this tag")
    | error(409, "the submission has already ended or failed"),
)
def update_submission(
    tag: Tag, body: SubmissionUpdate, _who: Manager, store: StoreDep
) -> Submission:
    return store.update_submission(tag, body)


@router.get("/v1/submissions", responses=AUTH_ERRORS)
def list_submissions(
    _who: AnyReader,
    store: StoreDep,
    manager: QueueName | None = None,
    pool: QueueName | None = None,
    open: bool = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    since: Annotated[float | None, Query(ge=0)] = None,
) -> list[Submission]:
    return store.list_submissions(
        manager=manager, pool=pool, open_only=open, limit=limit, since=since
    )


@router.post(
    "/v1/workers/{worker_id}/gone", responses=AUTH_ERRORS | error(404, "no worker with this id")
)
def worker_gone(
    worker_id: WorkerId, body: WorkerGone, _who: Manager, store: StoreDep
) -> ReleaseReply:
    return ReleaseReply(released=store.worker_gone(worker_id, body.reason, body.attempt_used))


@router.get("/v1/pools/{pool}/history", responses=AUTH_ERRORS)
def pool_history(
    pool: QueueName, _who: Monitor, store: StoreDep, since: Annotated[float, Query(ge=0)] = 0.0
) -> PoolHistory:
    return store.pool_history(pool, since)


@router.post("/v1/decisions", status_code=201, responses=AUTH_ERRORS)
def record_decision(body: DecisionRecord, _who: Manager, store: StoreDep) -> dict[str, str]:
    store.record_decision(body)
    return {"status": "recorded"}


@router.post("/v1/decisions/batch", status_code=201, responses=AUTH_ERRORS)
def record_decisions(body: DecisionBatch, _who: Manager, store: StoreDep) -> dict[str, str]:
    store.record_decisions(body.records)
    return {"status": "recorded"}


@router.get("/v1/decisions", responses=AUTH_ERRORS)
def list_decisions(
    pool: QueueName,
    _who: AnyReader,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
) -> list[DecisionRecord]:
    return store.list_decisions(pool, limit)
