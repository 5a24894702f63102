"""The task database: tasks under leases, workers, pools' controls, events, tokens.

One implementation on SQLAlchemy Core serves SQLite and PostgreSQL; they differ only in how a
claim locks rows (SQLite: one writer at a time, `BEGIN IMMEDIATE` behind an in-process lock so
threads queue in order instead of in SQLite's sleeping busy handler; PostgreSQL:
`FOR UPDATE SKIP LOCKED`, so concurrent claimers take different rows without waiting).

Leases: a claim bumps the task's `fence` and counts an attempt. Every later call about that run
(result, release) must carry the fence; any other is stale and changes nothing (invariant 1).
A lease not renewed by a heartbeat within the TTL expires: back to `waiting`, or `dead` once
max_attempts are used (invariant 2). Release hands a task back without using up its attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from hpcscale.errors import InvalidTransition, NotFound, SchemaMismatch, StoreError
from hpcscale.models import (
    LIVE_WORKER_STATES,
    Backlog,
    ClaimedTask,
    Control,
    Event,
    HeartbeatReply,
    Lease,
    PoolInfo,
    QueueStats,
    ResultOutcome,
    Role,
    Task,
    TaskResult,
    TaskSpec,
    TaskState,
    TokenInfo,
    Worker,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.statestore import schema
from hpcscale.statestore.hosts import HostRecords, HostRules
from hpcscale.statestore.manager_records import ManagerRecords
from hpcscale.statestore.observe import (
    WORKER_COLUMNS,
    Observe,
    live_workers,
    rows_to_workers,
)
from hpcscale.statestore.schema import (
    batches,
    events,
    meta,
    pools,
    tasks,
    tokens,
    waiting_counts,
    workers,
)
from hpcscale.statestore.unions import union_rows

Clock = Callable[[], float]
T = TypeVar("T")
# A literal, not a parameter: the planners use the partial index ix_tasks_waiting_age only when
# the query names its predicate (PostgreSQL's generic plans of prepared statements included).
WAITING: Any = literal_column("'waiting'")
RECENT_DURATIONS = 100
# SQLite's write-ahead log is copied back into the database by a thread of the store's own
# (_Checkpointer) this often while there are writes; the writers' own automatic checkpoint only
# starts past WAL_AUTOCHECKPOINT_PAGES (64 MiB of 4 KiB pages), a fallback.
WAL_CHECKPOINT_INTERVAL = 0.25
WAL_AUTOCHECKPOINT_PAGES = 16384
log = logging.getLogger("hpcscale.statestore")


def normalize_url(url: str) -> str:
    """SQLAlchemy URL from the config's: `~` expanded, psycopg 3 as the PostgreSQL driver."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class _Cursor(Protocol):
    """What the hot paths use of a DB-API cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...


class _Sql:
    """The hot paths' statements in each driver's own dialect.

    Written once in PostgreSQL's form with `:name` parameters. For sqlite3 (named style) the
    row locks go (its transactions lock the whole database) and a list of ids, one parameter,
    is read with json_each() from a JSON array; for psycopg `:name` becomes `%(name)s`. Either
    way the statement text, and so the driver's prepared statement, is the same for every
    batch size.
    """

    def __init__(self, is_sqlite: bool) -> None:
        self.is_sqlite = is_sqlite
        # Only the heartbeat column, so the indexes on the worker's state are left alone.
        self.touch_worker = self._(
            "UPDATE workers SET last_heartbeat = :now "
            "WHERE id = :wid AND state IN ('active', 'draining')"
        )
        self.revive_worker = self._(  # as heartbeat() revives: no end any more
            "UPDATE workers SET last_heartbeat = :now, state = 'active', ended_at = NULL, "
            "end_reason = NULL WHERE id = :wid AND state = 'lost'"
        )
        self.worker_state = self._("SELECT state FROM workers WHERE id = :wid")
        self.worker_host = self._("SELECT host FROM workers WHERE id = :wid")
        self._claim_select = (
            "SELECT id, queue, command, env, cwd, slots, timeout, attempts, fence FROM tasks "
            "WHERE state = 'waiting' AND queue = :q0 AND slots <= :free "
            "ORDER BY priority DESC, id LIMIT :lim FOR UPDATE SKIP LOCKED"
        )
        self.claim_update = self._(
            "UPDATE tasks SET state = 'running', lease_owner = :wid, lease_expiry = :expiry, "
            "fence = fence + 1, attempts = attempts + 1, started_at = :now, ended_at = NULL "
            "WHERE id = ANY(:ids)"
        )
        self.insert_event = self._(
            "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
            "VALUES (:ts, :kind, :task_id, :worker_id, :detail)"
        )
        # One event per task of a batch in one statement, in the order of the list of ids:
        # a row each from the array (numbered, to keep that order), joined to its task.
        if is_sqlite:
            self.claimed_events = (
                "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
                "SELECT :ts, 'task.claimed', t.id, :wid, 'fence ' || t.fence "
                "FROM json_each(:ids) AS j JOIN tasks AS t ON t.id = j.value ORDER BY j.key"
            )
            self.same_events = (
                "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
                "SELECT :ts, :kind, j.value, :wid, NULL FROM json_each(:ids) AS j ORDER BY j.key"
            )
        else:
            self.claimed_events = self._(
                "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
                "SELECT :ts, 'task.claimed', t.id, :wid, 'fence ' || t.fence "
                "FROM unnest(:ids::bigint[]) WITH ORDINALITY AS j(id, n) "
                "JOIN tasks AS t ON t.id = j.id ORDER BY j.n"
            )
            self.same_events = self._(
                "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
                "SELECT :ts, :kind, j.id, :wid, NULL "
                "FROM unnest(:ids::bigint[]) WITH ORDINALITY AS j(id, n) ORDER BY j.n"
            )
        self.results_select = self._(
            "SELECT id, state, fence, attempts, max_attempts, lease_owner FROM tasks "
            "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
        )
        self.results_update = self._(
            "UPDATE tasks SET state = :state, exit_code = :exit, output_tail = :tail, "
            "reason = :reason, ended_at = :ended, lease_owner = NULL, lease_expiry = NULL "
            "WHERE id = :id"
        )
        self.worker_done = self._(
            "UPDATE workers SET tasks_done = tasks_done + :done WHERE id = :wid"
        )

    def _(self, sql: str) -> str:
        if self.is_sqlite:
            return (
                sql.replace(" FOR UPDATE SKIP LOCKED", "")
                .replace(" FOR UPDATE", "")
                .replace("= ANY(:ids)", "IN (SELECT value FROM json_each(:ids))")
            )
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)

    def ids(self, ids: Sequence[int]) -> Any:
        return json.dumps(list(ids)) if self.is_sqlite else list(ids)

    def claim_select(self, queues: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """One queue is an equality, so the claim index yields rows in order (no sort)."""
        params = {f"q{i}": q for i, q in enumerate(queues)}
        sql = self._claim_select
        if len(queues) > 1:
            sql = sql.replace("queue = :q0", "queue IN (:" + ", :".join(params) + ")")
        return self._(sql), params


class _Checkpointer:
    """Copies SQLite's write-ahead log back into the database file, from a thread of its own.

    By default SQLite checkpoints inside whichever commit takes the log past 1000 pages: that
    commit copies them and waits for two fsyncs, holding the write lock, so every few dozen
    claims one stalls everyone. Here a PASSIVE checkpoint (which never waits for, nor blocks,
    readers or writers, and runs without the GIL) is taken every WAL_CHECKPOINT_INTERVAL while
    there are writes. Durability is SQLite's synchronous=NORMAL either way.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="hpcscale-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def wrote(self) -> None:
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = self._engine.raw_connection()
        try:
            raw: Any = conn.driver_connection
            while True:
                self._dirty.wait()
                if self._stop.is_set():
                    return
                self._dirty.clear()
                try:
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, I/O: the next round, or the writers, retry
                    log.warning("WAL checkpoint failed: %s", exc)
                if self._stop.wait(WAL_CHECKPOINT_INTERVAL):
                    return
        finally:
            conn.close()


class Store(ManagerRecords, HostRecords, Observe):
    """The statestore. Thread-safe; one instance per process is enough."""

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: float = 120.0,
        clock: Clock = time.time,
        host_rules: HostRules | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.host_rules = host_rules or HostRules()
        self._denied: dict[str, float] = {}  # host -> denied until (refreshed by the reaper)
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer: Connection | None = None
        self.engine = self._make_engine()
        self._sql = _Sql(self.is_sqlite)
        self._checkpointer: _Checkpointer | None = None
        self._group: tuple[int, _Cursor] | None = None  # (thread, cursor) inside together()
        self._reading = threading.local()  # .conn: this thread's open read transaction
        self.opened = uuid.uuid4().hex  # names the worker feed's cursors (observe.py)
        self._create_or_check_schema()

    # ----------------------------------------------------------------- plumbing

    def _make_engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_size=16, max_overflow=32, pool_pre_ping=True)
        engine = create_engine(
            self.url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=16
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            # Statement journals in memory: an UPDATE of tasks fires waiting_counts' trigger, so
            # SQLite journals each such statement, and past 64 KiB (a group commit's savepoint)
            # a file-backed journal costs writes per statement (measured: +25 µs a result with
            # 8 claimers in group commits, +8 µs in memory).
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = "DEFERRED" if conn.get_execution_options().get("readonly") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            raise RuntimeError("together() takes only calls that write through _hot()")
        with self._write_lock:
            conn = self._sqlite_writer()
            with conn.begin():
                yield conn
            self._wrote()

    def _wrote(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.wrote()

    def _sqlite_writer(self) -> Connection:
        """SQLite's one writing connection, kept checked out: every write holds the lock anyway,
        so a pool checkout and reset per transaction would only cost time. Call under the lock."""
        conn = self._writer
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = self._writer = self.engine.connect()
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self.engine)
        return conn

    @contextmanager
    def _hot(self) -> Iterator[_Cursor]:
        """A write transaction on the raw DB-API cursor, for the hot paths (claim, results).

        SQLAlchemy's statement building, compilation cache lookups and result wrapping cost
        more than SQLite's own work for these small statements (about 25 µs a statement), so
        the per-task calls speak the driver's SQL directly (`_Sql`). The driver's operational
        errors (locked, I/O, a lost connection) come out as StoreError (503, which clients
        retry); a PostgreSQL connection that broke is dropped from the pool. Inside
        `together()` it is a savepoint of the group's transaction.
        """
        if self._write_lock is None:
            with self._pg_transaction() as cursor:
                yield cursor
            return
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            with self._savepoint(group[1]) as cursor:
                yield cursor
            return
        with self._write_lock, self._sqlite_transaction() as cursor:
            yield cursor

    def together(self, calls: Sequence[Callable[[], T]]) -> list[tuple[T | None, Exception | None]]:
        """Run store calls in one SQLite transaction, each in a savepoint of its own: a group
        commit. Each gets its own (result, None) or (None, error); an error undoes only its
        own call. One commit (one lock, one write of the log's shared pages) serves them all.

        For the calls that use `_hot` (claim, results). On PostgreSQL, which commits
        concurrent transactions in parallel anyway, each call is its own transaction.
        """
        if self._write_lock is None or len(calls) == 1:
            return [_attempt(call) for call in calls]
        out: list[tuple[T | None, Exception | None]] = []
        with self._write_lock, self._sqlite_transaction() as cursor:
            self._group = (threading.get_ident(), cursor)
            try:
                out.extend(_attempt(call) for call in calls)
            finally:
                self._group = None
        return out

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[_Cursor]:
        """BEGIN IMMEDIATE ... COMMIT on SQLite's writing connection; call under the lock."""
        raw: Any = self._sqlite_writer().connection.driver_connection
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"database error: {exc}") from exc
        try:
            yield raw.cursor()
        except BaseException as exc:
            raw.rollback()
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreError(f"database error: {exc}") from exc
            raise
        try:
            raw.commit()
        except sqlite3.OperationalError as exc:
            raw.rollback()
            raise StoreError(f"database error: {exc}") from exc
        self._wrote()

    @staticmethod
    @contextmanager
    def _savepoint(cursor: _Cursor) -> Iterator[_Cursor]:
        cursor.execute("SAVEPOINT hot")
        try:
            yield cursor
        except BaseException as exc:
            cursor.execute("ROLLBACK TO hot")
            cursor.execute("RELEASE hot")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreError(f"database error: {exc}") from exc
            raise
        cursor.execute("RELEASE hot")

    @contextmanager
    def _pg_transaction(self) -> Iterator[_Cursor]:
        import psycopg

        fairy = self.engine.raw_connection()
        try:
            cursor = fairy.cursor()
            yield cursor
            fairy.commit()
        except psycopg.OperationalError as exc:  # lost connection, deadlock, serialization
            if fairy.driver_connection is None or fairy.driver_connection.broken:
                fairy.invalidate(exc)
            else:
                fairy.rollback()
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            fairy.rollback()
            raise
        finally:
            fairy.close()

    @contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A read-only transaction; inside another of this thread, that one (so that `observe`
        runs the other reads in its transaction). `snapshot`: PostgreSQL's REPEATABLE READ, one
        snapshot for every statement (SQLite's read transactions always are)."""
        held: Connection | None = getattr(self._reading, "conn", None)
        if held is not None:
            yield held
            return
        options: dict[str, Any] = {"readonly": True}
        if snapshot and not self.is_sqlite:
            options["isolation_level"] = "REPEATABLE READ"
        with self.engine.connect() as raw:
            conn = raw.execution_options(**options)
            with conn.begin():
                self._reading.conn = conn
                try:
                    yield conn
                finally:
                    self._reading.conn = None

    def _create_or_check_schema(self) -> None:
        with self._write() as conn:
            if not self.is_sqlite:  # before anything is written: PL/pgSQL checks calls late
                schema.check_postgres(
                    int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
                )
            schema.metadata.create_all(conn, checkfirst=True)
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            schema.fold_counters(conn)
            if row is None:
                schema.install_counters(conn)
                schema.install_revs(conn)
                with contextlib.suppress(IntegrityError):  # another process was first
                    conn.execute(
                        insert(meta).values(key="schema_version", value=str(schema.SCHEMA_VERSION))
                    )
            elif int(row.value) < schema.SCHEMA_VERSION:
                schema.upgrade(conn, int(row.value))
                conn.execute(
                    update(meta)
                    .where(meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )
            elif int(row.value) != schema.SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"database schema version {row.value} but this hpcscale uses "
                    f"{schema.SCHEMA_VERSION}; migrate or point [server] database elsewhere"
                )

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._write_lock is not None:
            with self._write_lock:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
        self.engine.dispose()

    def ping(self) -> None:
        """Raise StoreError if the database does not answer."""
        try:
            with self._read() as conn:
                conn.execute(select(1))
        except OperationalError as exc:
            raise StoreError(f"database unreachable: {exc.orig}") from exc

    @staticmethod
    def _events(conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(events), rows)

    # ----------------------------------------------------------------- tasks

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

    def _worker_host_denied(self, cur: _Cursor, worker_id: str, now: float) -> bool:
        cur.execute(self._sql.worker_host, {"wid": worker_id})
        row = cur.fetchone()
        return row is not None and self.host_denied(row[0], now)

    def _touch_worker(self, cur: _Cursor, worker_id: str, now: float) -> None:
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
                if res.success:
                    state, outcome, kind = TaskState.SUCCEEDED, "succeeded", "task.succeeded"
                elif not res.retryable:
                    state, outcome, kind = TaskState.FAILED, "failed", "task.failed"
                elif row[3] >= row[4]:
                    state, outcome, kind = TaskState.DEAD, "dead", "task.dead"
                else:
                    state, outcome, kind = TaskState.WAITING, "requeued", "task.requeued"
                final = state != TaskState.WAITING
                updates.append(
                    {
                        "id": res.task_id,
                        "state": state.value,
                        "exit": res.exit_code,
                        "tail": res.output_tail,
                        "reason": res.reason,
                        "ended": now if final else None,
                    }
                )
                if not res.success:
                    detail = f"exit {res.exit_code}" + (f": {res.reason}" if res.reason else "")
                    event_rows.append(
                        {
                            "ts": now,
                            "kind": "task.failed",
                            "task_id": res.task_id,
                            "worker_id": worker_id,
                            "detail": detail,
                        }
                    )
                if kind != "task.failed":
                    event_rows.append(
                        {
                            "ts": now,
                            "kind": kind,
                            "task_id": res.task_id,
                            "worker_id": worker_id,
                            "detail": None,
                        }
                    )
                outcomes.append(ResultOutcome(task_id=res.task_id, outcome=outcome))
            if updates:
                cur.executemany(sql.results_update, updates)
                cur.execute(sql.worker_done, {"done": len(updates), "wid": worker_id})
            if event_rows:
                kinds = {(e["kind"], e["detail"]) for e in event_rows}
                kind, detail = next(iter(kinds))
                if len(kinds) == 1 and detail is None:  # the usual: they all succeeded
                    ids = sql.ids([e["task_id"] for e in event_rows])
                    cur.execute(
                        sql.same_events, {"ts": now, "kind": kind, "wid": worker_id, "ids": ids}
                    )
                else:
                    cur.executemany(sql.insert_event, event_rows)
        return outcomes

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
                to_dead = [r for r in expired if r.attempts >= r.max_attempts]
                to_wait = [r for r in expired if r.attempts < r.max_attempts]
                base = update(tasks).where(
                    tasks.c.id == bindparam("b_id"), tasks.c.state == TaskState.RUNNING.value
                )
                if to_wait:
                    conn.execute(
                        base.values(
                            state=TaskState.WAITING.value, lease_owner=None, lease_expiry=None
                        ),
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
                    {
                        "ts": now,
                        "kind": "worker.lost",
                        "worker_id": w,
                        "detail": "missed heartbeats",
                    }
                    for w in lost
                ],
            )
        return len(expired)

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

    # ----------------------------------------------------------------- workers

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
                # It was only silent (a stalled network, a paused process): take it back. Its
                # leases were already requeued; `lost` below tells it to stop those runs.
                conn.execute(
                    update(workers)
                    .where(workers.c.id == worker_id)
                    .values(state=WorkerState.ACTIVE.value, end_reason=None, ended_at=None)
                )
                self._events(
                    conn,
                    [
                        {
                            "ts": now,
                            "kind": "worker.returned",
                            "worker_id": worker_id,
                            "detail": None,
                        }
                    ],
                )
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

    # ----------------------------------------------------------------- events

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

    # ----------------------------------------------------------------- tokens

    def create_token(self, role: Role, queues: Sequence[str] | None = None, name: str = "") -> str:
        """A new random token; only its SHA-256 digest is stored."""
        token = secrets.token_urlsafe(32)
        self.add_token(token, role, queues, name)
        return token

    def add_token(
        self, token: str, role: Role, queues: Sequence[str] | None = None, name: str = ""
    ) -> None:
        with self._write() as conn:
            conn.execute(
                insert(tokens).values(
                    digest=digest(token),
                    role=role.value,
                    queues=json.dumps(list(queues)) if queues is not None else None,
                    name=name,
                    created_at=self.clock(),
                    revoked=0,
                )
            )

    def verify_token(self, token: str) -> TokenInfo | None:
        with self._read() as conn:
            row = conn.execute(
                select(tokens).where(tokens.c.digest == digest(token), tokens.c.revoked == 0)
            ).first()
        if row is None:
            return None
        return TokenInfo(
            id=row.id,
            role=Role(row.role),
            queues=json.loads(row.queues) if row.queues is not None else None,
            name=row.name,
        )

    def has_admin_token(self) -> bool:
        with self._read() as conn:
            return (
                conn.execute(
                    select(tokens.c.id).where(tokens.c.role == Role.ADMIN.value).limit(1)
                ).first()
                is not None
            )


def _attempt(call: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return call(), None
    except Exception as exc:
        return None, exc


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    ordered = sorted(durations)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return QueueStats(
        queue=queue, recent_durations=durations, mean=sum(durations) / len(durations), p90=p90
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


def open_store(
    url: str,
    *,
    lease_ttl: float = 120.0,
    clock: Clock = time.time,
    host_rules: HostRules | None = None,
) -> Store:
    return Store(url, lease_ttl=lease_ttl, clock=clock, host_rules=host_rules)
