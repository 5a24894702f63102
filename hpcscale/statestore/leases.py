"""Leases: a worker's time-limited claim on a task (invariants 1 and 2 of DESIGN.md).

A claim bumps the task's `fence` and counts an attempt. Every later call about that run (result,
release) must carry the fence; any other is stale and changes nothing (invariant 1). A lease not
renewed by a heartbeat within the TTL expires: back to `waiting`, or `dead` once max_attempts are
used (invariant 2). Release hands a task back without using up its attempt.

Claim and results are the hot paths: they speak the driver's SQL (hot_sql.py) on a raw cursor.
Leases are part of the host records because a claim asks whether the worker's host is denied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, update

from hpcscale.errors import InvalidTransition, NotFound
from hpcscale.models import (
    LIVE_WORKER_STATES,
    ClaimedTask,
    Lease,
    ResultOutcome,
    TaskResult,
    TaskState,
    WorkerState,
)
from hpcscale.statestore.hosts import HostRecords
from hpcscale.statestore.hot_sql import Cursor
from hpcscale.statestore.schema import tasks, workers


class Leases(HostRecords):
    """Claim, results, release and expiry of the tasks' leases."""

    def claim(
        self, worker_id: str, queues: Sequence[str], max_tasks: int, free_slots: int
    ) -> list[ClaimedTask]:
        """Lease up to max_tasks waiting tasks that fit in free_slots, by priority then age.

        One transaction: the worker's liveness (a claim counts as a heartbeat), the candidates
        (PostgreSQL: FOR UPDATE SKIP LOCKED), their leases (fence and attempts bumped) and a
        `task.claimed` event each.
        """
        now = self.clock()
        expiry = now + self.lease_ttl
        want = min(max_tasks, free_slots)
        sql = self._sql
        select_sql, params = sql.claim_select(queues)
        params.update(free=free_slots, lim=want + 16)
        with self._hot() as cur:
            self._touch_worker(cur, worker_id, now)
            if self._denied and self._worker_host_denied(cur, worker_id, now):
                return []
            cur.execute(select_sql, params)
            chosen = []
            room = free_slots
            for row in cur.fetchall():
                if row[5] <= room:
                    chosen.append(row)
                    room -= row[5]
                    if len(chosen) == want or room == 0:
                        break
            if not chosen:
                return []
            ids = sql.ids([r[0] for r in chosen])
            cur.execute(
                sql.claim_update, {"wid": worker_id, "expiry": expiry, "now": now, "ids": ids}
            )
            cur.execute(sql.claimed_events, {"ts": now, "wid": worker_id, "ids": ids})
        return [
            ClaimedTask(
                id=task_id,
                queue=queue,
                command=json.loads(command),
                env=json.loads(env),
                cwd=cwd,
                slots=slots,
                timeout=timeout,
                attempts=attempts + 1,
                fence=fence + 1,
                lease_expiry=expiry,
            )
            for task_id, queue, command, env, cwd, slots, timeout, attempts, fence in chosen
        ]

    def _worker_host_denied(self, cur: Cursor, worker_id: str, now: float) -> bool:
        cur.execute(self._sql.worker_host, {"wid": worker_id})
        row = cur.fetchone()
        return row is not None and self.host_denied(row[0], now)

    def _touch_worker(self, cur: Cursor, worker_id: str, now: float) -> None:
        """A claim proves the worker alive: it counts as a heartbeat and revives a `lost` one."""
        params = {"now": now, "wid": worker_id}
        cur.execute(self._sql.touch_worker, params)
        if cur.rowcount == 1:
            return
        cur.execute(self._sql.revive_worker, params)
        if cur.rowcount == 1:
            return
        cur.execute(self._sql.worker_state, {"wid": worker_id})
        if cur.fetchone() is None:
            raise NotFound(f"no worker {worker_id}; register first")
        raise InvalidTransition(f"worker {worker_id} has ended; register again")

    def results(self, worker_id: str, results: Sequence[TaskResult]) -> list[ResultOutcome]:
        """Record outcomes; a result whose fence is not the live lease's is `stale`, a no-op.

        The tasks' rows are read (PostgreSQL: locked, FOR UPDATE) in the same transaction that
        changes them, so no claim or expiry can move a lease between the check and the write.
        """
        now = self.clock()
        outcomes: list[ResultOutcome] = []
        updates: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        sql = self._sql
        with self._hot() as cur:
            cur.execute(sql.results_select, {"ids": sql.ids(sorted({r.task_id for r in results}))})
            rows = {r[0]: r for r in cur.fetchall()}
            seen: set[int] = set()
            for res in results:
                row = rows.get(res.task_id)
                if (
                    row is None
                    or row[1] != TaskState.RUNNING.value
                    or row[2] != res.fence
                    or row[5] != worker_id  # fences are small counters: the lease must be ours
                    or res.task_id in seen
                ):
                    outcomes.append(ResultOutcome(task_id=res.task_id, outcome="stale"))
                    continue
                seen.add(res.task_id)
                outcome, change, happened = _judge(res, row, worker_id, now)
                updates.append(change)
                event_rows.extend(happened)
                outcomes.append(ResultOutcome(task_id=res.task_id, outcome=outcome))
            if updates:
                cur.executemany(sql.results_update, updates)
                cur.execute(sql.worker_done, {"done": len(updates), "wid": worker_id})
            if event_rows:
                self._result_events(cur, worker_id, now, event_rows)
        return outcomes

    def _result_events(
        self, cur: Cursor, worker_id: str, now: float, event_rows: list[dict[str, Any]]
    ) -> None:
        sql = self._sql
        kinds = {(e["kind"], e["detail"]) for e in event_rows}
        kind, detail = next(iter(kinds))
        if len(kinds) == 1 and detail is None:  # the usual: they all succeeded
            ids = sql.ids([e["task_id"] for e in event_rows])
            cur.execute(sql.same_events, {"ts": now, "kind": kind, "wid": worker_id, "ids": ids})
        else:
            cur.executemany(sql.insert_event, event_rows)

    def release(
        self,
        worker_id: str,
        leases: Sequence[Lease] | None = None,
        reason: str = "released",
        attempt_used: bool = False,
    ) -> list[int]:
        """Give tasks back to `waiting` without using up their attempt (unless `attempt_used`)."""
        with self._write() as conn:
            return self._release(conn, worker_id, leases, reason, attempt_used)

    def _release(
        self,
        conn: Connection,
        worker_id: str,
        leases: Sequence[Lease] | None,
        reason: str,
        attempt_used: bool = False,
    ) -> list[int]:
        now = self.clock()
        cond = and_(tasks.c.lease_owner == worker_id, tasks.c.state == TaskState.RUNNING.value)
        if leases is not None:
            if not leases:
                return []
            cond = and_(
                cond,
                or_(
                    *[
                        and_(tasks.c.id == lease.task_id, tasks.c.fence == lease.fence)
                        for lease in leases
                    ]
                ),
            )
        if attempt_used:
            return self._requeue_counted(conn, worker_id, cond, reason, now)
        released = [
            int(r.id)
            for r in conn.execute(
                update(tasks)
                .where(cond)
                .values(
                    state=TaskState.WAITING.value,
                    attempts=tasks.c.attempts - 1,
                    lease_owner=None,
                    lease_expiry=None,
                )
                .returning(tasks.c.id)
            )
        ]
        self._events(
            conn,
            [
                {
                    "ts": now,
                    "kind": "task.released",
                    "task_id": i,
                    "worker_id": worker_id,
                    "detail": reason,
                }
                for i in released
            ],
        )
        return sorted(released)

    def _requeue_counted(
        self, conn: Connection, worker_id: str, cond: Any, reason: str, now: float
    ) -> list[int]:
        """Back to `waiting` with the attempt counted, or `dead` on the last one."""
        rows = conn.execute(select(tasks.c.id, tasks.c.attempts, tasks.c.max_attempts).where(cond))
        done = []
        for row in rows.all():
            dead = row.attempts >= row.max_attempts
            conn.execute(
                update(tasks)
                .where(tasks.c.id == row.id)
                .values(
                    state=(TaskState.DEAD if dead else TaskState.WAITING).value,
                    lease_owner=None,
                    lease_expiry=None,
                    ended_at=now if dead else None,
                    reason=f"{reason} on the last attempt" if dead else None,
                )
            )
            kind = "task.dead" if dead else "task.requeued"
            self._events(
                conn,
                [
                    {
                        "ts": now,
                        "kind": kind,
                        "task_id": row.id,
                        "worker_id": worker_id,
                        "detail": reason,
                    }
                ],
            )
            done.append(int(row.id))
        return sorted(done)

    def expire(self) -> int:
        """Requeue (or kill) tasks whose lease ran out; mark silent workers lost. Returns tasks."""
        now = self.clock()
        query = select(
            tasks.c.id, tasks.c.attempts, tasks.c.max_attempts, tasks.c.lease_owner
        ).where(tasks.c.state == TaskState.RUNNING.value, tasks.c.lease_expiry < now)
        if not self.is_sqlite:
            # Locked, so a result or a claim cannot slip in between this read and the update
            # below (a row a result is busy with is skipped: it is ending anyway).
            query = query.with_for_update(skip_locked=True)
        with self._write() as conn:
            expired = conn.execute(query).all()
            if expired:
                self._end_leases(conn, expired, now)
            self._mark_silent_workers_lost(conn, now)
        return len(expired)

    def _end_leases(self, conn: Connection, expired: Sequence[Any], now: float) -> None:
        """The expired leases' tasks back to `waiting`, or `dead` on their last attempt."""
        to_dead = [r for r in expired if r.attempts >= r.max_attempts]
        to_wait = [r for r in expired if r.attempts < r.max_attempts]
        base = update(tasks).where(
            tasks.c.id == bindparam("b_id"), tasks.c.state == TaskState.RUNNING.value
        )
        if to_wait:
            conn.execute(
                base.values(state=TaskState.WAITING.value, lease_owner=None, lease_expiry=None),
                [{"b_id": r.id} for r in to_wait],
            )
        if to_dead:
            conn.execute(
                base.values(
                    state=TaskState.DEAD.value,
                    lease_owner=None,
                    lease_expiry=None,
                    ended_at=now,
                    reason="lease expired on the last attempt",
                ),
                [{"b_id": r.id} for r in to_dead],
            )
        self._events(
            conn,
            [
                {
                    "ts": now,
                    "kind": "task.requeued",
                    "task_id": r.id,
                    "worker_id": r.lease_owner,
                    "detail": "lease expired",
                }
                for r in to_wait
            ]
            + [
                {
                    "ts": now,
                    "kind": "task.dead",
                    "task_id": r.id,
                    "worker_id": r.lease_owner,
                    "detail": "lease expired",
                }
                for r in to_dead
            ],
        )

    def _mark_silent_workers_lost(self, conn: Connection, now: float) -> None:
        lost = [
            r.id
            for r in conn.execute(
                update(workers)
                .where(
                    workers.c.state.in_(LIVE_WORKER_STATES),
                    workers.c.last_heartbeat < now - self.lease_ttl,
                )
                .values(
                    state=WorkerState.LOST.value,
                    end_reason="missed heartbeats",
                    ended_at=workers.c.last_heartbeat,
                )
                .returning(workers.c.id)
            )
        ]
        self._events(
            conn,
            [
                {"ts": now, "kind": "worker.lost", "worker_id": w, "detail": "missed heartbeats"}
                for w in lost
            ],
        )


def _judge(
    res: TaskResult, row: Any, worker_id: str, now: float
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A live lease's result: its outcome, the task's new values, and the events it makes
    (row: id, state, fence, attempts, max_attempts, lease_owner)."""
    if res.success:
        state, outcome, kind = TaskState.SUCCEEDED, "succeeded", "task.succeeded"
    elif not res.retryable:
        state, outcome, kind = TaskState.FAILED, "failed", "task.failed"
    elif row[3] >= row[4]:
        state, outcome, kind = TaskState.DEAD, "dead", "task.dead"
    else:
        state, outcome, kind = TaskState.WAITING, "requeued", "task.requeued"
    final = state != TaskState.WAITING
    change = {
        "id": res.task_id,
        "state": state.value,
        "exit": res.exit_code,
        "tail": res.output_tail,
        "reason": res.reason,
        "ended": now if final else None,
    }
    happened: list[dict[str, Any]] = []
    if not res.success:
        detail = f"exit {res.exit_code}" + (f": {res.reason}" if res.reason else "")
        happened.append(
            {
                "ts": now,
                "kind": "task.failed",
                "task_id": res.task_id,
                "worker_id": worker_id,
                "detail": detail,
            }
        )
    if kind != "task.failed":
        happened.append(
            {
                "ts": now,
                "kind": kind,
                "task_id": res.task_id,
                "worker_id": worker_id,
                "detail": None,
            }
        )
    return outcome, change, happened
