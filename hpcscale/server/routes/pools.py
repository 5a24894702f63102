"""The pools the managers run, and the controls an operator sets on them."""

from fastapi import APIRouter

from hpcscale.models import PoolInfo, PoolUpdate, QueueName
from hpcscale.server.dependencies import Admin, Monitor, StoreDep
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["pools"])


@router.get("/v1/pools", responses=AUTH_ERRORS)
def list_pools(_who: Monitor, store: StoreDep) -> list[PoolInfo]:
    return store.list_pools()


@router.post("/v1/pools/{pool}", responses=AUTH_ERRORS)
def update_pool(pool: QueueName, body: PoolUpdate, _who: Admin, store: StoreDep) -> PoolInfo:
    store.set_pool(
        pool, manager=body.manager, min_workers=body.min_workers, control=body.control,
        max_workers_override=body.max_workers,
    )  # fmt: skip
    return next(p for p in store.list_pools() if p.name == pool)
