"""Issue 16 on the real Slurm, as DESIGN deploys it: a standalone `hpcscale server` (which does
not know the pools, so it takes a 2-slot task) and an `hpcscale manager` of 1-slot pools. Over
5 poll intervals the manager submits nothing for the task (squeue, the store's submissions),
`why` and `status` name it, and a 1-slot task after it still gets its worker and runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for
from tests.soak.manager_process import ManagerProcess

pytestmark = pytest.mark.slurm
POLL = 2.0
HELD = "1 task in queue default needs 2 slots; this pool's workers have 1 — nothing submitted"


@pytest.fixture
def apart(tmp_path: Path) -> Iterator[tuple[ServerProcess, ManagerProcess]]:
    """`hpcscale server` and `hpcscale manager`, two processes, two 1-slot pools of a queue."""
    require_slurm()
    server = ServerProcess(
        root=tmp_path, database=f"sqlite:///{tmp_path}/state.db", command="server",
        manager=unique("held"), poll_interval=f"{POLL:g}s",
        pools=[{"name": name, "max_workers": 2, "max_empty_claims": 1} for name in ("a", "b")],
    )  # fmt: skip
    server.start()
    manager = ManagerProcess(server.config_path, tmp_path / "manager.log")
    manager.start()
    try:
        yield server, manager
    finally:
        manager.stop()
        server.stop()
        for pool in ("a", "b"):
            subprocess.run(["scancel", "--name", f"hpcscale.{server.manager}.{pool}"], check=False)


def jobs_of(server: ServerProcess) -> list[str]:
    names = ",".join(f"hpcscale.{server.manager}.{pool}" for pool in ("a", "b"))
    out = subprocess.run(
        ["squeue", "-h", "--name", names, "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_a_task_wider_than_every_pool_starts_no_job_and_why_names_it(
    apart: tuple[ServerProcess, ManagerProcess],
) -> None:
    server, manager = apart
    with server.admin() as admin:
        wait_for("the manager's first decisions", lambda: admin.decisions("a", 1), timeout=60)
        ran = server.cli("submit", "--json", "--slots", "2", "--", "true")
        assert ran.returncode == 0, ran.stderr  # the server alone cannot know: it takes it
        [wide] = json.loads(ran.stdout)["ids"]
        submitted_at = time.time()
        deadline = time.monotonic() + 5 * POLL
        while time.monotonic() < deadline:
            assert jobs_of(server) == [], "a job for a task no worker of the pools can claim"
            time.sleep(0.25)
        assert manager.alive
        assert admin.submissions(manager=server.manager) == []
        for pool in ("a", "b"):
            seen = wait_for(
                f"a decision of pool {pool} after the submit",
                lambda pool=pool: [  # type: ignore[misc]
                    r for r in admin.decisions(pool, 1) if r.ts > submitted_at + POLL
                ],
            )
            assert seen[-1].data["submit"] == 0
        why = server.cli("why", "a", "--limit", "1")
        assert why.returncode == 0 and HELD in why.stdout, why
        status = server.cli("status")
        assert status.returncode == 0 and "HELD" in status.stdout and HELD in status.stdout, status

        # The manager is not stuck: a task a 1-slot worker can run gets its job and runs.
        [task] = json.loads(server.cli("submit", "--json", "--", "true").stdout)["ids"]
        done = wait_for(
            "the 1-slot task to succeed",
            lambda: admin.get_task(task).state.value == "succeeded",
            timeout=180,
        )
        assert done
        assert admin.get_task(wide).state.value == "waiting"
        assert sum(s.count for s in admin.submissions(manager=server.manager)) >= 1
