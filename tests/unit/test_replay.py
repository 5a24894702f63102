"""Replay that can fail: a real `hpcscale serve` run's recorded observations, decided again.

The manager records every observation with the decision it acted on (the store's decision
records). Decided again by `policy.decide` on the pool's rules, each must come back exactly,
reasons included; and a policy that differs in the least (one worker more, another efficiency)
must be caught by the same comparison, or the replay would prove nothing. The run works a
backlog through the efficiency rule, a `set-max`, a pause, and the idle cycles after, on the
local scheduler and, when a lab is up, on the real Slurm.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcscale import policy
from hpcscale.client import Client
from hpcscale.config import PoolConfig, rules_from_pool
from hpcscale.models import Control, PoolUpdate, TaskSpec, TaskState
from hpcscale.policy import Decision, Observation, PoolRules
from hpcscale.schedulers import make_scheduler
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for


@dataclasses.dataclass
class Recorded:
    pool: PoolConfig
    rules: PoolRules
    records: list[dict[str, Any]]


@pytest.fixture(scope="module", params=["local", "slurm"])
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    """One run per scheduler, replayed by every test of the module."""
    scheduler = request.param
    tmp_path = tmp_path_factory.mktemp(f"replay-{scheduler}")
    if scheduler == "slurm":
        require_slurm()
    serve = ServerProcess(
        root=tmp_path, database=f"sqlite:///{tmp_path}/state.db", command="serve",
        poll_interval="0.5s", manager=unique("replay"),
        pools=[{"name": "cpu", "scheduler": scheduler, "max_workers": 3, "max_pending": 3,
                "prior": "20s", "drain": "1000h", "max_empty_claims": 1,
                "empty_claim_sleep": "0.5s"}],
    )  # fmt: skip
    serve.write_config()
    serve.start()
    try:
        with serve.admin() as admin:
            records = _work_a_backlog(admin)
        pool = serve.settings.pools[0]
        state = Path(serve.settings.manager.state_dir)
        size = make_scheduler(pool, serve.manager, state).max_array_size
        yield Recorded(pool, rules_from_pool(pool, size), records)
    finally:
        serve.stop()
        if scheduler == "slurm":
            subprocess.run(["scancel", "--name", f"hpcscale.{serve.manager}.cpu"], check=False)


def _work_a_backlog(admin: Client) -> list[dict[str, Any]]:
    ids = admin.submit([TaskSpec(command=["sleep", "1"])] * 30).ids
    wait_for("a worker", lambda: admin.list_workers(pool="cpu"), timeout=60)
    admin.update_pool("cpu", PoolUpdate(max_workers=2))  # `hpcscale set-max cpu 2`
    time.sleep(1.5)
    admin.update_pool("cpu", PoolUpdate(control=Control.PAUSE))
    time.sleep(1.5)
    admin.update_pool("cpu", PoolUpdate(control=Control.CONTINUE))
    wait_for("every task done", lambda: _all_done(admin, ids), timeout=180)
    time.sleep(3)  # idle cycles: the workers end, their tail is measured
    return [r.data for r in reversed(admin.decisions("cpu", limit=500)) if "desired" in r.data]


def _all_done(admin: Client, ids: list[int]) -> bool:
    return all(admin.get_task(i).state == TaskState.SUCCEEDED for i in ids)


def mismatches(rules: PoolRules, records: list[dict[str, Any]]) -> list[str]:
    """Each record whose decision `policy.decide` does not give back, field by field."""
    found = []
    for data in records:
        again = policy.decide(rules, Observation.from_record(data["observation"]))
        for name in ("desired", "submit", "cancel_pending", "needed", "in_flight", "reasons"):
            got, want = getattr(again, name), data[name]
            if (list(got) if name == "reasons" else got) != want:
                found.append(f"t={data['observation']['now']:.1f} {name}: {got!r} != {want!r}")
        if again.state != data["state"]:
            found.append(f"t={data['observation']['now']:.1f} state: {again.state}")
    return found


def test_a_recorded_run_is_decided_again_exactly(recorded: Recorded) -> None:
    records = recorded.records
    states = {r["state"] for r in records}
    assert {"warming", "busy", "paused", "idle"} <= states, states  # the paths it covers
    assert any(r["observation"]["max_workers_override"] == 2 for r in records)
    assert any(r["observation"]["tail"] is not None for r in records), "the tail was measured"
    assert any(r["submit"] > 1 for r in records), "the efficiency rule asked for several"
    assert mismatches(recorded.rules, records) == []


def test_the_replay_fails_when_the_policy_changes(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another efficiency, or a rule that asks for one worker more: the replay sees it."""
    other = dataclasses.replace(recorded.rules, efficiency=0.5)
    assert mismatches(other, recorded.records) != []
    sizing = policy.needed_workers

    def one_more(rules: PoolRules, obs: Observation) -> tuple[int, list[str]]:
        needed, why = sizing(rules, obs)
        return needed + (needed > 0), why

    monkeypatch.setattr(policy, "needed_workers", one_more)
    assert mismatches(recorded.rules, recorded.records) != []


def test_decision_fields_are_all_recorded() -> None:
    """The comparison covers every field of a Decision the record carries (not cap, hold)."""
    compared = {"desired", "submit", "cancel_pending", "needed", "in_flight", "reasons", "state"}
    assert {f.name for f in dataclasses.fields(Decision)} - compared == {"cap", "hold"}
