"""Tasks: submitted, listed, counted, cancelled; the backlog and run times the manager sizes by.

What happens to a task while a worker holds it (claim, result, release, expiry) is leases.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, literal, literal_column, select, update

from hpcscale import estimate
from hpcscale.errors import NotFound
from hpcscale.models import Backlog, QueueStats, Task, TaskSpec, TaskState
from hpcscale.statestore.batched import union_rows
from hpcscale.statestore.database import StoreBase
from hpcscale.statestore.schema import batches, tasks, waiting_counts

# A literal, not a parameter: the planners use the partial index ix_tasks_waiting_age only when
# the query names its predicate (PostgreSQL's generic plans of prepared statements included).
WAITING: Any = literal_column("'waiting'")
RECENT_DURATIONS = estimate.RECENT_DURATIONS
# What a retried task forgets of its last run (its output tail stays until the next one ends).
AFRESH: dict[str, Any] = {
    "attempts": 0, "lease_owner": None, "lease_expiry": None, "exit_code": None, "reason": None,
    "started_at": None, "ended_at": None,
}  # fmt: skip


class Tasks(StoreBase):
    """The `tasks` table outside of leases."""

    def submit(
        self, specs: Sequence[TaskSpec], idempotency_key: str | None = None
    ) -> tuple[list[int], bool]:
        """Insert tasks; the same idempotency key again returns the first call's ids."""
        now = self.clock()
        rows = [
            {
                "queue": s.queue,
                "priority": s.priority,
                "command": json.dumps(s.command),
                "env": json.dumps(s.env),
                "cwd": s.cwd,
                "slots": s.slots,
                "max_attempts": s.max_attempts,
                "timeout": s.timeout,
                "attempts": 0,
                "state": TaskState.WAITING.value,
                "fence": 0,
                "submitted_at": now,
            }
            for s in specs
        ]
        with self._write() as conn:
            if idempotency_key is not None:
                found = conn.execute(
                    select(batches.c.task_ids).where(batches.c.key == idempotency_key)
                ).first()
                if found is not None:
                    return list(json.loads(found.task_ids)), True
            result = conn.execute(
                insert(tasks).returning(tasks.c.id, sort_by_parameter_order=True), rows
            )
            ids = [int(r.id) for r in result]
            if idempotency_key is not None:
                conn.execute(
                    insert(batches).values(
                        key=idempotency_key, task_ids=json.dumps(ids), created_at=now
                    )
                )
            self._events(
                conn,
                [{"ts": now, "kind": "task.submitted", "task_id": i, "detail": None} for i in ids],
            )
        return ids, False

    def submit_seq(self) -> int:
        """A number that grows with every submit: managers long-poll on it for new work."""
        with self._read() as conn:
            value = conn.execute(select(func.max(tasks.c.id))).scalar()
        return int(value or 0)

    def claimable(self, queues: Sequence[str] | None = None) -> list[Backlog]:
        """Waiting tasks per queue: counts from waiting_counts (a few rows, not 10^6 tasks) and
        each queue's oldest from the partial index ix_tasks_waiting_age (one seek each)."""
        now = self.clock()
        counts = select(
            waiting_counts.c.queue,
            func.sum(waiting_counts.c.n).label("n"),
            func.sum(waiting_counts.c.slots).label("slots"),
        )
        if queues is not None:
            counts = counts.where(waiting_counts.c.queue.in_(list(queues)))
        backlog = counts.group_by(waiting_counts.c.queue).subquery()
        oldest = (
            select(tasks.c.submitted_at)
            .where(tasks.c.state == WAITING, tasks.c.queue == backlog.c.queue)
            .order_by(tasks.c.submitted_at)
            .limit(1)
            .scalar_subquery()
        )
        query = (
            select(backlog.c.queue, backlog.c.n, backlog.c.slots, oldest.label("oldest"))
            .where(backlog.c.n > 0)
            .order_by(backlog.c.queue)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            Backlog(
                queue=r.queue,
                count=int(r.n),
                slots=int(r.slots or 0),
                oldest_age=max(0.0, now - float(r.oldest if r.oldest is not None else now)),
            )
            for r in rows
        ]

    def cancel(self, ids: Sequence[int]) -> list[int]:
        """Cancel tasks that have not ended; a running one's lease goes stale at once."""
        now = self.clock()
        with self._write() as conn:
            cancelled = [
                int(r.id)
                for r in conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.id.in_(list(ids)),
                        tasks.c.state.in_([TaskState.WAITING.value, TaskState.RUNNING.value]),
                    )
                    .values(
                        state=TaskState.CANCELLED.value,
                        lease_owner=None,
                        lease_expiry=None,
                        ended_at=now,
                    )
                    .returning(tasks.c.id)
                )
            ]
            self._events(
                conn,
                [
                    {"ts": now, "kind": "task.cancelled", "task_id": i, "detail": None}
                    for i in cancelled
                ],
            )
        return sorted(cancelled)

    def retry(self, ids: Sequence[int]) -> list[int]:
        """Send ended tasks that did not succeed (dead, failed, cancelled) back to `waiting`
        with their attempts from zero: a redrive once the cause is fixed. The fence is kept
        (it only grows), so a result from a lease of before the retry stays stale."""
        now = self.clock()
        again = [TaskState.DEAD.value, TaskState.FAILED.value, TaskState.CANCELLED.value]
        with self._write() as conn:
            retried = [
                int(r.id)
                for r in conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(list(ids)), tasks.c.state.in_(again))
                    .values(state=TaskState.WAITING.value, submitted_at=now, **AFRESH)
                    .returning(tasks.c.id)
                )
            ]
            self._events(
                conn,
                [
                    {"ts": now, "kind": "task.retried", "task_id": i, "detail": None}
                    for i in retried
                ],
            )
        return sorted(retried)

    def count_after(
        self, *, state: str | None = None, queue: str | None = None, after_id: int = 0
    ) -> int:
        """How many tasks a listing would still show past `after_id` (a page's last id)."""
        query = select(func.count()).select_from(tasks).where(tasks.c.id > after_id)
        if state is not None:
            query = query.where(tasks.c.state == state)
        if queue is not None:
            query = query.where(tasks.c.queue == queue)
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def get_task(self, task_id: int) -> Task:
        with self._read() as conn:
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        return _task(row)

    def list_tasks(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Task]:
        query = select(tasks).where(tasks.c.id > after_id).order_by(tasks.c.id).limit(limit)
        if state is not None:
            query = query.where(tasks.c.state == state)
        if queue is not None:
            query = query.where(tasks.c.queue == queue)
        with self._read() as conn:
            return [_task(r) for r in conn.execute(query)]

    def count_tasks(self) -> dict[tuple[str, str], int]:
        """(queue, state) -> count, for /metrics and `status`: the waiting ones from
        waiting_counts, the others counted down ix_tasks_claim, one range per state (a pass
        over the history, not over the backlog)."""
        others: list[Any] = [
            literal_column(f"'{s.value}'") for s in TaskState if s != TaskState.WAITING
        ]
        query = (
            select(tasks.c.queue, tasks.c.state, func.count().label("n"))
            .where(tasks.c.state.in_(others))
            .group_by(tasks.c.queue, tasks.c.state)
        )
        waiting = (
            select(waiting_counts.c.queue, func.sum(waiting_counts.c.n).label("n"))
            .group_by(waiting_counts.c.queue)
            .having(func.sum(waiting_counts.c.n) > 0)
        )
        with self._read() as conn:
            counts = {(r.queue, r.state): int(r.n) for r in conn.execute(query)}
            for r in conn.execute(waiting):
                counts[(r.queue, TaskState.WAITING.value)] = int(r.n)
        return counts

    def queue_stats(self, queue: str, limit: int = RECENT_DURATIONS) -> QueueStats:
        return self.queues_stats([queue], limit)[0]

    def queues_stats(
        self, queues: Sequence[str], limit: int = RECENT_DURATIONS
    ) -> list[QueueStats]:
        """Each queue's newest `limit` run times: a range of ix_tasks_ended per queue, all in
        one statement (UNION ALL), as the manager asks for all its queues every cycle."""
        if not queues:
            return []
        newest = [
            select(
                literal(queue).label("queue"),
                tasks.c.ended_at.label("ended"),
                (tasks.c.ended_at - tasks.c.started_at).label("d"),
            )
            .where(
                tasks.c.queue == queue,
                tasks.c.state == TaskState.SUCCEEDED.value,
                tasks.c.ended_at.is_not(None),
            )
            .order_by(tasks.c.ended_at.desc())
            .limit(limit)
            .subquery()
            for queue in queues
        ]
        found: dict[str, list[tuple[float, float]]] = {queue: [] for queue in queues}
        with self._read() as conn:
            for r in union_rows(conn, [select(part) for part in newest]):
                found[r.queue].append((float(r.ended), max(0.0, float(r.d))))
        return [_queue_stats(queue, [d for _, d in sorted(found[queue], reverse=True)])
                for queue in queues]  # fmt: skip


def _task(row: Any) -> Task:
    return Task(
        id=row.id,
        queue=row.queue,
        priority=row.priority,
        command=json.loads(row.command),
        env=json.loads(row.env),
        cwd=row.cwd,
        slots=row.slots,
        max_attempts=row.max_attempts,
        timeout=row.timeout,
        attempts=row.attempts,
        state=TaskState(row.state),
        lease_owner=row.lease_owner,
        lease_expiry=row.lease_expiry,
        fence=row.fence,
        exit_code=row.exit_code,
        output_tail=row.output_tail,
        reason=row.reason,
        submitted_at=row.submitted_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def _queue_stats(queue: str, durations: list[float]) -> QueueStats:
    """Durations newest first."""
    if not durations:
        return QueueStats(queue=queue, recent_durations=[], mean=None, p90=None)
    return QueueStats(
        queue=queue,
        recent_durations=durations,
        mean=sum(durations) / len(durations),
        p90=estimate.p90(durations),
    )
