"""The hot paths' statements (claim, results, heartbeat) in each driver's own SQL.

SQLAlchemy's statement building, compilation cache lookups and result wrapping cost more than
SQLite's own work for these small statements (about 25 µs a statement), so the per-task calls
speak the driver's SQL directly, on the raw DB-API cursor (database.StoreBase._hot).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

# Only the heartbeat column, so the indexes on the worker's state are left alone.
TOUCH_WORKER = (
    "UPDATE workers SET last_heartbeat = :now WHERE id = :wid AND state IN ('active', 'draining')"
)
REVIVE_WORKER = (  # as heartbeat() revives: no end any more
    "UPDATE workers SET last_heartbeat = :now, state = 'active', ended_at = NULL, "
    "end_reason = NULL WHERE id = :wid AND state = 'lost'"
)
WORKER_STATE = "SELECT state FROM workers WHERE id = :wid"
WORKER_HOST = "SELECT host FROM workers WHERE id = :wid"
CLAIM_SELECT = (
    "SELECT id, queue, command, env, cwd, slots, timeout, attempts, fence FROM tasks "
    "WHERE state = 'waiting' AND queue = :q0 AND slots <= :free "
    "ORDER BY priority DESC, id LIMIT :lim FOR UPDATE SKIP LOCKED"
)
CLAIM_UPDATE = (
    "UPDATE tasks SET state = 'running', lease_owner = :wid, lease_expiry = :expiry, "
    "fence = fence + 1, attempts = attempts + 1, started_at = :now, ended_at = NULL "
    "WHERE id = ANY(:ids)"
)
INSERT_EVENT = (
    "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
    "VALUES (:ts, :kind, :task_id, :worker_id, :detail)"
)
# One event per task of a batch in one statement, in the order of the list of ids:
# a row each from the array (numbered, to keep that order), joined to its task.
SQLITE_CLAIMED_EVENTS = (
    "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
    "SELECT :ts, 'task.claimed', t.id, :wid, 'fence ' || t.fence "
    "FROM json_each(:ids) AS j JOIN tasks AS t ON t.id = j.value ORDER BY j.key"
)
SQLITE_SAME_EVENTS = (
    "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
    "SELECT :ts, :kind, j.value, :wid, NULL FROM json_each(:ids) AS j ORDER BY j.key"
)
POSTGRES_CLAIMED_EVENTS = (
    "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
    "SELECT :ts, 'task.claimed', t.id, :wid, 'fence ' || t.fence "
    "FROM unnest(:ids::bigint[]) WITH ORDINALITY AS j(id, n) "
    "JOIN tasks AS t ON t.id = j.id ORDER BY j.n"
)
POSTGRES_SAME_EVENTS = (
    "INSERT INTO events (ts, kind, task_id, worker_id, detail) "
    "SELECT :ts, :kind, j.id, :wid, NULL "
    "FROM unnest(:ids::bigint[]) WITH ORDINALITY AS j(id, n) ORDER BY j.n"
)
RESULTS_SELECT = (
    "SELECT id, state, fence, attempts, max_attempts, lease_owner FROM tasks "
    "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
)
RESULTS_UPDATE = (
    "UPDATE tasks SET state = :state, exit_code = :exit, output_tail = :tail, "
    "reason = :reason, ended_at = :ended, lease_owner = NULL, lease_expiry = NULL "
    "WHERE id = :id"
)
WORKER_DONE = "UPDATE workers SET tasks_done = tasks_done + :done WHERE id = :wid"


class Cursor(Protocol):
    """What the hot paths use of a DB-API cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...


class HotSql:
    """The statements above for one driver.

    Written once in PostgreSQL's form with `:name` parameters. For sqlite3 (named style) the
    row locks go (its transactions lock the whole database) and a list of ids, one parameter,
    is read with json_each() from a JSON array; for psycopg `:name` becomes `%(name)s`. Either
    way the statement text, and so the driver's prepared statement, is the same for every
    batch size.
    """

    def __init__(self, is_sqlite: bool) -> None:
        self.is_sqlite = is_sqlite
        self.touch_worker = self._(TOUCH_WORKER)
        self.revive_worker = self._(REVIVE_WORKER)
        self.worker_state = self._(WORKER_STATE)
        self.worker_host = self._(WORKER_HOST)
        self.claim_update = self._(CLAIM_UPDATE)
        self.insert_event = self._(INSERT_EVENT)
        if is_sqlite:
            self.claimed_events = SQLITE_CLAIMED_EVENTS
            self.same_events = SQLITE_SAME_EVENTS
        else:
            self.claimed_events = self._(POSTGRES_CLAIMED_EVENTS)
            self.same_events = self._(POSTGRES_SAME_EVENTS)
        self.results_select = self._(RESULTS_SELECT)
        self.results_update = self._(RESULTS_UPDATE)
        self.worker_done = self._(WORKER_DONE)

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
        sql = CLAIM_SELECT
        if len(queues) > 1:
            sql = sql.replace("queue = :q0", "queue IN (:" + ", :".join(params) + ")")
        return self._(sql), params
