"""The service's own endpoints: liveness for load balancers and Prometheus's scrape."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest

from hpcscale import __version__
from hpcscale.server.dependencies import Context, Monitor, StoreDep
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(store: StoreDep) -> dict[str, str]:
    store.ping()
    return {"status": "ok", "version": __version__}


@router.get("/metrics", response_class=PlainTextResponse, responses=AUTH_ERRORS)
def metrics_endpoint(_who: Monitor, context: Context) -> PlainTextResponse:
    return PlainTextResponse(
        generate_latest(context.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
    )
