"""Random interleavings of every store operation, checking invariants 1-2 after each step.

Each generated run works in a queue of its own, so one store (and one PostgreSQL database)
serves all runs of a test without them seeing each other's tasks.
"""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hpcscale.models import FINAL_STATES, Lease, Task, TaskResult, TaskSpec, TaskState
from hpcscale.models import WorkerRegistration as Reg
from hpcscale.statestore import Store
from tests.conftest import FakeClock

TTL = 60.0


class StoreMachine(RuleBasedStateMachine):
    def __init__(self, store: Store, clock: FakeClock) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.queue = "q" + uuid.uuid4().hex[:10]
        self.ids: list[int] = []
        self.workers: list[str] = []
        self.ended: set[str] = set()
        self.leases: list[tuple[str, int, int]] = []  # every (worker, task, fence) ever handed out
        self.final: dict[int, TaskState] = {}

    def tasks(self) -> dict[int, Task]:
        return {t.id: t for t in self.store.list_tasks(queue=self.queue, limit=10_000)}

    @initialize(n=st.integers(1, 6))
    def start(self, n: int) -> None:
        self.workers.append(self.store.register_worker(Reg(pool="p", queues=[self.queue])).id)
        self.submit(n, 2)

    @rule(n=st.integers(1, 4), attempts=st.integers(1, 3))
    def submit(self, n: int, attempts: int) -> None:
        specs = [TaskSpec(command=["true"], queue=self.queue, max_attempts=attempts)] * n
        self.ids += self.store.submit(specs)[0]

    @precondition(lambda self: len(self.workers) - len(self.ended) < 3)
    @rule()
    def register(self) -> None:
        self.workers.append(self.store.register_worker(Reg(pool="p", queues=[self.queue])).id)

    @rule(data=st.data(), k=st.integers(1, 3))
    def claim(self, data: st.DataObject, k: int) -> None:
        live = [w for w in self.workers if w not in self.ended]
        if not live:
            return
        w = data.draw(st.sampled_from(live))
        waiting = {i for i, t in self.tasks().items() if t.state == TaskState.WAITING}
        got = self.store.claim(w, [self.queue], k, k)
        assert {t.id for t in got} <= waiting, "claimed a task that was not waiting"
        assert len(got) <= k
        self.leases += [(w, t.id, t.fence) for t in got]

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        if self.workers:
            self.store.heartbeat(data.draw(st.sampled_from(self.workers)))

    @rule(seconds=st.sampled_from([1.0, 30.0, 61.0]))
    def time_passes_and_reaper_runs(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.store.expire()
        for task in self.tasks().values():
            if task.state == TaskState.RUNNING:
                assert task.lease_expiry is not None and task.lease_expiry >= self.clock()

    @rule(data=st.data(), success=st.booleans())
    def result(self, data: st.DataObject, success: bool) -> None:
        """Report on any lease ever handed out: live ones count, stale ones change nothing."""
        if not self.leases:
            return
        w, tid, fence = data.draw(st.sampled_from(self.leases))
        before = self.store.get_task(tid)
        live = before.state == TaskState.RUNNING and before.fence == fence
        outcome = self.store.results(
            w, [TaskResult(task_id=tid, fence=fence, success=success, exit_code=0)]
        )[0]
        if live:
            assert outcome.outcome != "stale"
        else:
            assert outcome.outcome == "stale"
            assert self.store.get_task(tid) == before

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.leases:
            return
        w, tid, fence = data.draw(st.sampled_from(self.leases))
        before = self.store.get_task(tid)
        released = self.store.release(w, [Lease(task_id=tid, fence=fence)])
        after = self.store.get_task(tid)
        if before.state == TaskState.RUNNING and before.fence == fence:
            assert released == [tid]
            assert (after.state, after.attempts) == (TaskState.WAITING, before.attempts - 1)
        else:
            assert released == [] and after == before

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.ids:
            self.store.cancel([data.draw(st.sampled_from(self.ids))])

    @precondition(lambda self: len(self.workers) - len(self.ended) > 1)
    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        live = [w for w in self.workers if w not in self.ended]
        if live:
            w = data.draw(st.sampled_from(live))
            self.store.deregister(w, "test")
            self.ended.add(w)

    @invariant()
    def nothing_lost_and_leases_consistent(self) -> None:
        tasks = self.tasks()
        assert sorted(tasks) == sorted(self.ids), "a task vanished or appeared"
        for tid, task in tasks.items():
            assert 0 <= task.attempts <= task.max_attempts
            if task.state == TaskState.RUNNING:
                assert task.lease_owner is not None and task.lease_expiry is not None
                assert task.lease_owner not in self.ended, "an ended worker still holds a lease"
            else:
                assert task.lease_owner is None and task.lease_expiry is None
            if task.state == TaskState.DEAD:
                assert task.attempts == task.max_attempts
            if tid in self.final:
                assert task.state == self.final[tid], "a finished task changed state"
            elif task.state in FINAL_STATES:
                self.final[tid] = task.state


def run(store: Store, clock: FakeClock, examples: int) -> None:
    run_state_machine_as_test(
        lambda: StoreMachine(store, clock),  # type: ignore[arg-type]  # a factory works too
        settings=settings(
            max_examples=examples,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_random_interleavings_keep_invariants(store: Store, clock: FakeClock) -> None:
    run(store, clock, examples=150 if store.is_sqlite else 40)
