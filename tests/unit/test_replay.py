"""One recorded observation sequence, decided again by the manager and by the simulator.

The sequence comes from a real `hpcscale serve` (local scheduler) working a burst while its pool
is capped with set-max and paused: the manager records every observation with the decision it
acted on. Both `ComputeManager.decide` and `Simulation.decide` must give back exactly those
decisions, reasons included: the simulator predicts what the manager will do only if they share
the whole path from observation to decision (issue 7, acceptance 2).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcscale import config
from hpcscale.client import Client
from hpcscale.manager.loop import ComputeManager
from hpcscale.models import Control, PoolUpdate, TaskSpec, TaskState
from hpcscale.policy import Decision, Observation, PoolState
from hpcscale.schedulers import make_scheduler
from hpcscale.sim.engine import Simulation
from hpcscale.sim.workloads import ClusterModel, scenario_tasks
from tests.services import ServerProcess
from tests.slurm_fixtures import wait_for


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[ServerProcess, list[dict[str, Any]]]]:
    serve = ServerProcess(
        root=tmp_path, database=f"sqlite:///{tmp_path}/state.db", command="serve",
        poll_interval="0.5s",
        pools=[{"name": "cpu", "scheduler": "local", "max_workers": 3, "max_pending": 3,
                "prior": "1s", "max_empty_claims": 2, "empty_claim_sleep": "0.5s"}],
    )  # fmt: skip
    serve.write_config()
    serve.start()
    try:
        with serve.admin() as admin:
            ids = admin.submit([TaskSpec(command=["sleep", "0.3"])] * 24).ids
            wait_for("a worker", lambda: admin.list_workers(pool="cpu"), timeout=30)
            admin.update_pool("cpu", PoolUpdate(max_workers=2))  # `hpcscale set-max cpu 2`
            time.sleep(1.5)
            admin.update_pool("cpu", PoolUpdate(control=Control.PAUSE))
            time.sleep(1.5)
            admin.update_pool("cpu", PoolUpdate(control=Control.CONTINUE))
            wait_for("every task done", lambda: _all_done(admin, ids), timeout=120)
            time.sleep(2)  # a few idle cycles after the backlog is gone
            records = [r.data for r in reversed(admin.decisions("cpu", limit=500))]
        yield serve, records
    finally:
        serve.stop()


def _all_done(admin: Client, ids: list[int]) -> bool:
    return all(admin.get_task(i).state == TaskState.SUCCEEDED for i in ids)


def _decision(data: dict[str, Any]) -> Decision:
    """The decision the manager acted on, as it recorded it."""
    return Decision(
        desired=data["desired"], submit=data["submit"], cancel_pending=data["cancel_pending"],
        state=PoolState(data["state"]), reasons=tuple(data["reasons"]),
        needed=data["needed"], in_flight=data["in_flight"],
    )  # fmt: skip


def test_manager_and_simulator_decide_a_recorded_sequence_alike(
    recorded: tuple[ServerProcess, list[dict[str, Any]]],
) -> None:
    serve, records = recorded
    settings = serve.settings
    pool = settings.pools[0]
    records = [r for r in records if "desired" in r]  # cycles that failed decided nothing
    states = {r["state"] for r in records}
    assert {"warming", "busy", "paused", "idle"} <= states, states  # the paths it covers
    assert any(r["observation"]["max_workers_override"] == 2 for r in records)

    local = make_scheduler(pool, settings.manager.name, Path(settings.manager.state_dir))
    sim = Simulation(
        [], [pool], manager=settings.manager,
        cluster=ClusterModel(max_array_size=local.max_array_size),
    )  # fmt: skip
    with serve.admin() as admin:
        manager = ComputeManager(settings, admin)
        for data in records:
            obs = Observation.from_record(data["observation"])
            acted_on = _decision(data)
            assert manager.decide(pool, obs) == acted_on
            assert sim.decide(pool.name, obs) == acted_on


def test_the_manager_decides_the_simulators_observations_alike(tmp_path: Path) -> None:
    """The other way round: a sequence the simulator observed, decided by the manager's path."""
    settings = config.load(Path(__file__).parents[2] / "config" / "example.toml")
    pool = settings.pools[0].model_copy(update={"scheduler": "local"})
    local = make_scheduler(pool, "m", tmp_path)
    cluster = ClusterModel(max_array_size=local.max_array_size)
    sim = Simulation(scenario_tasks("burst", size=400), [pool], cluster=cluster, record=True)
    sim.run()
    assert len(sim.decisions) > 10
    with Client("http://127.0.0.1:9", "unused") as client:  # decide() makes no call
        manager = ComputeManager(settings, client, scheduler_factory=lambda p: local)
        for _, obs, decision in sim.decisions:
            assert manager.decide(pool, obs) == decision
