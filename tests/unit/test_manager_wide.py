"""Issue 16: a task wider than the pool's workers is never paid for. A server that does not know
the pools (a standalone `hpcscale server`, as here) takes it; the manager sizes only on the tasks
its workers can run and says in `why` and `status` what it holds. The fake scheduler and the
real store, API and client of tests/unit/test_manager.py."""

from __future__ import annotations

from pathlib import Path

from hpcscale.cli import display
from hpcscale.cli.status import status_data
from hpcscale.client import Client
from hpcscale.models import TaskSpec
from tests.conftest import LiveServer
from tests.unit.test_manager import POOL, QUEUE, FakeScheduler, manager_for, server, world

__all__ = ["server", "world"]  # the fixtures, used by name
World = tuple[Client, FakeScheduler, Client]
HELD = "3 tasks in queue q need 2 slots; this pool's workers have 1 — nothing submitted for them"


def wide(admin: Client, n: int, slots: int = 2) -> list[int]:
    return admin.submit([TaskSpec(command=["true"], queue=QUEUE, slots=slots)] * n).ids


def test_tasks_wider_than_the_workers_start_nothing_and_are_named(
    world: World, server: LiveServer, tmp_path: Path
) -> None:
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, worker={"slots": 1})
    wide(admin, 3)
    for _ in range(5):  # five polls: not one worker for tasks none could claim
        result = manager.cycle()
        assert result.errors == {}
        assert result.submitted[POOL] == 0
    assert scheduler.submits == []
    record = admin.decisions(POOL, 1)[-1]
    assert record.data["held"] == [HELD]
    assert record.data["observation"]["claimable"] == 0  # type: ignore[index]
    assert f"* {HELD}" in display.decisions_text([record])  # hpcscale why
    assert f"pool {POOL}: {HELD}" in display.status_text(status_data(admin))

    admin.submit([TaskSpec(command=["true"], queue=QUEUE)])  # one task it can run
    manager.cycle()
    assert sum(n for _, n in scheduler.submits) == 1  # for that one, not the wide three
    assert admin.decisions(POOL, 1)[-1].data["held"] == [HELD]


def test_a_pool_wide_enough_sizes_on_them(world: World, server: LiveServer, tmp_path: Path) -> None:
    _, scheduler, admin = world
    manager = manager_for(world, server, tmp_path, worker={"slots": 2})
    wide(admin, 3)
    manager.cycle()
    assert sum(n for _, n in scheduler.submits) >= 1
    assert admin.decisions(POOL, 1)[-1].data["held"] == []
