"""Wakes the managers long-polling /v1/wait when tasks are submitted.

A submission through this process wakes its long-polls at once. On PostgreSQL it is also
announced to every replica behind the load balancer (statestore/wakeups.py: NOTIFY), and a
thread of each replica listens (LISTEN) and wakes its own, so a manager polling replica B hears
of a burst submitted through replica A at once (issue 17). SQLite serves one process: the
in-process wake-up is all there is.

A generation number, bumped on every wake-up, closes the gap between a long-poll reading the
store and starting to wait: a wake-up in between is seen, not slept through.
"""

from __future__ import annotations

import logging
import threading

from hpcscale.errors import HpcscaleError
from hpcscale.statestore import Store

log = logging.getLogger("hpcscale.server")


class WakeUps:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._condition = threading.Condition()
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def generation(self) -> int:
        with self._condition:
            return self._generation

    def wait(self, seen: int, timeout: float) -> None:
        """Until a wake-up after generation `seen`, or `timeout`."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)

    def wake(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def new_work(self) -> None:
        """Tasks were submitted through this process: wake its long-polls, tell the others.
        The submission has committed already; if the announcement fails, the others' managers
        still find the tasks at their poll interval."""
        self.wake()
        try:
            self.store.announce_new_work()
        except HpcscaleError as exc:
            log.warning("could not announce new work to other replicas: %s", exc)

    def start(self) -> None:
        """On PostgreSQL, listen for the other replicas' announcements (a daemon thread)."""
        if self.store.is_sqlite or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.store.listen_new_work,
            args=(self.wake, self._stop),
            name="hpcscale-listen",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
