"""pyslurm backend.

pyslurm must match the cluster's Slurm release, and none that builds against Debian's Slurm
22.05 is on PyPI, so on these machines pyslurm does not import. The tests that need it are then
not defined at all (a module-level `if`), rather than skipped: the suite runs with
HPCSCALE_NO_SKIP=1, which turns skips into failures. What runs everywhere is the check that
asking for the backend without pyslurm gives a clear error. Where pyslurm imports, the real
tests run against the Slurm lab (SLURM_CONF), like the CLI adapter's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hpcscale.config import PoolConfig
from hpcscale.errors import SchedulerError
from hpcscale.schedulers import make_scheduler
from hpcscale.schedulers.base import TERMINAL, ElementState
from tests.slurm_fixtures import require_slurm, script, unique, wait_for

HAVE_PYSLURM = importlib.util.find_spec("pyslurm") is not None


def test_missing_pyslurm_is_a_clear_error(tmp_path: Path) -> None:
    pool = PoolConfig(name="p", scheduler="pyslurm")
    if HAVE_PYSLURM:
        assert make_scheduler(pool, "m", tmp_path).name == "pyslurm"
    else:
        with pytest.raises(SchedulerError, match="pyslurm is not importable"):
            make_scheduler(pool, "m", tmp_path)


if HAVE_PYSLURM:

    @pytest.mark.slurm
    def test_pyslurm_submit_status_cancel(tmp_path: Path) -> None:
        require_slurm()
        scheduler = make_scheduler(
            PoolConfig(name="cpu", scheduler="pyslurm"), unique("m"), tmp_path
        )
        tag = unique("tag")
        body = script("sleep 60", f"--output={tmp_path}/%A_%a.out", "--time=2")
        sub = scheduler.submit(body, 3, tag)
        assert sub.count == 3 and len(sub.job_ids) == 1
        wait_for("3 elements", lambda: len(scheduler.find(tag)) == 3, timeout=30)
        scheduler.cancel(sub.job_ids)
        wait_for(
            "cancelled",
            lambda: all(e.state in TERMINAL for e in scheduler.find(tag)),
            timeout=30,
        )
        assert {e.state for e in scheduler.find(tag)} == {ElementState.CANCELLED}
