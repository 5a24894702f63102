"""What only an admin may do: hand out tokens."""

from fastapi import APIRouter

from hpcscale.models import TokenReply, TokenRequest
from hpcscale.server.dependencies import Admin, StoreDep
from hpcscale.server.errors import AUTH_ERRORS

router = APIRouter(tags=["admin"])


@router.post("/v1/tokens", status_code=201, responses=AUTH_ERRORS)
def create_token(body: TokenRequest, _who: Admin, store: StoreDep) -> TokenReply:
    token = store.create_token(body.role, body.queues, body.name)
    return TokenReply(token=token, role=body.role, queues=body.queues)
