"""New work announced between API replicas on PostgreSQL: NOTIFY after a submission, LISTEN in
each replica (issue 17), so a manager long-polling one replica hears of tasks submitted through
another at once, not a poll interval later. SQLite has one server process: nothing to do here,
the server wakes its own long-polls (server/wakeups.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from hpcscale.errors import StoreError
from hpcscale.statestore.database import StoreBase

CHANNEL = "hpcscale_new_work"
log = logging.getLogger("hpcscale.statestore")


class WakeUps(StoreBase):
    """announce_new_work / listen_new_work, PostgreSQL's; no-ops on SQLite."""

    def announce_new_work(self) -> None:
        """Tell every listening replica (this one too) that tasks were submitted."""
        if self.is_sqlite:
            return
        try:
            with self._write() as conn:
                conn.exec_driver_sql(f"NOTIFY {CHANNEL}")
        except SQLAlchemyError as exc:
            raise StoreError(f"could not announce new work: {exc}") from exc

    def listen_new_work(self, heard: Callable[[], None], stop: threading.Event) -> None:
        """Call `heard` for every announcement until `stop` is set, on a connection of its own
        (a listener must not go back to the pool). A lost connection is reopened after a
        second; `heard` is called then too, for whatever was announced while nobody listened."""
        if self.is_sqlite:
            return
        import psycopg

        url = make_url(self.url).set(drivername="postgresql").render_as_string(False)
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    heard()
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            heard()
            except psycopg.Error as exc:
                log.warning("listening for new work failed (%s); again in 1s", exc)
                stop.wait(1.0)
