"""Worker hosts with a failure streak, and letting a denied one claim again."""

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as FPath

from hpcscale.models import HostInfo
from hpcscale.server.dependencies import Admin, AnyReader, StoreDep
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["hosts"])


@router.get("/v1/hosts", responses=AUTH_ERRORS)
def list_hosts(_who: AnyReader, store: StoreDep) -> list[HostInfo]:
    """Worker hosts with a failure streak, and those denied claims for it."""
    return store.list_hosts()


@router.post("/v1/hosts/{host}/allow", responses=AUTH_ERRORS)
def allow_host(
    host: Annotated[str, FPath(max_length=255)], _who: Admin, store: StoreDep
) -> list[HostInfo]:
    """Let a denied host's workers claim again before its time is up."""
    store.allow_host(host)
    return store.list_hosts()
