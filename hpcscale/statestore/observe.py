"""The manager's cycle as one read: everything it looks at, in one request and one snapshot.

At 10^4 workers a cycle that listed every worker of every pool cost 100 ms and more in the store
alone (bench/scale.py). Here the workers come as a change feed on `workers.rev` (schema.py says
why it is exact on both backends): the first read lists them all, each later one only those
that registered or changed state since; the manager's open submissions likewise. What moves
with every task (busy slots, tasks done) is not followed; the workers that reached max_tasks
come as a short list per pool instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, literal, select, text

from hpcscale.models import (
    Backlog,
    CycleView,
    HeldTasks,
    ObserveRequest,
    PoolHistory,
    PoolObservation,
    PoolQuestion,
    Submission,
    SubmissionState,
    Worker,
)
from hpcscale.statestore.batched import union_rows
from hpcscale.statestore.manager_records import ManagerRecords, submission_of
from hpcscale.statestore.schema import SQLITE_LAST_REV, events, submissions, workers
from hpcscale.statestore.tasks import Tasks
from hpcscale.statestore.workers import WORKER_COLUMNS, Workers, live_workers, rows_to_workers

ALL = 2**31 - 1  # a manager's first read: every open submission, however many
# A queue's waiting tasks wider than a pool's workers; the literals are the partial indexes'.
WIDE = text(
    "SELECT count(*) AS n, coalesce(sum(slots), 0) AS slots, min(slots) AS fewest, "
    "max(slots) AS most FROM tasks "
    "WHERE state = 'waiting' AND slots > 1 AND queue = :q AND slots > :w"
)
OLDEST_FITTING = text(
    "SELECT submitted_at FROM tasks WHERE state = 'waiting' AND queue = :q AND slots <= :w "
    "ORDER BY submitted_at LIMIT 1"
)


class Observe(Tasks, Workers, ManagerRecords):
    """The manager's cycle: the other parts' reads, nested into the one transaction opened
    here, and the pools' histories (queue waits, failed starts) its estimates are made from."""

    def observe(self, manager: str, ask: ObserveRequest) -> CycleView:
        """All of `manager`'s cycle reads, from one snapshot. Its workers: every live one and
        those started since `ask.since` when `ask.cursor` is None, else those changed since."""
        queues = sorted({q for p in ask.pools for q in p.queues})
        with self._read(snapshot=True) as conn:
            cursor, feed = self._cursor(conn)  # first: what commits after it comes next time
            if ask.cursor is None:
                changed = [w for p in ask.pools for w in self.list_workers(p.pool, since=ask.since)]
                subs = self.list_submissions(manager=manager, open_only=True, limit=ALL)
            else:
                changed = self._changed_workers(conn, [p.pool for p in ask.pools], ask.cursor)
                subs = self._changed_submissions(conn, manager, ask.cursor)
            backlog = self.claimable()
            return CycleView(
                backlog=backlog,
                denied_hosts=[h.host for h in self.list_hosts() if h.denied],
                submissions=subs,
                pools=self.list_pools(),
                queue_stats=self.queues_stats(queues),
                per_pool=self._pool_observations(conn, ask.pools, backlog),
                workers=changed,
                cursor=cursor,
                feed=feed,
            )

    def pool_history(self, pool: str, since: float, limit: int = 50) -> PoolHistory:
        return self.pool_histories([(pool, since)], limit)[0]

    def pool_histories(
        self, asks: Sequence[tuple[str, float]], limit: int = 50
    ) -> list[PoolHistory]:
        """Per (pool, since): queue waits (submission -> registration) of its newest `limit`
        workers, failed starts since `since`, its last registration. Three statements for
        all the pools (a UNION ALL of one index range each), not three a pool: a manager asks
        for all its pools every cycle."""
        if not asks:
            return []
        pools = [pool for pool, _ in asks]
        newest = [  # down ix_workers_pool_started, newest first
            select(
                literal(pool).label("pool"),
                workers.c.started_at.label("started"),
                (workers.c.started_at - submissions.c.created_at).label("wait"),
            )
            .select_from(workers.join(submissions, workers.c.submission == submissions.c.tag))
            .where(workers.c.pool == pool)
            .order_by(workers.c.started_at.desc())
            .limit(limit)
            .subquery()
            for pool in pools
        ]
        last = [  # the newest registration, not max() over the pool's history
            select(literal(pool).label("pool"), workers.c.started_at.label("started"))
            .where(workers.c.pool == pool, workers.c.submission.is_not(None))
            .order_by(workers.c.started_at.desc())
            .limit(1)
            .subquery()
            for pool in pools
        ]
        waits: dict[str, list[tuple[float, float]]] = {pool: [] for pool in pools}
        failed: dict[str, list[float]] = {pool: [] for pool in pools}
        latest: dict[str, float] = {}
        with self._read() as conn:
            for r in union_rows(conn, [select(part) for part in newest]):
                waits[r.pool].append((float(r.started), max(0.0, float(r.wait))))
            for r in union_rows(conn, [select(part) for part in last]):
                latest[r.pool] = float(r.started)
            starts = conn.execute(
                select(events.c.ts, events.c.detail)
                .where(
                    events.c.kind == "pool.failed_start",
                    events.c.ts >= min(since for _, since in asks),
                )
                .order_by(events.c.ts)
            )
            for start in starts:  # the detail is "<pool> <element or worker id>"
                pool = (start.detail or "").split(" ", 1)[0]
                if pool in failed:
                    failed[pool].append(float(start.ts))
        return [
            PoolHistory(
                queue_waits=[w for _, w in sorted(waits[pool], reverse=True)],
                failed_starts=[t for t in failed[pool] if t >= since],
                last_registration=latest.get(pool),
            )
            for pool, since in asks
        ]

    def _cursor(self, conn: Connection) -> tuple[int, str]:
        """The worker feed's cursor and what it is valid in (the feed). SQLite: this store's
        opening (one server process owns the file: a file put in its place needs a restart).
        PostgreSQL: the database, its workers table and the server's start, so that a database
        restored under a running API server is told apart, and several API servers on one
        database alike."""
        if self.is_sqlite:
            last = conn.exec_driver_sql(SQLITE_LAST_REV).scalar_one()
            return int(last) + 1, f"sqlite:{self.opened}"
        row = conn.execute(
            text(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, d.oid, "
                "'workers'::regclass::oid, extract(epoch FROM pg_postmaster_start_time()) "
                "FROM pg_database d WHERE d.datname = current_database()"
            )
        ).one()
        return int(row[0]), f"postgresql:{row[1]}.{row[2]}.{row[3]}"

    def _changed_workers(self, conn: Connection, pools: list[str], cursor: int) -> list[Worker]:
        """Down ix_workers_rev: only the rows changed since `cursor`, whatever the pools' size.
        The pools are picked here: given `pool IN (...)`, SQLite's planner (no ANALYZE) would
        walk ix_workers_pool_state through every live worker instead."""
        query = select(*[workers.c[name] for name in WORKER_COLUMNS]).where(workers.c.rev >= cursor)
        wanted = set(pools)
        return [w for w in rows_to_workers(conn.execute(query)) if w.pool in wanted]

    def _changed_submissions(self, conn: Connection, manager: str, cursor: int) -> list[Submission]:
        """Down ix_submissions_rev, the manager picked here (as in _changed_workers)."""
        query = select(submissions).where(submissions.c.rev >= cursor)
        return [s for s in map(submission_of, conn.execute(query)) if s.manager == manager]

    def _pool_observations(
        self, conn: Connection, asks: Sequence[PoolQuestion], backlog: Sequence[Backlog]
    ) -> list[PoolObservation]:
        """Per pool: its history, workers asked this hour, workers at max_tasks; a statement
        each for all the pools (UNION ALL), not one a pool."""
        if not asks:
            return []
        histories = self.pool_histories([(a.pool, a.history_since) for a in asks])
        asked = [  # down ix_submissions_pool_created
            select(
                literal(a.pool).label("pool"),
                func.coalesce(func.sum(submissions.c.count), 0).label("n"),
            ).where(
                submissions.c.pool == a.pool,
                submissions.c.created_at >= a.submitted_since,
                submissions.c.state != SubmissionState.FAILED.value,
            )
            for a in asks
        ]
        submitted = {r.pool: int(r.n or 0) for r in union_rows(conn, asked)}
        started = workers.c.tasks_done + workers.c.busy_slots
        limited = [  # down ix_workers_pool_tasks_started
            select(literal(a.pool).label("pool"), workers.c.id).where(
                workers.c.pool == a.pool, live_workers(), started >= a.max_tasks
            )
            for a in asks
            if a.max_tasks
        ]
        spent: dict[str, list[str]] = {a.pool: [] for a in asks}
        for r in union_rows(conn, limited):
            spent[r.pool].append(r.id)
        return [
            PoolObservation(
                pool=a.pool,
                history=history,
                submitted=submitted[a.pool],
                spent=spent[a.pool],
                **self._runnable(conn, a, backlog),
            )
            for a, history in zip(asks, histories, strict=True)
        ]

    def _runnable(
        self, conn: Connection, ask: PoolQuestion, backlog: Sequence[Backlog]
    ) -> dict[str, object]:
        """The pool's queues' claimable work without the tasks wider than its workers (`held`),
        when the question gives their slots. A queue's tasks wider than S slots add more than S
        to its slots beyond its count, so a queue whose excess is less costs no statement (every
        task one slot: the usual case); otherwise a range of ix_tasks_waiting_wide, and the
        oldest task that fits down ix_tasks_waiting_age."""
        if ask.slots is None:
            return {}
        width, claimable, held = ask.slots, [], []
        for b in (b for b in backlog if b.queue in ask.queues):
            wide = (
                None
                if b.slots - b.count < width
                else conn.execute(WIDE, {"q": b.queue, "w": width}).one()
            )
            if wide is None or not wide.n:
                claimable.append(b)
                continue
            held.append(
                HeldTasks(
                    queue=b.queue, count=wide.n, fewest_slots=wide.fewest, most_slots=wide.most
                )
            )
            if wide.n < b.count:
                oldest = conn.execute(OLDEST_FITTING, {"q": b.queue, "w": width}).scalar()
                age = b.oldest_age if oldest is None else max(0.0, self.clock() - float(oldest))
                left = {"count": b.count - wide.n, "slots": b.slots - int(wide.slots)}
                claimable.append(Backlog(queue=b.queue, oldest_age=age, **left))
        return {"claimable": claimable, "held": held}
