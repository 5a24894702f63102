"""The backlog of each queue, and one queue's statistics."""

from typing import Annotated

from fastapi import APIRouter, Query

from hpcscale.models import Backlog, QueueName, QueueStats
from hpcscale.server.dependencies import AnyReader, Stats, StoreDep, in_scope
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["queues"])


@router.get("/v1/queues", responses=AUTH_ERRORS)
def backlog(
    _who: AnyReader, store: StoreDep, queue: Annotated[list[QueueName] | None, Query()] = None
) -> list[Backlog]:
    return store.claimable(queue)


@router.get("/v1/queues/{queue}/stats", responses=AUTH_ERRORS)
def queue_stats(queue: QueueName, who: Stats, store: StoreDep) -> QueueStats:
    in_scope(who, [queue])
    return store.queue_stats(queue)
