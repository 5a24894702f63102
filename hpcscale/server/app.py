"""The statestore's HTTP API: versioned JSON paths, bearer tokens with roles, /metrics, /healthz.

Roles: admin does everything; a submitter submits, reads and cancels tasks; a worker registers,
claims, heartbeats and reports (only for the queues its token names, when it names any); a
manager reads backlogs, workers and events and sets pool controls. Every error is JSON with a
message that names the problem; nothing the client sends reaches a 500.
"""

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from hpcscale import __version__
from hpcscale.config import Settings
from hpcscale.errors import (
    AuthError,
    InvalidTransition,
    NotFound,
    StaleLease,
    StoreError,
)
from hpcscale.models import (
    MAX_INT64,
    NO_NUL,
    Backlog,
    CancelReply,
    CancelRequest,
    ClaimedTask,
    ClaimRequest,
    CycleView,
    DecisionBatch,
    DecisionRecord,
    DeregisterRequest,
    Event,
    EventRequest,
    HeartbeatReply,
    HeartbeatRequest,
    HostInfo,
    ManagerInfo,
    ManagerRegistration,
    ObserveRequest,
    PoolHistory,
    PoolInfo,
    PoolUpdate,
    QueueName,
    QueueStats,
    ReleaseReply,
    ReleaseRequest,
    ResultOutcome,
    ResultsReply,
    ResultsRequest,
    Role,
    Submission,
    SubmissionIntent,
    SubmissionUpdate,
    SubmitReply,
    SubmitRequest,
    Tag,
    Task,
    TaskState,
    TokenInfo,
    TokenReply,
    TokenRequest,
    WaitReply,
    Worker,
    WorkerGone,
    WorkerId,
    WorkerRegistration,
)
from hpcscale.server.pool_metrics import PoolCollector
from hpcscale.statestore import Store
from hpcscale.tokens import check_token_file, write_secret

log = logging.getLogger("hpcscale.server")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_CACHE_SECONDS = 10.0


class ApiError(BaseModel):
    """The body of every error answer, so a client reads one field whatever went wrong."""

    error: str = Field(description="what went wrong, naming the field or object at fault")


class InvalidRequest(ApiError):
    problems: list[str] = Field(description="one per offending field: `field.path: what is wrong`")


class StaleResults(ApiError):
    """409 of a results batch that was entirely stale: nothing changed, each result says so."""

    outcomes: list[ResultOutcome]


ERROR_MODELS: list[type[BaseModel]] = [ApiError, InvalidRequest, StaleResults]


def _error_doc(description: str, model: type[BaseModel] = ApiError) -> dict[str, Any]:
    """An error response for `responses=`, as JSON even where the success is text (/metrics)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# The answers every authenticated route can give, then those only some routes give.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_doc("no bearer token, or an unknown or revoked one"),
    403: _error_doc("the token's role, or its queues, do not allow this"),
}


def _error(
    status: int, description: str, model: type[BaseModel] = ApiError
) -> dict[int | str, Any]:
    return {status: _error_doc(description, model)}


class TokenCache:
    """Verified tokens for a few seconds, so a claim costs one query, not two."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, TokenInfo | None]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> TokenInfo | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and now - hit[0] < TOKEN_CACHE_SECONDS:
            return hit[1]
        info = self.store.verify_token(token)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now, info)
        return info


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.message = f"request body over {limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _plain_json(send, 413, self.message)
                return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge(self.message)
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge as exc:  # a plain route's; FastAPI's own routes see `_http`
            await _plain_json(send, 413, str(exc))


class _BodyTooLarge(Exception):
    """A streamed body went over the limit (one without a Content-Length)."""


async def _plain_json(send: Send, status: int, message: str) -> None:
    body = ('{"error": "' + message + '"}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Timing:
    """Request latency by method, route and status into `histogram` (a plain ASGI middleware:
    Starlette's BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram
        self.children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", "unmatched"), status)
            child = self.children.get(key)
            if child is None:  # labels() validates and locks each time: look each up once
                child = self.children[key] = self.histogram.labels(*key[:2], str(status))
            child.observe(time.perf_counter() - started)


P = ParamSpec("P")
T = TypeVar("T")


async def _inline(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return func(*args, **kwargs)


M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]


class GroupCommit:
    """Store calls made during one turn of the event loop, run in one SQLite transaction.

    A call is queued and the first one schedules a flush for the loop's next turn, by which
    time every request whose bytes came in together has been parsed and queued its call too.
    The flush runs them all through `Store.together` (each in a savepoint, one commit) on the
    loop's thread, and hands each caller its own result or error. With many workers this turns
    many small commits, each rewriting the same log pages, into one; with one worker it costs
    a future and a callback.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    async def __call__(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self.pending:
            loop.call_soon(self.flush)
        self.pending.append((functools.partial(func, *args, **kwargs), future))
        return await future

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            outcomes = self.store.together([call for call, _ in batch])
        except Exception as exc:  # the commit itself failed: nothing of the group was stored
            outcomes = [(None, exc)] * len(batch)
        except BaseException:  # no caller may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreError("the store call was interrupted"))
            raise
        for (_, future), (value, error) in zip(batch, outcomes, strict=True):
            if future.done():  # the request was cancelled meanwhile
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)


_CLAIMED = TypeAdapter(list[ClaimedTask])
_WORKERS = TypeAdapter(list[Worker])
_WORKER_ID = TypeAdapter(WorkerId)


class StoreCollector(Collector):
    """Task counts by queue and state, read from the store when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "hpcscale_tasks", "Tasks in the store by queue and state", labels=["queue", "state"]
        )
        counts = self.store.count_tasks()
        queues = sorted({q for q, _ in counts})
        for queue in queues:
            for state in TaskState:
                family.add_metric([queue, state.value], counts.get((queue, state.value), 0))
        yield family
        workers = GaugeMetricFamily("hpcscale_workers", "Live workers by pool", labels=["pool"])
        by_pool: dict[str, int] = {}
        for worker in self.store.list_workers(live_only=True):
            by_pool[worker.pool] = by_pool.get(worker.pool, 0) + 1
        for pool, count in sorted(by_pool.items()):
            workers.add_metric([pool], count)
        yield workers


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "hpcscale_http_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.claimed = Counter(
            "hpcscale_tasks_claimed", "Tasks handed to workers", ["queue"], registry=self.registry
        )
        self.results = Counter(
            "hpcscale_task_results",
            "Results recorded, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store))
        self.claimed_in = functools.cache(self.claimed.labels)
        self.results_by = functools.cache(self.results.labels)
        self.registry.register(PoolCollector(store))


def create_app(store: Store, settings: Settings, *, reaper: bool = True) -> FastAPI:
    """The API over `store`; with `reaper`, a thread expires stale leases every few seconds."""
    tokens = TokenCache(store)
    new_work = threading.Condition()  # wakes managers long-polling /v1/wait
    metrics = Metrics(store)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if reaper:
            thread = threading.Thread(
                target=_reap,
                args=(store, settings.server.reaper_interval, stop),
                name="hpcscale-reaper",
                daemon=True,
            )
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=10)

    app = FastAPI(
        title="hpcscale statestore",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.store = store
    app.state.metrics = metrics

    def authorize(request: Request, allowed: frozenset[Role]) -> TokenInfo:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing bearer token (Authorization: Bearer TOKEN)", 401)
        info = tokens.verify(token.strip())
        if info is None:
            raise AuthError("unknown or revoked token", 401)
        if info.role not in allowed:
            need = ", ".join(sorted(r.value for r in allowed))
            raise AuthError(f"role {info.role.value} may not do this (needs {need})", 403)
        return info

    def caller(*roles: Role) -> Any:
        allowed = frozenset({Role.ADMIN, *roles})

        async def check(request: Request) -> TokenInfo:
            # async: FastAPI would run a plain function in the threadpool, a thread hop per
            # request for what is a dict lookup (the store is asked once per token per 10 s).
            return authorize(request, allowed)

        return Depends(check)

    def in_scope(info: TokenInfo, queues: list[str]) -> None:
        if info.queues is not None and not set(queues) <= set(info.queues):
            outside = sorted(set(queues) - set(info.queues))
            raise AuthError(f"token not valid for queue(s) {', '.join(outside)}", 403)

    AnyReader = Annotated[TokenInfo, caller(Role.SUBMITTER, Role.MANAGER)]
    Submitter = Annotated[TokenInfo, caller(Role.SUBMITTER)]
    WorkerTok = Annotated[TokenInfo, caller(Role.WORKER)]
    Manager = Annotated[TokenInfo, caller(Role.MANAGER)]
    Stats = Annotated[TokenInfo, caller(Role.WORKER, Role.MANAGER)]
    Admin = Annotated[TokenInfo, caller()]

    # The per-task endpoints (claim, results, heartbeat) call the store on the event loop when
    # it is SQLite: its writes are serialized by the store's lock anyway, and they take well
    # under a millisecond, less than a hop to the threadpool and back costs. PostgreSQL runs
    # claims in parallel (SKIP LOCKED) and waits on the network: there they go to threads.
    hot = _inline if store.is_sqlite else run_in_threadpool
    # Claims and results that arrive in the same turn of the event loop share one SQLite
    # transaction (a group commit, see GroupCommit).
    grouped = GroupCommit(store) if store.is_sqlite else run_in_threadpool

    # -------------------------------------------------------------- error mapping

    @app.exception_handler(AuthError)
    async def _auth(_r: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(NotFound)
    async def _nf(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(StaleLease)
    async def _stale(_r: Request, exc: StaleLease) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(InvalidTransition)
    async def _conflict(_r: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(StoreError)
    async def _store(_r: Request, exc: StoreError) -> JSONResponse:
        log.warning("store error: %s", exc)
        return JSONResponse({"error": f"store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(OperationalError)
    async def _db(_r: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc.orig)
        return JSONResponse({"error": "database unavailable, retry"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            ctx = error.get("ctx", {})
            if error.get("type") == "json_invalid":  # FastAPI's has the offset in its loc
                at = "".join(f" at char {p}" for p in error.get("loc", ())[1:2])
                problems.append(f"body: not valid JSON ({ctx.get('error', 'invalid')}{at})")
                continue
            loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            msg = error.get("msg", "invalid")
            if ctx.get("pattern") == NO_NUL:
                msg = "must not contain a NUL character (\\x00)"
            problems.append(f"{loc}: {msg}" if loc else msg)
        return _invalid_reply(problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's and FastAPI's own errors (no such path, method not allowed) in our shape.

        FastAPI answers a JSON body it cannot decode (not UTF-8, nested too deep for
        `json.loads`) with a bare 400; pydantic's parser, on the per-task routes, calls the same
        bodies invalid JSON (422). One answer for both, naming the body."""
        if isinstance(exc.__cause__, _BodyTooLarge):  # FastAPI wraps what reading raised
            return JSONResponse({"error": str(exc.__cause__)}, status_code=413)
        if exc.status_code == 400 and exc.__cause__ is not None:
            return _invalid_reply([f"body: not valid JSON ({_parse_failure(exc.__cause__)})"])
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    # -------------------------------------------------------------- routes

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        store.ping()
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse, responses=AUTH_ERRORS)
    def metrics_endpoint(_who: Manager) -> PlainTextResponse:
        return PlainTextResponse(
            generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.post("/v1/tasks", tags=["tasks"], status_code=201, responses=AUTH_ERRORS)
    def submit(body: SubmitRequest, _who: Submitter) -> SubmitReply:
        ids, duplicate = store.submit(body.tasks, body.idempotency_key)
        with new_work:
            new_work.notify_all()
        return SubmitReply(ids=ids, duplicate=duplicate)

    @app.get("/v1/tasks", tags=["tasks"], responses=AUTH_ERRORS)
    def list_tasks(
        _who: AnyReader,
        state: TaskState | None = None,
        queue: QueueName | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    ) -> list[Task]:
        return store.list_tasks(
            state=state.value if state else None, queue=queue, limit=limit, after_id=after
        )

    @app.get(
        "/v1/tasks/{task_id}",
        tags=["tasks"],
        responses=AUTH_ERRORS | _error(404, "no task with this id"),
    )
    def show_task(task_id: Annotated[int, FPath(ge=1, le=MAX_INT64)], _who: AnyReader) -> Task:
        return store.get_task(task_id)

    @app.post("/v1/tasks/cancel", tags=["tasks"], responses=AUTH_ERRORS)
    def cancel(body: CancelRequest, _who: Submitter) -> CancelReply:
        return CancelReply(cancelled=store.cancel(body.ids))

    @app.get("/v1/queues", tags=["queues"], responses=AUTH_ERRORS)
    def backlog(
        _who: AnyReader, queue: Annotated[list[QueueName] | None, Query()] = None
    ) -> list[Backlog]:
        return store.claimable(queue)

    @app.get("/v1/queues/{queue}/stats", tags=["queues"], responses=AUTH_ERRORS)
    def queue_stats(queue: QueueName, who: Stats) -> QueueStats:
        in_scope(who, [queue])
        return store.queue_stats(queue)

    @app.post("/v1/workers", tags=["workers"], status_code=201, responses=AUTH_ERRORS)
    def register(body: WorkerRegistration, who: WorkerTok) -> Worker:
        in_scope(who, body.queues)
        return store.register_worker(body)

    @app.get("/v1/workers", tags=["workers"], response_model=list[Worker], responses=AUTH_ERRORS)
    def list_workers(
        _who: Manager,
        pool: QueueName | None = None,
        live: bool = False,
        since: Annotated[float | None, Query(ge=0)] = None,
    ) -> Response:
        """Serialized once: the manager reads 10^4 of them a cycle, and FastAPI would validate
        each against the response model again (40-60 ms at 10^4, bench/scale.py)."""
        found = store.list_workers(pool, live_only=live, since=since)
        return Response(_WORKERS.dump_json(found), media_type="application/json")

    @app.get(
        "/v1/workers/{worker_id}",
        tags=["workers"],
        responses=AUTH_ERRORS | _error(404, "no worker with this id"),
    )
    def get_worker(worker_id: WorkerId, _who: Manager) -> Worker:
        return store.get_worker(worker_id)

    # The per-task endpoints, claim, heartbeat and results, are most of the load. FastAPI's
    # per-request work (dependency solving, json.loads and then validating the objects, checking
    # the reply against its model) costs more than their SQL, so they are plain Starlette routes
    # tried before all others: the endpoint authorizes the caller itself (the same check as every
    # other endpoint's), then validates the body straight from bytes (pydantic-core's parser; a
    # bad body is the same 422 naming the field), and answers with bytes serialized once. The
    # same endpoints are also FastAPI routes, never reached, so that OpenAPI documents them.
    worker_roles = frozenset({Role.ADMIN, Role.WORKER})
    registered_for: dict[str, list[str]] = {}  # worker id -> its queues (fixed at registration)

    def acting_as(info: TokenInfo, worker_id: str) -> None:
        """A queue-scoped token acts only as a worker registered for queues it covers: another
        queue's worker id must not let it renew, report or release that queue's leases."""
        if info.queues is None:
            return
        queues = registered_for.get(worker_id)
        if queues is None:
            queues = store.get_worker(worker_id).queues  # NotFound: 404
            if len(registered_for) > 100_000:
                registered_for.clear()
            registered_for[worker_id] = queues
        in_scope(info, queues)

    plain_routes: list[BaseRoute] = []

    def per_task(
        path: str, body: type[BaseModel], reply: Any, **extra: Any
    ) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            app.add_api_route(
                path,
                endpoint,
                methods=["POST"],
                tags=["workers"],
                response_model=reply,
                openapi_extra=_body_doc(body, path_params={"worker_id": WorkerId}),
                **extra,
            )
            plain_routes.append(_PlainRoute(path, endpoint, methods=["POST"]))
            return endpoint

        return register

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
        | _error(404, "no worker with this id: register first")
        | _error(409, "the worker has ended: register again"),
    )
    async def claim(request: Request) -> Response:
        who = authorize(request, worker_roles)
        worker_id = worker_of(request)
        body = await body_of(request, ClaimRequest)
        in_scope(who, body.queues)
        acting_as(who, worker_id)
        claimed = await grouped(
            store.claim, worker_id, body.queues, body.max_tasks, body.free_slots
        )
        if claimed:
            for queue, n in collections.Counter(task.queue for task in claimed).items():
                metrics.claimed_in(queue).inc(n)
        return Response(_CLAIMED.dump_json(claimed), media_type="application/json")

    @per_task(
        "/v1/workers/{worker_id}/heartbeat",
        HeartbeatRequest,
        HeartbeatReply,
        responses=AUTH_ERRORS | _error(404, "no worker with this id: register first"),
    )
    async def heartbeat(request: Request) -> Response:
        who = authorize(request, worker_roles)
        worker_id = worker_of(request)
        acting_as(who, worker_id)
        body = await body_of(request, HeartbeatRequest)
        reply = await hot(store.heartbeat, worker_id, body.running, body.busy_slots)
        return Response(reply.model_dump_json(), media_type="application/json")

    @per_task(
        "/v1/workers/{worker_id}/results",
        ResultsRequest,
        ResultsReply,
        responses=AUTH_ERRORS
        | _error(404, "no worker with this id")
        | _error(409, "every result was stale; nothing changed", StaleResults),
    )
    async def results(request: Request) -> Response:
        """409 when every result is stale (nothing changed); else 200, stale ones marked."""
        who = authorize(request, worker_roles)
        worker_id = worker_of(request)
        acting_as(who, worker_id)
        body = await body_of(request, ResultsRequest)
        outcomes = await grouped(store.results, worker_id, body.results)
        for outcome, n in collections.Counter(o.outcome for o in outcomes).items():
            metrics.results_by(outcome).inc(n)
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

    @app.post(
        "/v1/workers/{worker_id}/release",
        tags=["workers"],
        responses=AUTH_ERRORS | _error(404, "no worker with this id"),
    )
    def release(worker_id: WorkerId, body: ReleaseRequest, who: WorkerTok) -> ReleaseReply:
        acting_as(who, worker_id)
        released = store.release(worker_id, body.leases, body.reason, body.attempt_used)
        return ReleaseReply(released=released)

    @app.post(
        "/v1/workers/{worker_id}/deregister",
        tags=["workers"],
        responses=AUTH_ERRORS | _error(404, "no worker with this id"),
    )
    def deregister(worker_id: WorkerId, body: DeregisterRequest, who: WorkerTok) -> ReleaseReply:
        acting_as(who, worker_id)
        return ReleaseReply(released=store.deregister(worker_id, body.reason))

    @app.get("/v1/pools", tags=["pools"], responses=AUTH_ERRORS)
    def list_pools(_who: Manager) -> list[PoolInfo]:
        return store.list_pools()

    @app.post("/v1/pools/{pool}", tags=["pools"], responses=AUTH_ERRORS)
    def update_pool(pool: QueueName, body: PoolUpdate, _who: Manager) -> PoolInfo:
        store.set_pool(
            pool, manager=body.manager, min_workers=body.min_workers, control=body.control,
            max_workers_override=body.max_workers,
        )  # fmt: skip
        return next(p for p in store.list_pools() if p.name == pool)

    @app.get("/v1/hosts", tags=["hosts"], responses=AUTH_ERRORS)
    def list_hosts(_who: AnyReader) -> list[HostInfo]:
        """Worker hosts with a failure streak, and those denied claims for it."""
        return store.list_hosts()

    @app.post("/v1/hosts/{host}/allow", tags=["hosts"], responses=AUTH_ERRORS)
    def allow_host(host: Annotated[str, FPath(max_length=255)], _who: Admin) -> list[HostInfo]:
        """Let a denied host's workers claim again before its time is up."""
        store.allow_host(host)
        return store.list_hosts()

    @app.get("/v1/events", tags=["events"], responses=AUTH_ERRORS)
    def list_events(
        _who: AnyReader,
        kind_prefix: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
        task: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
    ) -> list[Event]:
        return store.events(kind_prefix=kind_prefix, limit=limit, task_id=task)

    # -------------------------------------------------------------- the manager's records

    @app.get("/v1/wait", tags=["manager"], responses=AUTH_ERRORS)
    def wait_for_work(
        _who: Manager,
        since: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
        timeout: Annotated[float, Query(ge=0, le=60)] = 30.0,
    ) -> WaitReply:
        """Long-poll: answers as soon as tasks newer than `since` exist, else at `timeout`.

        Wake-ups are this process's; behind a load balancer the manager's poll interval still
        catches work submitted through another replica."""
        deadline = time.monotonic() + timeout
        seq = store.submit_seq()
        while seq <= since:
            left = deadline - time.monotonic()
            if left <= 0:
                return WaitReply(seq=seq, changed=False)
            with new_work:
                new_work.wait(min(left, 5.0))
            seq = store.submit_seq()
        return WaitReply(seq=seq, changed=True)

    @app.post(
        "/v1/managers/{name}/register",
        tags=["manager"],
        responses=AUTH_ERRORS | _error(409, "another instance holds this name and is alive"),
    )
    def register_manager(name: QueueName, body: ManagerRegistration, _who: Manager) -> ManagerInfo:
        return store.register_manager(name, body)

    @app.post(
        "/v1/managers/{name}/observe",
        tags=["manager"],
        response_model=CycleView,
        responses=AUTH_ERRORS,
    )
    def observe(name: QueueName, body: ObserveRequest, _who: Manager) -> Response:
        """Everything a manager's cycle reads, from one snapshot of the store, its workers as a
        change feed (statestore/observe.py). Serialized once, as /v1/workers."""
        view = store.observe(name, body)
        return Response(view.model_dump_json(), media_type="application/json")

    @app.get("/v1/managers", tags=["manager"], responses=AUTH_ERRORS)
    def list_managers(_who: AnyReader) -> list[ManagerInfo]:
        return store.list_managers()

    @app.post(
        "/v1/submissions",
        tags=["manager"],
        status_code=201,
        responses=AUTH_ERRORS | _error(409, "a submission with this tag is already recorded"),
    )
    def record_intent(body: SubmissionIntent, _who: Manager) -> Submission:
        return store.record_intent(body)

    @app.post(
        "/v1/submissions/{tag}",
        tags=["manager"],
        responses=AUTH_ERRORS
        | _error(404, "no submission with this tag")
        | _error(409, "the submission has already ended or failed"),
    )
    def update_submission(tag: Tag, body: SubmissionUpdate, _who: Manager) -> Submission:
        return store.update_submission(tag, body)

    @app.get("/v1/submissions", tags=["manager"], responses=AUTH_ERRORS)
    def list_submissions(
        _who: AnyReader,
        manager: QueueName | None = None,
        pool: QueueName | None = None,
        open: bool = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        since: Annotated[float | None, Query(ge=0)] = None,
    ) -> list[Submission]:
        return store.list_submissions(
            manager=manager, pool=pool, open_only=open, limit=limit, since=since
        )

    @app.post(
        "/v1/workers/{worker_id}/gone",
        tags=["manager"],
        responses=AUTH_ERRORS | _error(404, "no worker with this id"),
    )
    def worker_gone(worker_id: WorkerId, body: WorkerGone, _who: Manager) -> ReleaseReply:
        return ReleaseReply(released=store.worker_gone(worker_id, body.reason))

    @app.get("/v1/pools/{pool}/history", tags=["manager"], responses=AUTH_ERRORS)
    def pool_history(
        pool: QueueName, _who: Manager, since: Annotated[float, Query(ge=0)] = 0.0
    ) -> PoolHistory:
        return store.pool_history(pool, since)

    @app.post("/v1/decisions", tags=["manager"], status_code=201, responses=AUTH_ERRORS)
    def record_decision(body: DecisionRecord, _who: Manager) -> dict[str, str]:
        store.record_decision(body)
        return {"status": "recorded"}

    @app.post("/v1/decisions/batch", tags=["manager"], status_code=201, responses=AUTH_ERRORS)
    def record_decisions(body: DecisionBatch, _who: Manager) -> dict[str, str]:
        store.record_decisions(body.records)
        return {"status": "recorded"}

    @app.get("/v1/decisions", tags=["manager"], responses=AUTH_ERRORS)
    def list_decisions(
        pool: QueueName, _who: AnyReader, limit: Annotated[int, Query(ge=1, le=500)] = 10
    ) -> list[DecisionRecord]:
        return store.list_decisions(pool, limit)

    @app.post("/v1/events", tags=["events"], status_code=201, responses=AUTH_ERRORS)
    def add_event(body: EventRequest, _who: Manager) -> dict[str, str]:
        store.add_event(body.kind, body.detail)
        return {"status": "recorded"}

    @app.post("/v1/tokens", tags=["admin"], status_code=201, responses=AUTH_ERRORS)
    def create_token(body: TokenRequest, _who: Admin) -> TokenReply:
        token = store.create_token(body.role, body.queues, body.name)
        return TokenReply(token=token, role=body.role, queues=body.queues)

    app.router.routes[:0] = plain_routes  # tried first, in front of their FastAPI twins
    _finish_openapi(app, [ClaimRequest, HeartbeatRequest, ResultsRequest, *ERROR_MODELS], settings)

    app.add_middleware(Timing, histogram=metrics.requests)
    app.add_middleware(BodyLimit, limit=settings.server.max_body_bytes)
    return app


def _invalid_reply(problems: list[str]) -> JSONResponse:
    return JSONResponse({"error": "; ".join(problems), "problems": problems}, status_code=422)


def _parse_failure(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 at byte {cause.start}"
    return type(cause).__name__


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


def _finish_openapi(app: FastAPI, models: list[type[BaseModel]], settings: Settings) -> None:
    """Put `models` into the OpenAPI document's components, where `_body_doc` and `_error_doc`
    point, and document the errors every route can give the same way: they come from the
    app-wide handlers and middleware, not from any one route."""
    generate = app.openapi
    invalid = _error_doc(
        "a parameter or the body is invalid: `problems` names each field", InvalidRequest
    )
    too_large = _error_doc(f"the body is over {settings.server.max_body_bytes} bytes")
    unavailable = _error_doc("the database is unavailable: retry")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
            )
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                known.setdefault(name, definition)
            for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, never sent
                known.pop(name, None)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    if "requestBody" in operation or operation.get("parameters"):
                        responses["422"] = invalid
                    if "requestBody" in operation:
                        responses["413"] = too_large
                    responses["503"] = unavailable
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _reap(store: Store, interval: float, stop: threading.Event) -> None:
    """Expire stale leases every `interval`, but only one lease TTL after this process started:
    while the server was down no worker could heartbeat, and its leases must not be taken
    from it before it has had a full TTL to reach us again."""
    if stop.wait(store.lease_ttl):
        return
    while not stop.wait(interval):
        try:
            expired = store.expire()
            if expired:
                log.info("requeued %d tasks whose lease expired", expired)
            store.account_hosts()
        except Exception:  # keep reaping whatever one pass hit
            log.exception("lease reaper pass failed")


def ensure_admin_token(store: Store, token_file: str) -> Path:
    """Write an admin token to `token_file` (0600) on first start; refuse a file others can read."""
    path = Path(token_file).expanduser()
    if path.exists():
        check_token_file(path)
        token = path.read_text().strip()
        if store.verify_token(token) is None and not store.has_admin_token():
            # A fresh database next to an old token file: adopt the file's token.
            store.add_token(token, Role.ADMIN, None, "admin (adopted from token file)")
        return path
    token = store.create_token(Role.ADMIN, None, "admin (first start)")
    write_secret(path, token)
    return path


def build_uvicorn(app: FastAPI, settings: Settings) -> Any:
    """A uvicorn server for `app` on [server] bind, with TLS when tls_cert/tls_key are set."""
    import uvicorn

    from hpcscale.config import host_port

    host, port = host_port(settings.server.bind)
    tls: dict[str, Any] = {}
    if settings.server.tls_cert and settings.server.tls_key:
        tls = {
            "ssl_certfile": str(Path(settings.server.tls_cert).expanduser()),
            "ssl_keyfile": str(Path(settings.server.tls_key).expanduser()),
        }
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        **tls,
    )
    return uvicorn.Server(config)
