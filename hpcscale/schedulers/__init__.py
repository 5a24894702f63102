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
    CreatedArrays,
    ElementState,
    ElementStatus,
    Scheduler,
    SiteLimits,
    job_name,
)
from hpcscale.schedulers.slurm.limits import PoolRequest

__all__ = [
    "IN_FLIGHT",
    "NORMAL_END",
    "TERMINAL",
    "CreatedArrays",
    "ElementState",
    "ElementStatus",
    "Scheduler",
    "SiteLimits",
    "job_name",
    "make_scheduler",
]


# sbatch's spellings of the options that choose a job's association and QOS.
_OPTIONS = {
    "account": ("--account=", "-A"),
    "partition": ("--partition=", "-p"),
    "qos": ("--qos=", "-q"),
}


def request(pool: PoolConfig) -> PoolRequest:
    """The account, partition and QOS the pool's jobs ask for: the [pools.slurm] keys, else
    the same options among its extra_directives (the site limits depend on them)."""
    found: dict[str, str | None] = {
        "account": pool.slurm.account,
        "partition": pool.slurm.partition,
        "qos": pool.slurm.qos,
    }
    for key, (long, short) in _OPTIONS.items():
        for directive in pool.slurm.extra_directives:
            if found[key]:
                break
            if directive.startswith(long):
                found[key] = directive[len(long) :]
            elif directive.startswith(short) and len(directive) > len(short):
                found[key] = directive[len(short) :].lstrip("= ")
    return PoolRequest(**found)


def make_scheduler(pool: PoolConfig, manager_name: str, state_dir: Path) -> Scheduler:
    """The adapter for `pool`. `state_dir` is used by the local scheduler only (its
    `local/` subdirectory holds the element records that survive restarts)."""
    if pool.scheduler == "slurm":
        from hpcscale.schedulers.slurm.adapter import SlurmScheduler

        return SlurmScheduler(
            manager_name, pool.name, throttle=pool.slurm.array_throttle, request=request(pool)
        )
    if pool.scheduler == "pyslurm":
        from hpcscale.schedulers.slurm.pyslurm import PyslurmScheduler

        return PyslurmScheduler(
            manager_name, pool.name, throttle=pool.slurm.array_throttle, request=request(pool)
        )
    from hpcscale.schedulers.local.adapter import LocalScheduler

    return LocalScheduler(
        manager_name,
        pool.name,
        Path(state_dir) / "local",
        time_limit=pool.slurm.wall_seconds,
        signal_margin=pool.slurm.signal_margin,
    )
