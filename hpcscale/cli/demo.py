"""`hpcscale demo`: the whole loop on this machine, nothing to configure.

A real `hpcscale serve` (embedded SQLite, a `local` scheduler pool) in a temp dir; a burst of
tasks; a live line showing the pool scale up to its max and back to zero; then a summary
computed from the store's own records (tasks, workers started, worker-seconds, idle share).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from hpcscale import proc
from hpcscale.client import Client
from hpcscale.errors import ConfigError, HpcscaleError
from hpcscale.models import TaskSpec, TaskState, Worker

CONFIG = """\
# Written by `hpcscale demo`: a pool of local worker processes, up to {max_workers} at once.
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"
lease_ttl = "30s"

[manager]
name = "demo"
poll_interval = "2s"
state_dir = "{root}/manager"

[[pools]]
name = "demo"
queues = ["demo"]
scheduler = "local"
max_workers = {max_workers}
max_pending = {max_workers}
target_drain_time = "10s"
task_duration_prior = "2s"

[pools.slurm]
time = "00:10:00"

[pools.worker]
max_empty_claims = 2
empty_claim_sleep = "1s"
heartbeat_interval = "2s"
output_dir = "{root}/task-output"
"""


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "demo",
        parents=[listing],
        help="the whole loop on this machine: embedded store, local workers",
    )
    p.add_argument("--tasks", type=int, default=40, help="tasks in the burst")
    p.add_argument("--max-workers", type=int, default=4, help="the pool's cap")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.tasks < 1 or args.max_workers < 1:
        raise ConfigError(["demo: --tasks and --max-workers must be ≥ 1"])
    summary = run_demo(args.tasks, args.max_workers, as_json=args.json)
    return 0 if summary.succeeded == summary.tasks else 1


@dataclass(frozen=True)
class Summary:
    tasks: int
    succeeded: int
    workers_started: int
    peak_workers: int
    max_workers: int
    worker_seconds: float
    busy_seconds: float
    idle_share: float
    makespan: float
    first_task_to_first_worker: float
    directory: str


def summarize(client: Client, pool: str, max_workers: int, started: float, root: Path) -> Summary:
    """The numbers, from the store's records only (what `demo` prints is what happened)."""
    tasks = client.list_tasks(queue=pool, limit=10_000)
    workers = client.list_workers(pool=pool)
    busy = sum((t.ended_at or 0) - (t.started_at or 0) for t in tasks if t.ended_at)
    spans = [(w.started_at, w.ended_at or w.last_heartbeat) for w in workers]
    worker_seconds = sum(end - start for start, end in spans)
    last_end = max((t.ended_at or 0 for t in tasks), default=started)
    first_worker = min((w.started_at for w in workers), default=started)
    return Summary(
        tasks=len(tasks),
        succeeded=sum(t.state == TaskState.SUCCEEDED for t in tasks),
        workers_started=len(workers),
        peak_workers=peak(spans),
        max_workers=max_workers,
        worker_seconds=round(worker_seconds, 1),
        busy_seconds=round(busy, 1),
        idle_share=round(1 - busy / worker_seconds, 3) if worker_seconds else 0.0,
        makespan=round(last_end - started, 1),
        first_task_to_first_worker=round(first_worker - started, 1),
        directory=str(root),
    )


def peak(spans: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    live = top = 0
    for _, delta in points:
        live += delta
        top = max(top, live)
    return top


def progress_line(elapsed: float, tasks: dict[str, int], workers: list[Worker], cap: int) -> str:
    live = len(workers)
    bar = "#" * live + "." * max(0, cap - live)
    return (
        f"t={elapsed:5.1f}s  workers [{bar}] {live}/{cap}  tasks: "
        f"{tasks.get('waiting', 0)} waiting, {tasks.get('running', 0)} running, "
        f"{tasks.get('succeeded', 0)} done"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: proc.Process, timeout: float = 30.0) -> None:
    """Until the server process we started answers /healthz; an error if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HpcscaleError(f"the server at {url} exited at start; see its log")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise HpcscaleError(f"the server at {url} did not answer within {timeout:g} s")


def run_demo(
    tasks: int = 40, max_workers: int = 4, as_json: bool = False, seed: int = 7
) -> Summary:
    """Run the loop once; returns (and prints) the summary. Leaves its files for a look."""
    root = Path(tempfile.mkdtemp(prefix="hpcscale-demo-"))
    port = _free_port()
    config = root / "config.toml"
    config.write_text(CONFIG.format(port=port, root=root, max_workers=max_workers))
    url = f"http://127.0.0.1:{port}"
    say = (lambda _text: None) if as_json else print
    say(f"hpcscale demo: server and manager on {url}, files in {root}")
    log = (root / "serve.log").open("ab")
    serve = proc.spawn(
        [sys.executable, "-m", "hpcscale", "serve", "--allow-root", "--config", str(config)],
        stdout=log,
        stderr=proc.STDOUT,
    )
    try:
        wait_healthy(url, serve)
        token = (root / "token").read_text().strip()
        with Client(url, token) as client:
            return _drive(client, root, tasks, max_workers, seed, say, as_json)
    finally:
        proc.kill_group(serve.pid, signal.SIGTERM)
        if proc.wait(serve, timeout=30) is None:
            proc.kill_group(serve.pid, signal.SIGKILL)
        log.close()


def _drive(
    client: Client,
    root: Path,
    n: int,
    cap: int,
    seed: int,
    say: Callable[[str], None],
    as_json: bool,
) -> Summary:
    rng = random.Random(seed)  # noqa: S311 - task lengths for a demo, not cryptography
    specs = [
        TaskSpec(command=["sleep", f"{rng.uniform(1, 3):.2f}"], queue="demo") for _ in range(n)
    ]
    started = time.time()
    client.submit(specs)
    say(f"submitted {n} tasks of 1-3 s each; the pool scales up to {cap} workers and back to 0")
    tty = sys.stdout.isatty() and not as_json
    last_print = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts: dict[str, int] = {}
        for task in client.list_tasks(queue="demo", limit=10_000):
            counts[task.state.value] = counts.get(task.state.value, 0) + 1
        live = client.list_workers(pool="demo", live=True)
        in_flight = client.submissions(manager="demo", open_only=True)
        line = progress_line(time.time() - started, counts, live, cap)
        if tty:
            print("\r" + line.ljust(100), end="", flush=True)
        elif time.monotonic() - last_print >= 2:
            say(line)
            last_print = time.monotonic()
        done = counts.get("waiting", 0) + counts.get("running", 0) == 0
        if done and not live and not in_flight:
            break
        time.sleep(0.5)
    if tty:
        print()
    summary = summarize(client, "demo", cap, started, root)
    if as_json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        say(format_summary(summary))
    return summary


def format_summary(s: Summary) -> str:
    return "\n".join(
        [
            "",
            f"tasks:            {s.succeeded}/{s.tasks} succeeded in {s.makespan:.1f} s",
            f"workers started:  {s.workers_started} (at most {s.peak_workers} at once; cap "
            f"{s.max_workers})",
            f"first worker:     {s.first_task_to_first_worker:.1f} s after the burst",
            f"worker-seconds:   {s.worker_seconds:.1f} ({s.busy_seconds:.1f} busy; idle share "
            f"{s.idle_share:.0%})",
            f"everything (store, logs, task output) is in {s.directory}",
        ]
    )
