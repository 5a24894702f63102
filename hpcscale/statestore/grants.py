"""The global cap of a queue across managers, enforced here and nowhere else (issue 17).

Several managers (one a cluster) may serve one queue. Each asks the store before it records a
submission's intent; the store grants at most what keeps every manager's elements in flight for
the queue within its cap, in one write transaction: on PostgreSQL the queue's `queue_caps` row is
locked (FOR UPDATE) first, so grants of one queue are given one after another and each sees the
ones before it; on SQLite the store's one writer does the same.

What counts as in flight is what the store knows of each grant's submission (grants are keyed by
the submission's tag): before the intent is recorded, the grant itself; while the submission is
open (intent or confirmed), its elements less those whose worker has ended; after it ended or
failed, nothing. A grant whose intent never came ends with its manager's registration: when
another instance holds the name or the manager's heartbeat is older than its `stale_after`.
Elements a dead manager did submit still count (they are in the cluster's queue) until their
workers end or a restarted manager closes the submission.

Known approximations: an element whose worker ended counts for GONE_GRACE more seconds (its job
is still listed while it completes); an element whose job Slurm requeued after its worker ended
counts as done until a new worker registers; an element that never started a worker counts
until its manager closes the submission.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, or_, select, tuple_, update

from hpcscale.models import (
    LIVE_WORKER_STATES,
    OPEN_SUBMISSION_STATES,
    GrantReply,
    GrantRequest,
    QueueCap,
)
from hpcscale.statestore.database import StoreBase
from hpcscale.statestore.schema import grants, managers, queue_caps, submissions, workers

_OPEN = tuple(s.value for s in OPEN_SUBMISSION_STATES)
# An element whose worker has ended still holds its place for this long: Slurm lists the job
# until its batch script has exited and the node has cleaned up after it (COMPLETING), which
# follows the worker's deregistration (measured ~1 s on the lab). Without it, another manager
# could submit into a place squeue still shows taken (tests/slurm/test_multicluster_slurm.py).
GONE_GRACE = 3.0


class Grants(StoreBase):
    """The `queue_caps` and `grants` tables."""

    def set_queue_cap(self, queue: str, global_cap: int | None) -> QueueCap | None:
        """An admin's cap for `queue` (None: no cap). Grants already given stand; the next
        ones see the new cap."""
        now = self.clock()
        with self._write() as conn:
            if global_cap is None:
                conn.execute(delete(queue_caps).where(queue_caps.c.queue == queue))
            else:
                values = {"global_cap": global_cap, "updated_at": now}
                changed = conn.execute(
                    update(queue_caps).where(queue_caps.c.queue == queue).values(**values)
                )
                if changed.rowcount == 0:
                    conn.execute(insert(queue_caps).values(queue=queue, **values))
            detail = f"{queue} global cap {'removed' if global_cap is None else global_cap}"
            self._events(conn, [{"ts": now, "kind": "queue.cap", "detail": detail}])
        if global_cap is None:
            return None
        return self.queue_caps([queue])[0]

    def queue_caps(self, queues: Sequence[str] | None = None) -> list[QueueCap]:
        """Every capped queue (or those of `queues`) with its in-flight total and shares."""
        now = self.clock()
        with self._read() as conn:
            query = select(queue_caps).order_by(queue_caps.c.queue)
            if queues is not None:
                query = query.where(queue_caps.c.queue.in_(list(queues)))
            caps = {r.queue: r.global_cap for r in conn.execute(query)}
            shares = _shares(conn, list(caps), now)[0]
        return [_cap_of(q, caps[q], shares[q]) for q in caps]

    def grant(self, ask: GrantRequest) -> GrantReply:
        """At most `ask.count` elements, within the cap of every capped queue the pool serves;
        the grant is recorded under the tag (a repeated ask for the tag replaces it)."""
        now = self.clock()
        with self._write() as conn:
            locked = (
                select(queue_caps)
                .where(queue_caps.c.queue.in_(sorted(set(ask.queues))))
                .order_by(queue_caps.c.queue)  # one order: two askers never deadlock
                .with_for_update()
            )
            caps = {r.queue: r.global_cap for r in conn.execute(locked)}
            if not caps:
                return GrantReply(granted=ask.count)
            conn.execute(delete(grants).where(grants.c.tag == ask.tag))
            shares, ended = _shares(conn, list(caps), now)
            if ended:  # grants whose submission closed, or whose manager is gone
                conn.execute(delete(grants).where(tuple_(grants.c.tag, grants.c.queue).in_(ended)))
            room = {q: max(0, cap - sum(shares[q].values())) for q, cap in caps.items()}
            granted = min([ask.count, *room.values()])
            if granted > 0:
                conn.execute(insert(grants), [_row(ask, q, granted, now) for q in caps])
            limited = [_cap_of(q, caps[q], shares[q]) for q in caps if room[q] < ask.count]
        return GrantReply(granted=granted, limited_by=limited)


def _row(ask: GrantRequest, queue: str, count: int, now: float) -> dict[str, Any]:
    return {
        "tag": ask.tag,
        "queue": queue,
        "manager": ask.manager,
        "instance": ask.instance,
        "pool": ask.pool,
        "count": count,
        "created_at": now,
        "stale_after": ask.stale_after,
    }


def _cap_of(queue: str, cap: int, shares: dict[str, int]) -> QueueCap:
    kept = {m: n for m, n in sorted(shares.items()) if n > 0}
    return QueueCap(queue=queue, global_cap=cap, in_flight=sum(kept.values()), shares=kept)


def _shares(
    conn: Connection, queues: list[str], now: float
) -> tuple[dict[str, dict[str, int]], list[tuple[str, str]]]:
    """Per queue, each manager's elements in flight; and the grants that hold nothing any more
    (their submission closed, or their intent never came and their manager is gone)."""
    shares: dict[str, dict[str, int]] = {q: defaultdict(int) for q in queues}
    if not queues:
        return shares, []
    rows = conn.execute(
        select(
            grants,
            grants.c.count.label("granted"),  # Row.count is the tuple's method
            submissions.c.state,
            submissions.c.count.label("submitted"),
            managers.c.instance.label("registered"),
            managers.c.heartbeat_at,
        )
        .outerjoin(submissions, submissions.c.tag == grants.c.tag)
        .outerjoin(managers, managers.c.name == grants.c.manager)
        .where(grants.c.queue.in_(queues))
    ).all()
    done = _ended_elements(conn, [r.tag for r in rows if r.state in _OPEN], now - GONE_GRACE)
    ended: list[tuple[str, str]] = []
    for r in rows:
        if r.state is None:  # granted, no intent yet: held while its manager lives
            alive = r.registered == r.instance and now - (r.heartbeat_at or 0) < r.stale_after
            held = r.granted if alive and now - r.created_at < r.stale_after else 0
        elif r.state in _OPEN:
            held = max(0, r.submitted - done.get(r.tag, 0))
        else:
            held = 0
        if held == 0 and r.state not in _OPEN:
            ended.append((r.tag, r.queue))
        shares[r.queue][r.manager] += held
    return shares, ended


def _ended_elements(conn: Connection, tags: list[str], before: float) -> dict[str, int]:
    """Per submission, its elements whose worker ended `before` (and none of the element's
    live, or ended since: a requeued element's new worker)."""
    if not tags:
        return {}
    element = func.coalesce(workers.c.array_index, -1)
    held = or_(workers.c.state.in_(LIVE_WORKER_STATES), workers.c.ended_at > before)
    live = func.max(case((held, 1), else_=0))
    per_element = (
        select(workers.c.submission, element.label("element"), live.label("live"))
        .where(workers.c.submission.in_(tags))
        .group_by(workers.c.submission, element)
        .subquery()
    )
    rows = conn.execute(
        select(per_element.c.submission, func.count().label("n"))
        .where(per_element.c.live == 0)
        .group_by(per_element.c.submission)
    ).all()
    return {r.submission: int(r.n) for r in rows}
