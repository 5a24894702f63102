"""`hpcscale simulate`: a config's pools on a workload, before trusting them with an allocation.

Why here: flags, files and printing are the command's; the simulator (hpcscale.sim) takes plain
values and returns a result, so tests and benches drive it without a command line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from hpcscale.cli.common import load_settings, make_client
from hpcscale.cli.history import History, read_history
from hpcscale.config import ManagerConfig, PoolConfig, Settings
from hpcscale.errors import ConfigError
from hpcscale.sim import sweep
from hpcscale.sim.engine import WAKE_MODES, simulate
from hpcscale.sim.limits import ControlEvent
from hpcscale.sim.results import SimResult, format_text, plot
from hpcscale.sim.workloads import (
    DEFAULT_MAX_ARRAY_SIZE,
    SCENARIOS,
    ClusterModel,
    QueueWait,
    SimTask,
    example_pool,
    read_swf_waits,
    read_trace,
    scenario_tasks,
)
from hpcscale.units import duration_flag


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    """Register `hpcscale simulate` on the main parser's subcommands."""
    p = sub.add_parser(
        "simulate",
        parents=[common, listing],
        help="simulate the pools of a config on a workload, with the real policy",
        description="A discrete-event simulation of the config's pools (or a built-in example "
        "pool) on a synthetic scenario, a trace or the store's own history: the manager's real "
        "decisions, workers that claim and end themselves as the real ones do, a model of "
        "Slurm's queue. Scenarios: "
        + "; ".join(f"{s.name}: {s.about} ({s.size} tasks)" for s in SCENARIOS.values()),
    )
    _workload_flags(p)
    p.add_argument(
        "--queue-wait",
        help="fixed:D or exp:MEAN (fixed:30s; with --from-server the measured waits)",
    )
    p.add_argument(
        "--queue-wait-trace",
        metavar="FILE.swf",
        help="draw queue waits from an SWF trace's wait times",
    )
    p.add_argument(
        "--start-latency",
        help="job start -> worker registered (5s; with --from-server the measured one)",
    )
    p.add_argument(
        "--failed-starts",
        type=float,
        default=0.0,
        help="probability that a started job never registers a worker (0)",
    )
    p.add_argument("--sbatch-latency", default="0s", help="sbatch -> jobs visible (0s)")
    p.add_argument(
        "--max-array-size",
        type=int,
        default=DEFAULT_MAX_ARRAY_SIZE,
        help=f"Slurm's MaxArraySize ({DEFAULT_MAX_ARRAY_SIZE})",
    )
    p.add_argument(
        "--wake",
        choices=WAKE_MODES,
        default="empty",
        help="cycle at once when a task arrives: into an empty backlog (empty, the default), "
        "on every new task (any: what the manager's long-poll on the submit sequence does), "
        "never (none: every poll_interval only)",
    )
    p.add_argument(
        "--horizon", default="30d", help="stop simulating this long after the first task (30d)"
    )
    _what_if_flags(p)
    p.set_defaults(func=cmd_simulate)


def _workload_flags(p: argparse.ArgumentParser) -> None:
    """Where the tasks come from: one of a scenario, a trace, the store's history."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", choices=list(SCENARIOS), help="a built-in workload")
    source.add_argument("--trace", metavar="FILE.csv", help="CSV: arrival,duration[,queue]")
    source.add_argument(
        "--from-server",
        action="store_true",
        help="the store's history at [server] url: the tasks that ran in the pools' queues "
        "(when submitted, how long they ran), the workers' measured start-up and queue waits",
    )
    p.add_argument("--tasks", type=int, help="the scenario's size (default: its own)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--pool", action="append", help="simulate only this pool (repeatable)")


def _what_if_flags(p: argparse.ArgumentParser) -> None:
    """An admin's commands during the run, a grid of settings, the plot (issue 15)."""
    p.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="T:[POOL:]ACTION",
        help="an admin's command at T seconds: pause, resume, drain or max=N (set-max); repeatable",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="simulate every combination of these values of config keys (efficiency, "
        "worker.max_empty_claims, manager.poll_interval, ...; repeatable): a table, and with "
        "--plot makespan against worker-seconds; the config's own values are always in it",
    )
    p.add_argument("--plot", metavar="OUT.png", help="draw backlog and workers over time")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Flags to plain values, one simulation (or one per point of --sweep's grid), then the
    metrics (and the plot, if asked)."""
    settings = load_settings(args)
    pools = _pools(settings, args.pool)
    measured = _history(args, settings, pools) if args.from_server else None
    tasks, source, notes = _workload(args, pools, measured)
    start_latency, startup_note = _start_latency(args, measured)
    cluster = ClusterModel(
        queue_wait=_queue_wait(args, measured),
        start_latency=start_latency,
        failed_start=_probability(args.failed_starts),
        sbatch_latency=duration_flag("--sbatch-latency", args.sbatch_latency),
        max_array_size=max(1, args.max_array_size),
    )
    horizon = duration_flag("--horizon", args.horizon)
    controls = _controls(args.control)

    def run(sim_pools: list[PoolConfig], manager: ManagerConfig) -> SimResult:
        result = simulate(
            tasks, sim_pools, manager=manager, cluster=cluster, seed=args.seed, horizon=horizon,
            wake=args.wake, source=source, controls=controls,
        )  # fmt: skip
        result.notes[:0] = [*notes, f"queue wait {cluster.queue_wait.describe()}"]
        result.notes.extend(startup_note)
        return result

    if args.sweep:
        axes = [sweep.Axis.parse(text) for text in args.sweep]
        points = sweep.sweep(axes, pools, settings.manager, run)
        if args.plot:
            sweep.plot(axes, points, args.plot)
        print(sweep.table(axes, points))
        return 0
    result = run(pools, settings.manager)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_text(result))
    return 0


def _pools(settings: Settings, names: Sequence[str] | None) -> list[PoolConfig]:
    """The config's pools (or --pool's), the built-in example when the config has none."""
    pools = list(settings.pools) or [example_pool()]
    if names:
        known = {p.name: p for p in pools}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                [f"--pool: no pool named {', '.join(missing)} (known: {', '.join(known)})"]
            )
        pools = [known[n] for n in names]
    return pools


def _history(args: argparse.Namespace, settings: Settings, pools: Sequence[PoolConfig]) -> History:
    with make_client(args, settings) as client:
        return read_history(client, pools)


def _workload(
    args: argparse.Namespace, pools: Sequence[PoolConfig], measured: History | None
) -> tuple[list[SimTask], str, list[str]]:
    """The tasks; a scenario's queue no pool serves moves to the first pool's first queue."""
    if measured is not None:
        return measured.tasks, "the store's history", measured.notes
    if args.trace:
        return read_trace(args.trace), f"trace {args.trace}", []
    tasks = scenario_tasks(args.scenario, args.seed, args.tasks)
    served = {q for p in pools for q in p.queues}
    target = pools[0].queues[0]
    moved = sorted({t.queue for t in tasks if t.queue not in served})
    if moved:
        tasks = [t if t.queue in served else t._replace(queue=target) for t in tasks]
    notes = [f"scenario queue {q!r} runs on queue {target!r} (no pool serves it)" for q in moved]
    return tasks, f"scenario {args.scenario}", notes


def _queue_wait(args: argparse.Namespace, measured: History | None) -> QueueWait:
    """A flag wins; then the store's measured waits; then 30 s."""
    if args.queue_wait_trace:
        return QueueWait.from_samples(read_swf_waits(args.queue_wait_trace))
    if args.queue_wait is None and measured is not None and measured.queue_waits:
        return QueueWait.from_samples(measured.queue_waits, "measured in the store")
    return QueueWait() if args.queue_wait is None else QueueWait.parse(args.queue_wait)


def _start_latency(args: argparse.Namespace, measured: History | None) -> tuple[float, list[str]]:
    """A flag wins; then the store's measured start-up; then 5 s. With --from-server, a note
    says which."""
    if args.start_latency is not None:
        return duration_flag("--start-latency", args.start_latency), []
    default = ClusterModel().start_latency
    if measured is None:
        return default, []
    if measured.startup is None:
        return default, [
            f"start-up {default:.1f}s (no worker in the store said when its job started)"
        ]
    return measured.startup, [f"start-up {measured.startup:.1f}s (measured in the store)"]


def _controls(texts: Sequence[str]) -> list[ControlEvent]:
    try:
        return [ControlEvent.parse(text) for text in texts]
    except ValueError as exc:
        raise ConfigError([f"--control: {exc}"]) from exc


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(["--failed-starts: must be a probability between 0 and 1"])
    return value
