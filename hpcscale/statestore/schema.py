"""The statestore's tables, one definition for SQLite and PostgreSQL.

SCHEMA_VERSION is written into `meta` when the database is created; a release that changes a table
bumps it and migrates from the stored number (schema_version.py); a new table alone needs none.
Version 2: `waiting_counts`, kept by triggers on `tasks` (`install_counters`), and the indexes the
manager's cycle seeks with at 10^6 tasks and 10^4 workers (BENCHMARKS.md "Scale"). Version 3:
`workers.rev` and `submissions.rev`, the change feed the manager follows instead of reading every
worker and open submission each cycle (`install_revs`). Version 4: `queue_caps` and `grants`: no
older server may serve a cap it ignores. Version 5: `workers.job_started_at`, a worker's start-up.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    text,
)

SCHEMA_VERSION = 5
metadata = MetaData()

# SQLite only aliases INTEGER PRIMARY KEY to the rowid; BigInteger elsewhere.
_Id = BigInteger().with_variant(Integer(), "sqlite")

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("queue", String(64), nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("command", Text, nullable=False),  # JSON list of argv strings
    Column("env", Text, nullable=False),  # JSON object
    Column("cwd", Text),
    Column("slots", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout", Float),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("state", String(16), nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expiry", Float),
    Column("fence", BigInteger, nullable=False, server_default=text("0")),
    Column("exit_code", Integer),
    Column("output_tail", Text),
    Column("reason", Text),
    Column("submitted_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
)
# Claim order within a queue; also serves the claimable counts.
Index("ix_tasks_claim", tasks.c.state, tasks.c.queue, tasks.c.priority.desc(), tasks.c.id)
# Heartbeat / release / expire find a worker's leases and the expired ones.
Index("ix_tasks_lease_owner", tasks.c.lease_owner)
Index("ix_tasks_running_expiry", tasks.c.state, tasks.c.lease_expiry)
# Recent durations per queue.
Index("ix_tasks_ended", tasks.c.queue, tasks.c.state, tasks.c.ended_at)
# The oldest waiting task of a queue (claimable's age): one seek. Partial, so it holds only the
# waiting tasks; queries must say `state = 'waiting'` as a literal for the planners to use it.
# (Its PostgreSQL `where`, the same: schema_version.postgresql_options.)
ix_tasks_waiting_age = Index(
    "ix_tasks_waiting_age",
    tasks.c.queue,
    tasks.c.submitted_at,
    sqlite_where=tasks.c.state == "waiting",
)

# Waiting tasks per queue, kept by triggers on `tasks` (install_counters): claimable reads these
# few rows instead of counting 10^6 tasks. Only `waiting` is counted, so a claim costs one bump
# per task and a result none. On PostgreSQL each server connection (backend) bumps a shard of
# its own, its pid: no two transactions ever write the same row, so writers neither wait for one
# another nor deadlock; the shards of backends gone are folded into shard 0 when a store opens
# (fold_counters). SQLite, one writer at a time, has shard 0 only. A count is the sum of its
# shards.
waiting_counts = Table(
    "waiting_counts",
    metadata,
    Column("queue", String(64), primary_key=True),
    Column("shard", BigInteger, primary_key=True, autoincrement=False),
    Column("n", BigInteger, nullable=False),
    Column("slots", BigInteger, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("task_ids", Text, nullable=False),  # JSON list
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pool", String(64), nullable=False),
    Column("queues", Text, nullable=False),  # JSON list
    Column("host", Text, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("job_id", String(64)),
    Column("array_index", Integer),
    Column("submission", String(128)),
    Column("started_at", Float, nullable=False),
    Column("expected_end", Float),
    Column("last_heartbeat", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("tasks_done", Integer, nullable=False, server_default=text("0")),
    Column("busy_slots", Integer, nullable=False, server_default=text("0")),
    Column("end_reason", Text),
    Column("ended_at", Float),
    Column("job_started_at", Float),  # registered less the worker's job_age (its start-up)
    # When the row last changed in a way the manager follows (registered, a new state): see
    # install_revs. Heartbeats, claims and results leave it alone.
    Column("rev", BigInteger, nullable=False, server_default=text("0")),
)
Index("ix_workers_rev", workers.c.rev)
# A pool's live workers that started max_tasks tasks (Store.observe): a range, not a pass.
Index(
    "ix_workers_pool_tasks_started",
    workers.c.pool,
    workers.c.state,
    workers.c.tasks_done + workers.c.busy_slots,
)
Index("ix_workers_pool_state", workers.c.pool, workers.c.state)
Index("ix_workers_state_heartbeat", workers.c.state, workers.c.last_heartbeat)
# A pool's workers started since a time (the manager's look-back), newest first (its history).
Index("ix_workers_pool_started", workers.c.pool, workers.c.started_at)

pools = Table(
    "pools",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("manager", String(64)),
    Column("min_workers", Integer, nullable=False, server_default=text("0")),
    Column("control", String(16), nullable=False, server_default=text("'continue'")),
    Column("max_workers_override", Integer),
    Column("updated_at", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("task_id", BigInteger),
    Column("worker_id", String(64)),
    Column("detail", Text),
)
# text_pattern_ops on PostgreSQL (schema_version.postgresql_options): a kind prefix (`events
# --kind-prefix`, the manager's look for failed starts) is then a range of this index whatever
# the database's collation.
ix_events_kind = Index("ix_events_kind", events.c.kind, events.c.id)
Index("ix_events_task", events.c.task_id)

tokens = Table(
    "tokens",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("role", String(16), nullable=False),
    Column("queues", Text),  # JSON list, or NULL for every queue
    Column("name", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked", Integer, nullable=False, server_default=text("0")),
)

# ---------------------------------------------------------------------- the manager's records

submissions = Table(
    "submissions",
    metadata,
    Column("tag", String(128), primary_key=True),
    Column("manager", String(64), nullable=False),
    Column("pool", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("job_ids", Text, nullable=False, server_default=text("'[]'")),  # JSON list
    # intent (recorded before sbatch) -> confirmed (job ids known) -> ended | failed
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("detail", Text),
    Column("rev", BigInteger, nullable=False, server_default=text("0")),  # as workers.rev
)
Index("ix_submissions_rev", submissions.c.rev)
Index("ix_submissions_manager_state", submissions.c.manager, submissions.c.state)
# A pool's submissions of the last hour (max_submit_per_hour), whatever the history's length.
Index("ix_submissions_pool_created", submissions.c.pool, submissions.c.created_at)

managers = Table(
    "managers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("instance", String(64), nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False, server_default=text("0")),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("manager", String(64), nullable=False),
    Column("pool", String(64), nullable=False),
    Column("data", Text, nullable=False),  # JSON of the decision and its observation
)
Index("ix_decisions_pool", decisions.c.pool, decisions.c.id)
Index("ix_workers_submission", workers.c.submission)

queue_caps = Table(  # a queue's global cap across managers (grants.py)
    "queue_caps",
    metadata,
    Column("queue", String(64), primary_key=True),
    Column("global_cap", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
grants = Table(  # a row per capped queue of an open submission; no index but the key
    "grants",
    metadata,
    Column("tag", String(128), primary_key=True),
    Column("queue", String(64), primary_key=True),
    Column("manager", String(64), nullable=False),
    Column("instance", String(64), nullable=False),
    Column("pool", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("stale_after", Float, nullable=False),
)

# Per worker host: its streak of failed tasks and whether it is denied claims (hosts.py).
hosts = Table(
    "hosts",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("fail_streak", Integer, nullable=False, server_default=text("0")),
    Column("streak_started", Float),
    Column("last_failure", Float),
    Column("last_detail", Text),
    Column("denied_until", Float),
    Column("denials", Integer, nullable=False, server_default=text("0")),
)


# ---------------------------------------------------------------------- waiting_counts' triggers

# A task counts while its state is 'waiting': inserted so, or moved in or out by an update (a
# claim, a requeue, a release, a cancel); a lease renewal or a result fires nothing.
_COUNTED_UPDATE = (
    "(OLD.state = 'waiting' OR NEW.state = 'waiting') AND (OLD.state IS NOT NEW.state "
    "OR OLD.queue IS NOT NEW.queue OR OLD.slots IS NOT NEW.slots)"
)
_SQLITE_ADD = (
    "INSERT INTO waiting_counts (queue, shard, n, slots) SELECT NEW.queue, 0, 1, NEW.slots "
    "WHERE NEW.state = 'waiting' "
    "ON CONFLICT (queue, shard) DO UPDATE SET n = n + 1, slots = slots + excluded.slots"
)
_SQLITE_REMOVE = (
    "UPDATE waiting_counts SET n = n - 1, slots = slots - OLD.slots "
    "WHERE OLD.state = 'waiting' AND queue = OLD.queue AND shard = 0"
)
COUNTER_TRIGGERS = ("tasks_counted_insert", "tasks_counted_update", "tasks_counted_delete")
SQLITE_COUNTERS = (
    "DROP TRIGGER IF EXISTS tasks_counted_insert",
    "CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks WHEN NEW.state = 'waiting' "
    f"BEGIN {_SQLITE_ADD}; END",
    "DROP TRIGGER IF EXISTS tasks_counted_update",
    "CREATE TRIGGER tasks_counted_update AFTER UPDATE OF queue, state, slots ON tasks "
    f"WHEN {_COUNTED_UPDATE} BEGIN {_SQLITE_REMOVE}; {_SQLITE_ADD}; END",
    "DROP TRIGGER IF EXISTS tasks_counted_delete",
    "CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks WHEN OLD.state = 'waiting' "
    f"BEGIN {_SQLITE_REMOVE}; END",
)

# hpcscale_count_waiting adds (dn, ds) to this backend's shard. Inserts and deletes are counted
# per statement (a submit of 10,000 tasks is one bump), updates per row that moves a task in or
# out of `waiting` (the WHEN clause is checked without calling the function).
_PG_COUNTED_UPDATE = _COUNTED_UPDATE.replace("IS NOT", "IS DISTINCT FROM")
_PG_BUMP = (  # inline in the row trigger: a call of hpcscale_count_waiting per row costs more
    "INSERT INTO waiting_counts AS c (queue, shard, n, slots) "
    "VALUES ({row}.queue, pg_backend_pid(), {sign}1, {sign}{row}.slots) "
    "ON CONFLICT (queue, shard) DO UPDATE "
    "SET n = c.n + excluded.n, slots = c.slots + excluded.slots"
)
POSTGRES_COUNTERS = (
    """CREATE OR REPLACE FUNCTION hpcscale_count_waiting(q text, dn bigint, ds bigint)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO waiting_counts AS c (queue, shard, n, slots) VALUES (q, pg_backend_pid(), dn, ds)
  ON CONFLICT (queue, shard) DO UPDATE SET n = c.n + excluded.n, slots = c.slots + excluded.slots
$$""",
    f"""CREATE OR REPLACE FUNCTION hpcscale_tasks_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.state = 'waiting' THEN
    {_PG_BUMP.format(row="OLD", sign="-")};
  END IF;
  IF NEW.state = 'waiting' THEN
    {_PG_BUMP.format(row="NEW", sign="")};
  END IF;
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE FUNCTION hpcscale_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM hpcscale_count_waiting(queue, count(*), sum(slots)) FROM added
    WHERE state = 'waiting' GROUP BY queue;
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE FUNCTION hpcscale_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM hpcscale_count_waiting(queue, -count(*), -sum(slots)) FROM removed
    WHERE state = 'waiting' GROUP BY queue;
  RETURN NULL;
END $$""",
    "DROP TRIGGER IF EXISTS tasks_counted_insert ON tasks",
    "CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION hpcscale_tasks_inserted()",
    "DROP TRIGGER IF EXISTS tasks_counted_update ON tasks",
    "CREATE TRIGGER tasks_counted_update AFTER UPDATE OF queue, state, slots ON tasks "
    f"FOR EACH ROW WHEN ({_PG_COUNTED_UPDATE}) EXECUTE FUNCTION hpcscale_tasks_updated()",
    "DROP TRIGGER IF EXISTS tasks_counted_delete ON tasks",
    "CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS removed "
    "FOR EACH STATEMENT EXECUTE FUNCTION hpcscale_tasks_deleted()",
)
# One folder at a time (a fixed advisory lock); the shards of backends no longer connected go
# into shard 0 (no backend has pid 0). A backend's own shard is never folded while it lives.
_PG_FOLD = (
    "SELECT pg_advisory_xact_lock(7468723)",  # any fixed number: hpcscale's fold
    "WITH gone AS (DELETE FROM waiting_counts WHERE shard <> 0 AND shard NOT IN "
    "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING queue, n, slots) "
    "INSERT INTO waiting_counts AS c (queue, shard, n, slots) "
    "SELECT queue, 0, sum(n), sum(slots) FROM gone GROUP BY queue "
    "ON CONFLICT (queue, shard) DO UPDATE "
    "SET n = c.n + excluded.n, slots = c.slots + excluded.slots",
)


def install_counters(conn: Connection) -> None:
    """(Re)create waiting_counts' triggers and recount it from `tasks`, in the caller's write
    transaction. No task changes in between: SQLite's writer holds the database
    (BEGIN IMMEDIATE); on PostgreSQL the lock taken first holds off writers (not readers)."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.exec_driver_sql("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
    for statement in POSTGRES_COUNTERS if postgres else SQLITE_COUNTERS:
        conn.exec_driver_sql(statement)
    conn.execute(delete(waiting_counts))
    conn.exec_driver_sql(
        "INSERT INTO waiting_counts (queue, shard, n, slots) "
        "SELECT queue, 0, count(*), coalesce(sum(slots), 0) FROM tasks "
        "WHERE state = 'waiting' GROUP BY queue"
    )


# ---------------------------------------------------------------------- the revs

# A worker or submission row gets a new `rev` when it is inserted or changes in a way the
# manager follows (a worker's state, end or deadline; a submission's state, jobs or count), so a
# reader that remembers a cursor can ask only for what changed since (Store.observe). What the
# cursor means differs per backend, each exact in commit order:
# - SQLite commits one writer at a time, so the largest rev of both tables + 1 numbers the
#   writes in commit order; the cursor is the largest rev the reader saw plus one.
# - PostgreSQL commits concurrent transactions in any order, so a counter could let a reader see
#   rev 11 before rev 10 commits, and skip it. The rev is the writing transaction's id instead,
#   and the cursor the xmin of the reader's snapshot: every transaction that snapshot did not see
#   has an id >= xmin, so `rev >= cursor` finds it later. Rows the reader did see may come again.
FOLLOWED = {  # table: (its key, the columns whose change gives a row a new rev)
    "workers": ("id", ("state", "ended_at", "end_reason", "expected_end")),
    "submissions": ("tag", ("state", "job_ids", "count")),
}
REV_TRIGGERS = tuple(f"{t}_rev_{when}" for t in FOLLOWED for when in ("insert", "update"))
SQLITE_LAST_REV = (
    "SELECT coalesce(max(r), 0) FROM (SELECT max(rev) AS r FROM workers "
    "UNION ALL SELECT max(rev) AS r FROM submissions)"
)


def _changed(columns: tuple[str, ...], differ: str) -> str:
    """A WHEN clause: one of the columns has a new value (not merely set to the same)."""
    return " OR ".join(f"OLD.{c} {differ} NEW.{c}" for c in columns)


# Built from the constants above only (no input reaches them): hence the noqa.
SQLITE_REVS = tuple(
    statement
    for table, (key, columns) in FOLLOWED.items()
    for bump in [f"UPDATE {table} SET rev = ({SQLITE_LAST_REV}) + 1 WHERE {key} = NEW.{key}"]  # noqa: S608
    for statement in (
        f"DROP TRIGGER IF EXISTS {table}_rev_insert",
        f"CREATE TRIGGER {table}_rev_insert AFTER INSERT ON {table} BEGIN {bump}; END",
        f"DROP TRIGGER IF EXISTS {table}_rev_update",
        f"CREATE TRIGGER {table}_rev_update AFTER UPDATE OF {', '.join(columns)} ON {table} "
        f"WHEN {_changed(columns, 'IS NOT')} BEGIN {bump}; END",
    )
)
POSTGRES_REVS = (
    """CREATE OR REPLACE FUNCTION hpcscale_rev() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.rev := pg_current_xact_id()::text::bigint;
  RETURN NEW;
END $$""",
    *(
        statement
        for table, (_, columns) in FOLLOWED.items()
        for statement in (
            f"DROP TRIGGER IF EXISTS {table}_rev_insert ON {table}",
            f"CREATE TRIGGER {table}_rev_insert BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION hpcscale_rev()",
            f"DROP TRIGGER IF EXISTS {table}_rev_update ON {table}",
            f"CREATE TRIGGER {table}_rev_update BEFORE UPDATE OF {', '.join(columns)} ON {table} "
            f"FOR EACH ROW WHEN ({_changed(columns, 'IS DISTINCT FROM')}) "
            "EXECUTE FUNCTION hpcscale_rev()",
        )
    ),
)


def install_revs(conn: Connection) -> None:
    """(Re)create the triggers that keep `rev` (FOLLOWED), in the caller's write transaction."""
    postgres = conn.dialect.name == "postgresql"
    for statement in POSTGRES_REVS if postgres else SQLITE_REVS:
        conn.exec_driver_sql(statement)


def fold_counters(conn: Connection) -> None:
    """PostgreSQL: fold the shards of backends that are gone into shard 0, so that the shards
    stay about as many as the server's connections. Nothing to do on SQLite."""
    if conn.dialect.name == "postgresql":
        for statement in _PG_FOLD:
            conn.exec_driver_sql(statement)
