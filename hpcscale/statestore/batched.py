"""Reads split into batches of TERMS selects a statement: UNION ALL over many small selects,
within what every SQLite takes in one statement.

The manager's reads ask the same thing of each of its pools or queues; one statement for all
of them saves a round trip each on PostgreSQL. SQLite takes at most 500 terms in a compound
SELECT (SQLITE_MAX_COMPOUND_SELECT) and, before 3.32 (still the system SQLite of some cluster
login nodes), 999 bound values in a statement; a term here binds at most 5.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Row, union_all

TERMS = 100


def union_rows(conn: Connection, selects: Sequence[Any]) -> Iterator[Row[Any]]:
    """The rows of the selects' UNION ALL, TERMS selects to a statement."""
    for start in range(0, len(selects), TERMS):
        yield from conn.execute(union_all(*selects[start : start + TERMS]))
