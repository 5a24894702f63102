"""What the manager measures before it decides, computed from the simulator's model. Pure.

Why apart from the engine: the manager's safety inputs (the hourly ceiling, `[pools.budget]`,
scheduled windows, an admin's controls) are plain arithmetic on what happened, and the
simulator must feed `policy.decide` the same ones or it predicts a pool the manager would not
run (issue 15: a 2 core-hour budget, `max_submit_per_hour = 5` and a window capping at 2 were
ignored and the simulation printed 19 workers). Also here: the config keys the simulator cannot
model, named so that nobody trusts a figure that ignores them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from hpcscale.config import ManagerConfig, PoolConfig, gpus_of
from hpcscale.models import Control
from hpcscale.policy import Budget

HOUR = 3600.0


@dataclass(frozen=True)
class ControlEvent:
    """An admin's command at a simulated time: `hpcscale pause|resume|drain POOL` (control) or
    `hpcscale set-max POOL N` (max_workers; None with a control: leave the override alone)."""

    at: float
    pool: str | None  # None: every pool
    control: Control | None = None
    max_workers: int | None = None

    @classmethod
    def parse(cls, text: str) -> ControlEvent:
        """`T:pause`, `T:resume`, `T:drain`, `T:max=N`, each optionally `T:POOL:...` (T in s)."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{text!r}: expected T:ACTION or T:POOL:ACTION")
        at, action = float(parts[0]), parts[-1]
        pool = parts[1] if len(parts) == 3 else None
        if action.startswith("max="):
            return cls(at, pool, max_workers=int(action[4:]))
        actions = {"pause": Control.PAUSE, "resume": Control.CONTINUE, "drain": Control.DRAIN}
        if action not in actions:
            raise ValueError(f"{text!r}: the action is one of pause, resume, drain, max=N")
        return cls(at, pool, control=actions[action])


def hourly_allowance(asked: deque[tuple[float, int]], now: float, ceiling: int) -> int:
    """Workers left of max_submit_per_hour: the ceiling less what was asked in the last hour
    (the manager counts its submission records the same way). Drops what is older."""
    while asked and asked[0][0] <= now - HOUR:
        asked.popleft()
    return max(0, ceiling - sum(count for _, count in asked))


def budgets(
    pool: PoolConfig,
    now: float,
    spans: Iterable[tuple[float, float]],
    waiting: int,
    registered_ends: Sequence[float],
) -> tuple[Budget, ...]:
    """`[pools.budget]` as manager.safety.measure_budgets measures it without accounting: burn
    is each worker's registration -> end (`spans`, the live ones ending `now`) clipped to the
    window, x cpus (or GPUs); ahead, a whole wall time for each element not yet registered
    (`waiting`) and the rest of its wall time for each registered one."""
    cfg = pool.budget
    if cfg is None or (cfg.core_hours is None and cfg.gpu_hours is None):
        return ()
    wall, start = pool.slurm.wall_seconds, now - cfg.window
    seconds = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in spans)
    ahead = waiting * wall + sum(max(0.0, end - now) for end in registered_ends)
    out = []
    cpus, gpus = pool.slurm.cpus_per_task, gpus_of(pool.slurm)
    for kind, hours, per in (("core", cfg.core_hours, cpus), ("gpu", cfg.gpu_hours, gpus)):
        if hours is not None and per > 0:
            out.append(Budget(kind, hours * 3600, per * seconds, per * ahead, per * wall, per))
    return tuple(out)


# Keys the simulator reads (the rest of a pool's keys change nothing it models).
MODELLED_POOL_KEYS = {
    "name", "queues", "scheduler", "min_workers", "max_workers", "max_pending",
    "max_submit_per_cycle", "target_drain_time", "efficiency", "task_duration_prior",
    "cancel_unneeded_pending", "max_submit_per_hour", "budget", "schedule",
    "slurm.time", "slurm.cpus_per_task", "slurm.gres", "slurm.array_throttle",
    "slurm.extra_directives", "slurm.partition",
    "worker.slots", "worker.max_tasks", "worker.max_time", "worker.max_empty_claims",
    "worker.empty_claim_sleep", "worker.claim_margin",
}  # fmt: skip
MODELLED_MANAGER_KEYS = {
    "name", "poll_interval", "start_grace", "breaker_failures", "breaker_window",
    "breaker_cooldown", "state_dir",
}  # fmt: skip


def unmodelled_keys(pools: Sequence[PoolConfig], manager: ManagerConfig) -> list[str]:
    """The keys a config sets that the simulation does not model, e.g.
    `pools[cpu].worker.heartbeat_interval`: its figures hold as if they were at their defaults."""
    found = [f"manager.{k}" for k in _set_keys(manager) if k not in MODELLED_MANAGER_KEYS]
    for pool in pools:
        found += [f"pools[{pool.name}].{k}" for k in _set_keys(pool) if k not in MODELLED_POOL_KEYS]
    return found


def _set_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """The keys a config file set (not left at their defaults), nested tables as `a.b`."""
    keys = []
    for name in sorted(model.model_fields_set):
        value = getattr(model, name)
        if isinstance(value, BaseModel) and name in ("slurm", "worker"):
            keys += _set_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys
