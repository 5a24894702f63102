"""The manager's cycle against a fake scheduler and a real store behind a real server.

The scheduler is the one part of the manager's world a test cannot bring up cheaply (a Slurm lab
is slow and shared), so it is a small in-test class whose elements' states the test sets; the
store, the API and the client are the real ones, so every rule here is checked through the same
requests the manager makes in production. Each test names the invariant it guards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hpcscale.cli import display
from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, from_mapping, worker_token_file
from hpcscale.errors import SubmitRefused, TransientSchedulerError
from hpcscale.manager.loop import ComputeManager
from hpcscale.manager.waits import LONG_PENDING
from hpcscale.models import (
    Role,
    SubmissionState,
    TaskSpec,
    TaskState,
    WorkerRegistration,
    WorkerState,
)
from hpcscale.schedulers import (
    CreatedArrays,
    ElementState,
    ElementStatus,
    Scheduler,
    SiteLimits,
    job_name,
)
from hpcscale.tokens import write_secret
from tests.conftest import LiveServer, threaded_server

MANAGER, POOL, QUEUE = "m", "cpu", "q"
MAX_WORKERS = 4


class FakeScheduler(Scheduler):
    """Elements in memory: `submit` creates them pending, the test moves their states, `cancel`
    records what it was asked and ends them. `lose_answers` makes the next submits raise after
    creating the job (an sbatch that timed out); `hidden` keeps those jobs out of `status` for a
    while (a scheduler slow to list a new job). The site: `refusal` refuses every sbatch and
    test (a submit limit, a drained partition), `limits` is what site_limits() answers,
    `accounted` what accounted_seconds() does."""

    name = "local"

    def __init__(self) -> None:
        self.elements: dict[str, ElementStatus] = {}
        self.submits: list[tuple[str, int]] = []
        self.cancels: list[tuple[list[str], bool]] = []
        self.lose_answers = 0
        self.hidden: set[str] = set()
        self.next_job = 100
        self.refusal: SubmitRefused | None = None
        self.refused = 0  # sbatch calls refused
        self.tests = 0  # sbatch --test-only calls
        self.limits: SiteLimits | None = None
        self.accounted: dict[str, float] | None = None

    @property
    def max_array_size(self) -> int:
        return 1000

    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        if self.refusal is not None:
            self.refused += 1
            raise self.refusal
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
        self.tests += 1
        if self.refusal is not None:
            raise self.refusal

    def site_limits(self) -> SiteLimits | None:
        return self.limits

    def accounted_seconds(self, since: float) -> dict[str, float] | None:
        return self.accounted

    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        shown = [e for e in self.elements.values() if e.tag not in self.hidden]
        return [e for e in shown if tags is None or e.tag in tags]

    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        self.cancels.append((list(ids), pending_only))
        for element_id in ids:
            element = self.elements[element_id]
            if not pending_only or element.state == ElementState.PENDING:
                self.set(element_id, ElementState.CANCELLED)

    def set(self, element_id: str, state: ElementState, reason: str | None = None) -> None:
        element = self.elements[element_id]
        self.elements[element_id] = ElementStatus(
            job_id=element.job_id, array_index=element.array_index, element_id=element_id,
            state=state, tag=element.tag, name=element.name, reason=reason,
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


# ---------------------------------------------------------------- real sites (issue 14)

QOS_REFUSAL = SubmitRefused(
    "QOSMaxSubmitJobPerUserLimit",
    "sbatch: error: QOSMaxSubmitJobPerUserLimit | Batch job submission failed: Job violates "
    "accounting/QOS policy (job submit limit, user's size and/or time limits)",
)
World = tuple[Client, FakeScheduler, Client]


def register_on(server: LiveServer, element: ElementStatus) -> tuple[str, list[int]]:
    """A worker registered in the element's job that claims what it can: (its id, task ids)."""
    with Client(server.url, server.tokens[Role.WORKER]) as worker_client:
        worker = worker_client.register(
            WorkerRegistration(pool=POOL, queues=[QUEUE], job_id=element.job_id,
                               array_index=element.array_index, submission=element.tag)
        )  # fmt: skip
        return worker.id, [t.id for t in worker_client.claim(worker.id, [QUEUE])]


def failed_starts(admin: Client) -> list[str]:
    return [e.detail or "" for e in admin.events(kind_prefix="pool.failed_start", limit=100)]


def last_record(admin: Client) -> dict[str, object]:
    return admin.decisions(POOL, 1)[-1].data


def test_a_site_refusal_is_not_a_failed_start_and_is_retried_when_it_passes(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """Issue 14: a refusal by site policy (a submit limit, a drained partition) holds the
    pool (no more sbatch, only the pre-flight's test each cycle), is named in `why`, never
    counts as a failed start nor degrades the pool; the cycle after it passes, it submits."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    scheduler.refusal = QOS_REFUSAL
    for _ in range(4):
        decision = manager.cycle().decisions[POOL]
        assert decision.state.value != "degraded"
        assert decision.submit == 0
    assert scheduler.refused == 0 and scheduler.tests == 4  # the pre-flight saw it first
    assert failed_starts(admin) == []
    data = last_record(admin)
    assert data["preflight"] == "ok"
    why = " ".join(map(str, [*data["reasons"], *data["notes"]]))  # type: ignore[misc]
    assert "QOSMaxSubmitJobPerUserLimit" in why
    scheduler.refusal = None
    assert manager.cycle().submitted[POOL] == MAX_WORKERS


def test_an_sbatch_refused_for_now_holds_the_pool_without_a_failed_start(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """The pre-flight passed but sbatch is refused (the limit was hit since): the submission is
    recorded failed with Slurm's words, no failed start, no breaker; no sbatch while the
    pre-flight's test is refused; the first cycle after it passes submits again."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    manager.cycle()  # pre-flight passed, 4 submitted
    for element in scheduler.in_flight():
        scheduler.set(element.element_id, ElementState.COMPLETED)
    scheduler.refusal = QOS_REFUSAL
    manager.cycle()
    assert scheduler.refused == 1
    for _ in range(3):
        assert manager.cycle().decisions[POOL].state.value != "degraded"
    assert scheduler.refused == 1  # held: only --test-only meanwhile
    refused = [s for s in admin.submissions(manager=MANAGER) if s.state == SubmissionState.FAILED]
    assert len(refused) == 1 and "QOSMaxSubmitJobPerUserLimit" in (refused[0].detail or "")
    assert failed_starts(admin) == []
    scheduler.refusal = None
    assert manager.cycle().submitted[POOL] == MAX_WORKERS


def test_the_site_limit_caps_the_pool_and_a_raise_grows_it_next_cycle(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """Site limits read every cycle while they bind: the effective cap is what the site allows,
    named in the record; raised, the pool grows the next cycle."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    scheduler.limits = SiteLimits(2, None, None, "QOS normal MaxSubmitJobsPerUser=2", 0.0)
    decision = manager.cycle().decisions[POOL]
    assert (decision.submit, decision.cap) == (2, 2)
    scheduler.limits = SiteLimits(0, None, None, "QOS normal MaxSubmitJobsPerUser=2", 0.0)
    assert manager.cycle().submitted[POOL] == 0
    data = last_record(admin)
    assert data["cap"] == 2
    assert "MaxSubmitJobsPerUser=2" in " ".join(map(str, data["reasons"]))  # type: ignore[call-overload]
    scheduler.limits = SiteLimits(2, None, None, "QOS normal MaxSubmitJobsPerUser=4", 0.0)
    decision = manager.cycle().decisions[POOL]
    assert (decision.submit, decision.cap) == (2, MAX_WORKERS)
    assert len(scheduler.in_flight()) == MAX_WORKERS


def test_a_requeued_element_gets_a_fresh_start_grace(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """Issue 14: an element seen running before its worker registered, then requeued (same id
    back to pending) and running again after start_grace: its new run is not a failed start
    and is not cancelled; its first worker's task came back when it was requeued."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, max_workers=1)
    quick = manager.settings.manager.model_copy(update={"start_grace": 1.0})
    manager.settings = manager.settings.model_copy(update={"manager": quick})
    burst(admin, 1)
    manager.cycle()
    (element,) = scheduler.in_flight()
    scheduler.set(element.element_id, ElementState.RUNNING)
    manager.cycle()  # running, no worker yet: start_grace counts from here
    worker_id, (task_id,) = register_on(server, element)
    time.sleep(1.2)  # longer than start_grace
    manager.cycle()
    scheduler.set(element.element_id, ElementState.PENDING, "BeginTime")  # requeued
    decision = manager.cycle().decisions[POOL]
    back = admin.get_task(task_id)
    assert (back.state, back.attempts) == (TaskState.WAITING, 0)  # at once, its attempt given back
    assert admin.worker(worker_id).state == WorkerState.LOST
    assert (decision.in_flight, decision.submit) == (1, 0)  # the hard max still counts it
    scheduler.set(element.element_id, ElementState.RUNNING)
    manager.cycle()
    assert scheduler.cancels == [] and failed_starts(admin) == []
    assert last_record(admin)["pending_reasons"] == {}


@pytest.mark.parametrize("end", [ElementState.NODE_FAIL, ElementState.PREEMPTED])
def test_a_worker_ended_by_the_site_is_no_failed_start_and_its_task_comes_back(
    world: World, server: LiveServer, tmp_path: Path, end: ElementState
) -> None:
    """A worker whose node died or that was preempted, seconds after registering without a
    task done: its task is back the same cycle and nothing counts as a failed start. A
    preemption gives the attempt back; a node failure costs it (the task may have been what
    took the node down)."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, max_workers=1)
    burst(admin, 1)
    manager.cycle()
    (element,) = scheduler.in_flight()
    scheduler.set(element.element_id, ElementState.RUNNING)
    worker_id, (task_id,) = register_on(server, element)
    manager.cycle()
    scheduler.set(element.element_id, end)
    decision = manager.cycle().decisions[POOL]
    back = admin.get_task(task_id)
    assert (back.state, back.attempts) == (TaskState.WAITING, int(end is ElementState.NODE_FAIL))
    assert (admin.worker(worker_id).end_reason or "").startswith("ended by the site")
    manager.cycle()
    assert failed_starts(admin) == []
    assert decision.state.value != "degraded"


def test_pending_reasons_are_recorded_shown_and_exported(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """Why elements wait (squeue %r) reaches the decision record, `why` and /metrics."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    burst(admin, 50)
    manager.cycle()
    first, *rest = scheduler.in_flight()
    scheduler.set(first.element_id, ElementState.PENDING, "PartitionDown")
    for element in rest:
        scheduler.set(element.element_id, ElementState.PENDING, "Priority")
    manager.cycle()
    records = admin.decisions(POOL, 1)
    assert records[-1].data["pending_reasons"] == {"Priority": 3, "PartitionDown": 1}
    assert "3 Priority, 1 PartitionDown" in display.decisions_text(records)
    metrics = admin.metrics()
    assert 'hpcscale_pending_elements{pool="cpu",reason="PartitionDown"} 1.0' in metrics


def test_surplus_elements_pending_long_with_no_backlog_are_cancelled(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """A busy cluster: elements that pended over LONG_PENDING while the backlog went away are
    cancelled (cancel_unneeded_pending off); younger ones are left to start."""
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path)
    ids = burst(admin, 50)
    manager.cycle()
    admin.cancel(ids)
    manager.cycle()
    assert scheduler.cancels == []  # not long yet
    manager.clock = lambda: time.time() + LONG_PENDING + 5
    manager.cycle()
    ((cancelled, pending_only),) = scheduler.cancels
    assert pending_only and len(cancelled) == MAX_WORKERS
    assert scheduler.in_flight() == []


def test_budgets_burn_from_the_sites_accounting(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    """Where the site has accounting, the budget's burn is its CPU-seconds, not an estimate."""
    _, scheduler, admin = world
    budget = {"core_hours": 10.0, "window": "1d"}
    manager = manager_for(world, server, tmp_path, budget=budget)
    scheduler.accounted = {"90_0": 3600.0, "90_1": 1800.0}
    manager.cycle()
    burned = last_record(admin)["budget"]["core"]["burned_hours"]  # type: ignore[index]
    assert burned == pytest.approx(1.5)
