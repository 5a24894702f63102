"""What a store does to its database when it opens: create the schema, or check its version and
upgrade an older one, so that one release can open the databases of the releases before it.

The tables and triggers themselves are in schema.py; here only the steps between versions.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, Index, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateIndex

from hpcscale.errors import SchemaMismatch
from hpcscale.statestore.schema import (
    FOLLOWED,
    SCHEMA_VERSION,
    fold_counters,
    install_counters,
    install_revs,
    ix_events_kind,
    ix_tasks_waiting_age,
    meta,
    metadata,
    tasks,
)

log = logging.getLogger("hpcscale.statestore")
# The waiting tasks wider than one slot, per queue and width: what a pool whose workers are
# narrower leaves out of its claimable work (issue 16, statestore/observe.py), a range of this
# small index. Made on every open when missing, without a version: an older release that opens
# the database just does not use it (here, not in schema.py: it is this open's step).
ix_tasks_waiting_wide = Index(
    "ix_tasks_waiting_wide",
    tasks.c.queue,
    tasks.c.slots,
    sqlite_where=text("state = 'waiting' AND slots > 1"),
)  # PostgreSQL's `where`, the same: postgresql_options
MIN_POSTGRES = 130000  # pg_current_xact_id() (the revs), as server_version_num


def check_postgres(version_num: int) -> None:
    """Refuse a PostgreSQL too old for the triggers here before anything is written: PL/pgSQL
    resolves the functions a trigger calls only when it runs, so an old server would take the
    schema and then fail every worker registration."""
    if version_num < MIN_POSTGRES:
        found = f"{version_num // 10000}.{version_num % 10000}"
        raise SchemaMismatch(f"PostgreSQL {found} is too old: hpcscale needs 13 or newer")


def postgresql_options() -> None:
    """The PostgreSQL options of the indexes that have some, given when a PostgreSQL store opens,
    before any DDL: declared with the indexes, they made SQLAlchemy import its PostgreSQL dialect
    (to check them) into every process, ~2 MB of an SQLite `serve` (issue 16). Idempotent."""
    ix_tasks_waiting_age.dialect_kwargs["postgresql_where"] = tasks.c.state == "waiting"
    ix_tasks_waiting_wide.dialect_kwargs["postgresql_where"] = text(
        "state = 'waiting' AND slots > 1"
    )
    ix_events_kind.dialect_kwargs["postgresql_ops"] = {"kind": "text_pattern_ops"}


def create_or_check(conn: Connection, is_sqlite: bool) -> None:
    """Create the schema, or upgrade an older one, in the caller's write transaction; refuse a
    database of a newer release."""
    if not is_sqlite:  # before anything is written: PL/pgSQL checks calls late
        check_postgres(int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()))
        postgresql_options()
    metadata.create_all(conn, checkfirst=True)
    conn.execute(CreateIndex(ix_tasks_waiting_wide, if_not_exists=True))  # no version: additive
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    fold_counters(conn)
    if row is None:
        install_counters(conn)
        install_revs(conn)
        with contextlib.suppress(IntegrityError):  # another process was first
            conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
    elif int(row.value) < SCHEMA_VERSION:
        upgrade(conn, int(row.value))
        conn.execute(
            update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
        )
    elif int(row.value) != SCHEMA_VERSION:
        raise SchemaMismatch(
            f"database schema version {row.value} but this hpcscale uses "
            f"{SCHEMA_VERSION}; migrate or point [server] database elsewhere"
        )


def upgrade(conn: Connection, found: int) -> None:
    """Bring a database of schema version `found` to SCHEMA_VERSION, in the caller's write
    transaction (the caller records the new number). New tables are already there: create_all
    makes them, but not new indexes of the tables it finds."""
    log.warning("upgrading the database from schema %d to %d", found, SCHEMA_VERSION)
    if found < 3:  # before the indexes: ix_workers_rev and ix_submissions_rev are on them
        for name in FOLLOWED:
            conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN rev BIGINT NOT NULL DEFAULT 0")
    if found < 2 and conn.dialect.name == "postgresql":  # ix_events_kind: text_pattern_ops now
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_events_kind")
    for table in metadata.sorted_tables:
        for index in table.indexes:  # IF NOT EXISTS: reflection does not see expression indexes
            conn.execute(CreateIndex(index, if_not_exists=True))
    if found < 2:
        install_counters(conn)
    if found < 3:
        install_revs(conn)
    # found < 4: `queue_caps` and `grants` are new tables (create_all made them); the bump only
    # keeps a server of version 3, which would ignore the caps, from opening the database.
    if found < 5:  # a worker's job start (its start-up): unknown for the workers before
        conn.exec_driver_sql("ALTER TABLE workers ADD COLUMN job_started_at FLOAT")
