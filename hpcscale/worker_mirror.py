"""The manager's copy of its pools' worker records, kept current from the store's change feed.

Reading 10^4 workers every cycle cost more than the rest of the cycle together; the store
sends each row again only when it registers or changes state (observe.py), so the manager keeps
them here. Busy slots and tasks done move with every task and are not followed: in a live
worker's copy they are as of its last change (CycleView says where the current ones are).
"""

from __future__ import annotations

from collections.abc import Sequence

from hpcscale.models import Worker

LIVE = ("active", "draining")


class WorkerMirror:
    def __init__(self, window: float) -> None:
        self.window = window  # ended workers are kept while started within it
        self.cursor: int | None = None  # None: the next read lists them all
        self.feed: str | None = None  # what the cursor is valid in (CycleView.feed)
        self._by_id: dict[str, Worker] = {}

    def apply(self, changed: Sequence[Worker], cursor: int, feed: str, now: float) -> bool:
        """Take a reply's changed rows and its cursor; False if they cannot be taken: another
        feed, or a cursor below the one sent, means the store is not the one the copy came
        from (restarted, restored, replaced), so the copy is dropped and the caller reads the
        full list."""
        if self.cursor is not None and (feed != self.feed or cursor < self.cursor):
            self.reset()
            return False
        self.update(changed)
        self.cursor, self.feed = cursor, feed
        oldest = now - self.window
        for worker in [w for w in self._by_id.values() if w.state.value not in LIVE]:
            if worker.started_at < oldest:
                del self._by_id[worker.id]
        return True

    def update(self, workers: Sequence[Worker]) -> None:
        """Rows read outside the feed (newer than the cursor: the feed sends them again)."""
        for worker in workers:
            self._by_id[worker.id] = worker

    def reset(self) -> None:
        self.cursor = self.feed = None
        self._by_id.clear()

    def of_pool(self, pool: str) -> list[Worker]:
        """Its live workers and those started within the window, oldest first."""
        return sorted((w for w in self._by_id.values() if w.pool == pool), key=_started)


def _started(worker: Worker) -> float:
    return worker.started_at
