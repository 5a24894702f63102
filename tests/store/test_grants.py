"""The global cap of a queue across managers, on both backends (issue 17): what a grant counts,
when a grant ends, and that grants asked for at once, from threads and from processes with
stores of their own, never add up past the cap."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest

from hpcscale.models import (
    GrantRequest,
    ManagerRegistration,
    SubmissionIntent,
    SubmissionState,
    SubmissionUpdate,
    WorkerRegistration,
)
from hpcscale.statestore import Store, open_store
from hpcscale.statestore.grants import GONE_GRACE
from tests.conftest import FakeClock

INSTANCES = {"alpha": "a-1", "bravo": "b-1"}


def register(
    store: Store, manager: str, instance: str | None = None, takeover_from: str | None = None
) -> None:
    instance = instance or INSTANCES[manager]
    reg = ManagerRegistration(instance=instance, takeover_from=takeover_from)
    store.register_manager(manager, reg)


def ask(
    store: Store, manager: str, count: int, tag: str | None = None, queues: tuple[str, ...] = ("q",)
) -> int:
    request = GrantRequest(
        manager=manager,
        instance=INSTANCES.get(manager, manager),
        pool=f"{manager}-cpu",
        tag=tag or f"{manager}.{uuid.uuid4().hex[:8]}",
        queues=list(queues),
        count=count,
        stale_after=90.0,
    )
    return store.grant(request).granted


def submit(store: Store, manager: str, count: int) -> str:
    """A granted submission, its intent recorded and confirmed as the manager does."""
    tag = f"{manager}.{uuid.uuid4().hex[:8]}"
    granted = ask(store, manager, count, tag)
    if granted:
        intent = SubmissionIntent(tag=tag, manager=manager, pool=f"{manager}-cpu", count=granted)
        store.record_intent(intent)
        store.update_submission(tag, SubmissionUpdate(state=SubmissionState.CONFIRMED))
    return tag


def shares(store: Store, queue: str = "q") -> dict[str, int]:
    return next(c.shares for c in store.queue_caps() if c.queue == queue)


def test_no_cap_grants_all_and_a_cap_is_shared_across_managers(store: Store) -> None:
    register(store, "alpha")
    register(store, "bravo")
    assert ask(store, "alpha", 50) == 50  # no cap: nothing recorded, nothing held
    assert store.queue_caps() == []
    store.set_queue_cap("q", 6)
    assert ask(store, "alpha", 5) == 5
    reply = store.grant(
        GrantRequest(manager="bravo", instance="b-1", pool="b", tag="t-b", queues=["q"], count=5)
    )
    assert reply.granted == 1
    (limit,) = reply.limited_by
    assert (limit.queue, limit.global_cap, limit.in_flight) == ("q", 6, 5)
    assert limit.shares == {"alpha": 5}
    assert ask(store, "bravo", 3) == 0
    assert shares(store) == {"alpha": 5, "bravo": 1}
    assert ask(store, "alpha", 9, queues=("other",)) == 9  # another queue, uncapped


def test_a_grant_turns_into_its_submission_and_ends_with_its_elements(
    store: Store, clock: FakeClock
) -> None:
    register(store, "alpha")
    register(store, "bravo")
    store.set_queue_cap("q", 4)
    tag = submit(store, "alpha", 3)
    assert shares(store) == {"alpha": 3}  # counted once: the grant is the submission now
    workers = [
        store.register_worker(
            WorkerRegistration(pool="alpha-cpu", submission=tag, job_id="7", array_index=i)
        ).id
        for i in range(3)
    ]
    store.deregister(workers[0], "max_tasks")
    assert shares(store) == {"alpha": 3}  # its job is still listed while it completes
    clock.advance(GONE_GRACE)
    assert shares(store) == {"alpha": 2}  # then an element whose worker ended is not in flight
    assert ask(store, "bravo", 5) == 2
    store.update_submission(tag, SubmissionUpdate(state=SubmissionState.ENDED))
    assert shares(store) == {"bravo": 2}
    assert ask(store, "bravo", 5, tag="again") == 2


def test_an_unconsumed_grant_ends_with_its_managers_registration(
    store: Store, clock: FakeClock
) -> None:
    register(store, "alpha")
    register(store, "bravo")
    store.set_queue_cap("q", 6)
    assert ask(store, "alpha", 6) == 6  # granted, but no intent recorded: the manager died
    assert ask(store, "bravo", 6) == 0
    clock.advance(60)
    register(store, "bravo")
    assert ask(store, "bravo", 6) == 0  # alpha's heartbeat is 60 s old: its grant still holds
    clock.advance(31)
    register(store, "bravo")
    assert ask(store, "bravo", 6) == 6  # 91 s > stale_after: its grant is gone
    assert shares(store) == {"bravo": 6}


def test_a_new_instance_of_the_manager_ends_its_predecessors_grants(store: Store) -> None:
    register(store, "alpha")
    store.set_queue_cap("q", 4)
    assert ask(store, "alpha", 4) == 4
    register(store, "alpha", "a-2", takeover_from="a-1")  # restarted after a kill -9
    assert shares(store) == {}  # the grant of instance a-1 (no intent came) holds nothing
    request = GrantRequest(
        manager="alpha", instance="a-2", pool="alpha-cpu", tag="t2", queues=["q"], count=4
    )
    assert store.grant(request).granted == 4


def test_setting_and_removing_a_cap(store: Store) -> None:
    register(store, "alpha")
    assert store.set_queue_cap("q", 2) is not None
    assert ask(store, "alpha", 5) == 2
    store.set_queue_cap("q", 3)
    assert ask(store, "alpha", 5) == 1
    assert store.set_queue_cap("q", None) is None
    assert ask(store, "alpha", 5) == 5
    assert any(e.kind == "queue.cap" for e in store.events(limit=10))


CAP = 7


def _asker(url: str, manager: str, asks: int, out: multiprocessing.Queue[int] | None) -> int:
    """One manager asking for grants as fast as it can, from a store of its own."""
    store = open_store(url)
    try:
        INSTANCES.setdefault(manager, manager)
        register(store, manager, instance=manager)
        total = sum(ask(store, manager, 1 + i % 3) for i in range(asks))
    finally:
        store.close()
    if out is not None:
        out.put(total)
    return total


def test_grants_asked_at_once_from_threads_never_pass_the_cap(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.set_queue_cap("q", CAP)
        totals: list[int] = []
        threads = [
            threading.Thread(target=lambda m=m: totals.append(_asker(store_url, m, 15, None)))
            for m in ("t1", "t2", "t3", "t4", "t5", "t6")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(totals) == CAP  # every ask saw the ones before it: no more, and no less
        assert sum(shares(store).values()) == CAP
    finally:
        store.close()


@pytest.mark.parametrize("processes", [4])
def test_grants_asked_at_once_from_processes_never_pass_the_cap(
    store_url: str, processes: int
) -> None:
    """Each process has a store (an engine, a connection pool) of its own, as API replicas do:
    on SQLite only the database's write lock orders them, on PostgreSQL the queue's row lock."""
    store = open_store(store_url)
    try:
        store.set_queue_cap("q", CAP)
        spawn = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue[int] = spawn.Queue()
        procs = [
            spawn.Process(target=_asker, args=(store_url, f"p{i}", 20, out))
            for i in range(processes)
        ]
        for proc in procs:
            proc.start()
        totals = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert sum(totals) == CAP
        assert sum(shares(store).values()) == CAP
    finally:
        store.close()
