"""`hpcscale simulate --sweep`: the same workload over a grid of settings, as a table and a plot.

Why: "what should I set?" is answered by trying, and the simulator tries a setting in seconds
with the manager's own decisions. Each axis is a config key (`efficiency`,
`worker.max_empty_claims`, `manager.poll_interval`, ...) with the values to try; the config's
own value is always on the axis, so its point is in the table (marked) and is exactly what plain
`simulate` prints for the config. Pure but for the plot's file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpcscale.config import ManagerConfig, PoolConfig, describe
from hpcscale.errors import ConfigError, HpcscaleError
from hpcscale.sim.results import SimResult


@dataclass(frozen=True)
class Axis:
    key: str  # a pool key (`efficiency`, `worker.max_empty_claims`) or `manager.KEY`
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Axis:
        """`KEY=V1,V2,...`."""
        key, sep, values = text.partition("=")
        tried = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key.strip() or not tried:
            raise ConfigError([f"--sweep: {text!r} is not KEY=V1,V2,..."])
        return cls(key.strip(), tried)


@dataclass(frozen=True)
class Point:
    """One setting of every axis, its result, and whether it is the config's own."""

    values: tuple[Any, ...]
    result: SimResult
    current: bool


def current_value(key: str, pools: Sequence[PoolConfig], manager: ManagerConfig) -> Any:
    """The config's value of `key` (the first pool's, for a pool key)."""
    node: Any = manager if key.startswith("manager.") else pools[0]
    for part in key.removeprefix("manager.").split("."):
        if not hasattr(node, part):
            raise ConfigError([f"--sweep: no config key {key!r}"])
        node = getattr(node, part)
    return node


def configured(
    key_values: dict[str, Any], pools: Sequence[PoolConfig], manager: ManagerConfig
) -> tuple[list[PoolConfig], ManagerConfig]:
    """The pools and manager with the given keys set, checked as a config file's would be."""
    pool_data = [p.model_dump(exclude_unset=True) for p in pools]
    manager_data = manager.model_dump(exclude_unset=True)
    for key, value in key_values.items():
        if key.startswith("manager."):
            manager_data[key.removeprefix("manager.")] = value
            continue
        for data in pool_data:
            *tables, name = key.split(".")
            node = data
            for table in tables:
                node = node.setdefault(table, {})
            node[name] = value
    try:
        return [PoolConfig.model_validate(d) for d in pool_data], ManagerConfig.model_validate(
            manager_data
        )
    except ValidationError as exc:
        raise ConfigError([f"--sweep: {line}" for line in describe(exc)]) from exc


def sweep(
    axes: Sequence[Axis],
    pools: Sequence[PoolConfig],
    manager: ManagerConfig,
    run: Callable[[list[PoolConfig], ManagerConfig], SimResult],
) -> list[Point]:
    """Every combination of the axes' values (the config's own added to each), run."""
    own = [current_value(a.key, pools, manager) for a in axes]
    grids = []
    for axis, mine in zip(axes, own, strict=True):
        parsed = [
            current_value(axis.key, *configured({axis.key: v}, pools, manager)) for v in axis.values
        ]
        grids.append(parsed if mine in parsed else [mine, *parsed])
    points = []
    for values in itertools.product(*grids):
        settings = dict(zip((a.key for a in axes), values, strict=True))
        sim_pools, sim_manager = configured(settings, pools, manager)
        points.append(Point(values, run(sim_pools, sim_manager), list(values) == own))
    return points


def table(axes: Sequence[Axis], points: Sequence[Point]) -> str:
    """One line per point: its settings, then makespan, worker-s, busy share, jobs, p95 wait."""
    head = [a.key for a in axes] + [
        "makespan s", "worker-s", "busy %", "jobs", "task wait p95 s", "done",
    ]  # fmt: skip
    rows = [head]
    for point in points:
        data = point.result.to_dict()
        jobs = sum(p["workers_submitted"] for p in data["pools"])
        rows.append(
            [_show(v) for v in point.values]
            + [_show(data["makespan"]), f"{data['worker_seconds']:,.0f}",
               f"{100 * data['busy_share']:.1f}", str(jobs), _show(data["task_wait_p95"]),
               f"{data['tasks_done']}/{data['tasks']}" + ("  <- config" if point.current else "")]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def plot(axes: Sequence[Axis], points: Sequence[Point], path: str | Path) -> None:
    """Makespan against worker-seconds, a dot per point, the config's own ringed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise HpcscaleError("--plot needs matplotlib (pip install hpcscale[plot])") from exc
    done = [p for p in points if p.result.makespan is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for point in done:
        data = point.result.to_dict()
        x, y = data["worker_seconds"], data["makespan"]
        ring = point.current
        ax.scatter([x], [y], s=120 if ring else 30, zorder=3, facecolors="none" if ring else "C0",
                   edgecolors="C3" if ring else "C0")  # fmt: skip
        label = ", ".join(f"{a.key}={_show(v)}" for a, v in zip(axes, point.values, strict=True))
        ax.annotate(label + (" (the config)" if point.current else ""), (x, y), fontsize=6,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("worker-seconds allocated")
    ax.set_ylabel("makespan (s)")
    ax.set_title("simulate --sweep: each point a setting (ringed: the config's)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
