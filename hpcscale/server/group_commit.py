"""How the per-task endpoints call the store: on the event loop, grouped, or in a thread.

The per-task endpoints (claim, results, heartbeat) call the store on the event loop when it is
SQLite: its writes are serialized by the store's lock anyway, and they take well under a
millisecond, less than a hop to the threadpool and back costs. PostgreSQL runs claims in
parallel (SKIP LOCKED) and waits on the network: there they go to threads.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from hpcscale.errors import StoreError
from hpcscale.statestore import Store

P = ParamSpec("P")
T = TypeVar("T")


class StoreCall(Protocol):
    """Run a store method with its arguments and await its result."""

    def __call__(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...


async def run_inline(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return func(*args, **kwargs)


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


def per_task_calls(store: Store) -> tuple[StoreCall, StoreCall]:
    """(hot, grouped): how heartbeats, and claims and results, reach `store`.

    Claims and results that arrive in the same turn of the event loop share one SQLite
    transaction (a group commit, see GroupCommit)."""
    if store.is_sqlite:
        return run_inline, GroupCommit(store)
    return run_in_threadpool, run_in_threadpool
