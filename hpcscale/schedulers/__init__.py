"""Scheduler adapters: Slurm (command line), pyslurm, and local processes.

`make_scheduler` picks one from a pool's `scheduler` key. The manager calls `status()` once per
cycle on one scheduler per kind: it returns the elements of every pool of that manager.
"""

from __future__ import annotations

from pathlib import Path

from hpcscale.config import PoolConfig
from hpcscale.schedulers.base import (
    IN_FLIGHT,
    NORMAL_END,
    TERMINAL,
    ElementState,
    ElementStatus,
    Scheduler,
    Submission,
    job_name,
)

__all__ = [
    "IN_FLIGHT",
    "NORMAL_END",
    "TERMINAL",
    "ElementState",
    "ElementStatus",
    "Scheduler",
    "Submission",
    "job_name",
    "make_scheduler",
]


def make_scheduler(pool: PoolConfig, manager_name: str, state_dir: Path) -> Scheduler:
    """The adapter for `pool`. `state_dir` is used by the local scheduler only (its
    `local/` subdirectory holds the element records that survive restarts)."""
    if pool.scheduler == "slurm":
        from hpcscale.schedulers.slurm.adapter import SlurmScheduler

        return SlurmScheduler(manager_name, pool.name, throttle=pool.slurm.array_throttle)
    if pool.scheduler == "pyslurm":
        from hpcscale.schedulers.slurm.pyslurm import PyslurmScheduler

        return PyslurmScheduler(manager_name, pool.name, throttle=pool.slurm.array_throttle)
    from hpcscale.schedulers.local.adapter import LocalScheduler

    return LocalScheduler(
        manager_name,
        pool.name,
        Path(state_dir) / "local",
        time_limit=pool.slurm.wall_seconds,
        signal_margin=pool.slurm.signal_margin,
    )
