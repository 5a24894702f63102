"""Workers: their registration, heartbeats and end, and the orders of their pools.

A worker reaches the store only through these calls and the leases it holds; a heartbeat renews
every lease at once and answers with the pool's control (continue, drain, exit) and whether the
pool has more workers than its floor (so an idle one may leave). A worker that leaves hands back
what it holds: hence Workers builds on Leases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, literal_column, select, union_all, update

from hpcscale.errors import NotFound
from hpcscale.models import (
    LIVE_WORKER_STATES,
    Control,
    HeartbeatReply,
    PoolInfo,
    TaskState,
    Worker,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.statestore.leases import Leases
from hpcscale.statestore.schema import pools, tasks, workers

WORKER_COLUMNS = (
    "id", "pool", "queues", "host", "slots", "job_id", "array_index", "submission",
    "started_at", "expected_end", "last_heartbeat", "state", "tasks_done", "busy_slots",
    "end_reason", "ended_at", "job_started_at",
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


class Workers(Leases):
    """The `workers` and `pools` tables."""

    def register_worker(self, reg: WorkerRegistration) -> Worker:
        now = self.clock()
        worker_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    pool=reg.pool,
                    queues=json.dumps(reg.queues),
                    host=reg.host,
                    slots=reg.slots,
                    job_id=reg.job_id,
                    array_index=reg.array_index,
                    submission=reg.submission,
                    started_at=now,
                    expected_end=reg.expected_end,
                    last_heartbeat=now,
                    state=WorkerState.ACTIVE.value,
                    tasks_done=0,
                    busy_slots=0,
                    job_started_at=None if reg.job_age is None else now - reg.job_age,
                )
            )
            detail = f"pool {reg.pool} host {reg.host}" + (
                f" job {reg.job_id}"
                + (f"_{reg.array_index}" if reg.array_index is not None else "")
                if reg.job_id
                else ""
            )
            self._events(
                conn,
                [
                    {
                        "ts": now,
                        "kind": "worker.registered",
                        "worker_id": worker_id,
                        "detail": detail,
                    }
                ],
            )
        return self.get_worker(worker_id)

    def get_worker(self, worker_id: str) -> Worker:
        with self._read() as conn:
            columns = [workers.c[name] for name in WORKER_COLUMNS]
            found = rows_to_workers(conn.execute(select(*columns).where(workers.c.id == worker_id)))
        if not found:
            raise NotFound(f"no worker {worker_id}")
        return found[0]

    def list_workers(
        self, pool: str | None = None, live_only: bool = False, since: float | None = None
    ) -> list[Worker]:
        """Workers of a pool, oldest first; `since`: the live ones plus those started since then.

        With `since`, two index ranges read as one UNION ALL (the live ones down ix_workers_
        pool_state, the others started since down ix_workers_pool_started), not a pass over the
        pool's whole history; sorted here, so the planner need not walk an index in started_at
        order to spare a sort. A manager reads 10^4 of them once (then changes: observe.py)."""
        columns = [workers.c[name] for name in WORKER_COLUMNS]
        live = live_workers()
        where = [] if pool is None else [workers.c.pool == pool]
        query: Any = select(*columns).where(live, *where)
        if not live_only and since is None:
            query = select(*columns).where(*where)
        elif not live_only:
            recent = select(*columns).where(~live, workers.c.started_at >= since, *where)
            query = union_all(query, recent)
        with self._read() as conn:
            found = rows_to_workers(conn.execute(query))
        found.sort(key=lambda w: w.started_at)
        return found

    def heartbeat(
        self, worker_id: str, running: Sequence[int] = (), busy_slots: int = 0
    ) -> HeartbeatReply:
        """Renew every lease the worker holds; say which of its tasks it lost, and its orders."""
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(
                select(workers.c.state, workers.c.pool).where(workers.c.id == worker_id)
            ).first()
            if row is None:
                raise NotFound(f"no worker {worker_id}; register first")
            if row.state == WorkerState.LOST.value:
                self._take_back(conn, worker_id, now)
            renewed = [
                int(r.id)
                for r in conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.lease_owner == worker_id,
                        tasks.c.state == TaskState.RUNNING.value,
                    )
                    .values(lease_expiry=now + self.lease_ttl)
                    .returning(tasks.c.id)
                )
            ]
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(last_heartbeat=now, busy_slots=busy_slots)
            )
            control, surplus = self._pool_orders(conn, row.pool)
            if row.state == WorkerState.ENDED.value:
                control = Control.EXIT
        held = set(renewed)
        return HeartbeatReply(
            renewed=sorted(renewed),
            lost=sorted(t for t in running if t not in held),
            control=control,
            surplus=surplus,
            lease_ttl=self.lease_ttl,
        )

    def _take_back(self, conn: Connection, worker_id: str, now: float) -> None:
        """A `lost` worker heartbeats: it was only silent (a stalled network, a paused process).
        Its leases were already requeued; the heartbeat's `lost` tells it to stop those runs."""
        conn.execute(
            update(workers)
            .where(workers.c.id == worker_id)
            .values(state=WorkerState.ACTIVE.value, end_reason=None, ended_at=None)
        )
        self._events(
            conn,
            [{"ts": now, "kind": "worker.returned", "worker_id": worker_id, "detail": None}],
        )

    def _pool_orders(self, conn: Connection, pool: str) -> tuple[Control, bool]:
        prow = conn.execute(
            select(pools.c.control, pools.c.min_workers).where(pools.c.name == pool)
        ).first()
        live = conn.execute(
            select(func.count())
            .select_from(workers)
            .where(workers.c.pool == pool, workers.c.state.in_(LIVE_WORKER_STATES))
        ).scalar_one()
        control = Control(prow.control) if prow is not None else Control.CONTINUE
        min_workers = int(prow.min_workers) if prow is not None else 0
        return control, int(live) > min_workers

    def deregister(self, worker_id: str, reason: str = "ended") -> list[int]:
        """The worker is leaving: hand back what it holds (no attempt used), mark it ended."""
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(select(workers.c.state).where(workers.c.id == worker_id)).first()
            if row is None:
                raise NotFound(f"no worker {worker_id}")
            released = self._release(conn, worker_id, None, f"worker ended: {reason}")
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(
                    state=WorkerState.ENDED.value, end_reason=reason, busy_slots=0, ended_at=now
                )
            )
            self._events(
                conn,
                [{"ts": now, "kind": "worker.ended", "worker_id": worker_id, "detail": reason}],
            )
        return released

    # ----------------------------------------------------------------- pools

    def set_pool(
        self,
        name: str,
        *,
        manager: str | None = None,
        min_workers: int | None = None,
        control: Control | None = None,
        max_workers_override: int | None = None,
    ) -> None:
        """Create or update a pool's row; only the given fields change."""
        now = self.clock()
        values: dict[str, Any] = {"updated_at": now}
        if manager is not None:
            values["manager"] = manager
        if min_workers is not None:
            values["min_workers"] = min_workers
        if control is not None:
            values["control"] = control.value
        if max_workers_override is not None:
            values["max_workers_override"] = max_workers_override
        with self._write() as conn:
            changed = conn.execute(update(pools).where(pools.c.name == name).values(**values))
            if changed.rowcount == 0:
                conn.execute(insert(pools).values(name=name, **values))
            if control is not None:
                self._events(conn, [{"ts": now, "kind": f"pool.{control.value}", "detail": name}])

    def list_pools(self) -> list[PoolInfo]:
        with self._read() as conn:
            rows = conn.execute(select(pools).order_by(pools.c.name)).all()
        return [
            PoolInfo(
                name=r.name,
                manager=r.manager,
                min_workers=r.min_workers,
                control=Control(r.control),
                max_workers_override=r.max_workers_override,
                updated_at=r.updated_at,
            )
            for r in rows
        ]
