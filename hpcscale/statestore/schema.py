"""The statestore's tables, one definition for SQLite and PostgreSQL.

SCHEMA_VERSION is written into `meta` when the database is created; a later release that
changes a table bumps it and migrates from the stored number.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

SCHEMA_VERSION = 1

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
)
Index("ix_workers_pool_state", workers.c.pool, workers.c.state)
Index("ix_workers_state_heartbeat", workers.c.state, workers.c.last_heartbeat)

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
Index("ix_events_kind", events.c.kind, events.c.id)
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
)
Index("ix_submissions_manager_state", submissions.c.manager, submissions.c.state)

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
