"""Workers: registering, the per-task fast path (claim, heartbeat, results), release and leave.

The per-task endpoints, claim, heartbeat and results, are most of the load. FastAPI's
per-request work (dependency solving, json.loads and then validating the objects, checking the
reply against its model) costs more than their SQL, so they are plain Starlette routes tried
before all others: the endpoint authorizes the caller itself (the same check as every other
endpoint's), then validates the body straight from bytes (pydantic-core's parser; a bad body is
the same 422 naming the field), and answers with bytes serialized once. The same endpoints are
also FastAPI routes, never reached, so that OpenAPI documents them.
"""

import collections
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.routing import BaseRoute, Match, Route

from hpcscale.models import (
    ClaimedTask,
    ClaimRequest,
    DeregisterRequest,
    HeartbeatReply,
    HeartbeatRequest,
    QueueName,
    ReleaseReply,
    ReleaseRequest,
    ResultsReply,
    ResultsRequest,
    Worker,
    WorkerId,
    WorkerRegistration,
)
from hpcscale.server.context import context_of
from hpcscale.server.dependencies import (
    WORKER_ROLES,
    Context,
    Monitor,
    StoreDep,
    WorkerTok,
    acting_as,
    authorize,
    in_scope,
)
from hpcscale.server.errors import AUTH_ERRORS, StaleResults, error
from hpcscale.server.middleware import Scope

M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]

_CLAIMED = TypeAdapter(list[ClaimedTask])
_WORKERS = TypeAdapter(list[Worker])
_WORKER_ID = TypeAdapter(WorkerId)

router = APIRouter(tags=["workers"])
_per_task: list[tuple[str, Endpoint]] = []  # (path, endpoint) of the fast path


@router.post("/v1/workers", status_code=201, responses=AUTH_ERRORS)
def register(body: WorkerRegistration, who: WorkerTok, store: StoreDep) -> Worker:
    in_scope(who, body.queues)
    return store.register_worker(body)


@router.get("/v1/workers", response_model=list[Worker], responses=AUTH_ERRORS)
def list_workers(
    _who: Monitor,
    store: StoreDep,
    pool: QueueName | None = None,
    live: bool = False,
    since: Annotated[float | None, Query(ge=0)] = None,
) -> Response:
    """Serialized once: the manager reads 10^4 of them a cycle, and FastAPI would validate
    each against the response model again (40-60 ms at 10^4, bench/scale.py)."""
    found = store.list_workers(pool, live_only=live, since=since)
    return Response(_WORKERS.dump_json(found), media_type="application/json")


@router.get("/v1/workers/{worker_id}", responses=AUTH_ERRORS | error(404, "no worker with this id"))
def get_worker(worker_id: WorkerId, _who: Monitor, store: StoreDep) -> Worker:
    return store.get_worker(worker_id)


# -------------------------------------------------------------- the per-task fast path


def per_task(
    path: str, body: type[BaseModel], reply: Any, **extra: Any
) -> Callable[[Endpoint], Endpoint]:
    """Document `endpoint` as a FastAPI route and keep it for the fast path (`fast_routes`)."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            response_model=reply,
            openapi_extra=_body_doc(body, path_params={"worker_id": WorkerId}),
            **extra,
        )
        _per_task.append((path, endpoint))
        return endpoint

    return register


def fast_routes() -> list[BaseRoute]:
    """The per-task endpoints as plain routes, to go in front of their FastAPI twins."""
    return [_PlainRoute(path, endpoint, methods=["POST"]) for path, endpoint in _per_task]


class _PlainRoute(Route):
    """A Starlette route that, like FastAPI's, names itself in the scope (for `Timing`)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


def _body_doc(model: type[BaseModel], path_params: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for an endpoint that reads its path parameters and JSON body itself."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": TypeAdapter(kind).json_schema(),
            }
            for name, kind in path_params.items()
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


async def body_of(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def worker_of(request: Request) -> str:
    """The path's worker id, checked as FastAPI checks those of the other routes."""
    try:
        return _WORKER_ID.validate_python(request.path_params["worker_id"])
    except ValidationError as exc:
        errors = [{**e, "loc": ("path", "worker_id")} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


@per_task(
    "/v1/workers/{worker_id}/claim",
    ClaimRequest,
    list[ClaimedTask],
    responses=AUTH_ERRORS
    | error(404, "no worker with this id: register first")
    | error(409, "the worker has ended: register again"),
)
async def claim(request: Request) -> Response:
    context = context_of(request)
    who = authorize(request, WORKER_ROLES)
    worker_id = worker_of(request)
    body = await body_of(request, ClaimRequest)
    in_scope(who, body.queues)
    acting_as(context, who, worker_id)
    claimed = await context.grouped(
        context.store.claim, worker_id, body.queues, body.max_tasks, body.free_slots
    )
    if claimed:
        for queue, n in collections.Counter(task.queue for task in claimed).items():
            context.metrics.claimed_in(queue).inc(n)
    return Response(_CLAIMED.dump_json(claimed), media_type="application/json")


@per_task(
    "/v1/workers/{worker_id}/heartbeat",
    HeartbeatRequest,
    HeartbeatReply,
    responses=AUTH_ERRORS | error(404, "no worker with this id: register first"),
)
async def heartbeat(request: Request) -> Response:
    context = context_of(request)
    who = authorize(request, WORKER_ROLES)
    worker_id = worker_of(request)
    acting_as(context, who, worker_id)
    body = await body_of(request, HeartbeatRequest)
    reply = await context.hot(context.store.heartbeat, worker_id, body.running, body.busy_slots)
    return Response(reply.model_dump_json(), media_type="application/json")


@per_task(
    "/v1/workers/{worker_id}/results",
    ResultsRequest,
    ResultsReply,
    responses=AUTH_ERRORS
    | error(404, "no worker with this id")
    | error(409, "every result was stale; nothing changed", StaleResults),
)
async def results(request: Request) -> Response:
    """409 when every result is stale (nothing changed); else 200, stale ones marked."""
    context = context_of(request)
    who = authorize(request, WORKER_ROLES)
    worker_id = worker_of(request)
    acting_as(context, who, worker_id)
    body = await body_of(request, ResultsRequest)
    outcomes = await context.grouped(context.store.results, worker_id, body.results)
    for outcome, n in collections.Counter(o.outcome for o in outcomes).items():
        context.metrics.results_by(outcome).inc(n)
    reply = ResultsReply(outcomes=outcomes)
    if all(o.outcome == "stale" for o in outcomes):
        return JSONResponse(
            {
                "error": "stale lease: the fencing token is not the task's live lease",
                **reply.model_dump(mode="json"),
            },
            status_code=409,
        )
    return Response(reply.model_dump_json(), media_type="application/json")


# -------------------------------------------------------------- leaving


@router.post(
    "/v1/workers/{worker_id}/release",
    responses=AUTH_ERRORS | error(404, "no worker with this id"),
)
def release(
    worker_id: WorkerId, body: ReleaseRequest, who: WorkerTok, context: Context
) -> ReleaseReply:
    acting_as(context, who, worker_id)
    released = context.store.release(worker_id, body.leases, body.reason, body.attempt_used)
    return ReleaseReply(released=released)


@router.post(
    "/v1/workers/{worker_id}/deregister",
    responses=AUTH_ERRORS | error(404, "no worker with this id"),
)
def deregister(
    worker_id: WorkerId, body: DeregisterRequest, who: WorkerTok, context: Context
) -> ReleaseReply:
    acting_as(context, who, worker_id)
    return ReleaseReply(released=context.store.deregister(worker_id, body.reason))
