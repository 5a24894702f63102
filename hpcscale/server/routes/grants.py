"""The global cap of a queue across managers (issue 17): an operator sets it, any reader sees each
manager's share, a manager asks for a grant before it records a submission's intent."""

from fastapi import APIRouter

from hpcscale.models import GrantReply, GrantRequest, QueueCap, QueueCapUpdate, QueueName
from hpcscale.server.dependencies import AnyReader, Manager, StoreDep
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["caps"])


@router.put("/v1/queues/{queue}/cap", responses=AUTH_ERRORS)
def set_queue_cap(
    queue: QueueName, body: QueueCapUpdate, _who: Manager, store: StoreDep
) -> list[QueueCap]:
    """Set (or with `global_cap: null` remove) the queue's cap; the store is its one home, so
    managers with different configs agree on it. An operator's control like a pool's set-max
    (a manager's token, or the admin's). Answers the queue's cap, or [] if none."""
    capped = store.set_queue_cap(queue, body.global_cap)
    return [] if capped is None else [capped]


@router.get("/v1/caps", responses=AUTH_ERRORS)
def queue_caps(_who: AnyReader, store: StoreDep) -> list[QueueCap]:
    """Every capped queue, what is in flight for it and each manager's share."""
    return store.queue_caps()


@router.post("/v1/grants", responses=AUTH_ERRORS)
def grant(body: GrantRequest, _who: Manager, store: StoreDep) -> GrantReply:
    """How many of `count` elements the manager may submit now under every capped queue of
    the pool; the whole count when none is capped."""
    return store.grant(body)
