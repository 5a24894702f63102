"""Who may call what: bearer tokens, roles and queue scopes, as FastAPI dependencies.

Roles: admin does everything, and alone sets pool controls (pause, drain, set-max); a submitter
submits, reads, cancels and retries tasks; a worker registers, claims, heartbeats and reports
(only for the queues its token names, when it names any); a manager reads backlogs, workers and
events and records its submissions and decisions; a reader reads what a submitter and a manager
read, /metrics included, and changes nothing (Prometheus, dashboards, a help desk). The per-task
fast path calls `authorize` itself, the same check the dependencies make.
"""

from typing import Annotated, Any

from fastapi import Depends, Request

from hpcscale.errors import AuthError
from hpcscale.models import Role, TokenInfo
from hpcscale.server.context import ServerContext, context_of
from hpcscale.statestore import Store


def authorize(request: Request, allowed: frozenset[Role]) -> TokenInfo:
    """The caller's token, if it is known and its role is in `allowed`; else 401 or 403."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("missing bearer token (Authorization: Bearer TOKEN)", 401)
    info = context_of(request).tokens.verify(token.strip())
    if info is None:
        raise AuthError("unknown or revoked token", 401)
    if info.role not in allowed:
        need = ", ".join(sorted(r.value for r in allowed))
        raise AuthError(f"role {info.role.value} may not do this (needs {need})", 403)
    return info


def caller(*roles: Role) -> Any:
    """A dependency that lets admin and `roles` through and answers with their token."""
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


def acting_as(context: ServerContext, info: TokenInfo, worker_id: str) -> None:
    """A queue-scoped token acts only as a worker registered for queues it covers: another
    queue's worker id must not let it renew, report or release that queue's leases."""
    if info.queues is None:
        return
    in_scope(info, context.worker_queues.of(worker_id))


async def _context(request: Request) -> ServerContext:
    return context_of(request)  # async: no thread hop for an attribute read


async def _store(request: Request) -> Store:
    return context_of(request).store


AnyReader = Annotated[TokenInfo, caller(Role.SUBMITTER, Role.MANAGER, Role.READER)]
# What users run (a task's argv, env, output tail; the event log that quotes them): not the
# reader's, whose token sits in Prometheus' and dashboards' configs.
TaskReader = Annotated[TokenInfo, caller(Role.SUBMITTER, Role.MANAGER)]
# What a manager reads (workers, pools, /metrics): monitoring reads it too, and changes nothing.
Monitor = Annotated[TokenInfo, caller(Role.MANAGER, Role.READER)]
Submitter = Annotated[TokenInfo, caller(Role.SUBMITTER)]
WorkerTok = Annotated[TokenInfo, caller(Role.WORKER)]
Manager = Annotated[TokenInfo, caller(Role.MANAGER)]
Stats = Annotated[TokenInfo, caller(Role.WORKER, Role.MANAGER, Role.READER)]
Admin = Annotated[TokenInfo, caller()]
WORKER_ROLES = frozenset({Role.ADMIN, Role.WORKER})

Context = Annotated[ServerContext, Depends(_context)]
StoreDep = Annotated[Store, Depends(_store)]
