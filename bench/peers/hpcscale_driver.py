"""hpcscale on workload W: the real `hpcscale serve` (API + manager loop, one process) with one
Slurm pool, tasks submitted through the API (`hpcscale.client.Client.submit`) at the burst times.

    python -m bench.peers.hpcscale_driver --workload W.json --out result.json --workdir DIR

Run by bench/peers/run.py with the project's own interpreter, from the repository root. The
pool's settings, and why each has its value, are in POOL_TOML below. Besides the task times it
records, for the worker-seconds breakdown, every worker (registration, end, reason, job id) and
which worker ran which task: GET /v1/tasks?state=running every 0.25 s (a task lasts ≥ 1 s, so
each is seen at least once with its lease owner; the store clears the owner when it ends).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.peers.common import (
    DriverResult,
    Workload,
    driver_args,
    live_jobs,
    python_version,
    run_bursts,
    wait_jobs_gone,
)
from hpcscale import __version__
from hpcscale.client import Client
from hpcscale.models import FINAL_STATES, TaskSpec, TaskState

MANAGER = "peers"
POOL = "w"
QUEUE = "w"
JOB_PREFIX = f"hpcscale.{MANAGER}."
SCRIPT_MARKER = "peers-bench: job script started at"
OUTPUT_RE = re.compile(r"slurm-(\d+)_(\d+)\.out$")

# The pool W runs on. Choices (documented in BENCHMARKS.md too):
# - max_workers = max_pending = 8: the cap; one burst is one `sbatch --array=0-7`.
# - task_duration_prior = 3.5s: the mean of uniform(1, 6), what a user knows of their tasks.
#   Measured durations (EWMA of results) replace it after the first results.
# - target_drain_time = 30s: a 200-task burst is 700 slot-s, so 30 s asks for 24 workers ->
#   the cap of 8 at once; any value under 87 s (700 s / 8) gives the same for this workload.
# - max_empty_claims = 1 (empty_claim_sleep then never comes into play): a worker leaves at
#   its first empty claim. Between bursts the queue is empty for ~30 s; a restart costs a
#   worker ~1-3 s (sbatch -> running -> registered), far less than 30 s of idling, and after
#   the last burst nothing is held at all. Inside a burst no claim comes back empty (all 200
#   tasks arrive in one POST), so no worker leaves early.
# - [pools.slurm] setup prints the job script's start time (instrumentation, see below).
# - time = 30 min wall for every system (a worker lives < 100 s here); poll_interval = 10s:
#   the manager wakes on new tasks through the server's long-poll, the poll only reconciles.
CONFIG = """
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"

[manager]
name = "{manager}"
poll_interval = "10s"
state_dir = "{root}/manager"

[[pools]]
name = "{pool}"
queues = ["{queue}"]
scheduler = "slurm"
min_workers = 0
max_workers = {cap}
max_pending = {cap}
max_submit_per_cycle = {cap}
target_drain_time = "30s"
task_duration_prior = "3.5s"

[pools.slurm]
partition = "{partition}"
time = "{walltime}"
cpus_per_task = 1
output = "{root}/slurm-%A_%a.out"
# Instrumentation only (a `date`, ~1 ms): when the job script starts, to split the start-up
# into Slurm's launch and the worker's own (Python, imports, registration).
setup = ['echo "{marker} $(date +%s.%N)"']

[pools.worker]
slots = 1
max_empty_claims = 1
empty_claim_sleep = "1s"
output_dir = "{root}/task-output"
"""


# Untuned (issue 15; the default run): what a new admin writes, as the peers run with their
# defaults: the partition, the cap, one CPU a worker, a wall time; everything else is
# hpcscale's defaults (the efficiency rule, no drain target, the 300 s prior, a worker that
# leaves at its first empty claim, poll 30 s). The server/manager keys are where the run's
# files go, and `output`/`setup` the same instrumentation as the tuned run's.
UNTUNED = """
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"

[manager]
name = "{manager}"
state_dir = "{root}/manager"

[[pools]]
name = "{pool}"
queues = ["{queue}"]
max_workers = {cap}

[pools.slurm]
partition = "{partition}"
time = "{walltime}"
cpus_per_task = 1
output = "{root}/slurm-%A_%a.out"
setup = ['echo "{marker} $(date +%s.%N)"']

[pools.worker]
output_dir = "{root}/task-output"
"""
# HPCSCALE_PEERS_CONFIG=tuned runs the tuned pool above instead (labelled so in the table).
CONFIGS = {"untuned": UNTUNED, "tuned": CONFIG}


def config_kind() -> str:
    kind = os.environ.get("HPCSCALE_PEERS_CONFIG", "untuned")
    if kind not in CONFIGS:
        raise SystemExit(f"HPCSCALE_PEERS_CONFIG: {kind!r} is not one of {', '.join(CONFIGS)}")
    return kind


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """`python -m hpcscale serve --allow-root` in its own process group."""

    def __init__(self, root: Path, work: Workload) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "config.toml"
        self.config.write_text(
            CONFIGS[config_kind()].format(
                port=self.port, root=root, manager=MANAGER, pool=POOL, queue=QUEUE,
                cap=work.cap, partition=work.partition, walltime=work.walltime,
                marker=SCRIPT_MARKER,
            )
        )  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Client:
        with (self.root / "serve.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hpcscale", "serve", "--allow-root",
                 "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.root,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"hpcscale serve exited with {self.process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("hpcscale serve did not answer /healthz")
            time.sleep(0.05)
        client = self.client()
        while not client.decisions(POOL, limit=1):  # the manager's first (idle) cycle
            if time.monotonic() > deadline:
                raise RuntimeError("the manager recorded no decision")
            time.sleep(0.05)
        return client

    def client(self) -> Client:
        return Client(self.url, (self.root / "token").read_text().strip(), retry_for=10.0)

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


class OwnerWatch(threading.Thread):
    """Which worker holds which running task: GET /v1/tasks?state=running, every `every` s."""

    def __init__(self, client: Client, every: float = 0.25) -> None:
        super().__init__(name="owners", daemon=True)
        self.client = client
        self.every = every
        self.owner: dict[int, str] = {}
        self.running = -1  # tasks running at the last look; -1: no look yet
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            with contextlib.suppress(Exception):  # a missed look is retried the next one
                running = self.client.list_tasks(state="running", queue=QUEUE, limit=1000)
                for task in running:
                    if task.lease_owner:
                        self.owner.setdefault(task.id, task.lease_owner)
                self.running = len(running)


def all_tasks(client: Client) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    after = 0
    while True:
        page = client.list_tasks(queue=QUEUE, limit=1000, after=after)
        if not page:
            return out
        out += [t.model_dump(mode="json") for t in page]
        after = page[-1].id


def script_starts(root: Path) -> list[dict[str, object]]:
    """When each job script started (the setup line's `date`), from the jobs' output files."""
    out: list[dict[str, object]] = []
    for path in sorted(root.glob("slurm-*_*.out")):
        match = OUTPUT_RE.search(path.name)
        if not match:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(SCRIPT_MARKER):
                with contextlib.suppress(ValueError):
                    out.append(
                        {
                            "job_id": match.group(1),
                            "array_index": int(match.group(2)),
                            "at": float(line.removeprefix(SCRIPT_MARKER).strip()),
                        }
                    )
                break
    return out


def drive(work: Workload, out: Path, root: Path, timeout: float) -> DriverResult:
    result = DriverResult("hpcscale", {"hpcscale": __version__, "python": python_version()})
    serve = Serve(root, work)
    ids: list[int] = []
    try:
        client = serve.start()
        watch = OwnerWatch(serve.client())  # its own connection: it runs in another thread
        watch.start()

        def submit(first: int, durations: list[float]) -> None:
            now = time.time()
            specs = [TaskSpec(command=["sleep", f"{d:.3f}"], queue=QUEUE) for d in durations]
            ids.extend(client.submit(specs).ids)
            result.submitted += [now] * len(durations)

        result.t0 = run_bursts(work, submit)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Cheap looks first (the server shares 2 cores with the workers): nothing waiting
            # and nothing running, then the whole list once to confirm.
            waiting = sum(b.count for b in client.backlog([QUEUE]))
            if waiting == 0 and watch.running == 0:
                tasks = all_tasks(client)
                if len(tasks) >= work.tasks and all(
                    TaskState(str(t["state"])) in FINAL_STATES for t in tasks
                ):
                    break
            time.sleep(0.5)
        # The workers end themselves: wait for that, the system's own scale-in, then look.
        result.jobs_gone = wait_jobs_gone(
            JOB_PREFIX, timeout=max(60.0, deadline - time.monotonic())
        )
        watch.halt.set()
        by_id = {int(str(t["id"])): t for t in all_tasks(client)}
        for task_id in ids:
            task = by_id.get(task_id, {})
            ok = task.get("state") == TaskState.SUCCEEDED.value and task.get("ended_at")
            result.done.append(float(str(task["ended_at"])) if ok else 0.0)
            result.failed += 0 if ok else 1
        workers = client.list_workers(pool=POOL, since=0)
        result.extra = {
            "workers": [w.model_dump(mode="json") for w in workers],
            "tasks": [
                {
                    "id": i,
                    "index": n,
                    "started_at": by_id.get(i, {}).get("started_at"),
                    "ended_at": by_id.get(i, {}).get("ended_at"),
                    "attempts": by_id.get(i, {}).get("attempts"),
                    "worker": watch.owner.get(i),
                }
                for n, i in enumerate(ids)
            ],
            "script_starts": script_starts(root),
            "config": serve.config.read_text(),
            "decisions": [d.model_dump(mode="json") for d in client.decisions(POOL, limit=50)],
        }
        if result.jobs_gone is None:
            result.notes.append("hpcscale jobs still live at the timeout (cancelled)")
    finally:
        serve.stop()
        leftover = live_jobs(JOB_PREFIX)
        if leftover:
            subprocess.run(["scancel", *leftover], check=False, timeout=30)
            result.notes.append(f"cancelled leftover jobs {leftover}")
        result.write(out)
    return result


def main(argv: list[str] | None = None) -> int:
    work, out, root, timeout = driver_args(argv)
    result = drive(work, out, root, timeout)
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
