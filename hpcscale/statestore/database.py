"""The database under the store: the engine, its transactions, and the group commit.

One implementation on SQLAlchemy Core serves SQLite and PostgreSQL; they differ only in how a
claim locks rows (SQLite: one writer at a time, `BEGIN IMMEDIATE` behind an in-process lock so
threads queue in order instead of in SQLite's sleeping busy handler; PostgreSQL:
`FOR UPDATE SKIP LOCKED`, so concurrent claimers take different rows without waiting).
StoreBase holds it all; every part of the store (tasks, leases, workers, ...) subclasses it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, insert, select
from sqlalchemy.exc import OperationalError

from hpcscale.errors import StoreError
from hpcscale.statestore.hot_sql import Cursor, HotSql
from hpcscale.statestore.schema import events
from hpcscale.statestore.schema_version import create_or_check

Clock = Callable[[], float]
T = TypeVar("T")

# SQLite's write-ahead log is copied back into the database by a thread of the store's own
# (_Checkpointer) this often while there are writes; the writers' own automatic checkpoint only
# starts past WAL_AUTOCHECKPOINT_PAGES (64 MiB of 4 KiB pages), a fallback.
WAL_CHECKPOINT_INTERVAL = 0.25
WAL_AUTOCHECKPOINT_PAGES = 16384
log = logging.getLogger("hpcscale.statestore")


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


class StoreBase:
    """The engine, the clock and the transactions every part of the store works in."""

    def __init__(self, url: str, *, lease_ttl: float = 120.0, clock: Clock = time.time) -> None:
        self.url = url
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer: Connection | None = None
        self.engine = self._make_engine()
        self._sql = HotSql(self.is_sqlite)
        self._checkpointer: _Checkpointer | None = None
        self._group: tuple[int, Cursor] | None = None  # (thread, cursor) inside together()
        self._reading = threading.local()  # .conn: this thread's open read transaction
        self.opened = uuid.uuid4().hex  # names the worker feed's cursors (observe.py)
        with self._write() as conn:
            create_or_check(conn, self.is_sqlite)

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
    def _hot(self) -> Iterator[Cursor]:
        """A write transaction on the raw DB-API cursor, for the hot paths (claim, results).

        SQLAlchemy's statement building, compilation cache lookups and result wrapping cost
        more than SQLite's own work for these small statements (about 25 µs a statement), so
        the per-task calls speak the driver's SQL directly (hot_sql.py). The driver's operational
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
    def _sqlite_transaction(self) -> Iterator[Cursor]:
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
    def _savepoint(cursor: Cursor) -> Iterator[Cursor]:
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
    def _pg_transaction(self) -> Iterator[Cursor]:
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


def _attempt(call: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return call(), None
    except Exception as exc:
        return None, exc
