"""The manager's cycle against a fake scheduler and a real store behind a real server.

The scheduler is the one part of the manager's world a test cannot bring up cheaply (a Slurm lab
is slow and shared), so it is a small in-test class whose elements' states the test sets; the
store, the API and the client are the real ones, so every rule here is checked through the same
requests the manager makes in production. Each test names the invariant it guards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, from_mapping, worker_token_file
from hpcscale.errors import TransientSchedulerError
from hpcscale.manager.loop import ComputeManager
from hpcscale.models import (
    Role,
    SubmissionState,
    TaskSpec,
    TaskState,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.schedulers import CreatedArrays, ElementState, ElementStatus, Scheduler, job_name
from hpcscale.tokens import write_secret
from tests.conftest import LiveServer, threaded_server

MANAGER, POOL, QUEUE = "m", "cpu", "q"
MAX_WORKERS = 4


class FakeScheduler(Scheduler):
    """Elements in memory: `submit` creates them pending, the test moves their states, `cancel`
    records what it was asked and ends them. `lose_answers` makes the next submits raise after
    creating the job (an sbatch that timed out); `hidden` keeps those jobs out of `status` for a
    while (a scheduler slow to list a new job)."""

    name = "local"

    def __init__(self) -> None:
        self.elements: dict[str, ElementStatus] = {}
        self.submits: list[tuple[str, int]] = []
        self.cancels: list[tuple[list[str], bool]] = []
        self.lose_answers = 0
        self.hidden: set[str] = set()
        self.next_job = 100

    @property
    def max_array_size(self) -> int:
        return 1000

    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        job = str(self.next_job)
        self.next_job += 1
        self.submits.append((tag, count))
        for index in range(count):
            element = ElementStatus(
                job_id=job, array_index=index, element_id=f"{job}_{index}",
                state=ElementState.PENDING, tag=tag, name=job_name(MANAGER, POOL),
            )  # fmt: skip
            self.elements[element.element_id] = element
        if self.lose_answers:
            self.lose_answers -= 1
            raise TransientSchedulerError(f"sbatch timed out (job {job} was created)")
        return CreatedArrays(tag=tag, job_ids=[job], count=count)

    def test_submit(self, script: str, count: int, tag: str) -> None:
        return None

    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        shown = [e for e in self.elements.values() if e.tag not in self.hidden]
        return [e for e in shown if tags is None or e.tag in tags]

    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        self.cancels.append((list(ids), pending_only))
        for element_id in ids:
            element = self.elements[element_id]
            if not pending_only or element.state == ElementState.PENDING:
                self.set(element_id, ElementState.CANCELLED)

    def set(self, element_id: str, state: ElementState) -> None:
        element = self.elements[element_id]
        self.elements[element_id] = ElementStatus(
            job_id=element.job_id, array_index=element.array_index, element_id=element_id,
            state=state, tag=element.tag, name=element.name,
        )  # fmt: skip

    def in_flight(self) -> list[ElementStatus]:
        return [e for e in self.elements.values() if not e.terminal]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """Leases of an hour: a task that comes back within a test came back by the manager's
    hand, never by the lease reaper's."""
    with threaded_server(f"sqlite:///{tmp_path}/state.db", lease_ttl="1h") as live:
        yield live


def settings_for(server: LiveServer, tmp_path: Path, **pool: object) -> Settings:
    pools = [{"name": POOL, "scheduler": "local", "queues": [QUEUE], "max_workers": MAX_WORKERS,
              "max_pending": 10, "task_duration_prior": "60s", "target_drain_time": "60s",
              **pool}]  # fmt: skip
    return from_mapping(
        {
            "server": {"url": server.url, "token_file": str(tmp_path / "admin.token")},
            "manager": {"name": MANAGER, "state_dir": str(tmp_path / "manager")},
            "pools": pools,
        }
    )


@pytest.fixture
def world(server: LiveServer, tmp_path: Path) -> Iterator[tuple[Client, FakeScheduler, Client]]:
    """(the manager's client, the fake scheduler, an admin client)."""
    with (
        Client(server.url, server.tokens[Role.MANAGER]) as client,
        Client(server.url, server.tokens[Role.ADMIN]) as admin,
    ):
        yield client, FakeScheduler(), admin


def manager_for(
    world: tuple[Client, FakeScheduler, Client], server: LiveServer, tmp_path: Path, **pool: object
) -> ComputeManager:
    client, scheduler, _ = world
    settings = settings_for(server, tmp_path, **pool)
    write_secret(worker_token_file(settings, POOL), server.tokens[Role.WORKER])

    def factory(_pool: PoolConfig) -> Scheduler:
        return scheduler

    return ComputeManager(settings, client, scheduler_factory=factory)


def burst(admin: Client, n: int) -> list[int]:
    return admin.submit([TaskSpec(command=["true"], queue=QUEUE)] * n).ids


def test_a_burst_is_met_up_to_max_workers_and_never_more(
    world: tuple[Client, FakeScheduler, Client], server: LiveServer, tmp_path: Path
) -> None:
    """Invariant 3, the hard max: however many cycles see the backlog, and as elements start
    and end, the pool never holds more than max_workers elements."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    manager.cycle()
    assert sum(n for _, n in scheduler.submits) == MAX_WORKERS
    for _ in range(3):
        result = manager.cycle()
        assert result.errors == {}
        assert result.submitted[POOL] == 0
        assert len(scheduler.in_flight()) == MAX_WORKERS
    first, second, *_ = scheduler.in_flight()
    scheduler.set(first.element_id, ElementState.RUNNING)
    scheduler.set(second.element_id, ElementState.COMPLETED)  # ended: its slot is free again
    for _ in range(3):
        manager.cycle()
        assert len(scheduler.in_flight()) == MAX_WORKERS
    assert sum(n for _, n in scheduler.submits) == MAX_WORKERS + 1


def test_pending_elements_no_longer_needed_are_cancelled(
    world: tuple[Client, FakeScheduler, Client], server: LiveServer, tmp_path: Path
) -> None:
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, cancel_unneeded_pending=True)
    ids = burst(admin, 50)
    manager.cycle()
    pending = {e.element_id for e in scheduler.in_flight()}
    assert len(pending) == MAX_WORKERS
    admin.cancel(ids)  # the backlog is gone before any element started
    decision = manager.cycle().decisions[POOL]
    assert decision.cancel_pending == MAX_WORKERS
    assert scheduler.cancels == [(sorted(pending, reverse=True), True)]
    assert scheduler.in_flight() == []


def test_an_sbatch_that_failed_after_creating_the_job_is_reconciled_not_resubmitted(
    world: tuple[Client, FakeScheduler, Client], server: LiveServer, tmp_path: Path
) -> None:
    """Invariant 3: the intent recorded before sbatch counts against the max while the
    scheduler does not list its job yet, and is confirmed by its tag once it does."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    scheduler.lose_answers = 1
    manager.cycle()
    ((tag, count),) = scheduler.submits
    assert count == MAX_WORKERS
    (intent,) = admin.submissions(manager=MANAGER)
    assert (intent.tag, intent.state) == (tag, SubmissionState.INTENT)

    scheduler.hidden.add(tag)  # not listed yet: the intent alone holds the pool's slots
    assert manager.cycle().submitted[POOL] == 0
    scheduler.hidden.clear()
    assert manager.cycle().submitted[POOL] == 0
    assert len(scheduler.submits) == 1
    (found,) = admin.submissions(manager=MANAGER)
    assert found.state == SubmissionState.CONFIRMED
    assert found.job_ids == ["100"]


@pytest.mark.parametrize("end", [ElementState.COMPLETED, ElementState.FAILED])
def test_a_worker_whose_job_ended_gives_its_task_back_in_the_same_cycle(
    world: tuple[Client, FakeScheduler, Client],
    server: LiveServer,
    tmp_path: Path,
    end: ElementState,
) -> None:
    """Issue: the scheduler shows the element ended while the store still has its worker alive
    holding a leased task; the task is waiting again when the cycle returns, not a lease TTL
    (an hour here) later."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, max_workers=1)
    (task_id,) = burst(admin, 1)
    manager.cycle()
    ((tag, _),) = scheduler.submits
    (element,) = scheduler.in_flight()
    scheduler.set(element.element_id, ElementState.RUNNING)
    with Client(server.url, server.tokens[Role.WORKER]) as worker_client:
        worker = worker_client.register(
            WorkerRegistration(pool=POOL, queues=[QUEUE], job_id=element.job_id,
                               array_index=element.array_index, submission=tag)
        )  # fmt: skip
        (claimed,) = worker_client.claim(worker.id, [QUEUE])
    assert claimed.id == task_id
    manager.cycle()
    assert admin.get_task(task_id).state == TaskState.RUNNING

    scheduler.set(element.element_id, end)
    manager.cycle()
    assert admin.get_task(task_id).state == TaskState.WAITING
    assert admin.worker(worker.id).state in (WorkerState.ENDED, WorkerState.LOST)
