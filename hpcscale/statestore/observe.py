"""The manager's cycle as one read: everything it looks at, in one request and one snapshot.

At 10^4 workers a cycle that listed every worker of every pool cost 100 ms and more in the store
alone (bench/scale.py). Here the workers come as a change feed on `workers.rev` (schema.py says
why it is exact on both backends): the first read lists them all, each later one only those
that registered or changed state since. What moves with every task (busy slots, tasks started)
comes as a count and a short list per pool instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, text

from hpcscale.models import (
    Backlog,
    CycleView,
    HostInfo,
    ObserveRequest,
    PoolHistory,
    PoolInfo,
    PoolObservation,
    PoolQuestion,
    QueueStats,
    Submission,
    SubmissionState,
    Worker,
    WorkerState,
)
from hpcscale.statestore.schema import submissions, workers

LIVE_WORKER_STATES = (WorkerState.ACTIVE.value, WorkerState.DRAINING.value)
WORKER_COLUMNS = (
    "id", "pool", "queues", "host", "slots", "job_id", "array_index", "submission",
    "started_at", "expected_end", "last_heartbeat", "state", "tasks_done", "busy_slots",
    "end_reason", "ended_at",
)  # fmt: skip


def live_workers() -> Any:
    """`state IN ('active', 'draining')` with literals, which the planners match to indexes."""
    return workers.c.state.in_([literal_column(f"'{s}'") for s in LIVE_WORKER_STATES])


def rows_to_workers(rows: Iterable[Sequence[Any]]) -> list[Worker]:
    """Workers from rows of WORKER_COLUMNS: a dict each, validated by pydantic-core directly
    (Worker(**kwargs) and SQLAlchemy's attribute access cost twice as much per row), each
    distinct queues list parsed once."""
    parsed: dict[str, list[str]] = {}
    validate = Worker.__pydantic_validator__.validate_python
    out: list[Worker] = []
    for row in rows:
        values = dict(zip(WORKER_COLUMNS, row, strict=True))
        queues = values["queues"]
        names = parsed.get(queues)
        if names is None:
            names = parsed[queues] = json.loads(queues)
        values["queues"] = names
        out.append(validate(values))
    return out


class Observe:
    """Mixed into Store; uses its reads, which nest into the one transaction opened here."""

    is_sqlite: bool
    opened: str  # a new id each time the store is opened

    def _read(self, snapshot: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def claimable(self, queues: Sequence[str] | None = None) -> list[Backlog]:
        raise NotImplementedError

    def list_hosts(self) -> list[HostInfo]:
        raise NotImplementedError

    def list_pools(self) -> list[PoolInfo]:
        raise NotImplementedError

    def queue_stats(self, queue: str) -> QueueStats:
        raise NotImplementedError

    def list_workers(
        self, pool: str | None = None, live_only: bool = False, since: float | None = None
    ) -> list[Worker]:
        raise NotImplementedError

    def list_submissions(
        self,
        *,
        manager: str | None = None,
        pool: str | None = None,
        open_only: bool = False,
        limit: int = 1000,
        since: float | None = None,
    ) -> list[Submission]:
        raise NotImplementedError

    def pool_history(self, pool: str, since: float) -> PoolHistory:
        raise NotImplementedError

    def observe(self, manager: str, ask: ObserveRequest) -> CycleView:
        """All of `manager`'s cycle reads, from one snapshot. Its workers: every live one and
        those started since `ask.since` when `ask.cursor` is None, else those changed since."""
        queues = sorted({q for p in ask.pools for q in p.queues})
        with self._read(snapshot=True) as conn:
            cursor = self._worker_cursor(conn)  # first: what commits after it comes next time
            feed = self._feed(conn)
            if ask.cursor is None:
                changed = [w for p in ask.pools for w in self.list_workers(p.pool, since=ask.since)]
            else:
                changed = self._changed_workers(conn, [p.pool for p in ask.pools], ask.cursor)
            return CycleView(
                backlog=self.claimable(),
                denied_hosts=[h.host for h in self.list_hosts() if h.denied],
                submissions=self.list_submissions(manager=manager, open_only=True),
                pools=self.list_pools(),
                queue_stats=[self.queue_stats(q) for q in queues],
                per_pool=[self._pool_observation(conn, p) for p in ask.pools],
                workers=changed,
                cursor=cursor,
                feed=feed,
            )

    def _worker_cursor(self, conn: Connection) -> int:
        if self.is_sqlite:
            query: Any = select(func.coalesce(func.max(workers.c.rev), 0) + 1)
        else:
            query = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return int(conn.execute(query).scalar_one())

    def _feed(self, conn: Connection) -> str:
        """What a cursor is valid in. SQLite: this store's opening (one server process owns the
        file: a file put in its place needs a restart). PostgreSQL: the database, its workers
        table and the server's start, so that a database restored under a running API server,
        or several API servers on one database, are told apart or alike correctly."""
        if self.is_sqlite:
            return f"sqlite:{self.opened}"
        row = conn.execute(
            text(
                "SELECT d.oid, 'workers'::regclass::oid, "
                "extract(epoch FROM pg_postmaster_start_time()) "
                "FROM pg_database d WHERE d.datname = current_database()"
            )
        ).one()
        return f"postgresql:{row[0]}.{row[1]}.{row[2]}"

    def _changed_workers(self, conn: Connection, pools: list[str], cursor: int) -> list[Worker]:
        """Down ix_workers_rev: only the rows changed since `cursor`, whatever the pools' size."""
        query = select(*[workers.c[name] for name in WORKER_COLUMNS]).where(
            workers.c.rev >= cursor, workers.c.pool.in_(pools)
        )
        found = rows_to_workers(conn.execute(query))
        found.sort(key=lambda w: w.started_at)
        return found

    def _pool_observation(self, conn: Connection, ask: PoolQuestion) -> PoolObservation:
        mine = [workers.c.pool == ask.pool, live_workers()]
        busy = conn.execute(select(func.count()).where(*mine, workers.c.busy_slots > 0)).scalar()
        spent: list[str] = []
        if ask.max_tasks:
            started = workers.c.tasks_done + workers.c.busy_slots
            spent = list(
                conn.execute(select(workers.c.id).where(*mine, started >= ask.max_tasks)).scalars()
            )
        submitted = conn.execute(  # down ix_submissions_pool_created
            select(func.coalesce(func.sum(submissions.c.count), 0)).where(
                submissions.c.pool == ask.pool,
                submissions.c.created_at >= ask.submitted_since,
                submissions.c.state != SubmissionState.FAILED.value,
            )
        ).scalar()
        return PoolObservation(
            pool=ask.pool,
            history=self.pool_history(ask.pool, ask.history_since),
            submitted=int(submitted or 0),
            busy=int(busy or 0),
            spent=spent,
        )
