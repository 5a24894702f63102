"""A pool's claimable work leaves out the tasks wider than its workers (issue 16): the observe
answer per pool, on SQLite and PostgreSQL, and the reply an older manager (no slots) gets."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from fastapi.testclient import TestClient

from hpcscale.config import Settings
from hpcscale.models import (
    Backlog,
    HeldTasks,
    ObserveRequest,
    PoolObservation,
    PoolQuestion,
    Role,
    TaskSpec,
)
from hpcscale.server.app import create_app
from hpcscale.statestore import Store
from tests.conftest import FakeClock


def ask(slots: int | None, queues: tuple[str, ...] = ("q", "r")) -> ObserveRequest:
    return ObserveRequest(
        pools=[
            PoolQuestion(
                pool="p", queues=list(queues), history_since=0, submitted_since=0, slots=slots
            )
        ],
        since=0,
    )


def observed(store: Store, slots: int | None) -> PoolObservation:
    return store.observe("m", ask(slots)).per_pool[0]


def submit(store: Store, queue: str, *slots: int) -> None:
    store.submit([TaskSpec(command=["x"], queue=queue, slots=n) for n in slots])


def test_wider_tasks_are_held_not_claimable(store: Store, clock: FakeClock) -> None:
    submit(store, "q", 4, 2)  # the oldest two are wide
    clock.advance(100)
    submit(store, "q", 1, 1, 2, 1)
    clock.advance(10)
    submit(store, "r", 1, 1)  # every task one slot: no statement at all
    clock.advance(5)

    one = observed(store, 1)
    assert one.claimable == [
        Backlog(queue="q", count=3, slots=3, oldest_age=15.0),  # not the wide ones' 115 s
        Backlog(queue="r", count=2, slots=2, oldest_age=5.0),
    ]
    assert one.held == [HeldTasks(queue="q", count=3, fewest_slots=2, most_slots=4)]

    two = observed(store, 2)
    assert two.claimable == [
        Backlog(queue="q", count=5, slots=7, oldest_age=115.0),
        Backlog(queue="r", count=2, slots=2, oldest_age=5.0),
    ]
    assert two.held == [HeldTasks(queue="q", count=1, fewest_slots=4, most_slots=4)]

    four = observed(store, 4)
    assert four.claimable == [b for b in store.claimable() if b.queue in ("q", "r")]
    assert four.held == []

    unasked = observed(store, None)  # an older manager: the whole backlog is its to size on
    assert unasked.claimable is None and unasked.held is None


def test_a_queue_of_wide_tasks_only_is_not_claimable(store: Store) -> None:
    submit(store, "q", 2, 2, 2)
    one = observed(store, 1)
    assert one.claimable == []
    assert one.held == [HeldTasks(queue="q", count=3, fewest_slots=2, most_slots=2)]
    [claimed] = store.claimable(["q"])  # the backlog itself still says they wait
    assert claimed.count == 3


def test_the_wide_index_is_made_on_open_and_used(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    """A database of this schema version made before the index gets it when opened again; on
    SQLite the held count reads it (PostgreSQL's planner picks by statistics)."""
    first = make_store(clock=clock)
    with first.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_tasks_waiting_wide")
    first.close()
    store = make_store(clock=clock)
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("tasks")}
    assert "ix_tasks_waiting_wide" in indexes
    submit(store, "q", 2, 1)
    assert observed(store, 1).held == [HeldTasks(queue="q", count=1, fewest_slots=2, most_slots=2)]
    if store.is_sqlite:
        from hpcscale.statestore.observe import WIDE

        with store.engine.connect() as conn:
            plan = conn.execute(
                sa.text(f"EXPLAIN QUERY PLAN {WIDE.text}"), {"q": "q", "w": 1}
            ).all()
        assert "ix_tasks_waiting_wide" in " ".join(str(row) for row in plan)


def test_an_older_manager_gets_a_reply_it_can_read(store: Store) -> None:
    """No question gives slots: the reply has neither `claimable` nor `held` (an older manager
    refuses fields it does not know); with slots it has both."""
    submit(store, "q", 2)
    token = store.create_token(Role.MANAGER, None, "test")
    app = create_app(store, Settings(), reaper=False)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        old = client.post(
            "/v1/managers/m/observe", json=ask(None).model_dump(exclude_none=True), headers=headers
        )
        new = client.post("/v1/managers/m/observe", json=ask(1).model_dump(), headers=headers)
    assert old.status_code == new.status_code == 200, old.text
    assert set(old.json()["per_pool"][0]) == {"pool", "history", "submitted", "spent"}
    assert new.json()["per_pool"][0]["held"] == [
        {"queue": "q", "count": 1, "fewest_slots": 2, "most_slots": 2}
    ]
    assert new.json()["per_pool"][0]["claimable"] == []
