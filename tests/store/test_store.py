"""The statestore on both backends: leases, fencing, attempts, idempotency, workers, events."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from hpcscale.errors import InvalidTransition, NotFound, SchemaMismatch
from hpcscale.models import (
    Control,
    Lease,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.statestore import Store
from hpcscale.statestore.schema import meta
from tests.conftest import FakeClock


def spec(*argv: str, **kw: object) -> TaskSpec:
    return TaskSpec(command=list(argv) or ["true"], **kw)


def worker(store: Store, pool: str = "cpu", slots: int = 1) -> str:
    return store.register_worker(WorkerRegistration(pool=pool, slots=slots)).id


def ok(task_id: int, fence: int) -> TaskResult:
    return TaskResult(task_id=task_id, fence=fence, success=True, exit_code=0)


def fail(task_id: int, fence: int) -> TaskResult:
    return TaskResult(task_id=task_id, fence=fence, success=False, exit_code=1)


def test_submit_is_idempotent_per_key(store: Store) -> None:
    ids, dup = store.submit([spec("a"), spec("b")], "key-1")
    again, dup2 = store.submit([spec("c")], "key-1")
    assert (again, dup, dup2) == (ids, False, True)
    assert [t.command for t in store.list_tasks()] == [["a"], ["b"]]


def test_claim_orders_by_priority_then_age(store: Store, clock: FakeClock) -> None:
    (low,) = store.submit([spec("low", priority=0)])[0]
    clock.advance(1)
    (high,) = store.submit([spec("high", priority=5)])[0]
    clock.advance(1)
    (low2,) = store.submit([spec("low2", priority=0)])[0]
    w = worker(store)
    assert [t.id for t in store.claim(w, ["default"], 1, 1)] == [high]
    assert [t.id for t in store.claim(w, ["default"], 1, 1)] == [low]
    assert [t.id for t in store.claim(w, ["default"], 1, 1)] == [low2]


def test_claim_fits_free_slots_and_queue(store: Store) -> None:
    big, small, other = store.submit(
        [spec("big", slots=3), spec("small", slots=1), spec("o", queue="gpu")]
    )[0]
    w = worker(store, slots=2)
    claimed = store.claim(w, ["default"], 10, 2)
    assert [t.id for t in claimed] == [small]  # the 3-slot task does not fit in 2 free slots
    assert store.get_task(big).state == TaskState.WAITING
    assert store.get_task(other).state == TaskState.WAITING


def test_claim_needs_a_live_registered_worker(store: Store) -> None:
    store.submit([spec()])
    with pytest.raises(NotFound):
        store.claim("nobody", ["default"], 1, 1)
    w = worker(store)
    store.deregister(w)
    with pytest.raises(InvalidTransition):
        store.claim(w, ["default"], 1, 1)
    assert store.list_tasks(state="waiting")


def test_stale_fence_is_refused_and_changes_nothing(store: Store, clock: FakeClock) -> None:
    (tid,), _ = store.submit([spec(max_attempts=5)])
    w1, w2 = worker(store), worker(store)
    first = store.claim(w1, ["default"], 1, 1)[0]
    clock.advance(61)  # w1 stops heartbeating; its lease expires
    assert store.expire() == 1
    second = store.claim(w2, ["default"], 1, 1)[0]
    assert second.fence > first.fence
    before = store.get_task(tid)
    assert store.results(w1, [ok(tid, first.fence)])[0].outcome == "stale"
    assert store.release(w1, [Lease(task_id=tid, fence=first.fence)]) == []
    assert store.get_task(tid) == before  # invariant 1: the stale call changed nothing
    assert store.results(w2, [ok(tid, second.fence)])[0].outcome == "succeeded"
    assert store.get_task(tid).state == TaskState.SUCCEEDED


def test_a_result_counts_once(store: Store) -> None:
    (tid,), _ = store.submit([spec()])
    w = worker(store)
    lease = store.claim(w, ["default"], 1, 1)[0]
    outcomes = store.results(w, [ok(tid, lease.fence), fail(tid, lease.fence)])
    assert [o.outcome for o in outcomes] == ["succeeded", "stale"]
    assert store.results(w, [fail(tid, lease.fence)])[0].outcome == "stale"
    assert store.get_task(tid).state == TaskState.SUCCEEDED


def test_unrenewed_lease_goes_back_within_the_ttl(store: Store, clock: FakeClock) -> None:
    (tid,), _ = store.submit([spec()])
    w = worker(store)
    store.claim(w, ["default"], 1, 1)
    clock.advance(59)
    store.expire()
    assert store.get_task(tid).state == TaskState.RUNNING  # not yet
    clock.advance(2)
    store.expire()
    task = store.get_task(tid)
    assert (task.state, task.attempts, task.lease_owner) == (TaskState.WAITING, 1, None)
    assert [e.kind for e in store.events(task_id=tid)][-1] == "task.requeued"


def test_heartbeat_renews_every_lease_of_the_worker(store: Store, clock: FakeClock) -> None:
    ids, _ = store.submit([spec(), spec()])
    w = worker(store, slots=2)
    store.claim(w, ["default"], 2, 2)
    for _ in range(5):
        clock.advance(40)
        reply = store.heartbeat(w, ids)
        assert reply.renewed == ids and reply.lost == []
        store.expire()
    assert all(store.get_task(t).state == TaskState.RUNNING for t in ids)


def test_heartbeat_tells_the_worker_what_it_lost(store: Store, clock: FakeClock) -> None:
    (tid,), _ = store.submit([spec()])
    w = worker(store)
    store.claim(w, ["default"], 1, 1)
    store.cancel([tid])
    assert store.heartbeat(w, [tid]).lost == [tid]


def test_failures_retry_until_max_attempts_then_dead(store: Store) -> None:
    (tid,), _ = store.submit([spec(max_attempts=3)])
    w = worker(store)
    outcomes = []
    for _ in range(3):
        lease = store.claim(w, ["default"], 1, 1)[0]
        outcomes.append(store.results(w, [fail(tid, lease.fence)])[0].outcome)
    assert outcomes == ["requeued", "requeued", "dead"]
    assert store.claim(w, ["default"], 1, 1) == []
    task = store.get_task(tid)
    assert (task.state, task.attempts) == (TaskState.DEAD, 3)


def test_expiry_on_the_last_attempt_is_dead(store: Store, clock: FakeClock) -> None:
    (tid,), _ = store.submit([spec(max_attempts=2)])
    w = worker(store)
    for _ in range(2):
        store.claim(w, ["default"], 1, 1)
        clock.advance(61)
        store.expire()
        store.heartbeat(w)  # the worker itself is alive; only its task runs too long
    assert store.get_task(tid).state == TaskState.DEAD


def test_non_retryable_failure_ends_failed(store: Store) -> None:
    (tid,), _ = store.submit([spec(max_attempts=5)])
    w = worker(store)
    lease = store.claim(w, ["default"], 1, 1)[0]
    result = TaskResult(task_id=tid, fence=lease.fence, success=False, retryable=False)
    assert store.results(w, [result])[0].outcome == "failed"
    assert store.get_task(tid).state == TaskState.FAILED


def test_release_does_not_use_up_an_attempt(store: Store) -> None:
    (tid,), _ = store.submit([spec(max_attempts=1)])
    w = worker(store)
    for _ in range(5):
        lease = store.claim(w, ["default"], 1, 1)[0]
        assert store.release(w, [Lease(task_id=tid, fence=lease.fence)]) == [tid]
    task = store.get_task(tid)
    assert (task.state, task.attempts) == (TaskState.WAITING, 0)


def test_deregister_releases_what_the_worker_holds(store: Store) -> None:
    ids, _ = store.submit([spec(), spec()])
    w = worker(store, slots=2)
    store.claim(w, ["default"], 2, 2)
    assert store.deregister(w, "max_tasks") == ids
    assert {store.get_task(t).state for t in ids} == {TaskState.WAITING}
    assert store.get_worker(w).state == WorkerState.ENDED
    assert store.heartbeat(w).control == Control.EXIT


def test_cancel_waiting_and_running_not_ended(store: Store) -> None:
    a, b, c = store.submit([spec(), spec(), spec()])[0]
    w = worker(store)
    lease = store.claim(w, ["default"], 1, 1)[0]
    assert lease.id == a
    store.results(w, [ok(a, lease.fence)])
    lease_b = store.claim(w, ["default"], 1, 1)[0]
    assert store.cancel([a, b, c]) == [b, c]
    assert store.results(w, [ok(b, lease_b.fence)])[0].outcome == "stale"
    assert store.get_task(b).state == TaskState.CANCELLED


def test_silent_worker_is_marked_lost_and_can_return(store: Store, clock: FakeClock) -> None:
    w = worker(store)
    clock.advance(61)
    store.expire()
    assert store.get_worker(w).state == WorkerState.LOST
    store.heartbeat(w)
    assert store.get_worker(w).state == WorkerState.ACTIVE


def test_surplus_and_controls_follow_the_pool(store: Store) -> None:
    store.set_pool("cpu", min_workers=1)
    w1 = worker(store)
    assert store.heartbeat(w1).surplus is False  # the last worker of a warm pool stays
    worker(store)
    assert store.heartbeat(w1).surplus is True
    store.set_pool("cpu", control=Control.DRAIN)
    assert store.heartbeat(w1).control == Control.DRAIN


def test_claimable_counts_per_queue(store: Store, clock: FakeClock) -> None:
    store.submit([spec(slots=2), spec(slots=3)])
    clock.advance(10)
    store.submit([spec(queue="gpu")])
    by_queue = {b.queue: b for b in store.claimable()}
    assert (by_queue["default"].count, by_queue["default"].slots) == (2, 5)
    assert by_queue["default"].oldest_age == pytest.approx(10)
    assert [b.queue for b in store.claimable(["gpu"])] == ["gpu"]


def test_queue_stats_report_recent_durations(store: Store, clock: FakeClock) -> None:
    store.submit([spec(), spec()])
    w = worker(store)
    for seconds in (4.0, 6.0):
        lease = store.claim(w, ["default"], 1, 1)[0]
        clock.advance(seconds)
        store.results(w, [ok(lease.id, lease.fence)])
    stats = store.queue_stats("default")
    assert stats.recent_durations == [6.0, 4.0]
    assert stats.mean == pytest.approx(5.0)


def test_events_record_every_transition(store: Store, clock: FakeClock) -> None:
    (tid,), _ = store.submit([spec(max_attempts=2)])
    w = worker(store)
    lease = store.claim(w, ["default"], 1, 1)[0]
    store.results(w, [fail(tid, lease.fence)])
    lease = store.claim(w, ["default"], 1, 1)[0]
    store.results(w, [ok(tid, lease.fence)])
    kinds = [e.kind for e in store.events(task_id=tid)]
    assert kinds == [
        "task.submitted",
        "task.claimed",
        "task.failed",
        "task.requeued",
        "task.claimed",
        "task.succeeded",
    ]
    assert [e.kind for e in store.events(kind_prefix="worker.")] == ["worker.registered"]


def test_tokens_are_stored_hashed(store: Store) -> None:
    from hpcscale.models import Role

    token = store.create_token(Role.WORKER, ["default"], "w")
    info = store.verify_token(token)
    assert info is not None and info.role == Role.WORKER and info.queues == ["default"]
    assert store.verify_token(token + "x") is None
    with store.engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM tokens"))
    assert token not in dump


def test_other_schema_version_is_refused(
    make_store: Callable[..., Store],
) -> None:
    store = make_store()
    with store.engine.begin() as conn:
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="999"))
    with pytest.raises(SchemaMismatch, match="schema version 999"):
        make_store()


def test_concurrent_claimers_never_share_a_task(make_store: Callable[..., Store]) -> None:
    """Invariant 1 under contention: two stores (two connections pools) and 8 threads."""
    stores = [make_store(lease_ttl=300.0), make_store(lease_ttl=300.0)]
    ids, _ = stores[0].submit([spec(str(i)) for i in range(400)])
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        store = stores[n % 2]
        w = worker(store)
        while True:
            got = store.claim(w, ["default"], 3, 3)
            if not got:
                return
            with lock:
                claimed.extend(t.id for t in got)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids


def test_release_cut_by_the_wall_time_counts_the_attempt(store: Store) -> None:
    """A task longer than any worker's life must end `dead`, not come back forever."""
    (tid,), _ = store.submit([spec(max_attempts=2)])
    w = worker(store)
    for expected in (TaskState.WAITING, TaskState.DEAD):
        lease = store.claim(w, ["default"], 1, 1)[0]
        store.release(w, [Lease(task_id=tid, fence=lease.fence)], "walltime", attempt_used=True)
        assert store.get_task(tid).state == expected
    assert store.get_task(tid).attempts == 2


def test_group_commit_isolates_each_call(store: Store) -> None:
    """Store.together: one transaction, a savepoint per call; a failing call undoes only itself."""
    ids, _ = store.submit([spec(), spec(), spec()])
    w1, w2 = worker(store), worker(store)
    outcomes = store.together(
        [
            lambda: store.claim(w1, ["default"], 1, 1),
            lambda: store.claim("no-such-worker", ["default"], 1, 1),
            lambda: store.claim(w2, ["default"], 1, 1),
        ]
    )
    (first, e1), (none, e2), (third, e3) = outcomes
    assert e1 is None and e3 is None and isinstance(e2, NotFound) and none is None
    assert first is not None and third is not None
    assert {first[0].id, third[0].id} == set(ids[:2])  # two distinct tasks, both committed
    running = {t.id for t in store.list_tasks(state="running")}
    assert running == set(ids[:2])
    assert store.get_task(ids[2]).state == TaskState.WAITING
