"""Wake-up latency: from a task burst arriving in an empty system to the first sbatch.

    python bench/wakeup.py                 # a local pool; a slurm pool too if SLURM_CONF is set
    python bench/wakeup.py --write         # ... and the table written into BENCHMARKS.md
    python bench/wakeup.py --runs 3 --schedulers local
    python bench/wakeup.py --across-replicas   # two API replicas (scripts/multicluster-lab.sh)

Each run starts the real `python -m hpcscale serve` (the API and the manager loop in one process)
on a free loopback port with a fresh SQLite database and a one-pool config whose
[manager] poll_interval is 30 s, so an answer well under 30 s can only come from the event
wake-up (the server's /v1/wait long-poll), not from the poll. It waits for /healthz and for the
manager's first, idle decision (GET /v1/decisions), takes time.time(), POSTs a burst of tasks
(`true`, 100 by default) to /v1/tasks, and polls GET /v1/submissions?manager=NAME every 10 ms:

- "to sbatch": the first submission's created_at (server clock; the intent is recorded right
  before sbatch is called) minus the time taken just before the POST (same host, same clock);
- "to job id": its updated_at once confirmed, i.e. sbatch has returned and the job ids are stored.

The pool has max_workers = 1. At the end of each run the server's process group is stopped and
every element the pool submitted is cancelled through the project's own scheduler adapter
(local supervisors and their workers, or the Slurm jobs of this run's manager name only); any
local process still alive after that is killed by its process group.

Slurm: SLURM_CONF must point at a cluster (the lab: `scripts/slurm-lab.sh up` as root, then
`source /tmp/hpcscale-slurm-lab/env.sh`); without it only the local pool is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/wakeup.py` from a source tree, installed or not
    sys.path.insert(0, str(ROOT))

from hpcscale import config  # noqa: E402
from hpcscale.schedulers import make_scheduler  # noqa: E402
from hpcscale.schedulers.local.records import alive, pid_of, read_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench import report as bench_report  # noqa: E402

BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Wake-up latency"
POOL = "bench"
QUEUE = "wakeup"
TARGET = 1.0  # seconds: issue 5, acceptance 6

CONFIG = """
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"

[manager]
name = "{manager}"
poll_interval = "30s"
state_dir = "{root}/manager"

[[pools]]
name = "{pool}"
queues = ["{queue}"]
scheduler = "{scheduler}"
min_workers = 0
max_workers = 1
max_pending = 1
task_duration_prior = "1s"

[pools.slurm]
{partition}time = "00:05:00"
signal_margin = "10s"
output = "{root}/slurm-%A_%a.out"

[pools.worker]
max_empty_claims = 1
empty_claim_sleep = "1s"
heartbeat_interval = "2s"
claim_margin = "2s"
output_dir = "{root}/task-output"
"""


@dataclass
class Sample:
    to_sbatch: float  # first submission's created_at - the time just before the POST
    to_job_id: float | None  # its updated_at when confirmed (sbatch returned)
    post: float  # how long the POST /v1/tasks itself took


# ---------------------------------------------------------------------- one run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """`hpcscale serve` with a one-pool config in `root`, as its own process group."""

    def __init__(self, root: Path, scheduler: str, manager: str, partition: str | None) -> None:
        self.root = root
        self.manager = manager
        self.port = free_port()
        root.mkdir(parents=True)
        self.config_path = root / "config.toml"
        self.config_path.write_text(
            CONFIG.format(
                port=self.port,
                root=root,
                manager=manager,
                pool=POOL,
                queue=QUEUE,
                scheduler=scheduler,
                partition=f'partition = "{partition}"\n' if partition else "",
            )
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> httpx.Client:
        env = dict(os.environ)  # the server under test is this source tree's
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with (self.root / "serve.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hpcscale", "serve", "--allow-root",
                 "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.root, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer /healthz within {timeout:.0f}s")
            time.sleep(0.05)
        token = (self.root / "token").read_text().strip()
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def _alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log = (self.root / "serve.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"serve exited with {self.process.returncode}:\n{log}")

    def wait_idle_cycle(self, api: httpx.Client, timeout: float = 60.0) -> None:
        """Until the manager has recorded its first decision (an empty system: submit 0)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._alive()
            reply = api.get("/v1/decisions", params={"pool": POOL, "limit": 1})
            reply.raise_for_status()
            if reply.json():
                if submissions(api, self.manager):
                    raise RuntimeError("the empty system submitted workers before the burst")
                return
            time.sleep(0.05)
        raise RuntimeError(f"no manager decision within {timeout:.0f}s")

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
        # whatever else is left in its process group (it is the group's leader)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


def submissions(api: httpx.Client, manager: str) -> list[dict[str, Any]]:
    reply = api.get("/v1/submissions", params={"manager": manager})
    reply.raise_for_status()
    records: list[dict[str, Any]] = reply.json()
    return records


def measure(serve: Serve, tasks: int, every: float, timeout: float) -> Sample:
    with serve.start() as api:
        serve.wait_idle_cycle(api)
        burst = {"tasks": [{"command": ["true"], "queue": QUEUE} for _ in range(tasks)]}
        t0 = time.time()
        reply = api.post("/v1/tasks", json=burst)
        post = time.time() - t0
        reply.raise_for_status()
        deadline = time.monotonic() + timeout
        first: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            records = submissions(api, serve.manager)
            if records:
                first = min(records, key=lambda r: float(r["created_at"]))
                if first["state"] != "intent":
                    break
            time.sleep(every)
        if first is None:
            raise RuntimeError(f"no submission within {timeout:.0f}s of the burst")
        confirmed = first["state"] in ("confirmed", "ended")
        if not confirmed:
            print(f"  first submission not confirmed: {first}", flush=True)
        return Sample(
            to_sbatch=float(first["created_at"]) - t0,
            to_job_id=float(first["updated_at"]) - t0 if confirmed else None,
            post=post,
        )


# ---------------------------------------------------------------------- cleanup


def cancel_elements(serve: Serve) -> list[str]:
    """Cancel every element this run's manager submitted, wait until all have ended, and kill
    any local supervisor or job script still alive. Returns what needed the hard kill."""
    settings = config.load(serve.config_path)
    pool = settings.pools[0]
    state_dir = Path(settings.manager.state_dir).expanduser()
    scheduler = make_scheduler(pool, settings.manager.name, state_dir)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        live = [e.element_id for e in scheduler.status() if not e.terminal]
        if not live:
            break
        scheduler.cancel(live)
        time.sleep(0.5)
    # Local elements: a supervisor records the end just before it exits; give it that moment.
    deadline = time.monotonic() + 15.0
    while (left := local_processes(state_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for identity in left:
        pid = pid_of(identity)
        if pid and alive(identity):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # each runs in a process group of its own
    return left


def local_processes(state_dir: Path) -> list[str]:
    """Identities ('pid:start') of the local supervisors and job scripts still alive."""
    found: set[str] = set()
    jobs = state_dir / "local" / "jobs"
    for job_json in sorted(jobs.glob("*/job.json")) if jobs.is_dir() else []:
        job = read_json(job_json) or {}
        identities = list((job.get("supervisors") or {}).values())
        for record in job_json.parent.glob("*.json"):
            if record.name != "job.json":
                data = read_json(record) or {}
                identities += [data.get("supervisor"), data.get("child")]
        found.update(i for i in identities if isinstance(i, str) and alive(i))
    return sorted(found)


def run_one(
    scheduler: str, index: int, base: Path, args: argparse.Namespace
) -> tuple[Sample, list[str]]:
    manager = f"wake{os.getpid()}r{index}{scheduler[0]}"
    serve = Serve(base / f"{scheduler}-{index}", scheduler, manager, args.partition)
    try:
        sample = measure(serve, args.tasks, args.every, args.timeout)
    finally:
        serve.stop()
        killed = cancel_elements(serve)
    return sample, killed


# ---------------------------------------------------------------------- report


def machine() -> list[str]:
    return [
        f"- machine: {bench_report.machine_line()}",
        f"- Python {platform.python_version()}; date {dt.date.today().isoformat()}",
    ]


def slurm_version() -> str | None:
    try:
        out = subprocess.run(
            ["sbatch", "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def row(scheduler: str, samples: list[Sample]) -> str:
    to_sbatch = [s.to_sbatch for s in samples]
    to_job = [s.to_job_id for s in samples if s.to_job_id is not None]
    job = f"{ms(statistics.median(to_job))} / {ms(max(to_job))}" if to_job else "-"
    verdict = "yes" if max(to_sbatch) < TARGET else "**no**"
    return (
        f"| {scheduler} | {len(samples)} | {ms(statistics.median(to_sbatch))} | "
        f"{ms(max(to_sbatch))} | {job} | {ms(statistics.median(s.post for s in samples))} | "
        f"{verdict} |"
    )


def report(results: dict[str, list[Sample]], command: str, tasks: int) -> str:
    lines = [
        SECTION,
        "",
        "From a burst of tasks arriving in an empty system to the first sbatch, measured by "
        "`bench/wakeup.py` against the real `hpcscale serve` (API and manager loop in one "
        "process, SQLite store) with one pool of max_workers = 1 and [manager] poll_interval = "
        "30 s, so every answer below 30 s is the event wake-up (the server's /v1/wait "
        "long-poll), not the poll. Each run is a fresh server and database; the burst is "
        f"{tasks} `true` tasks in one POST /v1/tasks, sent once the manager has recorded its "
        "first (idle) decision. *To sbatch*: the first submission record's created_at (written "
        "just before sbatch is called) minus time.time() taken just before the POST; *to job "
        "id*: its updated_at when confirmed (sbatch has returned). Same host, same clock; "
        "submissions polled every 10 ms. Target (issue 5): under 1 s.",
        "",
        *machine(),
    ]
    if "slurm" in results:
        lines.append(f"- Slurm: {slurm_version() or '?'} (the throwaway lab, scripts/slurm-lab.sh)")
    lines += [
        f"- command: `{command}`",
        "",
        "| pool scheduler | runs | to sbatch, median | to sbatch, max "
        "| to job id, median / max | POST /v1/tasks, median | under 1 s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, samples) for name, samples in results.items()]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    bench_report.write_section(SECTION, text)


# ---------------------------------------------------------------------- across replicas (issue 17)

SECTION_REPLICAS = "## Wake-up latency across API replicas"
REPLICA_MANAGER_CONFIG = """
[server]
url = "{url}"
token_file = "{token_file}"

[manager]
name = "{manager}"
poll_interval = "30s"
state_dir = "{root}/manager"

[[pools]]
name = "{pool}"
queues = ["{queue}"]
scheduler = "slurm"
min_workers = 0
max_workers = 1
max_pending = 1
task_duration_prior = "1s"

[pools.slurm]
time = "00:05:00"
output = "{root}/slurm-%A_%a.out"

[pools.worker]
max_empty_claims = 1
empty_claim_sleep = "1s"
output_dir = "{root}/task-output"
"""


@dataclass
class ReplicaLab:
    """The multi-cluster lab (scripts/multicluster-lab.sh): two replicas on one PostgreSQL."""

    replica_a: str
    replica_b: str
    token_file: str
    slurm_conf: str  # the cluster the measuring manager submits to (bravo)

    @classmethod
    def from_env(cls) -> ReplicaLab:
        env = os.environ
        names = ("HPCSCALE_TEST_MC_SERVER_A", "HPCSCALE_TEST_MC_SERVER_B")
        if not all(env.get(n) for n in names):
            raise RuntimeError("no multi-cluster lab: source /tmp/hpcscale-multicluster-lab/env.sh")
        return cls(
            env["HPCSCALE_TEST_MC_SERVER_A"],
            env["HPCSCALE_TEST_MC_SERVER_B"],
            env["HPCSCALE_TEST_MC_TOKEN_FILE"],
            env["HPCSCALE_TEST_MC_SLURM_CONF_BRAVO"],
        )

    def api(self, url: str) -> httpx.Client:
        token = Path(self.token_file).read_text().strip()
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def measure_across(lab: ReplicaLab, root: Path, index: int, tasks: int, timeout: float) -> Sample:
    """A manager (poll_interval 30 s) long-polls replica B; the burst goes to replica A; the
    first sbatch of its pool, as in `measure`. Its pool serves a queue of its own, so the lab's
    managers never see the burst; its elements and tasks are cancelled at the end."""
    manager = f"xr{os.getpid()}r{index}"
    queue = f"wake-{manager}"
    root.mkdir(parents=True)
    config_path = root / "config.toml"
    config_path.write_text(
        REPLICA_MANAGER_CONFIG.format(
            url=lab.replica_b, token_file=lab.token_file, manager=manager, root=root,
            pool=POOL, queue=queue,
        )
    )  # fmt: skip
    env = {**os.environ, "SLURM_CONF": lab.slurm_conf}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with (root / "manager.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hpcscale", "manager", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip
    ids: list[int] = []
    with lab.api(lab.replica_a) as api_a, lab.api(lab.replica_b) as api_b:
        try:
            first_decision(api_b, process, root, timeout)
            burst = {"tasks": [{"command": ["true"], "queue": queue} for _ in range(tasks)]}
            t0 = time.time()
            reply = api_a.post("/v1/tasks", json=burst)
            post = time.time() - t0
            reply.raise_for_status()
            ids = reply.json()["ids"]
            first = first_submission(api_a, manager, timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            name = f"hpcscale.{manager}.{POOL}"
            subprocess.run(["scancel", "--name", name], env=env, check=False)
            if ids:
                api_a.post("/v1/tasks/cancel", json={"ids": ids})
    confirmed = first["state"] in ("confirmed", "ended")
    return Sample(
        to_sbatch=float(first["created_at"]) - t0,
        to_job_id=float(first["updated_at"]) - t0 if confirmed else None,
        post=post,
    )


def first_decision(
    api: httpx.Client, process: subprocess.Popen[bytes], root: Path, timeout: float
) -> None:
    """Until the manager has recorded its first (idle) decision: it long-polls from then on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (root / "manager.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the manager exited with {process.returncode}:\n{log}")
        reply = api.get("/v1/decisions", params={"pool": POOL, "limit": 1})
        reply.raise_for_status()
        if reply.json():
            time.sleep(0.5)  # into its long-poll
            return
        time.sleep(0.05)
    raise RuntimeError(f"no manager decision within {timeout:.0f}s")


def first_submission(api: httpx.Client, manager: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    first: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        records = submissions(api, manager)
        if records:
            first = min(records, key=lambda r: float(r["created_at"]))
            if first["state"] != "intent":
                return first
        time.sleep(0.01)
    if first is None:
        raise RuntimeError(f"no submission within {timeout:.0f}s of the burst")
    return first


def report_across(samples: list[Sample], command: str, tasks: int) -> str:
    lines = [
        SECTION_REPLICAS,
        "",
        "The same measure across two `hpcscale server` replicas on one PostgreSQL "
        "(scripts/multicluster-lab.sh, issue 17): a `hpcscale manager` with poll_interval = "
        "30 s and one pool of max_workers = 1 on Slurm cluster bravo long-polls replica B; the "
        f"burst ({tasks} `true` tasks) goes to replica A. Replica B hears of it through "
        "PostgreSQL's LISTEN/NOTIFY; without it, B's long-poll would find the tasks only when "
        "it reads the store again (every 5 s). Each run is a fresh manager and queue.",
        "",
        *machine(),
        f"- Slurm: {slurm_version() or '?'}; PostgreSQL: the lab's (scripts/pg-lab.sh)",
        f"- command: `{command}`",
        "",
        "| path | runs | to sbatch, median | to sbatch, max "
        "| to job id, median / max | POST /v1/tasks, median | under 1 s |",
        "|---|---|---|---|---|---|---|",
        row("burst via replica A, manager on replica B", samples),
    ]
    return "\n".join(lines) + "\n"


def main_across(args: argparse.Namespace, command: str) -> int:
    lab = ReplicaLab.from_env()
    os.environ.setdefault("SLURM_CONF", lab.slurm_conf)  # for the report's Slurm version
    samples = []
    with workdir(args.keep) as base:
        for index in range(args.runs):
            root = base / f"replicas-{index}"
            sample = measure_across(lab, root, index, args.tasks, args.timeout)
            samples.append(sample)
            print(f"across replicas run {index + 1:2}/{args.runs}: to sbatch "
                  f"{sample.to_sbatch * 1000:6.0f} ms", flush=True)  # fmt: skip
    text = report_across(samples, command, args.tasks)
    print(text)
    if args.write:
        bench_report.write_section(SECTION_REPLICAS, text)
        print(f"written to {BENCHMARKS}")
    return 0 if max(s.to_sbatch for s in samples) < TARGET else 1


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="hpcscale-wakeup-"))
    else:
        with tempfile.TemporaryDirectory(prefix="hpcscale-wakeup-") as tmp:
            yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per scheduler (default 10)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks in the burst (100)")
    parser.add_argument(
        "--schedulers",
        default="local,slurm" if os.environ.get("SLURM_CONF") else "local",
        help="comma-separated: local, slurm (default: local, plus slurm when SLURM_CONF is set)",
    )
    parser.add_argument("--partition", default=None, help="Slurm partition (default: Slurm's)")
    parser.add_argument("--every", type=float, default=0.01, help="poll period, s (0.01)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per run, s (60)")
    parser.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    parser.add_argument(
        "--across-replicas",
        action="store_true",
        help="burst via replica A, manager on replica B (the multi-cluster lab's env.sh)",
    )
    args = parser.parse_args(argv)
    if args.across_replicas:
        command = "python bench/wakeup.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        lab = "scripts/multicluster-lab.sh up && source /tmp/hpcscale-multicluster-lab/env.sh && "
        return main_across(args, lab + command)
    chosen = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    for name in chosen:
        if name not in ("local", "slurm"):
            parser.error(f"unknown scheduler {name!r}")
        if name == "slurm" and not os.environ.get("SLURM_CONF"):
            parser.error("slurm needs SLURM_CONF (source /tmp/hpcscale-slurm-lab/env.sh)")
    if args.runs < 1 or args.tasks < 1:
        parser.error("--runs and --tasks must be at least 1")
    command = "python bench/wakeup.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if "slurm" in chosen:
        command = f"SLURM_CONF={shlex.quote(os.environ['SLURM_CONF'])} {command}"
    results: dict[str, list[Sample]] = {}
    with workdir(args.keep) as base:
        if args.keep:
            print(f"logs in {base}")
        for name in chosen:
            results[name] = []
            for index in range(args.runs):
                sample, killed = run_one(name, index, base, args)
                results[name].append(sample)
                job = f"{sample.to_job_id * 1000:7.0f} ms" if sample.to_job_id else "      -"
                note = f"  (hard-killed leftovers: {', '.join(killed)})" if killed else ""
                print(
                    f"{name:5} run {index + 1:2}/{args.runs}: to sbatch "
                    f"{sample.to_sbatch * 1000:6.0f} ms, to job id {job}, "
                    f"POST {sample.post * 1000:4.0f} ms{note}",
                    flush=True,
                )
    text = report(results, command.strip(), args.tasks)
    print()
    print(text)
    if args.write:
        write_section(text)
        print(f"written to {BENCHMARKS}")
    return 0 if all(max(s.to_sbatch for s in v) < TARGET for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
