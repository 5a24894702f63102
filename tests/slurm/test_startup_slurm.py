"""A worker's paid start-up, measured on the real Slurm (issue 15): the job script stamps its
first line, the worker sends the job's age when it registers, and the manager sizes on the
pool's measured start-up instead of the 3 s prior. A pool whose job script sleeps 5 s before
the worker starts must show that in the decision it records and in `hpcscale why`.

Needs the lab (scripts/slurm-lab.sh up). Prints what it measured (`-s` shows it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcscale.models import TaskSpec
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm
POOL = "cpu"
SETUP_SLEEP = 5.0


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("m"), command="serve", poll_interval="1s")  # fmt: skip
    yield proc
    proc.stop()
    subprocess.run(["scancel", "--name", f"hpcscale.{proc.manager}.{POOL}"], check=False)


def measured(serve: ServerProcess) -> list[dict[str, Any]]:
    """The pool's decision records whose observation carries a measured start-up."""
    with serve.admin() as admin:
        data = [r.data for r in admin.decisions(POOL, 500)]
    return [
        d for d in data
        if isinstance(obs := d.get("observation"), dict) and obs.get("startup") is not None
    ]  # fmt: skip


def test_a_slow_job_start_is_measured_and_reaches_the_decision(serve: ServerProcess) -> None:
    serve.pools = [{"name": POOL, "max_workers": 1, "max_pending": 1, "prior": "2s",
                    "max_empty_claims": 1, "empty_claim_sleep": "1s"}]  # fmt: skip
    serve.write_config()
    text = serve.config_path.read_text()
    setup = f"sleep {SETUP_SLEEP:g}"  # a slow start-up: modules, a container, a stage-in
    text = text.replace("[pools.slurm]\n", f"[pools.slurm]\nsetup = [{setup!r}]\n")
    serve.config_path.write_text(text)
    serve.start()
    began = time.monotonic()
    with serve.admin() as admin:  # one worker, several tasks: decisions while a backlog waits
        admin.submit([TaskSpec(command=["sleep", "2"])] * 6)
    wait_for("a decision sized on the measured start-up", lambda: any(
        "start-up (measured)" in " ".join(d.get("reasons") or []) for d in measured(serve)
    ), timeout=120)  # fmt: skip
    with serve.admin() as admin:
        workers = [w for w in admin.list_workers(pool=POOL) if w.job_started_at is not None]
    assert workers, "the worker sent its job's age"
    startups = [w.started_at - w.job_started_at for w in workers if w.job_started_at]
    assert all(SETUP_SLEEP <= s < SETUP_SLEEP + 20 for s in startups), startups
    record = next(
        d for d in measured(serve) if "start-up (measured)" in " ".join(d.get("reasons") or [])
    )
    seen = record["observation"]["startup"]
    assert SETUP_SLEEP <= seen < SETUP_SLEEP + 20, record
    shown = f"{seen:.3g}s start-up (measured)"
    assert shown in " ".join(record["reasons"]), record["reasons"]
    argv = [sys.executable, "-m", "hpcscale", "why", POOL, "--limit", "50", "--config",
            str(serve.config_path)]  # fmt: skip
    why = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "start-up (measured)" in why, why
    print(f"\nmeasured start-up on the lab with setup {setup!r}: "
          f"{', '.join(f'{s:.2f}' for s in startups)} s per worker; the decision saw {seen:.2f} s"
          f" ({time.monotonic() - began:.0f} s into the run)")  # fmt: skip
