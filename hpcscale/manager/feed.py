"""The manager's copy of its workers and open submissions, kept from the store's change feed.

Reading 10^4 workers and hundreds of open arrays every cycle cost more than the rest of the
cycle together; the store sends a row again only when it changes in a way the manager follows
(Store.observe), so the manager keeps them here. A worker's busy slots and tasks done move with
every task and are not followed: in a live worker's copy they are as of its last change
(CycleView.per_pool lists the workers at max_tasks instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from hpcscale.models import (
    LIVE_WORKER_STATES,
    OPEN_SUBMISSION_STATES,
    CycleView,
    Submission,
    Worker,
)


class Mirror:
    """The copy itself: workers by id, open submissions by tag, and the feed's cursor."""

    def __init__(self, window: float) -> None:
        self.window = window  # ended workers are kept while started within it
        self.cursor: int | None = None  # None: the next read lists them all
        self.feed: str | None = None  # what the cursor is valid in (CycleView.feed)
        self._workers: dict[str, Worker] = {}
        self._open: dict[str, Submission] = {}  # tag -> an open submission of this manager

    def apply(self, view: CycleView, now: float) -> bool:
        """Take a reply's changed rows and its cursor; False if they cannot be taken: another
        feed, or a cursor below the one sent, means the store is not the one the copy came
        from (restarted, restored, replaced), so the copy is dropped and the caller reads the
        full lists."""
        if self.cursor is not None and (view.feed != self.feed or view.cursor < self.cursor):
            self.reset()
            return False
        self.update(view.workers)
        for sub in view.submissions:
            if sub.state in OPEN_SUBMISSION_STATES:
                self._open[sub.tag] = sub
            else:
                self._open.pop(sub.tag, None)
        self.cursor, self.feed = view.cursor, view.feed
        oldest = now - self.window
        for worker in [
            w for w in self._workers.values() if w.state.value not in LIVE_WORKER_STATES
        ]:
            if worker.started_at < oldest:
                del self._workers[worker.id]
        return True

    def update(self, workers: Sequence[Worker]) -> None:
        """Rows read outside the feed (newer than the cursor: the feed sends them again)."""
        for worker in workers:
            self._workers[worker.id] = worker

    def reset(self) -> None:
        """Forget the copy: the next read lists everything."""
        self.cursor = self.feed = None
        self._workers.clear()
        self._open.clear()

    def workers_of(self, pool: str) -> list[Worker]:
        """Its live workers and those started within the window, oldest first."""
        return sorted((w for w in self._workers.values() if w.pool == pool), key=_started)

    def open_submissions(self, pool: str) -> list[Submission]:
        """The pool's submissions not yet ended or failed, newest first."""
        found = [s for s in self._open.values() if s.pool == pool]
        return sorted(found, key=lambda s: s.created_at, reverse=True)


def _started(worker: Worker) -> float:
    return worker.started_at
