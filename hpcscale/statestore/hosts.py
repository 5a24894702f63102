"""Hosts that fail task after task are denied claims for a while, as alchemiscale does.

A host is judged from the store's own event log, out of the claim's hot path: the server's reaper
calls `account_hosts()` every pass. It reads the task events since the last pass (the position
is kept in `meta`, so replicas share it and a restart goes on where it stopped) and, per host of
the worker that caused them, a success ends the host's streak and a failure lengthens it: a
non-zero exit, a lease that expired with its worker, a job that ended holding the task. `limit`
failures in a row within `window` deny the host claims for `deny_for` (its workers then get
empty claims and end themselves). Failures mixed with successes are the tasks' fault, not the
host's, so they never add up to a denial.

PostgreSQL hands out event ids before commit, so an event can commit after a later id was read;
events younger than SETTLE seconds are left for the next pass, and one missed in a race costs
only a step of a streak.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from hpcscale.models import HostInfo
from hpcscale.statestore.database import Clock, StoreBase
from hpcscale.statestore.schema import events, hosts, meta, workers

log = logging.getLogger("hpcscale.statestore")
SETTLE = 2.0
SCANNED = "hosts_scanned"  # meta key: the last event id accounted
BATCH = 10_000
COUNTED = ("task.succeeded", "task.failed", "task.requeued", "task.dead")


@dataclass(frozen=True)
class HostRules:
    limit: int = 5  # failures in a row; 0: never deny
    window: float = 600.0
    deny_for: float = 900.0


def failure(kind: str, detail: str | None) -> bool | None:
    """True: the host failed the task; False: it ran it well; None: the event says neither.

    A failed result is logged as `task.failed`, then `task.requeued`/`task.dead` without a
    detail (counted once); a lost lease or an ended job requeues with the reason as detail.
    """
    if kind == "task.succeeded":
        return False
    if kind == "task.failed":
        return True
    if kind in ("task.requeued", "task.dead"):
        return True if detail else None
    return None


@dataclass
class _Host:
    host: str
    fail_streak: int = 0
    streak_started: float | None = None
    last_failure: float | None = None
    last_detail: str | None = None
    denied_until: float | None = None
    denials: int = 0

    def note(self, ts: float, failed: bool, detail: str | None, rules: HostRules) -> bool:
        """Count one outcome; True when it makes the host denied."""
        if not failed:
            self.fail_streak, self.streak_started = 0, None
            return False
        if self.streak_started is None or ts - self.streak_started > rules.window:
            self.fail_streak, self.streak_started = 0, ts
        self.fail_streak += 1
        self.last_failure, self.last_detail = ts, detail
        if self.fail_streak < rules.limit or (self.denied_until or 0) > ts:
            return False
        self.denied_until = ts + rules.deny_for
        self.denials += 1
        self.fail_streak, self.streak_started = 0, None
        return True


class HostRecords(StoreBase):
    """The `hosts` table, and the hosts denied now (which a claim asks about)."""

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: float = 120.0,
        clock: Clock = time.time,
        host_rules: HostRules | None = None,
    ) -> None:
        self.host_rules = host_rules or HostRules()
        self._denied: dict[str, float] = {}  # host -> denied until (refreshed by the reaper)
        super().__init__(url, lease_ttl=lease_ttl, clock=clock)

    def account_hosts(self) -> list[str]:
        """Count the task events since the last pass per host; return hosts newly denied."""
        now = self.clock()
        rules = self.host_rules
        denied_now: list[str] = []
        with self._write() as conn:
            last = conn.execute(select(meta.c.value).where(meta.c.key == SCANNED)).scalar()
            if last is None:  # first pass on this database: judge the last window
                old = events.c.ts < now - rules.window
                top = conn.execute(select(func.max(events.c.id)).where(old)).scalar() or 0
                conn.execute(insert(meta).values(key=SCANNED, value=str(top)))
                last = top
            rows = conn.execute(
                select(events.c.id, events.c.ts, events.c.kind, events.c.detail, workers.c.host)
                .join(workers, workers.c.id == events.c.worker_id)
                .where(events.c.id > int(last), events.c.ts < now - SETTLE)
                .where(events.c.kind.in_(COUNTED))
                .order_by(events.c.id)
                .limit(BATCH)
            ).all()
            if rows:
                denied_now = self._count(conn, rows, rules)
                conn.execute(
                    update(meta).where(meta.c.key == SCANNED).values(value=str(rows[-1].id))
                )
            self._denied = {
                r.host: float(r.denied_until)
                for r in conn.execute(
                    select(hosts.c.host, hosts.c.denied_until).where(hosts.c.denied_until > now)
                )
            }
        return denied_now

    def _count(self, conn: Connection, rows: Sequence[Any], rules: HostRules) -> list[str]:
        names = sorted({r.host for r in rows})
        known = {
            r.host: _Host(**r._mapping)
            for r in conn.execute(select(hosts).where(hosts.c.host.in_(names)))
        }
        state = {name: known.get(name) or _Host(name) for name in names}
        denied: list[str] = []
        for row in rows:
            failed = failure(row.kind, row.detail)
            if failed is None or rules.limit <= 0:
                continue
            if state[row.host].note(float(row.ts), failed, row.detail, rules):
                denied.append(row.host)
        for name, host in state.items():
            values = vars(host)
            if name in known:
                conn.execute(update(hosts).where(hosts.c.host == name).values(values))
            else:
                conn.execute(insert(hosts).values(values))
        for name in denied:
            host = state[name]
            detail = (
                f"{name}: {rules.limit} failed tasks in a row within {rules.window:g}s "
                f"(last: {host.last_detail}); no claims until {host.denied_until:.0f}"
            )
            log.warning("host denied claims: %s", detail)
            conn.execute(
                insert(events).values(ts=host.last_failure, kind="host.denied", detail=detail)
            )
        return denied

    def host_denied(self, host: str, now: float) -> bool:
        """Asked at claim time; the answer is as fresh as the reaper's last pass."""
        return self._denied.get(host, 0.0) > now

    def list_hosts(self) -> list[HostInfo]:
        with self._read() as conn:
            rows = conn.execute(select(hosts).order_by(hosts.c.host)).all()
        now = self.clock()
        return [
            HostInfo(**r._mapping, denied=bool(r.denied_until and r.denied_until > now))
            for r in rows
        ]

    def allow_host(self, host: str) -> None:
        """An admin's pardon: the host claims again at once."""
        with self._write() as conn:
            conn.execute(
                update(hosts)
                .where(hosts.c.host == host)
                .values(denied_until=None, fail_streak=0, streak_started=None)
            )
        self._denied.pop(host, None)
