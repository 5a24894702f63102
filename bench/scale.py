"""Scale: the manager's cycle at 10^6 waiting tasks and 10^4 registered workers, and the Slurm
calls a cycle makes whether 10 or 1,000 elements are in flight.

    python bench/scale.py                    # both backends and the Slurm lab, printed
    python bench/scale.py --write            # ... and written into BENCHMARKS.md
    python bench/scale.py --backends sqlite --tasks 100000 --workers 1000 --no-slurm

*Store*: a fresh database per backend (a SQLite file; a database of its own on the PostgreSQL
lab, HPCSCALE_TEST_PG_URL) gets the schema from `open_store`, then is filled with direct bulk
inserts (sqlite3 executemany in one transaction; PostgreSQL COPY): 10^6 tasks through the API
would take the better part of an hour, and the API is not what is measured. The fill: --tasks
waiting tasks over four queues, --history finished tasks (98% succeeded, the rest failed, dead
or cancelled) and one running task per busy worker, --workers live workers over four pools plus
3x as many ended ones of the last 7 days, their submissions (arrays of 250), the event log
(one `task.submitted` per task, claims and ends, worker and submission events) and 500
decisions per pool. PostgreSQL is VACUUM ANALYZEd after the fill (what autovacuum does after a
bulk load); SQLite gets no ANALYZE (the store never runs one), so its plans come from the
schema alone.

Then the real `ComputeManager` runs its cycles against the store in this process: its client is
an adapter that calls the store directly (the very functions the API routes call) and times each
call, and its scheduler reports one running element per live worker, so the cycle is the steady
state at full size (every pool at its max: observe, decide, record; nothing submitted). Every SQL
statement of a cycle is captured with its time and explained (SQLite: EXPLAIN QUERY PLAN;
PostgreSQL: EXPLAIN ANALYZE, writes rolled back). The same cycles then run end to end through a
real `hpcscale server` process and the project's HTTP client; the server's own request
histogram (/metrics) gives the server-side time per route.

*Slurm*: the real manager with the real SlurmScheduler on the lab (SLURM_CONF), every
subprocess counted at hpcscale.proc.run, the one chokepoint. Its pool submits held arrays
(`--hold`: they stay pending and run nothing): first N elements, then 10 more with N in flight,
then cycles with N + 10 in flight, for N = 10 and N = 1,000; everything it submitted is
scancelled by name at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from sqlalchemy import Index

from bench import report
from hpcscale import proc
from hpcscale.cli.demo import wait_healthy
from hpcscale.client import Client
from hpcscale.config import Settings, from_mapping, worker_token_file
from hpcscale.manager.loop import ComputeManager
from hpcscale.models import (
    CycleView,
    DecisionRecord,
    Event,
    GrantReply,
    GrantRequest,
    ManagerInfo,
    ManagerRegistration,
    ObserveRequest,
    Role,
    Submission,
    SubmissionIntent,
    SubmissionUpdate,
    TaskResult,
    TaskSpec,
    TokenReply,
    WaitReply,
    Worker,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.schedulers import ElementState, ElementStatus, Scheduler
from hpcscale.schedulers.base import CreatedArrays
from hpcscale.statestore import Store, open_store, schema
from hpcscale.tokens import write_secret

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Scale"
MANAGER = "scale"
QUEUES = (("default", 0.4), ("short", 0.3), ("long", 0.2), ("gpu", 0.1))
# name, queues, share of the workers
POOLS = (
    ("cpu", ("default", "short"), 0.5),
    ("long", ("long",), 0.3),
    ("gpu", ("gpu",), 0.1),
    ("mixed", ("short", "long"), 0.1),
)
ARRAY = 20  # elements per submission in the fill: the default max_submit_per_cycle
CLAIMS_PER_CYCLE = 1_000  # 10^4 workers, tasks of 300 s (the pools' prior), a 30 s interval
MAX_TASKS = 50  # a worker's; the fill's have done 0-39 tasks, so the store lists the few at it
ENDS_PER_CYCLE = 10  # and jobs of 8 h: 10^4 * 30 / 28,800 end and are replaced per interval
WALL = 86400.0  # the pools' wall time: no worker of the fill is leaving soon
DAY = 86400.0
INSTANCE = "bench-scale"
T = TypeVar("T")


def frac(i: int, salt: int) -> float:
    """A cheap, repeatable uniform [0, 1) of (i, salt)."""
    return ((i * 2654435761 + salt * 40503) % 4294967296) / 4294967296.0


# ---------------------------------------------------------------------- the fill


@dataclass(frozen=True)
class Spec:
    tasks: int  # waiting
    history: int  # finished
    workers: int  # live

    @property
    def busy(self) -> int:
        return self.workers - self.workers // 5  # 80% of the live workers run a task


@dataclass
class WorkerRow:
    id: str
    pool: str
    queues: tuple[str, ...]
    job_id: str
    index: int
    tag: str
    started_at: float
    ended_at: float | None


def pool_of(k: int, n: int) -> tuple[str, tuple[str, ...]]:
    """The pool of the k-th of n workers, by the pools' shares."""
    edge = 0.0
    for name, queues, share in POOLS:
        edge += share
        if k < edge * n:
            return name, queues
    return POOLS[-1][0], POOLS[-1][1]


def queue_of(i: int) -> str:
    u, edge = frac(i, 1), 0.0
    for name, share in QUEUES:
        edge += share
        if u < edge:
            return name
    return QUEUES[-1][0]


class Fill:
    """Every row of the fill, generated on the fly in the tables' column order."""

    def __init__(self, spec: Spec, now: float) -> None:
        self.spec = spec
        self.now = now
        self.t0 = now - 3 * DAY
        self.total = spec.history + spec.busy + spec.tasks
        self.live: list[WorkerRow] = []
        self.ended: list[WorkerRow] = []
        self.subs: list[dict[str, Any]] = []
        self._workers()

    def _workers(self) -> None:
        job = 100_000
        for live, count in ((True, self.spec.workers), (False, 3 * self.spec.workers)):
            by_pool: dict[str, list[int]] = defaultdict(list)
            for k in range(count):
                by_pool[pool_of(k, count)[0]].append(k)
            for name, queues, _ in POOLS:
                ks = by_pool[name]
                for first in range(0, len(ks), ARRAY):
                    chunk = ks[first : first + ARRAY]
                    job += 1
                    salt = job
                    if live:
                        created = self.now - 300 - 8 * 3600 * frac(salt, 2)
                    elif frac(salt, 3) < 0.05:  # some ended within the last hour
                        created = self.now - 3500 * frac(salt, 4) - 100
                    else:
                        created = self.now - 3600 - 6 * DAY * frac(salt, 5)
                    tag = f"{MANAGER}.{name}.{int(created)}.{job:06x}"
                    rows = []
                    for index, k in enumerate(chunk):
                        wid = uuid.UUID(int=(1 if live else 2) << 64 | k).hex
                        started = created + 20 + 40 * frac(k, 6)
                        ended = (
                            None if live else min(self.now - 5, started + 120 + 7200 * frac(k, 7))
                        )
                        rows.append(
                            WorkerRow(wid, name, queues, str(job), index, tag, started, ended)
                        )
                    (self.live if live else self.ended).extend(rows)
                    self.subs.append(
                        {
                            "tag": tag,
                            "pool": name,
                            "count": len(chunk),
                            "job": str(job),
                            "created": created,
                            "live": live,
                            "ended": max((r.ended_at or 0.0) for r in rows),
                        }
                    )

    # -- tables

    def workers(self) -> Iterator[tuple[Any, ...]]:
        for k, w in enumerate(self.live + self.ended):
            live = w.ended_at is None
            busy = live and k % 5 != 0
            yield (
                w.id, w.pool, json.dumps(list(w.queues)), f"node{k // 4:05d}", 1, w.job_id,
                w.index, w.tag, w.started_at, w.started_at + WALL,
                self.now - 30 * frac(k, 8) if live else w.ended_at,
                "active" if live else "ended", int(40 * frac(k, 9)), 1 if busy else 0,
                None if live else "idle", w.ended_at,
            )  # fmt: skip

    WORKER_COLUMNS = (
        "id", "pool", "queues", "host", "slots", "job_id", "array_index", "submission",
        "started_at", "expected_end", "last_heartbeat", "state", "tasks_done", "busy_slots",
        "end_reason", "ended_at",
    )  # fmt: skip

    TASK_COLUMNS = (
        "id", "queue", "priority", "command", "env", "cwd", "slots", "max_attempts", "timeout",
        "attempts", "state", "lease_owner", "lease_expiry", "fence", "exit_code", "output_tail",
        "reason", "submitted_at", "started_at", "ended_at",
    )  # fmt: skip

    def task_state(self, i: int) -> str:
        if i <= self.spec.history:
            u = frac(i, 10)
            return (
                "succeeded" if u < 0.983 else "failed" if u < 0.993 else "dead" if u < 0.995
                else "cancelled"
            )  # fmt: skip
        if i <= self.spec.history + self.spec.busy:
            return "running"
        return "waiting"

    def submitted_at(self, i: int) -> float:
        return self.t0 + (i / self.total) * (3 * DAY - 60)

    def tasks(self) -> Iterator[tuple[Any, ...]]:
        busy = [w for k, w in enumerate(self.live) if k % 5 != 0]
        h = self.spec.history
        for i in range(1, self.total + 1):
            state = self.task_state(i)
            queue = queue_of(i)
            owner = expiry = started = ended = exit_code = None
            attempts = fence = 0
            if state == "running":
                worker = busy[i - h - 1]
                queue = worker.queues[i % len(worker.queues)]
                owner, expiry = worker.id, self.now + DAY
                started, attempts, fence = self.now - 600 * frac(i, 11), 1, 1
            elif state != "waiting":
                ended = self.now - DAY * (1 - i / h) - 60
                started = ended - 10 - 590 * frac(i, 12)
                attempts = fence = 0 if state == "cancelled" else 1
                exit_code = (
                    0 if state == "succeeded" else 1 if state in ("failed", "dead") else None
                )
            elif frac(i, 13) < 0.01:  # requeued once
                attempts = fence = 1
            u = frac(i, 14)
            yield (
                i, queue, 10 if frac(i, 15) < 0.02 else 0,
                json.dumps(["python", "simulate.py", "--seed", str(i)]), "{}", None,
                4 if u < 0.01 else 2 if u < 0.06 else 1, 3, None, attempts, state, owner,
                expiry, fence, exit_code, "" if ended else None,
                "exit 1" if state in ("failed", "dead") else None, self.submitted_at(i),
                started, ended,
            )  # fmt: skip

    EVENT_COLUMNS = ("id", "ts", "kind", "task_id", "worker_id", "detail")

    def events(self) -> Iterator[tuple[Any, ...]]:
        n = 0

        def ev(
            ts: float, kind: str, task: int | None, worker: str | None, detail: str | None
        ) -> tuple[Any, ...]:
            nonlocal n
            n += 1
            return (n, ts, kind, task, worker, detail)

        ended = self.ended
        busy = [w for k, w in enumerate(self.live) if k % 5 != 0]
        h = self.spec.history
        for i in range(1, self.total + 1):
            yield ev(self.submitted_at(i), "task.submitted", i, None, None)
            state = self.task_state(i)
            if state == "running":
                yield ev(self.now - 600, "task.claimed", i, busy[i - h - 1].id, "fence 1")
            elif state != "waiting":
                ts = self.now - DAY * (1 - i / h) - 60
                who = ended[i % len(ended)].id
                if state == "cancelled":
                    yield ev(ts, "task.cancelled", i, None, None)
                    continue
                yield ev(ts - 100, "task.claimed", i, who, "fence 1")
                if state == "succeeded":
                    yield ev(ts, "task.succeeded", i, who, None)
                else:
                    yield ev(ts, "task.failed", i, who, "exit 1")
                    if state == "dead":
                        yield ev(ts, "task.dead", i, who, None)
        for w in self.live + self.ended:
            detail = f"pool {w.pool} host node job {w.job_id}_{w.index}"
            yield ev(w.started_at, "worker.registered", None, w.id, detail)
            if w.ended_at is not None:
                yield ev(w.ended_at, "worker.ended", None, w.id, "idle")
        for s in self.subs:
            text = f"{s['pool']} {s['tag']}"
            yield ev(s["created"], "submission.intent", None, None, f"{text} x{s['count']}")
            yield ev(s["created"] + 1, "submission.confirmed", None, None, text)
            if not s["live"]:
                yield ev(s["ended"] + 30, "submission.ended", None, None, text)
        yield ev(self.now - 3 * DAY, "manager.started", None, None, f"{MANAGER} on bench")

    SUBMISSION_COLUMNS = (
        "tag", "manager", "pool", "count", "job_ids", "state", "created_at", "updated_at",
        "detail",
    )  # fmt: skip

    def submissions(self) -> Iterator[tuple[Any, ...]]:
        for s in self.subs:
            done = not s["live"]
            yield (
                s["tag"], MANAGER, s["pool"], s["count"], json.dumps([s["job"]]),
                "ended" if done else "confirmed", s["created"],
                s["ended"] + 30 if done else s["created"] + 1, None,
            )  # fmt: skip

    DECISION_COLUMNS = ("id", "ts", "manager", "pool", "data")

    def decisions(self) -> Iterator[tuple[Any, ...]]:
        n = 0
        for name, queues, _ in POOLS:
            for k in range(500):
                n += 1
                data = {
                    "reasons": [f"{name}: at max_workers, submitting nothing"],
                    "observation": {"claimable": 250000, "queues": list(queues), "k": k},
                    "cycle_seconds": 0.05,
                    "state": "at-max",
                    "submit": 0,
                    "padding": "x" * 1200,  # a real record is 1-2 KB of JSON
                }
                yield (n, self.now - 30 * (500 - k), MANAGER, name, json.dumps(data))

    def tables(self) -> list[tuple[str, Sequence[str], Callable[[], Iterator[tuple[Any, ...]]]]]:
        return [
            ("tasks", self.TASK_COLUMNS, self.tasks),
            ("workers", self.WORKER_COLUMNS, self.workers),
            ("submissions", self.SUBMISSION_COLUMNS, self.submissions),
            ("events", self.EVENT_COLUMNS, self.events),
            ("decisions", self.DECISION_COLUMNS, self.decisions),
        ]


def hosts_position_key() -> str | None:
    """The meta key where the host accounting keeps its place in the event log, if this
    version has it: set to the end of the fill, as on a server that has kept up."""
    try:
        module = importlib.import_module("hpcscale.statestore.hosts")
    except ImportError:
        return None
    key = getattr(module, "SCANNED", None)
    return key if isinstance(key, str) else None


class Counted:
    """Rows of an iterator, counted as they go by."""

    def __init__(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.n = 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self.rows:
            self.n += 1
            yield row


def fill_sqlite(path: Path, fill: Fill) -> dict[str, int]:
    """executemany in one transaction, waiting_counts' triggers off (recounted after: see fill)."""
    counts: dict[str, int] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for trigger in schema.COUNTER_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for table, columns, rows in fill.tables():
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - our own names
                f"VALUES ({', '.join('?' for _ in columns)})"
            )
            counted = Counted(rows())
            conn.executemany(sql, counted)
            counts[table] = counted.n
        key = hosts_position_key()
        if key is not None:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (key, str(counts["events"])),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return counts


def fill_postgres(url: str, fill: Fill) -> dict[str, int]:
    """COPY per table, waiting_counts' triggers off (recounted after: see fill); VACUUM ANALYZE."""
    import psycopg

    counts: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for trigger in schema.COUNTER_TRIGGERS:
                cur.execute(f"DROP TRIGGER IF EXISTS {trigger} ON tasks")
            for table, columns, rows in fill.tables():
                n = 0
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows():
                        copy.write_row(row)
                        n += 1
                counts[table] = n
                if table in ("tasks", "events", "decisions"):  # serial ids given explicitly
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                        f"(SELECT max(id) FROM {table}))"
                    )
            key = hosts_position_key()
            if key is not None:
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, str(counts["events"])),
                )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return counts


def load(backend: str, url: str, rows: Fill) -> dict[str, int]:
    """The schema as the server makes it, the rows in bulk, then waiting_counts' triggers back
    and the counts taken from the tasks (schema.install_counters, what an upgrade runs)."""
    store = open_store(url)
    try:
        if backend == "sqlite":
            counts = fill_sqlite(Path(url.removeprefix("sqlite:///")), rows)
        else:
            counts = fill_postgres(url, rows)
        with store.engine.begin() as conn:
            schema.install_counters(conn)
    finally:
        store.close()
    return counts


# ---------------------------------------------------------------------- the manager's client


class Timed:
    """Store calls and SQL statements of the current cycle, with their times."""

    def __init__(self) -> None:
        self.call = ""  # the store call under way
        self.calls: list[tuple[str, float]] = []
        self.sql: list[tuple[str, str, Any, float]] = []  # call, statement, parameters, s
        self.capture = False
        self.feed: list[int] = []  # worker rows each observe brought

    def reset(self) -> None:
        self.calls, self.sql, self.feed = [], [], []

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.call = name
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.calls.append((name, time.perf_counter() - started))
            self.call = ""

    def hook(self, store: Store) -> None:
        from sqlalchemy import event

        @event.listens_for(store.engine, "before_cursor_execute")
        def _before(conn: Any, _cur: Any, stmt: str, params: Any, context: Any, _many: Any) -> None:
            conn.info["bench_t"] = time.perf_counter()

        @event.listens_for(store.engine, "after_cursor_execute")
        def _after(conn: Any, _cur: Any, stmt: str, params: Any, context: Any, _many: Any) -> None:
            if self.capture and self.call:
                spent = time.perf_counter() - conn.info.pop("bench_t", time.perf_counter())
                self.sql.append((self.call, stmt, params, spent))


class StoreClient:
    """What the manager asks of hpcscale.client.Client, answered by calling the store in this
    process (the functions the server's routes call), each call timed."""

    def __init__(self, store: Store, timed: Timed) -> None:
        self.store = store
        self.t = timed

    def register_manager(self, name: str, registration: ManagerRegistration) -> ManagerInfo:
        return self.t.run("register_manager", self.store.register_manager, name, registration)

    def grant(self, ask: GrantRequest) -> GrantReply:
        return self.t.run("grant", self.store.grant, ask)

    def managers(self) -> list[ManagerInfo]:
        return self.t.run("list_managers", self.store.list_managers)

    def events(
        self, *, kind_prefix: str | None = None, limit: int = 50, task: int | None = None
    ) -> list[Event]:
        return self.t.run(
            f"events(kind_prefix={kind_prefix})",
            self.store.events,
            kind_prefix=kind_prefix,
            limit=limit,
            task_id=task,
        )

    def observe(self, manager: str, ask: ObserveRequest) -> CycleView:
        view = self.t.run("observe", self.store.observe, manager, ask)
        self.t.feed.append(len(view.workers))
        return view

    def worker(self, worker_id: str) -> Worker:
        return self.t.run("get_worker", self.store.get_worker, worker_id)

    def list_workers(
        self, pool: str | None = None, live: bool = False, since: float | None = None
    ) -> list[Worker]:
        name = "list_workers(pool, since)" if since is not None else "list_workers"
        return self.t.run(name, self.store.list_workers, pool, live_only=live, since=since)

    def worker_gone(self, worker_id: str, reason: str) -> list[int]:
        return self.t.run("worker_gone", self.store.worker_gone, worker_id, reason)

    def record_decisions(self, records: Sequence[DecisionRecord]) -> None:
        self.t.run("record_decisions", self.store.record_decisions, records)

    def add_event(self, kind: str, detail: str | None = None) -> None:
        self.t.run("add_event", self.store.add_event, kind, detail)

    def record_intent(self, intent: SubmissionIntent) -> Submission:
        return self.t.run("record_intent", self.store.record_intent, intent)

    def update_submission(self, tag: str, change: SubmissionUpdate) -> Submission:
        return self.t.run("update_submission", self.store.update_submission, tag, change)

    def create_token(
        self, role: Role, queues: Sequence[str] | None = None, name: str = ""
    ) -> TokenReply:
        token = self.store.create_token(role, queues, name)
        return TokenReply(token=token, role=role, queues=list(queues) if queues else None)

    def wait_for_work(self, since: int, timeout: float) -> WaitReply:
        seq = self.t.run("submit_seq", self.store.submit_seq)
        return WaitReply(seq=seq, changed=seq > since)


class Churn:
    """What one poll interval (30 s, the default) brings at full size, applied between cycles:
    every live worker's heartbeat, CLAIMS_PER_CYCLE tasks claimed and finished (busy slots and
    tasks done), and ENDS_PER_CYCLE workers ending with as many registering in their place (the
    scheduler's list follows). The heartbeats, claims and results are bulk UPDATEs of the same
    columns the store's calls write (10^4 calls a cycle would take longer than the cycles); the
    ends and registrations go through the store's own calls, as a worker's would."""

    def __init__(self, url: str, fill: Fill, scheduler: Steady) -> None:
        self.store = open_store(url, lease_ttl=DAY)
        self.fill = fill
        self.scheduler = scheduler
        self.live = {w.id: w for w in fill.live}
        self.turn = 0

    def close(self) -> None:
        self.store.close()

    def __call__(self) -> None:
        from sqlalchemy import update

        from hpcscale.statestore.schema import workers

        self.turn += 1
        now = time.time()
        ids = list(self.live)
        sample = [ids[(self.turn * 7919 + k * 104729) % len(ids)] for k in range(CLAIMS_PER_CYCLE)]
        with self.store.engine.begin() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.state == "active", workers.c.pool.in_([p for p, _, _ in POOLS]))
                .values(last_heartbeat=now)
            )
            conn.execute(
                update(workers)
                .where(workers.c.id.in_(sorted(set(sample))))
                .values(
                    tasks_done=workers.c.tasks_done + workers.c.busy_slots,
                    busy_slots=1 - workers.c.busy_slots,
                )
            )
        for k in range(ENDS_PER_CYCLE):
            old = self.live.pop(ids[(self.turn * 31 + k * 997) % len(ids)])
            ids.remove(old.id)
            self.store.deregister(old.id, "max_time")
            job = f"9{self.turn:04d}{k:02d}"
            reg = WorkerRegistration(
                pool=old.pool, queues=list(old.queues), host="churn", job_id=job, array_index=0,
                submission=old.tag, expected_end=now + WALL,
            )  # fmt: skip
            new = self.store.register_worker(reg)
            self.live[new.id] = WorkerRow(
                new.id, old.pool, old.queues, job, 0, old.tag, new.started_at, None
            )
            self.scheduler.replace(
                f"{old.job_id}_{old.index}",
                ElementStatus(job, 0, f"{job}_0", ElementState.RUNNING, old.tag, pool_job(old)),
            )


class Steady(Scheduler):
    """One running element per live worker of the fill: every pool at its max."""

    name = "slurm"

    def __init__(self, elements: list[ElementStatus]) -> None:
        self.elements = elements
        self.submitted = 0

    @property
    def max_array_size(self) -> int:
        return 1001

    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        self.submitted += count
        return CreatedArrays(tag=tag, job_ids=["1"], count=count)

    def test_submit(self, script: str, count: int, tag: str) -> None:
        return None

    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        return list(self.elements)

    def replace(self, element_id: str, new: ElementStatus) -> None:
        """An element whose job ended (no longer listed) and the one started in its place."""
        self.elements = [e for e in self.elements if e.element_id != element_id] + [new]

    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        return None


def scale_settings(fill: Fill, workdir: Path, url: str = "http://127.0.0.1:1") -> Settings:
    per_pool = Counter(w.pool for w in fill.live)
    return from_mapping(
        {
            "server": {"url": url, "token_file": str(workdir / "token")},
            "manager": {"name": MANAGER, "state_dir": str(workdir / "manager")},
            "pools": [
                {
                    "name": name,
                    "queues": list(queues),
                    "max_workers": per_pool[name],
                    "max_pending": 100,
                    "task_duration_prior": "300s",
                    "worker": {"max_tasks": MAX_TASKS},
                    "slurm": {"partition": "batch", "time": "1-00:00:00"},
                }
                for name, queues, _ in POOLS
            ],
        }
    )


def steady_scheduler(fill: Fill) -> Steady:
    return Steady(
        [
            ElementStatus(
                w.job_id,
                w.index,
                f"{w.job_id}_{w.index}",
                ElementState.RUNNING,
                w.tag,
                pool_job(w),
            )
            for w in fill.live
        ]
    )


def pool_job(w: WorkerRow) -> str:
    return f"hpcscale.{MANAGER}.{w.pool}"


# ---------------------------------------------------------------------- measuring


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class CallStats:
    name: str
    per_cycle: list[float]  # seconds, summed over the call's uses in a cycle
    count: int  # calls per cycle
    rows: str = ""


@dataclass
class StoreResult:
    backend: str
    fill_seconds: float
    counts: dict[str, int]
    calls: list[CallStats]
    cycle: list[float]  # store seconds per cycle
    manager_cycle: list[float]  # the manager's whole cycle (its own Python included)
    plans: list[tuple[str, str, str, float | None]]  # call, statement, plan, ms/cycle
    extra: list[CallStats] = field(default_factory=list)  # /metrics, the reaper: not the cycle
    http: HttpResult | None = None
    version: str = ""
    legacy: list[tuple[CallStats, CallStats]] = field(default_factory=list)  # then, now
    ablation: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    load: float = 0.0  # 1-minute load average when the measured cycles started
    feed: list[int] = field(default_factory=list)  # worker rows the observe of a cycle brought
    first: float = 0.0  # store seconds of a manager's first cycle (every worker read)
    cost: tuple[float, float] | None = None  # claims+results/s without, with the counters


@dataclass
class HttpResult:
    cycle: list[float]  # client-side, all requests of a cycle
    routes: list[tuple[str, int, float]]  # route, requests per cycle, server ms per cycle
    server_cycle: float  # server ms per cycle, from its histogram


def measure_cycles(
    manager: ComputeManager, timed: Timed, cycles: int, churn: Callable[[], None] | None = None
) -> tuple[list[dict[str, list[float]]], list[float]]:
    per_cycle: list[dict[str, list[float]]] = []
    walls: list[float] = []
    for _ in range(cycles):
        if churn is not None:
            churn()
        timed.reset()
        started = time.perf_counter()
        result = manager.cycle()
        walls.append(time.perf_counter() - started)
        if result.errors:
            raise RuntimeError(f"cycle failed: {result.errors}")
        if any(result.submitted.values()):
            raise RuntimeError(f"the steady state submitted: {result.submitted}")
        calls: dict[str, list[float]] = defaultdict(list)
        for name, spent in timed.calls:
            calls[name].append(spent)
        per_cycle.append(calls)
    return per_cycle, walls


def summarize(per_cycle: list[dict[str, list[float]]]) -> tuple[list[CallStats], list[float]]:
    names: list[str] = []
    for calls in per_cycle:
        names += [n for n in calls if n not in names]
    stats = [
        CallStats(
            n,
            [sum(c.get(n, [])) for c in per_cycle],
            max(len(c.get(n, [])) for c in per_cycle),
        )
        for n in names
    ]
    totals = [sum(sum(v) for v in c.values()) for c in per_cycle]
    return stats, totals


def explain(store: Store, stmt: str, params: Any) -> tuple[str, float | None]:
    """The plan of one captured statement, in one line, and (a SELECT) its time re-run alone
    with every row fetched: the median of 5, in seconds."""
    head = stmt.lstrip().split(None, 1)[0].upper()
    if head in ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK"):
        return "", None
    if isinstance(params, list | tuple) and params and isinstance(params[0], dict | list | tuple):
        params = params[0]  # an executemany (a batch of inserts): the plan of one row
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        seconds = None
        if head == "SELECT":
            times = []
            for _ in range(5):
                started = time.perf_counter()
                cur.execute(stmt, params)
                cur.fetchall()
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
        if store.is_sqlite:
            cur.execute("EXPLAIN QUERY PLAN " + stmt, params)
            return "; ".join(str(r[3]) for r in cur.fetchall()) or "(no table access)", seconds
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + stmt, params)
        lines = [str(r[0]) for r in cur.fetchall()]
        raw.rollback()  # EXPLAIN ANALYZE ran the writes: undo them
    finally:
        raw.close()
    nodes = []
    for line in lines:
        m = re.search(
            r"(Index Only Scan|Index Scan|Bitmap Index Scan|Seq Scan|Bitmap Heap Scan)"
            r"( Backward)?(?: using (\S+))?(?: on (\S+))?",
            line,
        )
        if m:
            kind, _, index, table = m.groups()
            nodes.append(f"{kind} {index or table}")
        elif re.search(r"^\s*(->\s*)?(Sort|HashAggregate|GroupAggregate|Aggregate)\b", line):
            nodes.append(line.strip().removeprefix("-> ").split("  ")[0].strip())
    return "; ".join(nodes or ["(no table access)"]), seconds


def short_sql(stmt: str) -> str:
    text = " ".join(stmt.split())
    text = re.sub(r"SELECT .*? FROM", "SELECT … FROM", text, count=1)
    return text if len(text) <= 160 else text[:157] + "…"


def plans_of(store: Store, timed: Timed, cycles: int) -> list[tuple[str, str, str, float | None]]:
    """Each distinct statement of the captured cycles: its call, text, plan and (a SELECT)
    ms per cycle, from re-running it alone (times its executions per cycle)."""
    runs: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], Any] = {}
    for call, stmt, params, _seconds in timed.sql:
        runs[(call, stmt)] += 1
        example.setdefault((call, stmt), params)
    out = []
    for (call, stmt), n in runs.items():
        plan, seconds = explain(store, stmt, example[(call, stmt)])
        if plan:
            per_cycle = None if seconds is None else 1000 * seconds * n / cycles
            out.append((call, short_sql(stmt), plan, per_cycle))
    return out


def metrics_calls(store: Store, timed: Timed, runs: int) -> list[CallStats]:
    """What a /metrics scrape asks of the store (server/metrics.py)."""
    from hpcscale.statestore.manager_records import latest_decisions, pool_totals

    out = []
    for name, fn in (
        ("/metrics: count_tasks", store.count_tasks),
        ("/metrics: list_workers(live)", lambda: store.list_workers(live_only=True)),
        ("/metrics: latest_decisions", lambda: latest_decisions(store)),
        ("/metrics: pool_totals", lambda: pool_totals(store)),
    ):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            timed.run(name, fn)
            times.append(time.perf_counter() - started)
        out.append(CallStats(name, times, 1))
    return out


def store_version(store: Store) -> str:
    if store.is_sqlite:
        return f"SQLite {sqlite3.sqlite_version}"
    with store.engine.connect() as conn:
        return "PostgreSQL " + str(conn.exec_driver_sql("SHOW server_version").scalar())


def worker_by_name(row: Any) -> Worker:
    """A worker from a row, as schema 1's store built it (attribute access, Worker(**kwargs)):
    the "then" of legacy_calls."""
    return Worker(
        id=row.id,
        pool=row.pool,
        queues=json.loads(row.queues),
        host=row.host,
        slots=row.slots,
        job_id=row.job_id,
        array_index=row.array_index,
        submission=row.submission,
        started_at=row.started_at,
        expected_end=row.expected_end,
        last_heartbeat=row.last_heartbeat,
        state=WorkerState(row.state),
        tasks_done=row.tasks_done,
        busy_slots=row.busy_slots,
        end_reason=row.end_reason,
        ended_at=row.ended_at,
    )


def legacy_calls(store: Store, fill: Fill, runs: int) -> list[tuple[CallStats, CallStats]]:
    """The same questions as schema 1 asked them (hpcscale before waiting_counts and these
    indexes) and as the store asks them now, each timed alone on the same database."""
    from sqlalchemy import func, or_, select

    from hpcscale.statestore.schema import events, tasks, workers

    since = time.time() - 3600
    live = ("active", "draining")

    def claimable() -> Any:
        query = (
            select(
                tasks.c.queue, func.count(), func.sum(tasks.c.slots), func.min(tasks.c.submitted_at)
            )
            .where(tasks.c.state == "waiting")
            .group_by(tasks.c.queue)
            .order_by(tasks.c.queue)
        )
        with store._read() as conn:
            return conn.execute(query).all()

    def count_tasks() -> Any:
        query = select(tasks.c.queue, tasks.c.state, func.count()).group_by(
            tasks.c.queue, tasks.c.state
        )
        with store._read() as conn:
            return conn.execute(query).all()

    def failed_starts() -> Any:
        query = (
            select(events)
            .where(events.c.kind.startswith("pool.failed_start", autoescape=True))
            .order_by(events.c.id.desc())
            .limit(1000)
        )
        with store._read() as conn:
            return conn.execute(query).all()

    def list_workers() -> Any:
        out = []
        for pool, _, _ in POOLS:
            query = (
                select(workers)
                .where(
                    workers.c.pool == pool,
                    or_(workers.c.state.in_(live), workers.c.started_at >= since),
                )
                .order_by(workers.c.started_at)
            )
            with store._read() as conn:
                out += [worker_by_name(r) for r in conn.execute(query)]
        return out

    def now_list_workers() -> Any:
        return [store.list_workers(pool, since=since) for pool, _, _ in POOLS]

    def timed(fn: Callable[[], Any]) -> list[float]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return times

    stats = []
    for name, then, now in (
        ("claimable: count, sum, min over the waiting tasks", claimable, store.claimable),
        (
            "list_workers(pool, since) × 4: OR over the pool's history, rows by name",
            list_workers,
            now_list_workers,
        ),
        (
            "events(kind_prefix=pool.failed_start): LIKE alone",
            failed_starts,
            lambda: store.events(kind_prefix="pool.failed_start", limit=1000),
        ),
        ("/metrics: count_tasks: count over every task", count_tasks, store.count_tasks),
    ):
        stats.append((CallStats(name, timed(then), 1), CallStats(name, timed(now), 1)))
    return stats


NEW_INDEXES = (
    "ix_tasks_waiting_age", "ix_workers_pool_started", "ix_submissions_pool_created",
    "ix_workers_rev", "ix_submissions_rev", "ix_workers_pool_tasks_started",
)  # fmt: skip


def index_named(name: str) -> Index:
    return next(i for t in schema.metadata.sorted_tables for i in t.indexes if i.name == name)


# What each new index is for: the calls shown when it is dropped.
SERVES = {  # all in observe now (claimable, pool_history, the hour's submissions, the feed)
    "ix_tasks_waiting_age": ("observe",),
    "ix_workers_pool_started": ("observe",),
    "ix_submissions_pool_created": ("observe",),
    "ix_workers_rev": ("observe",),
    "ix_submissions_rev": ("observe",),
    "ix_workers_pool_tasks_started": ("observe",),
}


def without_indexes(
    store: Store, manager: ComputeManager, timed: Timed, cycles: int, churn: Churn
) -> list[tuple[str, dict[str, float]]]:
    """Per new index: the cycle's calls (median ms) with that index dropped, then it is back.
    (ix_events_kind serves the failed starts a manager reads once at its start, not a cycle:
    `legacy_calls` measures it.)"""
    out = []
    variants: list[tuple[str, str, str | None]] = [
        (name, f"DROP INDEX {name}", None) for name in NEW_INDEXES
    ]
    for name, drop, instead in variants:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(drop)
            if instead:
                conn.exec_driver_sql(instead)
        try:
            measure_cycles(manager, timed, 1, churn)  # plans made again, caches warm
            per_cycle, _ = measure_cycles(manager, timed, cycles, churn)
        finally:
            with store.engine.begin() as conn:
                if instead:
                    conn.exec_driver_sql(f"DROP INDEX {name}")
                index_named(name).create(conn)
        stats, totals = summarize(per_cycle)
        medians = {c.name: 1000 * statistics.median(c.per_cycle) for c in stats}
        medians["the cycle"] = 1000 * statistics.median(totals)
        label = name + (" (text_pattern_ops → the default operator class)" if instead else "")
        out.append((label, medians))
    return out


def run_store(
    backend: str, url: str, spec: Spec, workdir: Path, cycles: int, http: bool, ablate: bool
) -> StoreResult:
    rows = Fill(spec, time.time())
    started = time.monotonic()
    counts = load(backend, url, rows)
    fill_seconds = time.monotonic() - started
    print(f"  {backend}: filled in {fill_seconds:.0f} s: {counts}", flush=True)

    timed = Timed()
    store = open_store(url, lease_ttl=DAY)
    stack = contextlib.ExitStack()
    try:
        timed.hook(store)
        settings = scale_settings(rows, workdir)
        scheduler = steady_scheduler(rows)
        manager = ComputeManager(
            settings,
            cast(Client, StoreClient(store, timed)),
            scheduler_factory=lambda _p: scheduler,
        )
        manager.instance = INSTANCE
        first, _ = measure_cycles(manager, timed, 1)  # a start: every worker read
        measure_cycles(manager, timed, 1)  # warm-up: pre-flight, caches
        churn = Churn(url, rows, scheduler)
        stack.callback(churn.close)
        load_before = os.getloadavg()[0]
        feed: list[int] = []
        per_cycle, walls = [], []
        for _ in range(cycles):
            calls_of, wall = measure_cycles(manager, timed, 1, churn)
            per_cycle += calls_of
            walls += wall
            feed += timed.feed
        calls, totals = summarize(per_cycle)
        timed.reset()
        timed.capture = True
        measure_cycles(manager, timed, 3, churn)
        timed.capture = False
        plans = plans_of(store, timed, 3)
        timed.reset()
        timed.capture = True
        extra = metrics_calls(store, timed, 5)
        reaper = []
        for _ in range(5):
            started = time.perf_counter()
            timed.run("reaper: expire (nothing due)", store.expire)
            reaper.append(time.perf_counter() - started)
        timed.capture = False
        extra.append(CallStats("reaper: expire (nothing due)", reaper, 1))
        plans += plans_of(store, timed, 5)
        legacy = legacy_calls(store, rows, 5)
        ablation = without_indexes(store, manager, timed, 3, churn) if ablate else []
        version = store_version(store)
    finally:
        stack.close()
        store.close()
    result = StoreResult(
        backend, fill_seconds, counts, calls, totals, walls, plans, extra, version=version,
        legacy=legacy, ablation=ablation, load=load_before, feed=feed,
        first=sum(sum(v) for v in first[0].values()),
    )  # fmt: skip
    if http:
        result.http = run_http(url, rows, workdir, cycles)
    result.cost = counter_cost(backend, workdir)
    return result


def claim_loop(url: str, counted: bool, tasks: int, batch: int) -> float:
    """Tasks per second of one in-process claimer (claim `batch`, results for them) on a fresh
    database, with or without waiting_counts' triggers."""
    store = open_store(url)
    try:
        if not counted:
            with store.engine.begin() as conn:
                for trigger in schema.COUNTER_TRIGGERS:
                    on = " ON tasks" if not store.is_sqlite else ""
                    conn.exec_driver_sql(f"DROP TRIGGER {trigger}{on}")
        for first in range(0, tasks, 5000):
            store.submit([TaskSpec(command=["true"])] * min(5000, tasks - first))
        worker = store.register_worker(WorkerRegistration(pool="p", queues=["default"])).id
        started = time.perf_counter()
        while got := store.claim(worker, ["default"], batch, batch):
            store.results(
                worker,
                [TaskResult(task_id=t.id, fence=t.fence, success=True, exit_code=0) for t in got],
            )
        return tasks / (time.perf_counter() - started)
    finally:
        store.close()


def counter_cost(
    backend: str, workdir: Path, tasks: int = 8000, batch: int = 32
) -> tuple[float, float]:
    """(tasks/s without the triggers, with them): the best of 3 runs each, interleaved."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for k in range(3):
        for counted in (False, True):
            where = workdir / f"cost-{k}-{counted}"
            where.mkdir(parents=True)
            with database(backend, where, keep=False) as url:
                rates[counted].append(claim_loop(url, counted, tasks, batch))
    return max(rates[False]), max(rates[True])


# ---------------------------------------------------------------------- through HTTP


class TimedClient(Client):
    """The project's client, each request timed by route."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[tuple[str, float]] = []

    def _request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super()._request(method, path, *args, **kwargs)
        finally:
            self.times.append((f"{method} {path}", time.perf_counter() - started))


def histogram(text: str) -> dict[str, tuple[float, float]]:
    """route -> (requests, seconds) from the server's hpcscale_http_request_seconds."""
    out: dict[str, tuple[float, float]] = {}
    pattern = re.compile(r"^hpcscale_http_request_seconds_(sum|count)\{(.*)\} (\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        route = f"{labels.get('method')} {labels.get('route')}"
        n, s = out.get(route, (0.0, 0.0))
        if m.group(1) == "sum":
            s += float(m.group(3))
        else:
            n += float(m.group(3))
        out[route] = (n, s)
    return out


def run_http(url: str, fill: Fill, workdir: Path, cycles: int) -> HttpResult:
    """The same cycles through a real `hpcscale server` process and the project's client."""
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    config = workdir / "server.toml"
    config.write_text(
        "[server]\n"
        f'url = "{server_url}"\nbind = "127.0.0.1:{port}"\n'
        f'database = "{url.replace("postgresql+psycopg://", "postgresql://")}"\n'
        f'token_file = "{workdir / "token"}"\n'
        'lease_ttl = "1d"\n'  # the reaper waits one TTL after start: it stays out of the way
    )
    argv = [sys.executable, "-m", "hpcscale", "server", "--config", str(config)]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (workdir / "server.log").open("ab")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_healthy(server_url, server, 120)
        token = (workdir / "token").read_text().strip()
        client = TimedClient(server_url, token, retry_for=10.0)
        with client:
            settings = scale_settings(fill, workdir, server_url)
            scheduler = steady_scheduler(fill)
            manager = ComputeManager(settings, client, scheduler_factory=lambda _p: scheduler)
            manager.instance = INSTANCE  # the same manager as the store-side run: no takeover wait
            for _ in range(2):
                manager.cycle()
            churn = Churn(url, fill, scheduler)
            before = histogram(client.metrics())
            walls: list[float] = []
            client.times = []
            for _ in range(cycles):
                churn()  # the server's histogram counts its requests too: none, it writes direct
                mark = len(client.times)
                result = manager.cycle()
                if result.errors or any(result.submitted.values()):
                    raise RuntimeError(f"HTTP cycle: {result}")
                walls.append(sum(t for _, t in client.times[mark:]))
            after = histogram(client.metrics())
            churn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    routes = []
    for route, (n, s) in sorted(after.items()):
        n0, s0 = before.get(route, (0.0, 0.0))
        if n > n0 and "/metrics" not in route:
            routes.append((route, round((n - n0) / cycles), 1000 * (s - s0) / cycles))
    routes.sort(key=lambda r: -r[2])
    return HttpResult(walls, routes, sum(r[2] for r in routes))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------- Slurm calls per cycle


@dataclass
class SlurmRun:
    in_flight: int
    cycles: list[Counter[str]]  # commands per cycle
    pending_seen: list[int]  # the manager's observation of pending elements per cycle
    seconds: list[float]  # scheduler seconds per cycle


def command_kind(argv: Sequence[str]) -> str:
    name = Path(argv[0]).name
    if name == "sbatch" and "--test-only" in argv:
        return "sbatch --test-only"
    if name == "scontrol":
        return "scontrol " + " ".join(argv[1:3])
    return name


@contextlib.contextmanager
def counted_subprocesses() -> Iterator[list[list[str]]]:
    """Every argv that goes through hpcscale.proc.run (the one chokepoint) while inside."""
    calls: list[list[str]] = []
    real = proc.run

    def run(argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        calls.append([str(a) for a in argv])
        return real(argv, **kwargs)

    setattr(proc, "run", run)  # noqa: B010 - the module attribute the schedulers call
    try:
        yield calls
    finally:
        setattr(proc, "run", real)  # noqa: B010


def slurm_calls(manager_name: str, in_flight: int, workdir: Path, observe: int = 3) -> SlurmRun:
    """The real manager and SlurmScheduler on the lab: a first cycle that submits `in_flight`
    held elements, one that submits 10 more with them in flight, then `observe` cycles with
    in_flight + 10 pending. Counts each cycle's subprocesses. Cancels by name at the end."""
    extra = 10
    workdir.mkdir(parents=True, exist_ok=True)
    settings = from_mapping(
        {
            "server": {"token_file": str(workdir / "token")},
            "manager": {"name": manager_name, "state_dir": str(workdir / "manager")},
            "pools": [
                {
                    "name": "cpu",
                    "queues": ["default"],
                    "max_workers": in_flight + extra,
                    "max_pending": in_flight + extra,
                    "max_submit_per_cycle": in_flight,
                    "task_duration_prior": "60s",
                    "target_drain_time": "1s",  # so every claimable task asks for a worker
                    "slurm": {
                        "partition": "debug",
                        "time": "00:05:00",
                        "output": "/dev/null",
                        "extra_directives": ["--hold"],  # pending until scancelled: runs nothing
                    },
                }
            ],
        }
    )
    store = open_store(f"sqlite:///{workdir}/state.db")
    name = f"hpcscale.{manager_name}.cpu"
    try:
        store.submit([TaskSpec(command=["true"])] * (in_flight + extra))
        write_secret(worker_token_file(settings, "cpu"), store.create_token(Role.WORKER))
        timed = Timed()
        manager = ComputeManager(settings, cast(Client, StoreClient(store, timed)))
        run = SlurmRun(in_flight, [], [], [])
        with counted_subprocesses() as calls:
            for _ in range(2 + observe):
                mark = len(calls)
                result = manager.cycle()
                if result.errors:
                    raise RuntimeError(f"cycle failed: {result.errors}")
                run.cycles.append(Counter(command_kind(a) for a in calls[mark:]))
                last = store.list_decisions("cpu", 1)[-1].data
                observation = cast(dict[str, Any], last.get("observation", {}))
                run.pending_seen.append(
                    int(observation.get("pending", 0)) + int(observation.get("unconfirmed", 0))
                )
                run.seconds.append(manager.scheduler_seconds)
        expected = [0, in_flight] + [in_flight + extra] * observe
        if run.pending_seen != expected:
            raise RuntimeError(f"the manager saw {run.pending_seen} in flight, not {expected}")
        return run
    finally:
        store.close()
        subprocess.run(["scancel", "--name", name], check=False, timeout=60)


def slurm_available() -> bool:
    conf = os.environ.get("SLURM_CONF", "")
    return bool(conf) and Path(conf).is_file() and shutil.which("sbatch") is not None


# ---------------------------------------------------------------------- the report


def ms(seconds: float) -> str:
    return ms_of(1000 * seconds)


def ms_of(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def med(values: Sequence[float]) -> str:
    return ms(statistics.median(values))


def store_table(result: StoreResult) -> list[str]:
    lines = [
        f"**{result.backend}** ({result.version}; filled in {result.fill_seconds:.0f} s: "
        + ", ".join(f"{n:,} {t}" for t, n in result.counts.items())
        + f"; the 1-minute load average was {result.load:.1f} when the cycles started)",
        "",
        "| store call | calls per cycle | median ms per cycle | p95 |",
        "|---|---:|---:|---:|",
    ]
    for c in sorted(result.calls, key=lambda c: -statistics.median(c.per_cycle)):
        lines.append(
            f"| {c.name} | {c.count} | {med(c.per_cycle)} | {ms(pct(c.per_cycle, 0.95))} |"
        )
    lines += [
        f"| **the cycle, store side** | {sum(c.count for c in result.calls)} | "
        f"**{med(result.cycle)}** | **{ms(pct(result.cycle, 0.95))}** |",
        f"| a manager's first cycle (every worker read, once per start) | | {ms(result.first)} | |",
        f"| the manager's whole cycle (its own Python too) | | {med(result.manager_cycle)} | "
        f"{ms(pct(result.manager_cycle, 0.95))} |",
    ]
    if result.http is not None:
        h = result.http
        lines += [
            f"| through HTTP, client side: the cycle's requests | {sum(r[1] for r in h.routes)} | "
            f"{med(h.cycle)} | {ms(pct(h.cycle, 0.95))} |",
            f"| through HTTP, server side (its request histogram) | | {ms_of(h.server_cycle)} | |",
        ]
        top = ", ".join(f"{route} {ms_of(spent)} ms" for route, _, spent in h.routes[:4])
        lines += ["", f"Through HTTP, server side per route and cycle: {top}, …"]
    lines += ["", "| not in the cycle | median ms | p95 |", "|---|---:|---:|"]
    for c in result.extra:
        lines.append(f"| {c.name} | {med(c.per_cycle)} | {ms(pct(c.per_cycle, 0.95))} |")
    return lines


def before_after(result: StoreResult) -> list[str]:
    """Schema 1's queries, and the cycle without each new index."""
    lines = [
        f"{result.backend}, before and after (median ms of 5 runs, each call alone on the same "
        "database, schema 1's query against the store's now; the new indexes are there for "
        "both, what each index alone changes is in the table after):",
        "",
        "| as schema 1 asked it | then | now |",
        "|---|---:|---:|",
    ]
    for then, now in result.legacy:
        lines.append(f"| {then.name} | {med(then.per_cycle)} | {med(now.per_cycle)} |")
    if result.cost is not None:
        without, with_ = result.cost
        lines += [
            "",
            f"What waiting_counts costs the write path: one claimer in this process, claim 32 + "
            f"results for them, 8,000 tasks, the best of 3 runs on fresh databases: "
            f"{without:,.0f} tasks/s without its triggers, {with_:,.0f} with them "
            f"({100 * (with_ / without - 1):+.0f}%, {1e6 * (1 / with_ - 1 / without):+.1f} µs a "
            "task; over HTTP a task costs far more, see Statestore throughput).",
        ]
    if result.ablation:
        base = {c.name: 1000 * statistics.median(c.per_cycle) for c in result.calls}
        base["the cycle"] = 1000 * statistics.median(result.cycle)
        lines += [
            "",
            "| index dropped for 3 cycles | the calls it serves, ms per cycle: with → without |",
            "|---|---|",
        ]
        for label, medians in result.ablation:
            served = SERVES.get(label.split()[0], ())
            shown = "; ".join(
                f"{k}: {ms_of(base[k])} → {ms_of(medians[k])}"
                for k in served
                if k in base and k in medians
            )
            lines.append(
                f"| {label} | {shown}; the cycle: {ms_of(base['the cycle'])} → "
                f"{ms_of(medians['the cycle'])} |"
            )
    return lines


def plan_lines(result: StoreResult) -> list[str]:
    lines = [
        f"{result.backend}: every statement of a cycle (and of a /metrics scrape, a reaper pass), "
        "a SELECT's ms per cycle re-run alone with every row fetched, its plan from "
        + ("EXPLAIN QUERY PLAN" if result.backend == "sqlite" else "EXPLAIN ANALYZE")
        + ":",
        "",
    ]
    for call, stmt, plan, spent in sorted(result.plans, key=lambda p: -(p[3] or 0.0)):
        took = "a write" if spent is None else f"{ms_of(spent)} ms"
        lines.append(f"- {call}, {took}: `{stmt}` → {plan}")
    return lines


def slurm_table(runs: Sequence[SlurmRun]) -> list[str]:
    lines = [
        "| elements in flight | cycle | what it did | Slurm calls, counted at hpcscale.proc.run "
        "| status() ms |",
        "|---:|---:|---|---|---:|",
    ]
    for run in runs:
        for k, calls in enumerate(run.cycles):
            what = (
                f"pre-flight; submits {run.in_flight} (held)"
                if k == 0
                else f"submits 10 more (held) with {run.in_flight} in flight"
                if k == 1
                else "observes"
            )
            shown = ", ".join(f"{n} × {c}" for c, n in sorted(calls.items()))
            lines.append(
                f"| {run.pending_seen[k]:,} | {k + 1} | {what} | {shown} | "
                f"{1000 * run.seconds[k]:.1f} |"
            )
    return lines


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def database(backend: str, workdir: Path, keep: bool) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/state.db"
        return
    base = os.environ.get("HPCSCALE_TEST_PG_URL")
    if not base:
        raise SystemExit("postgres: set HPCSCALE_TEST_PG_URL (scripts/pg-lab.sh up)")
    import psycopg

    name = "scale_" + uuid.uuid4().hex[:10]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        if not keep:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--tasks", type=int, default=1_000_000, help="waiting tasks")
    p.add_argument("--history", type=int, default=100_000, help="finished tasks")
    p.add_argument("--workers", type=int, default=10_000, help="live workers")
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--no-http", action="store_true", help="skip the run through a real server")
    p.add_argument("--no-slurm", action="store_true", help="skip the Slurm calls")
    p.add_argument("--no-ablate", action="store_true", help="skip the cycles without each index")
    p.add_argument("--slurm-sizes", default="10,1000")
    p.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help="keep the databases and temp dir")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    spec = Spec(args.tasks, args.history, args.workers)
    top = Path(tempfile.mkdtemp(prefix="hpcscale-scale-"))
    results: list[StoreResult] = []
    runs: list[SlurmRun] = []
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, top, ignore_errors=True)
        for backend in [b for b in args.backends.split(",") if b]:
            workdir = top / backend
            workdir.mkdir()
            with database(backend, workdir, args.keep) as url:
                result = run_store(
                    backend, url, spec, workdir, args.cycles, not args.no_http, not args.no_ablate
                )
            results.append(result)
            print("\n".join([*store_table(result), "", *before_after(result)]), flush=True)
        if not args.no_slurm:
            if not slurm_available():
                raise SystemExit(
                    "no Slurm lab: export SLURM_CONF (scripts/slurm-lab.sh) or --no-slurm"
                )
            for size in [int(s) for s in args.slurm_sizes.split(",")]:
                name = f"scale{uuid.uuid4().hex[:8]}"
                runs.append(slurm_calls(name, size, top / f"slurm-{size}"))
            print("\n".join(slurm_table(runs)), flush=True)
    elapsed = time.monotonic() - started
    print(f"\n({elapsed:.0f} s)")
    if args.write:
        text = section(args, argv, results, runs, elapsed)
        report.write_section(SECTION, text)
        print(f"wrote {report.BENCHMARKS}")
    if args.keep:
        print(f"kept {top}")
    return 0


def section(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    results: Sequence[StoreResult],
    runs: Sequence[SlurmRun],
    elapsed: float,
) -> str:
    given = list(argv if argv is not None else sys.argv[1:])
    command = "python bench/scale.py" + (" " + shlex.join(given) if given else "")
    verdict = []
    for r in results:
        cycle = statistics.median(r.cycle)
        observe = statistics.median(next(c.per_cycle for c in r.calls if c.name == "observe"))
        selects = sum(
            spent or 0.0
            for call, _, _, spent in r.plans
            if not call.startswith(("/metrics", "reaper"))
        )
        server = r.http.server_cycle if r.http is not None else None
        worst = max([cycle * 1000] + ([server] if server is not None else []))
        target = "met" if worst <= 50 else f"missed by {worst - 50:.1f} ms"
        verdict.append(
            f"{r.backend}: {ms(cycle)} ms a cycle (median, store side; p95 "
            f"{ms(pct(r.cycle, 0.95))})"
            + (f", {ms_of(server)} ms server side through HTTP" if server is not None else "")
            + f": **≤ 50 ms {target}**. Of it, `observe` (all the cycle's reads, one snapshot) "
            f"{ms(observe)} ms, bringing {statistics.median(r.feed):.0f} worker rows a cycle "
            f"(median; at most {max(r.feed)}) of the {args.workers:,} live; its SELECTs "
            f"{ms_of(selects)} ms a cycle when re-run alone. A manager's first cycle after a start "
            f"reads every worker: {ms(r.first)} ms, once"
        )
    lines = [
        SECTION,
        "",
        "Issue 7's scale target: the manager's cycle at 10^6 waiting tasks and 10^4 registered "
        "workers costs ≤ 50 ms server-side, and its Slurm calls per cycle do not grow with the "
        "workers. Measured by `bench/scale.py` (its docstring has the details).",
        "",
        f"- machine: {report.machine_line()}",
        f"- Python {sys.version.split()[0]}; "
        + "; ".join(r.version for r in results)
        + f"; date {report.today()}",
        f"- command: `{command}` ({elapsed:.0f} s in all, fills included)",
        f"- the store: {args.tasks:,} waiting tasks over 4 queues, {args.history:,} finished "
        f"ones, {args.workers:,} live workers (80% running a task) over 4 pools and 3x as many "
        "ended in the last 7 days, their submissions (arrays of 20), the event log, 500 decisions "
        "a pool; filled by bulk inserts (sqlite3 executemany, PostgreSQL COPY): 10^6 tasks "
        "through the API would take most of an hour, and the API is not what is measured",
        "- the cycle: the real `ComputeManager`, its client calling the store in this process "
        "(the functions the API routes call, each timed), its scheduler reporting a running "
        "element per live worker: every pool at its max, so it observes, decides and records "
        f"({args.cycles} cycles after 2 of warm-up); then the same through a real `hpcscale "
        "server` and the project's HTTP client",
        f"- between cycles, what a 30 s poll interval brings at this size: every live worker's "
        f"heartbeat, {CLAIMS_PER_CYCLE:,} tasks claimed and finished (busy slots, tasks done: "
        f"bulk UPDATEs of those columns), {ENDS_PER_CYCLE} workers ending and as many "
        "registering in their place (the store's own calls; the scheduler's list follows)",
        "",
        "**Result.** " + ". ".join(verdict) + ". The machine is a 2-CPU VM shared with other "
        "work (its load average is given per backend): the same run varies by ±30%.",
        "",
        "What makes the cycle small:",
        "",
        "- One request a cycle for all it reads (`POST /v1/managers/{name}/observe`, "
        "`Store.observe`): one read transaction (PostgreSQL: REPEATABLE READ, one snapshot), "
        "not ~24 requests and transactions, each with its own connection checkout, BEGIN and "
        "COMMIT. What remains per cycle: the manager's registration and a decision record per "
        "pool (writes), and the rare event or submission update.",
        "- The workers and open submissions as change feeds (schema version 3): a row gets a "
        "new `rev` when it is inserted or a column the manager follows changes (a worker's "
        "state, end or deadline; a submission's state, jobs or count), by triggers; the manager "
        "keeps the rows (`hpcscale/manager/feed.py`) and asks for `rev >= cursor` down "
        "`ix_workers_rev` and `ix_submissions_rev`. Heartbeats, claims and results do not touch "
        "`rev`, so 10^4 busy workers send nothing again; the workers at max_tasks come per pool "
        "as a short list (`ix_workers_pool_tasks_started`, an index on tasks done + busy slots). "
        "On SQLite, writers commit one at a time, so the largest rev + 1 numbers the changes in "
        "commit order; on PostgreSQL the rev is the writer's transaction id and the cursor the "
        "reader's snapshot xmin, so a change committed after a later one is still read "
        "(tests/test_worker_feed.py holds one open to check). Before this, listing the 10^4 "
        "workers cost 95-105 ms a cycle by itself, and the 500 open arrays 5-8 ms.",
        "- The per-pool and per-queue reads (history, submissions of the hour, workers at "
        "max_tasks, recent run times) are one statement each for all pools or queues (UNION ALL "
        "of one index range each), not one a pool or queue.",
        "",
        "What makes the reads in `observe` small (schema version 2; an older database is "
        "upgraded when the store opens):",
        "",
        "- `claimable` (the backlog per queue) read 10^6 task rows: it now sums `waiting_counts` "
        "(a row per queue, PostgreSQL: per queue and server connection), kept exact by triggers "
        "on `tasks` for every move in or out of `waiting`, and each queue's oldest task is one "
        "seek of the partial index `ix_tasks_waiting_age (queue, submitted_at) WHERE state = "
        "'waiting'`. No index can make it small: an exact count over 10^6 index entries is "
        "40-100 ms on either backend.",
        "- `events(kind_prefix=pool.failed_start)`, asked every cycle while the manager had "
        "counted no failed start (now once, when it starts), scanned the event log (LIKE "
        "cannot use an index): the prefix "
        "is now also a range of `ix_events_kind (kind, id)`, byte-wise (SQLite BINARY; "
        "PostgreSQL `text_pattern_ops`, whatever the collation).",
        "- `list_workers(pool, since)`: two index ranges as one UNION ALL (the live ones down "
        "`ix_workers_pool_state`, the others started since down the new `ix_workers_pool_started`"
        "), not a pass over the pool's history; rows validated by pydantic-core directly.",
        "- `pool_history`: the newest registrations down `ix_workers_pool_started` (LIMIT, no "
        "sort, no max() over the pool's history); `list_submissions(pool, since)` (the runaway "
        "guard's hour): `ix_submissions_pool_created (pool, created_at)`.",
        "- /metrics `count_tasks` (not part of the cycle): waiting from `waiting_counts`, the "
        "other states per-state ranges of `ix_tasks_claim`, so a scrape reads the history, not "
        "the backlog.",
        "",
        "What `waiting_counts` costs: a bump per claimed (or requeued, released, cancelled) "
        "task, none per result or lease renewal; on PostgreSQL each connection bumps its own "
        "shard, so writers never wait for one another. On SQLite an UPDATE of tasks with a "
        "trigger is journalled per statement, so the store keeps SQLite's temporary files in "
        "memory (`PRAGMA temp_store=MEMORY`; on disk, with 8 claimers in group commits, a "
        "result cost 25 µs more, in memory 8). The line under each before/after table measures "
        "it in this process.",
        "",
    ]
    for result in results:
        lines += [*store_table(result), ""]
    for result in results:
        lines += [*before_after(result), ""]
    if runs:
        lines += [
            "Slurm calls per cycle, on the Slurm lab (scripts/slurm-lab.sh): the real manager "
            "and SlurmScheduler, every subprocess counted at `hpcscale.proc.run` (the one "
            "chokepoint); its pool submits held arrays (`--hold`, pending until scancelled by "
            "name at the end), N elements, then 10 more with N in flight, then cycles with "
            "N + 10 in flight. One `squeue` a cycle whatever N, one `sbatch` per array; the "
            "pre-flight (`sbatch --test-only`) and `scontrol show config` come once per start "
            "(pre-flight: every `preflight_interval`). Also `tests/test_scale_slurm.py`.",
            "",
            *slurm_table(runs),
            "",
        ]
    for result in results:
        lines += [*plan_lines(result), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
