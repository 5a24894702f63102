"""waiting_counts (kept by triggers on `tasks`) against the tasks themselves, on both backends:
after every kind of state change, across upgrades from schemas 1 and 2, with concurrent claims."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa

from hpcscale.models import Lease, TaskResult, TaskSpec, TaskState, WorkerRegistration
from hpcscale.statestore import Store, schema
from hpcscale.statestore.schema import meta
from tests.conftest import FakeClock
from tests.store.test_worker_feed import back_to_schema_2

QUEUES = ["a", "b", "c"]


def truth(store: Store) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, str], int]]:
    """(queue -> (waiting, their slots)), ((queue, state) -> count), counted from the tasks."""
    tasks = store.list_tasks(limit=100_000)
    waiting: dict[str, tuple[int, int]] = {}
    for t in tasks:
        if t.state == TaskState.WAITING:
            n, slots = waiting.get(t.queue, (0, 0))
            waiting[t.queue] = (n + 1, slots + t.slots)
    return waiting, dict(Counter((t.queue, t.state.value) for t in tasks))


def check(store: Store) -> None:
    waiting, counts = truth(store)
    assert {b.queue: (b.count, b.slots) for b in store.claimable()} == waiting
    assert store.count_tasks() == counts
    for queue in QUEUES:
        assert [(b.count, b.slots) for b in store.claimable([queue])] == (
            [waiting[queue]] if queue in waiting else []
        )


def random_specs(rng: random.Random) -> list[TaskSpec]:
    """One to six tasks, each of a random queue, size and number of attempts."""
    return [
        TaskSpec(
            command=["true"],
            queue=rng.choice(QUEUES),
            slots=rng.choice([1, 1, 2, 4]),
            max_attempts=rng.choice([1, 2]),
        )
        for _ in range(rng.randint(1, 6))
    ]


def test_counts_follow_every_kind_of_change(store: Store, clock: FakeClock) -> None:
    rng = random.Random(7)
    workers = [
        store.register_worker(WorkerRegistration(pool="p", queues=QUEUES[: k + 1])).id
        for k in range(3)
    ]
    held: dict[str, list[Lease]] = {w: [] for w in workers}

    def submit() -> None:
        store.submit(random_specs(rng))

    def claim() -> None:
        worker = rng.choice(workers)
        got = store.claim(worker, QUEUES, rng.randint(1, 4), rng.randint(1, 8))
        held[worker] += [Lease(task_id=t.id, fence=t.fence) for t in got]

    def result() -> None:
        worker = rng.choice(workers)
        if not held[worker]:
            return
        lease = held[worker].pop(rng.randrange(len(held[worker])))
        success = rng.random() < 0.6
        store.results(
            worker,
            [TaskResult(task_id=lease.task_id, fence=lease.fence, success=success,
                        exit_code=0 if success else 1, retryable=rng.random() < 0.7)],
        )  # fmt: skip

    def release() -> None:
        worker = rng.choice(workers)
        leases, held[worker] = held[worker], []
        store.release(worker, leases, attempt_used=rng.random() < 0.5)

    def cancel() -> None:
        ids = [t.id for t in store.list_tasks(limit=100_000)]
        if ids:
            store.cancel(rng.sample(ids, min(len(ids), 3)))

    def expire() -> None:  # leases run out (the workers go `lost`; a claim revives them)
        clock.advance(store.lease_ttl + 1)
        store.expire()
        for leases in held.values():
            leases.clear()

    def gone() -> None:
        worker = rng.choice(workers)
        store.worker_gone(worker, "its job ended")
        held[worker] = []

    steps: list[Callable[[], None]] = [submit, submit, claim, claim, result, result, release,
                                        cancel, expire, gone]  # fmt: skip
    for _ in range(120):
        rng.choice(steps)()
        check(store)


def test_concurrent_claimers_keep_counts_exact(store: Store) -> None:
    """Claimers on several queues at once (PostgreSQL: each in its own transactions, each
    bumping its own shard) neither fail nor lose a count."""
    for queue in QUEUES:
        store.submit([TaskSpec(command=["true"], queue=queue)] * 60)
    errors: list[BaseException] = []

    def work(queues: list[str]) -> None:
        worker = store.register_worker(WorkerRegistration(pool="p", queues=queues)).id
        try:
            while got := store.claim(worker, queues, 3, 3):
                outcome = [TaskResult(task_id=t.id, fence=t.fence, success=False, exit_code=1,
                                      retryable=True) for t in got]  # fmt: skip
                store.results(worker, outcome)  # requeued, while attempts last: in and out again
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(QUEUES[k % 3 :] + QUEUES[: k % 3],)) for k in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    check(store)
    assert store.claimable() == []


def test_upgrade_from_schema_1_counts_what_is_there(make_store: Callable[..., Store]) -> None:
    store = make_store()
    store.submit([TaskSpec(command=["true"], queue=q, slots=2) for q in ("a", "a", "b")])
    worker = store.register_worker(WorkerRegistration(pool="p", queues=["a"])).id
    store.claim(worker, ["a"], 1, 2)
    postgres = not store.is_sqlite
    back_to_schema_2(store)
    with store.engine.begin() as conn:  # back to what schema 1 had
        for trigger in schema.COUNTER_TRIGGERS:
            conn.exec_driver_sql(
                f"DROP TRIGGER IF EXISTS {trigger}" + (" ON tasks" if postgres else "")
            )
        conn.exec_driver_sql("DROP TABLE waiting_counts")
        for name in ("ix_tasks_waiting_age", "ix_workers_pool_started",
                     "ix_submissions_pool_created", "ix_events_kind"):  # fmt: skip
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("CREATE INDEX ix_events_kind ON events (kind, id)")
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="1"))
    store.submit([TaskSpec(command=["true"], queue="b")])  # written as schema 1 would: uncounted
    store.close()

    upgraded = make_store()
    with upgraded.engine.connect() as conn:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert version.scalar() == str(schema.SCHEMA_VERSION)
        catalog = (  # reflection skips expression indexes; the catalogs list them all
            "SELECT name FROM sqlite_master WHERE type = 'index'" if upgraded.is_sqlite
            else "SELECT indexname FROM pg_indexes"
        )  # fmt: skip
        indexes = set(conn.exec_driver_sql(catalog).scalars())
    expected = {i.name for t in schema.metadata.sorted_tables for i in t.indexes}
    assert {"ix_tasks_waiting_age", "ix_workers_rev", "ix_workers_pool_tasks_started"} <= expected
    assert expected <= indexes
    assert {b.queue: (b.count, b.slots) for b in upgraded.claimable()} == {"a": (1, 2), "b": (2, 3)}
    upgraded.claim(worker, ["a"], 1, 2)  # the triggers are back
    check(upgraded)
    assert [e.kind for e in upgraded.events(kind_prefix="task.claim")] == ["task.claimed"] * 2
