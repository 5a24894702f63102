"""The statestore's HTTP API: versioned JSON paths, bearer tokens with roles, /metrics, /healthz.

This module puts the app together: its context (`app.state.context`), the routers of
`routes/` in the order the frozen OpenAPI document lists them, the error handlers, the
middleware, and the lease reaper that runs for the app's lifetime. Every error is JSON with a
message that names the problem; nothing the client sends reaches a 500.
"""

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from hpcscale import __version__
from hpcscale.config import Settings
from hpcscale.models import ClaimRequest, HeartbeatRequest, ResultsRequest
from hpcscale.server.context import ServerContext
from hpcscale.server.errors import ERROR_MODELS, add_error_handlers, document_errors
from hpcscale.server.middleware import BodyLimit, Timing
from hpcscale.server.routes import (
    admin,
    events,
    grants,
    hosts,
    managers,
    pools,
    queues,
    service,
    tasks,
    workers,
)
from hpcscale.statestore import Store

log = logging.getLogger("hpcscale.server")

# The order the OpenAPI document lists the paths in (a frozen contract): each path where its
# first route is registered.
ROUTERS = (service, tasks, queues, workers, pools, hosts, events, managers, admin, grants)


def create_app(store: Store, settings: Settings, *, reaper: bool = True) -> FastAPI:
    """The API over `store`; with `reaper`, a thread expires stale leases every few seconds."""
    context = ServerContext.for_store(store)
    app = FastAPI(
        title="hpcscale statestore",
        version=__version__,
        lifespan=_lifespan(store, settings.server.reaper_interval, context, reaper=reaper),
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.context = context
    context.metrics.configure(
        [p.name for p in settings.pools], [q for p in settings.pools for q in p.queues]
    )
    add_error_handlers(app)
    for module in ROUTERS:
        # The routes themselves, as the app's own: `include_router` would add each router as
        # one lazy branch, and `app.routes` would no longer list the endpoints.
        app.router.routes.extend(module.router.routes)
    app.router.routes[:0] = workers.fast_routes()  # tried first, in front of their FastAPI twins
    document_errors(app, [ClaimRequest, HeartbeatRequest, ResultsRequest, *ERROR_MODELS], settings)

    app.add_middleware(Timing, histogram=context.metrics.requests)
    app.add_middleware(BodyLimit, limit=settings.server.max_body_bytes)
    return app


def _lifespan(
    store: Store, interval: float, context: ServerContext, *, reaper: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifetime: with `reaper`, the lease reaper's thread runs while the app does;
    on PostgreSQL, the thread that hears other replicas' new work (wakeups.py) too."""
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if reaper:
            thread = threading.Thread(
                target=_reap, args=(store, interval, stop), name="hpcscale-reaper", daemon=True
            )
            thread.start()
        context.wakeups.start()
        yield
        context.wakeups.stop()
        stop.set()
        if thread is not None:
            thread.join(timeout=10)

    return lifespan


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
