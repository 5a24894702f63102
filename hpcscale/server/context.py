"""What one app instance holds (its store, caches, wake-ups and metrics), on `app.state`.

The routers are module-level and shared by every app (tests build many); each request finds
its own app's context through `context_of(request)`.
"""

import threading
import time
from dataclasses import dataclass

from fastapi import Request

from hpcscale.models import TokenInfo
from hpcscale.server.group_commit import StoreCall, per_task_calls
from hpcscale.server.metrics import Metrics
from hpcscale.server.wakeups import WakeUps
from hpcscale.statestore import Store

TOKEN_CACHE_SECONDS = 10.0


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


class WorkerQueues:
    """Each worker's queues, fixed at registration, so a scoped token's check costs no query."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queues: dict[str, list[str]] = {}

    def of(self, worker_id: str) -> list[str]:
        queues = self._queues.get(worker_id)
        if queues is None:
            queues = self.store.get_worker(worker_id).queues  # NotFound: 404
            if len(self._queues) > 100_000:
                self._queues.clear()
            self._queues[worker_id] = queues
        return queues


@dataclass
class ServerContext:
    """Everything the routes of one app share, built once when the app is."""

    store: Store
    metrics: Metrics
    tokens: TokenCache
    worker_queues: WorkerQueues
    hot: StoreCall
    grouped: StoreCall
    wakeups: WakeUps
    """Wakes managers long-polling /v1/wait (wakeups.py; across replicas on PostgreSQL)."""

    @classmethod
    def for_store(cls, store: Store) -> "ServerContext":
        hot, grouped = per_task_calls(store)
        return cls(
            store=store,
            metrics=Metrics(store),
            tokens=TokenCache(store),
            worker_queues=WorkerQueues(store),
            hot=hot,
            grouped=grouped,
            wakeups=WakeUps(store),
        )


def context_of(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context
