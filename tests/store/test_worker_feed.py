"""The manager's copy of its workers and open submissions (mirror.py), kept from the store's
change feeds (Store.observe), against the store's own full lists, on both backends: after every
kind of change a worker or submission goes through, with commits out of order (PostgreSQL),
across an upgrade from schema 2, and when the database behind the server is replaced."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from hpcscale.client import Client
from hpcscale.config import from_mapping
from hpcscale.errors import SchemaMismatch
from hpcscale.manager.feed import Mirror
from hpcscale.manager.loop import HISTORY_WINDOW, ComputeManager
from hpcscale.models import (
    CycleView,
    Lease,
    ObserveRequest,
    PoolQuestion,
    Role,
    SubmissionIntent,
    SubmissionState,
    SubmissionUpdate,
    TaskResult,
    TaskSpec,
    Worker,
    WorkerRegistration,
)
from hpcscale.statestore import Store, schema, schema_version
from hpcscale.statestore.schema import meta
from tests.conftest import FakeClock, threaded_server

POOL = "p"
SINCE = 0.0  # every worker of the test is within the look-back


def observe(store: Store, mirror: Mirror, max_tasks: int = 0) -> CycleView:
    ask = ObserveRequest(
        pools=[PoolQuestion(pool=POOL, queues=["a"], history_since=0, submitted_since=0,
                            max_tasks=max_tasks)],
        since=SINCE,
        cursor=mirror.cursor,
    )  # fmt: skip
    view = store.observe("m", ask)
    assert mirror.apply(view, store.clock())
    return view


def followed(worker: Worker) -> tuple[Any, ...]:
    """What the feed keeps exact: all but a live worker's busy slots and tasks done."""
    final = worker.state.value not in ("active", "draining")
    return (
        worker.id, worker.state, worker.started_at, worker.ended_at, worker.end_reason,
        worker.expected_end, worker.job_id, worker.array_index, worker.submission,
        worker.tasks_done if final else None,
    )  # fmt: skip


def assert_mirrors(store: Store, mirror: Mirror) -> None:
    truth = store.list_workers(POOL, since=SINCE)
    assert [followed(w) for w in mirror.workers_of(POOL)] == [followed(w) for w in truth]
    subs = store.list_submissions(manager="m", open_only=True)
    assert [s.model_dump(exclude={"detail", "updated_at"})
            for s in mirror.open_submissions(POOL)] == [
        s.model_dump(exclude={"detail", "updated_at"}) for s in subs]  # fmt: skip


def change_submission(store: Store, rng: random.Random, op: str, step: int) -> bool:
    """One of the manager's changes to its submissions (`op`); True if it recorded a new one."""
    tags = [s.tag for s in store.list_submissions(manager="m", open_only=True)]
    if op == "intent" or not tags:
        store.record_intent(SubmissionIntent(tag=f"t{step}", manager="m", pool=POOL, count=2))
        return True
    if op == "confirm":
        confirmed = SubmissionUpdate(state=SubmissionState.CONFIRMED, job_ids=[str(step)])
        store.update_submission(rng.choice(tags), confirmed)
    elif op == "end":
        state = rng.choice([SubmissionState.ENDED, SubmissionState.FAILED])
        store.update_submission(rng.choice(tags), SubmissionUpdate(state=state))
    else:  # a detail alone: not followed, the manager does not read it
        tag = rng.choice(tags)
        sub = store.get_submission(tag)
        store.update_submission(tag, SubmissionUpdate(state=sub.state, detail="a note"))
    return False


@pytest.mark.pg_exclusive  # another test's open transaction would make seen rows come again
def test_the_copy_follows_every_change_and_only_changes(store: Store, clock: FakeClock) -> None:
    rng = random.Random(7)
    mirror = Mirror(window=HISTORY_WINDOW)
    observe(store, mirror)
    live: list[str] = []
    held: dict[str, list[Lease]] = {}
    index = 0
    for step in range(300):
        op = rng.choice(["register", "submit", "claim", "result", "heartbeat", "deregister",
                         "gone", "silent", "intent", "confirm", "end", "note"])  # fmt: skip
        changes_state = op in ("register", "deregister", "gone", "silent", "intent", "confirm",
                               "end")  # fmt: skip
        if op == "register" or not live:
            index += 1
            reg = WorkerRegistration(pool=POOL, queues=["a"], job_id="77", array_index=index,
                                     expected_end=clock() + rng.uniform(60, 600))  # fmt: skip
            live.append(store.register_worker(reg).id)
            changes_state = True
        elif op == "submit":
            store.submit([TaskSpec(command=["true"], queue="a")] * rng.randint(1, 3))
        elif op == "claim":
            wid = rng.choice(live)
            got = store.claim(wid, ["a"], 2, 2)
            held.setdefault(wid, []).extend(Lease(task_id=t.id, fence=t.fence) for t in got)
        elif op == "result":
            wid = rng.choice(live)
            done, held[wid] = held.get(wid, []), []
            results = [TaskResult(task_id=x.task_id, fence=x.fence, success=True) for x in done]
            store.results(wid, results)
        elif op == "heartbeat":
            wid = rng.choice(live)
            store.heartbeat(wid, [x.task_id for x in held.get(wid, [])], rng.randint(0, 2))
        elif op == "deregister":
            store.deregister(live.pop(rng.randrange(len(live))), "idle")
        elif op == "gone":
            store.worker_gone(live.pop(rng.randrange(len(live))), "its job ended")
        elif op == "silent":  # every worker goes silent past the TTL: the reaper marks them lost
            clock.advance(store.lease_ttl + 1)
            store.expire()
            live.clear()
        else:
            changes_state = change_submission(store, rng, op, step) or changes_state
        clock.advance(rng.uniform(0, 3))
        view = observe(store, mirror)
        if not changes_state:  # heartbeats, claims, results, notes send nothing again
            assert (view.workers, view.submissions) == ([], []), (step, op)
        assert_mirrors(store, mirror)
    assert len(mirror.workers_of(POOL)) > 20


def test_the_workers_at_max_tasks_are_the_stores_of_this_cycle(
    store: Store, clock: FakeClock
) -> None:
    """Tasks started (done + running) move with every claim and result, which the feed leaves
    out: the workers that reached max_tasks come fresh every cycle instead."""
    mirror = Mirror(window=HISTORY_WINDOW)
    store.submit([TaskSpec(command=["true"], queue="a")] * 5)
    x, y, _ = [store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id for _ in "xyz"]
    first = store.claim(x, ["a"], 2, 2)
    store.results(x, [TaskResult(task_id=t.id, fence=t.fence, success=True) for t in first])
    store.claim(y, ["a"], 1, 1)
    store.heartbeat(y, [], busy_slots=1)
    assert observe(store, mirror, max_tasks=2).per_pool[0].spent == [x]  # 2 done
    assert sorted(observe(store, mirror, max_tasks=1).per_pool[0].spent) == sorted([x, y])
    assert observe(store, mirror, max_tasks=0).per_pool[0].spent == []  # no limit


@pytest.mark.postgres
def test_a_change_committed_after_a_later_one_is_not_skipped(store_url: str) -> None:
    """PostgreSQL commits concurrent transactions in any order: a worker ended by a transaction
    that commits after another's registration, and after the manager read the registration,
    still comes in the next read."""
    if not store_url.startswith("postgresql"):
        return  # SQLite has one writer at a time: commit order is rev order (the test above)
    store = Store(store_url)
    try:
        mirror = Mirror(window=HISTORY_WINDOW)
        early = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id
        observe(store, mirror)
        with psycopg.connect(store_url) as slow:  # begins; holds the change uncommitted
            slow.execute(
                "UPDATE workers SET state = 'ended', ended_at = 1, end_reason = 'slow' "
                "WHERE id = %s",
                (early,),
            )
            late = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id
            observe(store, mirror)
            assert {w.id: w.state.value for w in mirror.workers_of(POOL)} == {
                early: "active",
                late: "active",
            }
            slow.commit()
        observe(store, mirror)
        assert_mirrors(store, mirror)
        assert {w.id: w.state.value for w in mirror.workers_of(POOL)}[early] == "ended"
    finally:
        store.close()


def back_to_schema_4(store: Store) -> None:
    """Drop what schema 5 added: the workers' job start."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE workers DROP COLUMN job_started_at")
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="4"))


def back_to_schema_2(store: Store) -> None:
    """Drop what schema 3 added: the revs, their indexes and triggers, the max_tasks index."""
    back_to_schema_4(store)
    dialect = store.engine.dialect.name
    with store.engine.begin() as conn:
        for trigger in schema.REV_TRIGGERS:
            table = trigger.split("_rev")[0]
            conn.exec_driver_sql(
                f"DROP TRIGGER {trigger}" + (f" ON {table}" if dialect == "postgresql" else "")
            )
        for index in ("ix_workers_rev", "ix_submissions_rev", "ix_workers_pool_tasks_started"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for table in schema.FOLLOWED:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN rev")
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="2"))


def test_upgrade_from_schema_2_feeds_changes(make_store: Callable[..., Store]) -> None:
    store = make_store()
    kept = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id
    back_to_schema_2(store)
    with store.engine.begin() as conn:  # a worker registered by the release of schema 2
        conn.exec_driver_sql(
            "INSERT INTO workers (id, pool, queues, host, slots, started_at, last_heartbeat, "
            "state) VALUES ('old', 'p', '[\"a\"]', 'n1', 1, 5, 5, 'active')"
        )
    store.close()

    upgraded = make_store()
    with upgraded.engine.connect() as conn:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert version.scalar() == str(schema.SCHEMA_VERSION)
    mirror = Mirror(window=HISTORY_WINDOW)
    observe(upgraded, mirror)
    assert len(mirror.workers_of(POOL)) == 2
    upgraded.deregister(kept, "idle")
    upgraded.register_worker(WorkerRegistration(pool=POOL, queues=["a"]))
    assert len(observe(upgraded, mirror).workers) == 2  # the feed works on the old rows too
    assert_mirrors(upgraded, mirror)


def test_a_replaced_database_is_read_in_full(store_url: str, tmp_path: Path) -> None:
    """The manager's copy came from one database; the server now has another (restored from a
    backup, say) whose feed is behind: the manager notices and reads every worker again,
    instead of keeping workers that are not there and missing those that are."""
    pools = [{"name": POOL, "scheduler": "local", "queues": ["a"]}]
    settings = from_mapping(
        {"server": {"url": "http://127.0.0.1:1"}, "manager": {"state_dir": str(tmp_path)},
         "pools": pools}
    )  # fmt: skip

    with threaded_server(store_url) as first:
        for _ in range(5):
            first.store.register_worker(WorkerRegistration(pool=POOL, queues=["a"]))
        mgr = ComputeManager(settings, Client(first.url, first.tokens[Role.MANAGER]))
        mgr.observe()
        assert len(mgr.mirror.workers_of(POOL)) == 5
    other = f"sqlite:///{tmp_path}/other.db"
    with threaded_server(other) as second:
        only = second.store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id
        mgr.client = Client(second.url, second.tokens[Role.MANAGER])
        mgr.observe()
        assert [w.id for w in mgr.mirror.workers_of(POOL)] == [only]


def test_a_feed_is_one_database_however_many_servers(make_store: Callable[..., Store]) -> None:
    """Two API servers on one PostgreSQL database give the same feed (a manager may talk to
    either); two openings of one SQLite file (a server restarted) give two, so the manager
    reads all again rather than trust a cursor across them."""
    one, two = make_store(), make_store()
    mirror = Mirror(window=HISTORY_WINDOW)
    feeds = {observe(one, mirror).feed, observe(two, Mirror(window=HISTORY_WINDOW)).feed}
    assert len(feeds) == (2 if one.is_sqlite else 1)


def test_postgresql_older_than_13_is_refused_by_name() -> None:
    schema_version.check_postgres(130000)
    with pytest.raises(SchemaMismatch, match=r"PostgreSQL 12\.15 is too old: .*13 or newer"):
        schema_version.check_postgres(120015)


def test_observe_answers_the_largest_config_the_checks_allow(store: Store) -> None:
    """256 pools and 1,024 distinct queues (what the config and the API allow) in one observe:
    SQLite takes at most 500 terms in one UNION ALL (and, before 3.32, 999 bound values), so
    the per-pool and per-queue reads must come in several statements."""
    pools = [
        PoolQuestion(pool=f"p{i}", queues=[f"q{i}_{j}" for j in range(4)], history_since=0,
                     submitted_since=0, max_tasks=1)
        for i in range(256)
    ]  # fmt: skip
    worker = store.register_worker(WorkerRegistration(pool="p255", queues=["q255_3"])).id
    store.submit([TaskSpec(command=["true"], queue="q255_3")])
    store.claim(worker, ["q255_3"], 1, 1)
    store.heartbeat(worker, [], busy_slots=1)  # tasks started = done + busy, as last reported
    view = store.observe("m", ObserveRequest(pools=pools, since=0))
    assert [p.pool for p in view.per_pool] == [p.pool for p in pools]
    assert len(view.queue_stats) == 1024
    assert view.per_pool[-1].spent == [worker]
    with pytest.raises(ValueError, match="twice"):
        ObserveRequest(pools=[pools[0], pools[0]], since=0)
