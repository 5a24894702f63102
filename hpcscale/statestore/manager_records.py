"""The manager's records in the store: its registration, its submissions, its decisions.

They are what lets the manager keep no state of its own (invariant 5): a submission is
recorded as an intent BEFORE sbatch runs, so a manager that dies or whose sbatch times out
finds the tag on its next start and reconciles it with the scheduler instead of submitting again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from hpcscale.errors import InvalidTransition, NotFound
from hpcscale.models import (
    LIVE_WORKER_STATES,
    OPEN_SUBMISSION_STATES,
    DecisionRecord,
    ManagerInfo,
    ManagerRegistration,
    Submission,
    SubmissionIntent,
    SubmissionState,
    SubmissionUpdate,
    TaskState,
    WorkerState,
)
from hpcscale.statestore.database import StoreBase
from hpcscale.statestore.schema import (
    decisions,
    events,
    managers,
    pools,
    submissions,
    tasks,
    workers,
)

DECISIONS_KEPT = 500  # per pool; `why` shows the newest


class ManagerRecords(StoreBase):
    """The `managers`, `submissions` and `decisions` tables, and what a manager reads back."""

    # ------------------------------------------------------------------ managers

    def register_manager(self, name: str, reg: ManagerRegistration) -> ManagerInfo:
        """Claim the name for `reg.instance`; refuse while another instance is alive."""
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(select(managers).where(managers.c.name == name)).first()
            if (
                row is not None
                and row.instance != reg.instance
                and row.instance != reg.takeover_from
                and now - row.heartbeat_at < reg.stale_after
            ):
                raise InvalidTransition(
                    f"manager {name!r} is already running on {row.host} (instance "
                    f"{row.instance}, last seen {now - row.heartbeat_at:.0f}s ago); stop it "
                    f"first, or wait {reg.stale_after - (now - row.heartbeat_at):.0f}s"
                )
            values = {
                "instance": reg.instance,
                "host": reg.host,
                "pid": reg.pid,
                "heartbeat_at": now,
            }
            if row is None:
                conn.execute(insert(managers).values(name=name, started_at=now, **values))
            elif row.instance != reg.instance:
                conn.execute(
                    update(managers).where(managers.c.name == name).values(started_at=now, **values)
                )
            else:
                conn.execute(update(managers).where(managers.c.name == name).values(**values))
            for pool, min_workers in reg.pools.items():
                changed = conn.execute(
                    update(pools)
                    .where(pools.c.name == pool)
                    .values(manager=name, min_workers=min_workers, updated_at=now)
                )
                if changed.rowcount == 0:
                    conn.execute(
                        insert(pools).values(
                            name=pool, manager=name, min_workers=min_workers, updated_at=now
                        )
                    )
            if row is None or row.instance != reg.instance:
                self._events(
                    conn,
                    [{"ts": now, "kind": "manager.started", "detail": f"{name} on {reg.host}"}],
                )
        return self.get_manager(name)

    def get_manager(self, name: str) -> ManagerInfo:
        with self._read() as conn:
            row = conn.execute(select(managers).where(managers.c.name == name)).first()
        if row is None:
            raise NotFound(f"no manager {name!r}")
        return ManagerInfo(
            name=row.name,
            instance=row.instance,
            host=row.host,
            pid=row.pid,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
        )

    def list_managers(self) -> list[ManagerInfo]:
        with self._read() as conn:
            rows = conn.execute(select(managers.c.name)).all()
        return [self.get_manager(r.name) for r in rows]

    # ------------------------------------------------------------------ submissions

    def record_intent(self, intent: SubmissionIntent) -> Submission:
        now = self.clock()
        with self._write() as conn:
            exists = conn.execute(
                select(submissions.c.tag).where(submissions.c.tag == intent.tag)
            ).first()
            if exists is not None:
                raise InvalidTransition(f"submission {intent.tag} already recorded")
            conn.execute(
                insert(submissions).values(
                    tag=intent.tag,
                    manager=intent.manager,
                    pool=intent.pool,
                    count=intent.count,
                    job_ids="[]",
                    state=SubmissionState.INTENT.value,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._events(
                conn,
                [
                    {
                        "ts": now,
                        "kind": "submission.intent",
                        "detail": f"{intent.pool} {intent.tag} x{intent.count}",
                    }
                ],
            )
        return self.get_submission(intent.tag)

    def update_submission(self, tag: str, change: SubmissionUpdate) -> Submission:
        now = self.clock()
        values: dict[str, Any] = {"state": change.state.value, "updated_at": now}
        if change.job_ids is not None:
            values["job_ids"] = json.dumps(change.job_ids)
        if change.count is not None:
            values["count"] = change.count
        if change.detail is not None:
            values["detail"] = change.detail
        with self._write() as conn:
            row = conn.execute(
                select(submissions.c.state, submissions.c.pool).where(submissions.c.tag == tag)
            ).first()
            if row is None:
                raise NotFound(f"no submission {tag}")
            if SubmissionState(row.state) not in OPEN_SUBMISSION_STATES:
                raise InvalidTransition(f"submission {tag} is already {row.state}")
            conn.execute(update(submissions).where(submissions.c.tag == tag).values(**values))
            detail = f"{row.pool} {tag}" + (f": {change.detail}" if change.detail else "")
            self._events(
                conn, [{"ts": now, "kind": f"submission.{change.state.value}", "detail": detail}]
            )
        return self.get_submission(tag)

    def get_submission(self, tag: str) -> Submission:
        with self._read() as conn:
            row = conn.execute(select(submissions).where(submissions.c.tag == tag)).first()
        if row is None:
            raise NotFound(f"no submission {tag}")
        return submission_of(row)

    def list_submissions(
        self,
        *,
        manager: str | None = None,
        pool: str | None = None,
        open_only: bool = False,
        limit: int = 1000,
        since: float | None = None,
    ) -> list[Submission]:
        """Newest first; `since`: only those created at or after it (the hourly ceiling)."""
        query = select(submissions).order_by(submissions.c.created_at.desc()).limit(limit)
        if since is not None:
            query = query.where(submissions.c.created_at >= since)
        if manager is not None:
            query = query.where(submissions.c.manager == manager)
        if pool is not None:
            query = query.where(submissions.c.pool == pool)
        if open_only:
            query = query.where(submissions.c.state.in_([s.value for s in OPEN_SUBMISSION_STATES]))
        with self._read() as conn:
            return [submission_of(r) for r in conn.execute(query)]

    # ------------------------------------------------------------------ workers whose job ended

    def worker_gone(self, worker_id: str, reason: str, attempt_used: bool = True) -> list[int]:
        """The worker's job ended without it deregistering (killed, node failure, wall time):
        its tasks go back now, instead of after the lease TTL, attempt counted (or dead) unless
        the site took the job back (`attempt_used` False: requeue, preemption)."""
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(select(workers.c.state).where(workers.c.id == worker_id)).first()
            if row is None:
                raise NotFound(f"no worker {worker_id}")
            moved = self._requeue_held(conn, worker_id, reason, now, attempt_used)
            dead = {t.id for t in moved if attempt_used and t.attempts >= t.max_attempts}
            if row.state in LIVE_WORKER_STATES:
                conn.execute(
                    update(workers)
                    .where(workers.c.id == worker_id)
                    .values(
                        state=WorkerState.LOST.value, end_reason=reason, busy_slots=0, ended_at=now
                    )
                )
            self._events(
                conn,
                # Every row names every column: an executemany insert takes its columns from
                # the first row, so a key missing there is dropped from all the others (the
                # task events below lost their task_id that way). A worker that had ended on
                # its own before the manager saw its job end was not lost.
                [
                    {
                        "ts": now,
                        "kind": "worker.lost",
                        "task_id": None,
                        "worker_id": worker_id,
                        "detail": reason,
                    }
                    for _ in range(1 if row.state in LIVE_WORKER_STATES else 0)
                ]
                + [
                    {
                        "ts": now,
                        "kind": "task.dead" if t.id in dead else "task.requeued",
                        "task_id": t.id,
                        "worker_id": worker_id,
                        "detail": f"worker lost: {reason}",
                    }
                    for t in moved
                ],
            )
        return sorted(t.id for t in moved)

    def _requeue_held(
        self, conn: Connection, worker_id: str, reason: str, now: float, attempt_used: bool
    ) -> list[Any]:
        """The worker's running tasks back to `waiting` (attempt counted, or given back) or
        `dead`: those moved."""
        held = conn.execute(
            select(tasks.c.id, tasks.c.attempts, tasks.c.max_attempts).where(
                tasks.c.lease_owner == worker_id, tasks.c.state == TaskState.RUNNING.value
            )
        ).all()
        moved = []
        for task in held:
            dead = attempt_used and task.attempts >= task.max_attempts
            # Only if the lease is still that worker's: on PostgreSQL the rows above are not
            # locked, and an expiry, a cancel or another claim may have moved the task since.
            changed = conn.execute(
                update(tasks)
                .where(
                    tasks.c.id == task.id,
                    tasks.c.lease_owner == worker_id,
                    tasks.c.state == TaskState.RUNNING.value,
                )
                .values(
                    state=(TaskState.DEAD if dead else TaskState.WAITING).value,
                    attempts=tasks.c.attempts - (0 if attempt_used else 1),
                    lease_owner=None,
                    lease_expiry=None,
                    ended_at=now if dead else None,
                    reason=f"worker lost: {reason}" if dead else None,
                )
            )
            if changed.rowcount == 1:
                moved.append(task)
        return moved

    # ------------------------------------------------------------------ decisions

    def record_decision(self, record: DecisionRecord) -> None:
        self.record_decisions([record])

    def record_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """A cycle's decisions (one a pool) in one transaction; each pool keeps its newest."""
        if not records:
            return
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                insert(decisions),
                [
                    {
                        "ts": r.ts or now,
                        "manager": r.manager,
                        "pool": r.pool,
                        "data": json.dumps(r.data, default=str),
                    }
                    for r in records
                ],
            )
            for pool in sorted({r.pool for r in records}):
                newest = conn.execute(
                    select(decisions.c.id)
                    .where(decisions.c.pool == pool)
                    .order_by(decisions.c.id.desc())
                    .offset(DECISIONS_KEPT)
                    .limit(1)
                ).first()
                if newest is not None:
                    conn.execute(
                        delete(decisions).where(
                            and_(decisions.c.pool == pool, decisions.c.id <= newest.id)
                        )
                    )

    def list_decisions(self, pool: str, limit: int = 10) -> list[DecisionRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(decisions)
                .where(decisions.c.pool == pool)
                .order_by(decisions.c.id.desc())
                .limit(limit)
            ).all()
        return [
            DecisionRecord(manager=r.manager, pool=r.pool, ts=r.ts, data=json.loads(r.data))
            for r in reversed(rows)
        ]


_SUBMISSION_COLUMNS = tuple(c.name for c in submissions.c)


def submission_of(row: Any) -> Submission:
    """From a row of select(submissions), validated by pydantic-core from a dict: a manager
    reads hundreds a cycle (its open arrays), and attribute access and Submission(**kwargs)
    cost half as much again (bench/scale.py)."""
    values = dict(zip(_SUBMISSION_COLUMNS, row, strict=True))
    values["job_ids"] = json.loads(values["job_ids"])
    del values["rev"]  # the feed's, not the record's
    return Submission.model_validate(values)


class PoolTotals:
    """Counters per pool for /metrics, derived from the records (no state in the server)."""

    def __init__(self, submissions: int, elements: int, failed_starts: int) -> None:
        self.submissions = submissions
        self.elements = elements
        self.failed_starts = failed_starts


def latest_decisions(records: ManagerRecords) -> list[DecisionRecord]:
    """The newest decision of every pool."""
    with records._read() as conn:
        newest = select(func.max(decisions.c.id).label("id")).group_by(decisions.c.pool).subquery()
        rows = conn.execute(select(decisions).join(newest, decisions.c.id == newest.c.id)).all()
    return [
        DecisionRecord(manager=r.manager, pool=r.pool, ts=r.ts, data=json.loads(r.data))
        for r in rows
    ]


def pool_totals(records: ManagerRecords) -> dict[str, PoolTotals]:
    with records._read() as conn:
        subs = conn.execute(
            select(
                submissions.c.pool,
                func.count().label("n"),
                func.sum(submissions.c.count).label("elements"),
            ).group_by(submissions.c.pool)
        ).all()
        failures = conn.execute(
            select(events.c.detail).where(events.c.kind == "pool.failed_start")
        ).all()
    totals = {r.pool: PoolTotals(int(r.n), int(r.elements or 0), 0) for r in subs}
    for row in failures:
        pool = (row.detail or "").split(" ")[0]
        totals.setdefault(pool, PoolTotals(0, 0, 0)).failed_starts += 1
    return totals
