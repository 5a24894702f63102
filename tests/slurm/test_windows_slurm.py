"""A scheduled window on the real Slurm lab: its floor keeps workers warm (issue 15).

Inside a window whose floor is 2 (the config's min_workers 0), the manager tells the store the
window's floor, so the store does not call the idle workers surplus: they stay through their
empty claims, and the manager submits nothing more. Before the fix the store was sent the
static min_workers (0): each idle worker was told it was surplus, left after its one empty
claim, and was submitted again, cycle after cycle.

Runs beside other tests under pytest-xdist: its own manager name (so its own squeue job name),
its own tmp_path and a free port.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.client import Client
from hpcscale.models import TaskSpec, TaskState, Worker, WorkerState
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm

WINDOW = '[[pools.schedule]]\ncron = "* * * * *"\nduration = "2h"\nmin_workers = 2\n'


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("win"), command="serve", poll_interval="1s")  # fmt: skip
    yield proc
    proc.stop()
    subprocess.run(["scancel", "--name", f"hpcscale.{proc.manager}.cpu"], check=False)


def pool_jobs(manager: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "--name", f"hpcscale.{manager}.cpu", "-o", "%i"],
                         capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    return out.stdout.split()


def test_a_warm_window_holds_its_workers_without_resubmitting(serve: ServerProcess) -> None:
    serve.pools = [{"name": "cpu", "min_workers": 0, "max_workers": 3, "max_pending": 3,
                    "prior": "1s", "max_empty_claims": 1, "empty_claim_sleep": "1s",
                    "pool_tables": WINDOW}]  # fmt: skip
    serve.write_config()
    serve.start()
    with serve.admin() as admin:
        wait_for("the window's 2 workers", lambda: len(_live(admin)) == 2, timeout=90)
        warm = {w.id for w in _live(admin)}
        ids = admin.submit([TaskSpec(command=["true"])] * 4).ids  # they work, then idle again
        wait_for("the tasks", lambda: _done(admin, ids), timeout=60)
        time.sleep(12)  # a dozen cycles and empty claims (1 s apart, max_empty_claims 1)
        live = {w.id for w in _live(admin)}
        workers = admin.list_workers(pool="cpu", since=0.0)
        asked = sum(s.count for s in admin.submissions(manager=serve.manager))
        surplus = admin.heartbeat(next(iter(live)), []) if live else None
    assert live == warm, "the window's workers stayed, none replaced"
    assert [w.end_reason for w in workers if w.id not in live] == []
    assert asked == 2, "the manager submitted the window's floor once"
    assert len(pool_jobs(serve.manager)) == 2
    assert surplus is not None and not surplus.surplus


def _live(admin: Client) -> list[Worker]:
    return [w for w in admin.list_workers(pool="cpu") if w.state == WorkerState.ACTIVE]


def _done(admin: Client, ids: list[int]) -> bool:
    return all(admin.get_task(i).state == TaskState.SUCCEEDED for i in ids)
