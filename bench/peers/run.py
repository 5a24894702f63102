"""Side by side on a real Slurm: hpcscale, Parsl and dask-jobqueue on one workload (issue 7).

    python bench/peers/run.py --write                  # all three (~20 min), table -> BENCHMARKS.md
    python bench/peers/run.py --quick                  # smoke run: bursts of 20 tasks at 0/30/60 s
    python bench/peers/run.py --systems hpcscale,dask  # any subset, in this order

Needs root (the Slurm lab) and PyPI (Parsl and dask-jobqueue, each into its own venv).

Workload W (common.py, seed 42): three bursts of 200 tasks at t = 0, 120 and 240 s, each task
sleeping uniform(1, 6) s (2,105.5 s in all); one worker = one 1-CPU Slurm job; at most 8.

One run, in order:
1. the 4-node Slurm lab of scripts/slurm-lab.sh in its own directory (--lab, default
   /tmp/hpcscale-peers-lab, so the test suite's lab is left alone): `up` now, `down` at the end
   unless --keep-lab. Its slurm.conf has MinJobAge=300 and JobCompType=jobcomp/filetxt.
2. a venv per peer under --work (default /tmp/hpcscale-peers), `pip install parsl` and
   `pip install dask-jobqueue` from PyPI (kept between runs; pip only checks them again).
3. per system, one after the other on the idle lab: its driver (bench/peers/*_driver.py, run by
   its own venv's python as a process group of its own) submits W at the burst times, waits for
   every task, then for the system to give back its last job by itself (its own scale-in), and
   writes the times it saw. Meanwhile this script samples `squeue` every 0.5 s. In a `finally`:
   the driver's process group is stopped, the system's jobs still queued are scancelled, and
   any process left from its venv or work dir is killed by pid.
4. Slurm's own records of every job the system ran: the lab's jobcomp file (one line per job
   and per array element: StartTime, EndTime, SubmitTime; whole seconds). Everything in the
   table comes from them and from the drivers' task times (time.time(), same host).
5. the table, the machine and the versions into BENCHMARKS.md's "## Side by side" section
   (--write), and a PNG of the jobs over time per system next to this file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:  # `python bench/peers/run.py` from the source tree
    sys.path.insert(0, str(ROOT))

from bench.peers.common import (  # noqa: E402
    DriverResult,
    Workload,
    ideal_makespan,
    other_workload,
    workload,
)

HERE = Path(__file__).resolve().parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Side by side"
SYSTEMS = ("hpcscale", "parsl", "dask")
LABEL = {"hpcscale": "hpcscale", "parsl": "Parsl", "dask": "dask-jobqueue"}
JOB_PREFIX = {"hpcscale": "hpcscale.peers.", "parsl": "parsl.htex.", "dask": "peers-dask"}
PACKAGES = {"parsl": "parsl", "dask": "dask-jobqueue"}
# Issue 15's acceptance for hpcscale untuned: makespan within 1% of Parsl's, allocated
# worker-seconds at most dask-jobqueue's, never more than the cap at once.
MAKESPAN_SLACK = 1.01
SAMPLE_EVERY = 0.5
LAB = Path("/tmp/hpcscale-peers-lab")  # noqa: S108 - root's throwaway lab, as the test suite's
WORK = Path("/tmp/hpcscale-peers")  # noqa: S108 - venvs and run directories


# ---------------------------------------------------------------------------- the lab


def lab_up(lab: Path) -> Path:
    env = {**os.environ, "SLURM_LAB_DIR": str(lab), "CI": "true"}
    subprocess.run(
        [str(ROOT / "scripts" / "slurm-lab.sh"), "up"],
        env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    conf = lab / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    return conf


def lab_down(lab: Path) -> None:
    env = {**os.environ, "SLURM_LAB_DIR": str(lab)}
    subprocess.run(
        [str(ROOT / "scripts" / "slurm-lab.sh"), "down"],
        env=env, check=False, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def slurm_setting(conf: Path, key: str) -> str | None:
    for line in conf.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == key.lower():
            return value.strip()
    return None


def slurm_version() -> str:
    out = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or "?"


# ---------------------------------------------------------------------------- venvs


def ensure_venv(path: Path, spec: str) -> Path:
    """A venv at `path` with `spec` installed from PyPI; returns its python."""
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    print(f"pip install {spec} into {path}", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
        check=True, timeout=1200,
    )  # fmt: skip
    return python


# ---------------------------------------------------------------------------- Slurm's records


@dataclass(frozen=True)
class Job:
    job_id: int
    array_job: int  # = job_id for a job that is no array element (one sbatch = one array)
    array_index: int | None
    name: str
    state: str
    submit: float
    start: float | None  # None: never ran
    end: float

    @property
    def held(self) -> float:
        return max(0.0, self.end - self.start) if self.start is not None else 0.0


def _slurm_time(text: str | None) -> float | None:
    if not text or text in ("Unknown", "None", "(null)"):
        return None
    return dt.datetime.fromisoformat(text).timestamp()  # local time, whole seconds


def parse_jobcomp(text: str) -> list[Job]:
    """jobcomp/filetxt lines: `Key=Value` fields separated by spaces."""
    jobs = []
    for line in text.splitlines():
        fields = dict(p.partition("=")[::2] for p in line.split() if "=" in p)
        if "JobId" not in fields:
            continue
        start = _slurm_time(fields.get("StartTime"))
        end = _slurm_time(fields.get("EndTime")) or start or 0.0
        ran = start is not None and fields.get("NodeList", "(null)") not in ("", "(null)")
        job_id = int(fields["JobId"])
        jobs.append(
            Job(
                job_id=job_id,
                array_job=int(fields.get("ArrayJobId") or job_id),
                array_index=int(fields["ArrayTaskId"]) if fields.get("ArrayTaskId") else None,
                name=fields.get("Name", ""),
                state=fields.get("JobState", ""),
                submit=_slurm_time(fields.get("SubmitTime")) or 0.0,
                start=start if ran else None,
                end=end,
            )
        )
    return jobs


class Sampler(threading.Thread):
    """`squeue` every SAMPLE_EVERY s: per job, when first seen running and last seen holding
    its CPU; per sample, jobs pending and running. A finer clock than Slurm's whole seconds."""

    def __init__(self, prefix: str) -> None:
        super().__init__(name="squeue", daemon=True)
        self.prefix = prefix
        self.halt = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (time, pending, running)
        self.first_running: dict[int, float] = {}
        self.last_holding: dict[int, float] = {}

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.sample()
            self.halt.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))

    def sample(self) -> None:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%A|%T|%j"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        now = time.time()
        pending = running = 0
        for line in out.stdout.splitlines():
            job, state, name = (p.strip() for p in line.split("|", 2))
            if not name.startswith(self.prefix) or not job.isdigit():
                continue
            if state in ("PENDING", "CONFIGURING"):
                pending += 1
            elif state in ("RUNNING", "COMPLETING", "SUSPENDED"):
                running += 1
                self.first_running.setdefault(int(job), now)
                self.last_holding[int(job)] = now
        self.samples.append((now, pending, running))


# ---------------------------------------------------------------------------- one system


@dataclass
class SystemRun:
    system: str
    result: DriverResult
    jobs: list[Job]
    sampler: Sampler
    load: tuple[float, float]  # 1-minute load average before and after
    seconds: float


def own_processes(markers: Sequence[str]) -> list[int]:
    """Pids (not ours) whose command line names one of `markers` (a venv or a work dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(marker in cmdline for marker in markers):
                found.append(int(entry.name))
    return found


def kill_pids(pids: Sequence[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(2.0)


def live_job_ids(prefix: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "PD,CF,R,CG,S", "-o", "%i|%j"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return [
        line.split("|", 1)[0].strip()
        for line in out.stdout.splitlines()
        if line.partition("|")[2].strip().startswith(prefix)
    ]


def wait_lab_idle(timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while live_job_ids("") and time.monotonic() < deadline:
        time.sleep(1.0)


def run_system(
    system: str, python: Path, work_file: Path, run_dir: Path, jobcomp: Path, timeout: float
) -> SystemRun:
    root = run_dir / system
    root.mkdir(parents=True)
    out = run_dir / f"{system}.json"
    prefix = JOB_PREFIX[system]
    wait_lab_idle()
    offset = jobcomp.stat().st_size if jobcomp.exists() else 0
    sampler = Sampler(prefix)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    argv = [str(python), "-m", f"bench.peers.{system}_driver", "--workload", str(work_file),
            "--out", str(out), "--workdir", str(root), "--timeout", str(timeout)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    print(f"--- {LABEL[system]}: {shlex.join(argv)}", flush=True)
    process: subprocess.Popen[bytes] | None = None
    sampler.start()
    try:
        with (run_dir / f"{system}.log").open("ab") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            process.wait(timeout=3 * timeout + 600)
    finally:
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(wait)
                    break
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left in its group
        leftover = live_job_ids(prefix)
        if leftover:
            print(f"    scancel {' '.join(leftover)}", flush=True)
            subprocess.run(["scancel", *leftover], check=False, timeout=30)
        wait_lab_idle()
        markers = [str(root)] + ([str(python.parent.parent)] if system != "hpcscale" else [])
        stray = own_processes(markers)
        if stray:
            print(f"    killing leftover processes {stray}", flush=True)
            kill_pids(stray)
        time.sleep(2 * SAMPLE_EVERY)
        sampler.halt.set()
        sampler.join(10)
    seconds = time.monotonic() - started
    if not out.exists():
        raise RuntimeError(f"{system}: the driver wrote no result; see {run_dir / system}.log")
    result = DriverResult.read(out)
    (run_dir / f"{system}-squeue.json").write_text(
        json.dumps({"samples": sampler.samples, "first_running": sampler.first_running,
                    "last_holding": sampler.last_holding})
    )  # fmt: skip
    with jobcomp.open() as handle:
        handle.seek(offset)
        jobs = [j for j in parse_jobcomp(handle.read()) if j.name.startswith(prefix)]
    return SystemRun(system, result, jobs, sampler, (load_before, os.getloadavg()[0]), seconds)


# ---------------------------------------------------------------------------- metrics


@dataclass
class Metrics:
    makespan: float
    worker_s: float
    busy: float
    idle_share: float
    first_running: float | None  # Slurm's StartTime (whole s) - first submit
    first_running_sq: float | None  # first seen running by squeue - first submit
    sbatch: int
    jobs: int
    tail: float | None  # Slurm's last EndTime - last task done
    tail_sq: float | None  # the driver saw no job left - last task done
    max_at_once: int
    worker_s_sq: float  # the same sum from squeue's 0.5 s samples
    held_no_task: float  # worker-s held while no task was outstanding
    held_between: float  # ... of which between bursts (the rest: after the last task)
    queue_wait: float  # Σ (StartTime - SubmitTime): waiting in Slurm's queue, not allocated
    failed: int
    notes: list[str] = field(default_factory=list)


def no_task_windows(result: DriverResult) -> list[tuple[float, float]]:
    """Periods with no task submitted and unfinished: between bursts, and after the last."""
    events = sorted([(t, 1) for t in result.submitted] + [(t, -1) for t in result.done if t])
    windows, outstanding, since = [], 0, result.t0
    for t, step in events:
        if outstanding == 0 and step > 0 and t > since:
            windows.append((since, t))
        outstanding += step
        if outstanding == 0:
            since = t
    windows.append((since, math.inf))
    return [w for w in windows if w[0] >= result.t0 and w[1] > w[0]]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def max_concurrent(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:  # at a tie the end sorts first: [start, end)
        now += step
        best = max(best, now)
    return best


def metrics(run: SystemRun, work: Workload) -> Metrics:
    result = run.result
    t0 = result.t0
    done = [t for t in result.done if t]
    last = max(done) if done else math.nan
    ran = [j for j in run.jobs if j.start is not None]
    windows = no_task_windows(result)
    held_no_task = sum(overlap((j.start or 0.0, j.end), w) for j in ran for w in windows)
    held_after = sum(overlap((j.start or 0.0, j.end), windows[-1]) for j in ran)
    worker_s = sum(j.held for j in run.jobs)
    sq = run.sampler
    first_sq = min(sq.first_running.values(), default=None)
    return Metrics(
        makespan=last - t0,
        worker_s=worker_s,
        busy=work.busy,
        idle_share=1 - work.busy / worker_s if worker_s else math.nan,
        first_running=min((j.start or 0.0 for j in ran), default=t0 - 1) - t0 if ran else None,
        first_running_sq=first_sq - t0 if first_sq is not None else None,
        sbatch=len({j.array_job for j in run.jobs}),
        jobs=len(run.jobs),
        tail=max(j.end for j in run.jobs) - last if run.jobs else None,
        tail_sq=result.jobs_gone - last if result.jobs_gone else None,
        max_at_once=max_concurrent([(j.start or 0.0, j.end) for j in ran]),
        worker_s_sq=sum(sq.last_holding[j] - sq.first_running[j] for j in sq.first_running),
        held_no_task=held_no_task,
        held_between=held_no_task - held_after,
        queue_wait=sum((j.start or 0.0) - j.submit for j in ran),
        failed=result.failed,
        notes=list(result.notes)
        + ([f"{result.failed} tasks failed"] if result.failed else [])
        + (
            [f"{len(result.done) - len(done)} tasks never finished"]
            if len(done) < work.tasks
            else []
        ),
    )


@dataclass
class HpcscaleBreakdown:
    """Where hpcscale's worker-seconds went, per worker job, summed over the jobs."""

    jobs: int = 0
    startup: float = 0.0  # Slurm StartTime -> worker registered
    launch: float = 0.0  # Slurm StartTime -> job script running (of startup)
    to_first_task: float = 0.0  # registered -> first task claimed
    tasks: float = 0.0  # claimed -> result in, summed over tasks (includes the sleeps)
    nominal: float = 0.0  # the sleeps themselves
    between: float = 0.0  # result in -> next claim, summed
    to_leave: float = 0.0  # last result -> worker ended (empty claim, deregister)
    exit: float = 0.0  # worker ended -> Slurm EndTime
    unattributed: float = 0.0  # jobs with no worker registered, or tasks seen by no one
    reasons: dict[str, int] = field(default_factory=dict)
    tasks_per_job: list[int] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)  # per job
    first_claims: list[float] = field(default_factory=list)  # per burst: submit -> 1st claim

    @property
    def overhead_per_task(self) -> float:
        count = sum(self.tasks_per_job)
        return (self.tasks - self.nominal + self.between) / count if count else math.nan


def hpcscale_breakdown(run: SystemRun, work: Workload) -> HpcscaleBreakdown:
    extra = run.result.extra
    nominal = [d for b in work.bursts for d in b.durations]
    workers = {(str(w["job_id"]), w.get("array_index")): w for w in extra.get("workers", [])}
    tasks_of: dict[str, list[dict[str, Any]]] = {}
    for task in extra.get("tasks", []):
        if task.get("worker") and task.get("started_at") and task.get("ended_at"):
            tasks_of.setdefault(str(task["worker"]), []).append(task)
    scripts = {(str(x["job_id"]), x.get("array_index")): x for x in extra.get("script_starts", [])}
    out = HpcscaleBreakdown()
    for job in run.jobs:
        if job.start is None:
            continue
        out.jobs += 1
        worker = workers.get((str(job.array_job), job.array_index))
        if worker is None:
            out.unattributed += job.held
            continue
        reason = str(worker.get("end_reason"))
        out.reasons[reason] = out.reasons.get(reason, 0) + 1
        registered = float(worker["started_at"])
        ended = float(worker.get("ended_at") or job.end)
        mine = sorted(tasks_of.get(str(worker["id"]), []), key=lambda t: float(t["started_at"]))
        out.tasks_per_job.append(len(mine))
        out.startup += registered - job.start
        out.startups.append(registered - job.start)
        script = scripts.get((str(job.array_job), job.array_index))
        if script is not None:
            out.launch += float(script["at"]) - job.start
        out.exit += job.end - ended
        if not mine:
            out.to_leave += ended - registered
            continue
        out.to_first_task += float(mine[0]["started_at"]) - registered
        out.to_leave += ended - float(mine[-1]["ended_at"])
        for a, b in itertools.pairwise(mine):
            out.between += float(b["started_at"]) - float(a["ended_at"])
        for task in mine:
            out.tasks += float(task["ended_at"]) - float(task["started_at"])
            out.nominal += nominal[int(task["index"])]
    first = 0
    for burst in work.bursts:
        claims = [
            float(t["started_at"])
            for t in extra.get("tasks", [])[first : first + len(burst.durations)]
            if t.get("started_at")
        ]
        if claims:
            out.first_claims.append(min(claims) - (run.result.t0 + burst.at))
        first += len(burst.durations)
    return out


# ---------------------------------------------------------------------------- report


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "?",
    )
    mem_kb = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model}, {mem_kb / 1024 / 1024:.1f} GiB "
        f"RAM, {platform.system()} {platform.release()}"
    )


def git_rev() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "hpcscale", "jobscripts"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.strip()  # fmt: skip
    return (out.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def secs(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f} s"


def whole(low: float | None) -> str:
    """A span measured with Slurm's whole, truncated seconds: [low, low + 1) s."""
    if low is None or math.isnan(low):
        return "-"
    return f"Slurm: {max(0.0, low):.1f}–{max(0.0, low + 1):.1f} s"


def table(runs: dict[str, SystemRun], results: dict[str, Metrics]) -> list[str]:
    lines = [
        "| system | makespan | worker-s allocated | idle share | first submit → first job "
        "running | sbatch calls (jobs) | last task → all jobs gone | max jobs at once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, m in results.items():
        lines.append(
            f"| {LABEL[system]} | {secs(m.makespan, 1)} | {m.worker_s:,.0f} | "
            f"{m.idle_share:.1%} | {secs(m.first_running_sq, 1)} ({whole(m.first_running)}) | "
            f"{m.sbatch} ({m.jobs}) | {secs(m.tail_sq, 1)} ({whole(m.tail)}) | {m.max_at_once} |"
        )
    return lines


def where_it_went(system: str, m: Metrics) -> str:
    during = m.worker_s - m.busy - m.held_no_task
    return (
        f"- **{LABEL[system]}**: {m.worker_s:,.0f} worker-s = {m.busy:,.0f} busy (the sleeps) "
        f"+ {m.held_between:,.0f} held between bursts with no task outstanding "
        f"+ {m.held_no_task - m.held_between:,.0f} held after the last task "
        f"+ {during:,.0f} inside the bursts (job start-up before the first task, per-task "
        f"overhead, ramp-down while the last tasks of a burst run, job exit). "
        f"squeue's 0.5 s samples give {m.worker_s_sq:,.0f} worker-s for the same jobs. "
        f"Slurm queue wait (SubmitTime → StartTime, not allocated): {m.queue_wait:,.0f} s "
        "in all."
    )


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def breakdown_lines(b: HpcscaleBreakdown) -> list[str]:
    count = sum(b.tasks_per_job)
    per_task = b.tasks - b.nominal
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(b.reasons.items()))
    return [
        f"  - per worker job, summed over its {b.jobs} jobs ({count} tasks; workers' end "
        f"reasons: {reasons}): Slurm start → worker registered {b.startup:,.1f} s (Slurm start "
        f"→ job script running {b.launch:,.1f} s; script → registered, i.e. Python, imports, "
        f"register: {b.startup - b.launch:,.1f} s); "
        f"registered → first task claimed {b.to_first_task:,.1f} s; the tasks, claim → result "
        f"in, {b.tasks:,.1f} s of which {b.nominal:,.1f} s the sleeps and {per_task:,.1f} s "
        f"around them (spawn, the worker's 0.2 s poll for the end, result POST); result → next "
        f"claim {b.between:,.1f} s; last result → worker ended (empty claim, deregister) "
        f"{b.to_leave:,.1f} s; worker ended → Slurm end {b.exit:,.1f} s"
        + (f"; jobs without a worker {b.unattributed:,.1f} s" if b.unattributed else "")
        + f". Per task: {b.overhead_per_task:.3f} s of overhead. (Slurm's times are whole "
        "seconds, truncated: start-up reads ~0.5 s long per job and the exit ~0.5 s short.)",
        f"  - start-up per job (Slurm start → registered): mean {mean(b.startups):.1f} s, "
        f"min {min(b.startups, default=math.nan):.1f} s, "
        f"max {max(b.startups, default=math.nan):.1f} s; "
        "from each burst's submit to its first task claimed: "
        + ", ".join(f"{lag:.1f} s" for lag in b.first_claims)
        + ".",
    ]


def verdict(results: dict[str, Metrics], work: Workload) -> str:
    """Issue 15's acceptance, against the peers of the same run."""
    m = results["hpcscale"]
    if work.name != "W":
        return "(a quick run: the target is for W only)"
    parts = []
    if "parsl" in results:
        bound = results["parsl"].makespan * MAKESPAN_SLACK
        parts.append(f"makespan {m.makespan:.2f} s vs ≤ {bound:.2f} s (Parsl's + 1%): "
                     + ("met" if m.makespan <= bound else
                        f"**missed by {m.makespan - bound:.2f} s**"))  # fmt: skip
    if "dask" in results:
        bound = results["dask"].worker_s
        parts.append(f"worker-s {m.worker_s:,.0f} vs ≤ {bound:,.0f} (dask-jobqueue's): "
                     + ("met" if m.worker_s <= bound else
                        f"**missed by {m.worker_s - bound:,.0f}**"))  # fmt: skip
    parts.append(f"at most {m.max_at_once} jobs at once vs ≤ {work.cap}: "
                 + ("met" if m.max_at_once <= work.cap else "**missed**"))  # fmt: skip
    return "; ".join(parts)


def report(
    runs: dict[str, SystemRun],
    results: dict[str, Metrics],
    work: Workload,
    command: str,
    plot: Path | None,
    versions: dict[str, str],
    failures: dict[str, str] | None = None,
) -> str:
    first = work.bursts[0]
    lines = [
        SECTION,
        "",
        f"Workload {work.name}: {len(work.bursts)} bursts of {len(first.durations)} "
        f"tasks at t = {', '.join(f'{b.at:g}' for b in work.bursts)} s, each sleeping "
        f"{min(d for b in work.bursts for d in b.durations):.1f}-"
        f"{max(d for b in work.bursts for d in b.durations):.1f} s (seed {work.seed}: "
        f"{work.busy:,.1f} s of work in all); one worker = "
        f"one 1-CPU Slurm job; at most {work.cap} at once; wall time {work.walltime} for every "
        f"system. The lowest makespan {work.cap} always-ready workers could reach is "
        f"{ideal_makespan(work):.1f} s. The three systems ran one after the other on the same "
        "idle 4-node Slurm lab (scripts/slurm-lab.sh, its own directory), driven by "
        "`bench/peers/run.py`; each installed from PyPI in its own venv.",
        "",
        f"- command: `{command}` (as root; {dt.date.today().isoformat()})",
        f"- machine: {machine()}",
        f"- versions: {versions.get('slurm', '?')}; "
        + "; ".join(f"{k} {v}" for k, v in versions.items() if k != "slurm"),
        "",
        *table(runs, results),
        "",
        "Every job's start and end are Slurm's own records (the lab's jobcomp/filetxt file, "
        "whole seconds): worker-s allocated = Σ (EndTime − StartTime) over the system's jobs; "
        f"idle share = 1 − {work.busy:,.0f} busy s / worker-s allocated; sbatch calls = distinct "
        "submissions (an hpcscale array counts once, its elements are the jobs). Makespan is "
        "first submit → last task done, from the driver's clock (hpcscale: the server's "
        "ended_at of each task; Parsl and dask: each future's done callback). The two "
        "latencies come from `squeue` sampled every 0.5 s (first seen running; the driver "
        "seeing no job of its own left), a finer clock than Slurm's whole seconds, which bound "
        "them in brackets (StartTime and EndTime are truncated to the second).",
    ]
    if "hpcscale" in results:
        lines += ["", f"Target for {LABEL['hpcscale']} (issue 15): {verdict(results, work)}."]
    lines += ["", "Where the worker-seconds went (jobcomp intervals against the task times):", ""]
    for system, m in results.items():
        lines.append(where_it_went(system, m))
        if system == "hpcscale":
            lines += breakdown_lines(hpcscale_breakdown(runs[system], work))
    lines += ["", "Settings:", ""]
    lines += settings_lines(runs)
    notes = [f"{LABEL[s]}: {n}" for s, m in results.items() for n in m.notes]
    notes += [f"{LABEL[s]}: **did not complete**: {why}" for s, why in (failures or {}).items()]
    notes += [
        f"{LABEL[s]}: load average {r.load[0]:.2f} before, {r.load[1]:.2f} after "
        f"({r.seconds:.0f} s in all)"
        for s, r in runs.items()
    ]
    lines += ["", "Notes of this run: " + "; ".join(notes) + "."]
    if plot is not None:
        lines += ["", f"![jobs over time per system]({plot.relative_to(ROOT).as_posix()})"]
    return "\n".join(lines) + "\n"


def settings_lines(runs: dict[str, SystemRun]) -> list[str]:
    lines = []
    if "hpcscale" in runs and LABEL["hpcscale"].endswith("(untuned)"):
        lines.append(
            "- hpcscale (untuned): `hpcscale serve --allow-root` (API + manager, SQLite), one "
            "pool whose config names only the partition, max_workers = 8, cpus_per_task = 1 and "
            "the wall time (plus where its files go and the job-start marker): everything else "
            "is hpcscale's defaults (efficiency 0.9, no target_drain_time, task_duration_prior "
            "300 s until measured, max_empty_claims 1, poll_interval 30 s); tasks `sleep D` "
            "through `Client.submit`, one POST per burst. Config: bench/peers/hpcscale_driver.py "
            "(UNTUNED)."
        )
    elif "hpcscale" in runs:
        lines.append(
            "- hpcscale: `hpcscale serve --allow-root` (API + manager, SQLite), one Slurm pool: "
            "max_workers = max_pending = 8, slots 1, partition debug; task_duration_prior 3.5s "
            "(the mean of uniform(1, 6), replaced by measured durations after the first "
            "results); target_drain_time 30s (a burst is 700 slot-s, so any value below 87 s "
            "asks for the full cap at once); max_empty_claims 1 (a worker leaves at its first "
            "empty claim: restarting costs ~1-3 s of a job, idling through the ~30 s between "
            "bursts costs 30; empty_claim_sleep then never applies); tasks `sleep D` through "
            "`Client.submit`, one POST per burst. Config: bench/peers/hpcscale_driver.py."
        )
    if "parsl" in runs:
        lines.append(
            "- Parsl: HighThroughputExecutor(cores_per_worker=1, max_workers_per_node=1, "
            "address=127.0.0.1) + SlurmProvider(nodes_per_block=1, cores_per_node=1, "
            "exclusive=False, init_blocks=0, min_blocks=0, max_blocks=8, worker_init activating "
            "its venv), the default strategy; one python_app per task sleeping its duration."
        )
    if "dask" in runs:
        lines.append(
            "- dask-jobqueue: SLURMCluster(cores=1, processes=1, memory=1GB, queue=debug, "
            "job_directives_skip=[--mem] since the lab's nodes declare no memory), "
            "adapt(minimum_jobs=0, maximum_jobs=8) with dask's defaults; "
            "client.submit(time.sleep, d, pure=False)."
        )
    return lines


def write_section(text: str) -> None:
    """Replace this section of BENCHMARKS.md (or append it), leaving the others untouched."""
    old = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    start = old.find("\n" + SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        start += 1
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end:] if end >= 0 else "")
    BENCHMARKS.write_text(new)


# ---------------------------------------------------------------------------- plot


def plot(
    runs: dict[str, SystemRun], results: dict[str, Metrics], work: Workload, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.6 * len(runs) + 0.6), sharex=True,
                             squeeze=False)  # fmt: skip
    horizon = 0.0
    for ax, (system, run) in zip(axes[:, 0], runs.items(), strict=True):
        t0 = run.result.t0
        edges = sorted({t for j in run.jobs if j.start for t in (j.start - t0, j.end - t0)})
        grid = [0.0, *edges]
        counts = [sum(1 for j in run.jobs if j.start and j.start - t0 <= t < j.end - t0)
                  for t in grid]  # fmt: skip
        ax.step(grid, counts, where="post", color="tab:blue", label="jobs running (jobcomp)")
        sampled = run.sampler.samples
        ax.plot([s[0] - t0 for s in sampled], [s[1] + s[2] for s in sampled], color="tab:orange",
                lw=0.8, ls="--", label="jobs pending + running (squeue)")  # fmt: skip
        events = sorted([(t - t0, 1) for t in run.result.submitted]
                        + [(t - t0, -1) for t in run.result.done if t])  # fmt: skip
        xs, ys, level = [0.0], [0], 0
        for t, step in events:
            level += step
            xs.append(t)
            ys.append(level)
        twin = ax.twinx()
        twin.step(xs, ys, where="post", color="tab:gray", lw=0.8, alpha=0.7)
        twin.set_ylabel("tasks outstanding", color="tab:gray")
        twin.set_ylim(0, max(ys) * 1.1 + 1)
        ax.axhline(work.cap, color="tab:red", lw=0.6, ls=":")
        ax.set_ylim(0, work.cap + 1.5)
        ax.set_ylabel("jobs")
        m = results[system]
        ax.set_title(
            f"{LABEL[system]}: makespan {m.makespan:.0f} s, {m.worker_s:,.0f} worker-s "
            f"allocated ({m.idle_share:.0%} idle), {m.sbatch} sbatch calls",
            fontsize=10, loc="left",
        )  # fmt: skip
        horizon = max(horizon, max(edges, default=0.0), xs[-1])
        if ax is axes[0, 0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlim(-5, horizon + 5)
    axes[-1, 0].set_xlabel("seconds since the first submit")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset "
                        "of hpcscale,parsl,dask (default: all three)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="bursts of 20 tasks at 0/30/60 s")
    parser.add_argument("--workload", choices=("W", "trickle", "long"), default="W",
                        help="W (default), or one of issue 15's others (common.py)")  # fmt: skip
    parser.add_argument("--write", action="store_true", help="the table into BENCHMARKS.md")
    parser.add_argument("--lab", type=Path, default=LAB, help=f"the lab's directory ({LAB})")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--work", type=Path, default=WORK,
                        help="venvs and run directories (default /tmp/hpcscale-peers)")  # fmt: skip
    parser.add_argument("--parsl", default="parsl", help="pip spec (default: parsl)")
    parser.add_argument("--dask", default="dask-jobqueue", help="pip spec (dask-jobqueue)")
    parser.add_argument("--hpcscale-config", choices=("untuned", "tuned"), default="untuned",
                        help="hpcscale's pool: a new admin's (default) or tuned")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="per wait inside a driver (tasks, jobs gone), s")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ["HPCSCALE_PEERS_CONFIG"] = args.hpcscale_config  # read by hpcscale_driver
    LABEL["hpcscale"] = f"hpcscale ({args.hpcscale_config})"
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    for name in chosen:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r} (choose from {', '.join(SYSTEMS)})")
    if os.geteuid() != 0:
        parser.error("the Slurm lab needs root")
    command = "python bench/peers/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    work = workload(quick=args.quick) if args.workload == "W" else other_workload(args.workload)
    run_dir = args.work / f"run-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    work_file = run_dir / "workload.json"
    work_file.write_text(work.to_json())
    print(f"run dir {run_dir}; {work.tasks} tasks, {work.busy:.1f} busy s, ideal makespan "
          f"{ideal_makespan(work):.1f} s", flush=True)  # fmt: skip
    pythons = {"hpcscale": Path(sys.executable)}
    versions: dict[str, str] = {}
    for name in chosen:
        if name in PACKAGES:
            spec = args.parsl if name == "parsl" else args.dask
            pythons[name] = ensure_venv(args.work / f"{name}-venv", spec)
    runs: dict[str, SystemRun] = {}
    failures: dict[str, str] = {}
    try:
        conf = lab_up(args.lab)
        for key, want in (("MinJobAge", "300"), ("JobCompType", "jobcomp/filetxt")):
            if slurm_setting(conf, key) != want:
                raise RuntimeError(f"{conf}: {key} is not {want}")
        jobcomp = Path(slurm_setting(conf, "JobCompLoc") or args.lab / "log" / "jobcomp.txt")
        versions["slurm"] = slurm_version()
        for name in chosen:
            rev = git_rev() if name == "hpcscale" else ""  # the tree under test, as it starts
            try:  # one system failing (its own finally has cleaned up) does not stop the others
                runs[name] = run_system(
                    name, pythons[name], work_file, run_dir, jobcomp, args.timeout
                )
            except Exception as exc:  # reported in the notes under the table
                print(f"    {LABEL[name]} failed: {exc!r}", flush=True)
                failures[name] = repr(exc)[:500]
                continue
            versions.update(runs[name].result.versions)
            if rev:
                versions["hpcscale"] += f" (git {rev})"
            m = metrics(runs[name], work)
            print(f"    makespan {m.makespan:.1f} s, {m.worker_s:,.0f} worker-s, "
                  f"{m.sbatch} sbatch, {m.jobs} jobs", flush=True)  # fmt: skip
    finally:
        if not args.keep_lab:
            lab_down(args.lab)
    if not runs:
        print(f"no system ran: {failures}")
        return 1
    results = {name: metrics(run, work) for name, run in runs.items()}
    picture = HERE / (
        "side-by-side-quick.png" if args.quick else
        "side-by-side.png" if work.name == "W" else f"side-by-side-{work.name}.png"
    )  # fmt: skip
    plot(runs, results, work, picture)
    text = report(runs, results, work, command.strip(), picture, versions, failures)
    (run_dir / "report.md").write_text(text)
    (run_dir / "metrics.json").write_text(
        json.dumps({k: vars(v) for k, v in results.items()}, indent=1, default=str)
    )
    print()
    print(text)
    if args.write:
        write_section(text)
        print(f"written to {BENCHMARKS}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
