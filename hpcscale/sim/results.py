"""What a simulation measured, and the two ways people read it: text or JSON, and a plot.

Why apart from the engine: the engine only counts; what the numbers mean (worker-seconds paid,
busy share, waits) and how they are shown can change without touching the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hpcscale.errors import HpcscaleError
from hpcscale.policy import Decision, Observation


class Sample(NamedTuple):
    """The pool at one manager cycle, for plots."""

    t: float
    backlog: int
    pending: int  # unconfirmed + pending
    starting: int
    registered: int
    cap: int


@dataclass
class PoolResult:
    """One pool's tallies, added to by the engine as events happen (seconds are simulated)."""

    name: str
    cap: int
    max_pending: int
    max_in_flight: int = 0
    max_pending_seen: int = 0
    worker_seconds: float = 0.0
    busy_slot_seconds: float = 0.0
    slots: int = 1
    peak_workers: int = 0
    sbatch_calls: int = 0
    submitted: int = 0
    scancel_calls: int = 0
    cancelled_pending: int = 0
    failed_starts: int = 0
    first_worker_at: float | None = None
    end_reasons: dict[str, int] = field(default_factory=dict)
    est_duration: float = 0.0
    queue_wait_estimate: float = 0.0
    timeline: list[Sample] = field(default_factory=list)

    @property
    def idle_worker_seconds(self) -> float:
        return self.worker_seconds - self.busy_slot_seconds / self.slots

    @property
    def busy_share(self) -> float:
        allocated = self.worker_seconds * self.slots
        return self.busy_slot_seconds / allocated if allocated else 0.0

    def to_dict(self, origin: float) -> dict[str, Any]:
        first = None if self.first_worker_at is None else self.first_worker_at - origin
        return _rounded(
            {
                "name": self.name,
                "cap": self.cap,
                "max_in_flight": self.max_in_flight,
                "max_pending": self.max_pending,
                "max_pending_seen": self.max_pending_seen,
                "worker_seconds": self.worker_seconds,
                "busy_worker_seconds": self.busy_slot_seconds / self.slots,
                "idle_worker_seconds": self.idle_worker_seconds,
                "busy_share": self.busy_share,
                "peak_workers": self.peak_workers,
                "sbatch_calls": self.sbatch_calls,
                "workers_submitted": self.submitted,
                "scancel_calls": self.scancel_calls,
                "cancelled_pending": self.cancelled_pending,
                "failed_starts": self.failed_starts,
                "first_task_to_first_worker": first,
                "worker_end_reasons": dict(sorted(self.end_reasons.items())),
                "est_duration_at_end": self.est_duration,
                "queue_wait_estimate_at_end": self.queue_wait_estimate,
            }
        )


@dataclass
class SimResult:
    """The whole run: the workload's fate, every pool's tallies, and notes on what was skipped."""

    source: str
    seed: int
    tasks: int
    tasks_done: int
    first_arrival: float
    last_done: float | None
    ended_at: float
    task_waits: list[float]
    requeued: int
    cycles: int
    events: int
    max_in_flight: int
    pools: list[PoolResult]
    notes: list[str] = field(default_factory=list)
    decisions: list[tuple[str, Observation, Decision]] = field(default_factory=list)

    @property
    def makespan(self) -> float | None:
        """First arrival -> last task done; None while tasks are left."""
        if self.tasks_done < self.tasks or self.last_done is None:
            return None
        return self.last_done - self.first_arrival

    def to_dict(self) -> dict[str, Any]:
        """The metrics as plain JSON values (what `--json` prints)."""
        worker_s = sum(p.worker_seconds for p in self.pools)
        busy_s = sum(p.busy_slot_seconds / p.slots for p in self.pools)
        slot_s = sum(p.worker_seconds * p.slots for p in self.pools)
        firsts = [p.first_worker_at for p in self.pools if p.first_worker_at is not None]
        waits = sorted(self.task_waits)
        return _rounded(
            {
                "source": self.source,
                "seed": self.seed,
                "tasks": self.tasks,
                "tasks_done": self.tasks_done,
                "makespan": self.makespan,
                "worker_seconds": worker_s,
                "busy_worker_seconds": busy_s,
                "idle_worker_seconds": worker_s - busy_s,
                "busy_share": sum(p.busy_slot_seconds for p in self.pools) / slot_s
                if slot_s
                else 0.0,
                "first_task_to_first_worker": min(firsts) - self.first_arrival if firsts else None,
                "peak_workers": sum(p.peak_workers for p in self.pools),
                "sbatch_calls": sum(p.sbatch_calls for p in self.pools),
                "max_in_flight": self.max_in_flight,
                "cap": sum(p.cap for p in self.pools),
                "task_wait_mean": sum(waits) / len(waits) if waits else None,
                "task_wait_p95": waits[min(len(waits) - 1, int(0.95 * len(waits)))]
                if waits
                else None,
                "requeued": self.requeued,
                "cycles": self.cycles,
                "events": self.events,
                "simulated_seconds": self.ended_at - self.first_arrival,
                "pools": [p.to_dict(self.first_arrival) for p in self.pools],
                "notes": list(self.notes),
            }
        )


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


# -- output ---------------------------------------------------------------------------------


def format_text(result: SimResult) -> str:
    """The metrics for people: one line each, then one block per pool."""
    data = result.to_dict()
    lines = [f"simulated {data['tasks']} tasks ({data['source']}, seed {data['seed']})"]
    for key in (
        "tasks_done",
        "makespan",
        "worker_seconds",
        "busy_worker_seconds",
        "idle_worker_seconds",
        "busy_share",
        "first_task_to_first_worker",
        "peak_workers",
        "sbatch_calls",
        "task_wait_mean",
        "task_wait_p95",
        "requeued",
        "cycles",
    ):
        lines.append(f"  {key:<28} {_show(data[key], key)}")
    lines.append(f"  {'max_in_flight / cap':<28} {data['max_in_flight']} / {data['cap']} workers")
    for pool in data["pools"]:
        lines.append(f"pool {pool['name']}:")
        for key, value in pool.items():
            if key != "name":
                lines.append(f"  {key:<28} {_show(value, key)}")
    lines += [f"note: {note}" for note in data["notes"]]
    return "\n".join(lines)


# The unit of each figure `format_text` prints (simulated time; JSON keeps bare numbers).
UNITS = {
    "makespan": "s", "worker_seconds": "worker-s", "busy_worker_seconds": "worker-s",
    "idle_worker_seconds": "worker-s", "first_task_to_first_worker": "s", "task_wait_mean": "s",
    "task_wait_p95": "s", "peak_workers": "workers", "max_in_flight": "workers",
    "max_pending_seen": "workers", "cap": "workers", "max_pending": "workers",
    "workers_submitted": "workers", "est_duration_at_end": "s",
    "queue_wait_estimate_at_end": "s", "sbatch_calls": "calls", "scancel_calls": "calls",
    "cancelled_pending": "workers", "failed_starts": "workers", "requeued": "tasks",
    "tasks_done": "tasks", "cycles": "cycles",
}  # fmt: skip


def _show(value: object, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if key == "busy_share" and isinstance(value, float):
        return f"{100 * value:.1f}% of the allocated worker-seconds"
    unit = UNITS.get(key)
    return f"{value} {unit}" if unit else str(value)


def plot(result: SimResult, path: str | Path) -> None:
    """Backlog, workers by state and the cap over time, one pair of panels per pool."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise HpcscaleError(
            "--plot needs matplotlib: pip install 'hpcscale[plot]' (or pip install matplotlib)"
        ) from exc
    span = max(1.0, result.ended_at - result.first_arrival)
    unit, scale = ("h", 3600.0) if span > 3 * 3600 else ("min", 60.0) if span > 600 else ("s", 1.0)
    figure = Figure(figsize=(10, 4.5 * len(result.pools)), layout="constrained")
    axes = figure.subplots(2 * len(result.pools), 1, sharex=True, squeeze=False)[:, 0]
    for i, pool in enumerate(result.pools):
        t = [(s.t - result.first_arrival) / scale for s in pool.timeline]
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top.step(t, [s.backlog for s in pool.timeline], where="post", color="tab:gray")
        top.set_ylabel("claimable tasks")
        top.set_title(f"pool {pool.name}: {result.source}")
        bottom.stackplot(
            t,
            [s.registered for s in pool.timeline],
            [s.starting for s in pool.timeline],
            [s.pending for s in pool.timeline],
            labels=["registered", "starting", "pending"],
            step="post",
            colors=["tab:green", "tab:orange", "tab:blue"],
            alpha=0.8,
        )
        bottom.step(
            t,
            [s.cap for s in pool.timeline],
            where="post",
            color="tab:red",
            linestyle="--",
            label="cap (max_workers)",
        )
        bottom.set_ylabel("workers")
        bottom.legend(
            loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize="small", frameon=False
        )
    axes[-1].set_xlabel(f"time since the first task ({unit})")
    figure.savefig(str(path), dpi=100)
