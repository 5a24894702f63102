"""The event log: what happened, newest last, for `hpcscale events`, the host accounting and the
manager's look for failed starts. Each part writes its events in its own transaction
(StoreBase._events); here they are read, and written by those outside the store (the manager).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from hpcscale.models import Event
from hpcscale.statestore.database import StoreBase
from hpcscale.statestore.schema import events


class EventLog(StoreBase):
    """The `events` table."""

    def events(
        self, *, kind_prefix: str | None = None, limit: int = 50, task_id: int | None = None
    ) -> list[Event]:
        """The newest `limit` events, oldest first."""
        query = select(events).order_by(events.c.id.desc()).limit(limit)
        if kind_prefix:
            query = query.where(*_prefix_range(events.c.kind, kind_prefix, self.is_sqlite))
            query = query.where(events.c.kind.startswith(kind_prefix, autoescape=True))
        if task_id is not None:
            query = query.where(events.c.task_id == task_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                id=r.id,
                ts=r.ts,
                kind=r.kind,
                task_id=r.task_id,
                worker_id=r.worker_id,
                detail=r.detail,
            )
            for r in reversed(rows)
        ]

    def add_event(
        self,
        kind: str,
        detail: str | None = None,
        *,
        task_id: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        with self._write() as conn:
            self._events(
                conn,
                [
                    {
                        "ts": self.clock(),
                        "kind": kind,
                        "task_id": task_id,
                        "worker_id": worker_id,
                        "detail": detail,
                    }
                ],
            )


def _prefix_range(column: Any, prefix: str, is_sqlite: bool) -> list[Any]:
    """`column` starts with `prefix` as a range an index can seek (LIKE cannot use one: SQLite's
    is case-insensitive, PostgreSQL's needs the C collation): byte-wise comparisons, SQLite's
    BINARY and PostgreSQL's text_pattern_ops (~>=~, ~<~; see ix_events_kind). The LIKE stays the
    test; this only narrows where it looks."""
    last = ord(prefix[-1])
    upper = prefix[:-1] + chr(last + 1) if last < 0x10FFFF else None
    if is_sqlite:
        return [column >= prefix] + ([column < upper] if upper is not None else [])
    return [column.op("~>=~")(prefix)] + ([column.op("~<~")(upper)] if upper is not None else [])
