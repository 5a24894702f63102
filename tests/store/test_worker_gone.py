"""A worker whose job ended under it: its tasks come back at once (both statestores). The
attempt counts when the job died (a task may have killed it), not when the site took the job
back (requeue, preemption: issue 14), so a task preempted three times is not `dead`."""

from __future__ import annotations

from hpcscale.models import TaskSpec, TaskState, WorkerRegistration
from hpcscale.statestore import Store


def claim_last_attempt(store: Store) -> tuple[str, int]:
    """A worker holding a task on its last attempt."""
    worker = store.register_worker(WorkerRegistration(pool="p")).id
    (task,), _ = store.submit([TaskSpec(command=["true"], max_attempts=1)])
    assert [t.id for t in store.claim(worker, ["default"], 1, 1)] == [task]
    return worker, task


def test_a_job_that_died_costs_the_attempt(store: Store) -> None:
    worker, task = claim_last_attempt(store)
    assert store.worker_gone(worker, "its job ended") == [task]
    assert store.get_task(task).state is TaskState.DEAD
    assert ("task.dead", task) in {(e.kind, e.task_id) for e in store.events(limit=10)}


def test_a_job_the_site_took_back_gives_the_attempt_back(store: Store) -> None:
    worker, task = claim_last_attempt(store)
    assert store.worker_gone(worker, "ended by the site: PREEMPTED", attempt_used=False) == [task]
    back = store.get_task(task)
    assert (back.state, back.attempts, back.lease_owner) == (TaskState.WAITING, 0, None)
    assert ("task.requeued", task) in {(e.kind, e.task_id) for e in store.events(limit=10)}
    assert store.get_worker(worker).state.value == "lost"
