"""The worker: one process per array element that claims tasks under leases, runs them, and
ends itself, since the manager has no handle on it once submitted (invariants 2 and 6).

The rules of when to claim and when to stop are pure functions (`stop_reason`, `may_claim`)
fed by a `WorkerState` snapshot; `Worker` does the I/O around them: the store through the
client, the tasks as process groups, a heartbeat thread, and signals.

Ways out, each recorded with the server as the deregistration reason:
  max_tasks, max_time, walltime (no time left for another task), idle (max_empty_claims empty
  claims while the pool is above min_workers), drain, exit, signal (SIGTERM/SIGUSR1/SIGINT),
  unreachable (the server could not be reached for unreachable_timeout).
Exit status 0 for all but `unreachable` and a failed registration: Slurm's job state then says
something true.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO

from hpcscale import proc
from hpcscale.client import Client
from hpcscale.errors import ClientError, CommandError, HpcscaleError, ServerUnavailable
from hpcscale.models import ClaimedTask, Control, Lease, TaskResult, WorkerRegistration

log = logging.getLogger("hpcscale.worker")

TAIL_BYTES = 4096
KILL_GRACE = 2.0  # SIGTERM -> SIGKILL for a task's group; well inside Slurm's KillWait
POLL = 0.2
END_GRACE = 10.0  # release running tasks this long before the job's end, before Slurm kills


@dataclass(frozen=True)
class WorkerOptions:
    pool: str
    url: str
    token_file: str
    queues: tuple[str, ...] = ("default",)
    submission: str | None = None
    slots: int = 1
    max_tasks: int = 0
    max_time: float = 0.0
    max_empty_claims: int = 3
    empty_claim_sleep: float = 10.0
    heartbeat_interval: float = 30.0
    claim_margin: float = 30.0
    task_duration_prior: float = 300.0
    unreachable_timeout: float = 600.0
    output_dir: str | None = None
    tls_ca: str | None = None  # a CA file to trust for an https url, instead of the system's


# ----------------------------------------------------------------------------- pure rules


@dataclass
class WorkerState:
    """What the rules look at; the loop keeps it current."""

    started: float
    deadline: float | None  # the earliest of start + max_time and the job's end
    tasks_started: int = 0
    empty_claims: int = 0
    running: int = 0
    control: Control = Control.CONTINUE
    surplus: bool = True
    signalled: bool = False  # SIGTERM/SIGINT: stop now
    walltime_warned: bool = False  # SIGUSR1: Slurm's warning that the wall time is near
    unreachable_since: float | None = None
    claiming_stopped: str | None = None  # why no more claims (the worker leaves when idle)


def stop_reason(state: WorkerState, opts: WorkerOptions, now: float) -> str | None:
    """Why the worker should stop claiming now, or None. Running tasks still finish unless
    the reason is `signal`, `exit` or `unreachable` (see `must_abandon`)."""
    if state.signalled:
        return "signal"
    if state.control == Control.EXIT:
        return "exit"
    if (
        state.unreachable_since is not None
        and now - state.unreachable_since >= opts.unreachable_timeout
    ):
        return "unreachable"
    if state.control == Control.DRAIN:
        return "drain"
    if opts.max_tasks and state.tasks_started >= opts.max_tasks:
        return "max_tasks"
    if opts.max_time and now - state.started >= opts.max_time:
        return "max_time"
    if state.walltime_warned:
        return "walltime"
    if state.claiming_stopped:
        return state.claiming_stopped
    if state.running == 0 and state.empty_claims >= opts.max_empty_claims and state.surplus:
        return "idle"
    return None


def must_abandon(reason: str | None, state: WorkerState, now: float) -> bool:
    """Whether running tasks must be stopped and released now instead of finishing.

    At once for `signal`, `exit`, `unreachable`. Otherwise only when the job's end is
    END_GRACE away (or unknown after Slurm's SIGUSR1): Slurm delivers that warning up to ~30 s
    early, and a task that can still finish should not be thrown away.
    """
    if reason in {"signal", "exit", "unreachable"}:
        return True
    if state.deadline is None:
        return state.walltime_warned
    return now >= state.deadline - END_GRACE


def may_claim(
    state: WorkerState, opts: WorkerOptions, now: float, expected_duration: float
) -> bool:
    """A claim only when the time left covers a task of the expected duration plus a margin."""
    if state.deadline is None:
        return True
    return state.deadline - now >= expected_duration + opts.claim_margin


def claim_size(state: WorkerState, opts: WorkerOptions, free_slots: int) -> int:
    room = free_slots
    if opts.max_tasks:
        room = min(room, opts.max_tasks - state.tasks_started)
    return max(0, room)


def tail(paths: Sequence[Path], limit: int = TAIL_BYTES) -> str:
    """The last bytes of the task's stdout and stderr, for the result."""
    parts = []
    for path in paths:
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            with path.open("rb") as handle:
                handle.seek(max(0, size - limit // len(paths)))
                text = handle.read().decode(errors="replace")
            if text:
                parts.append(text)
    return "".join(parts)[-limit:]


# ----------------------------------------------------------------------------- I/O


@dataclass
class Run:
    """One task running as its own process group."""

    task: ClaimedTask
    process: subprocess.Popen[bytes] | None
    started: float
    out: Path
    err: Path
    files: list[IO[bytes]] = field(default_factory=list)
    killed_for: str | None = None
    start_error: str | None = None


def job_identity() -> tuple[str | None, int | None]:
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    index = env.get("SLURM_ARRAY_TASK_ID")
    return job, int(index) if index and index.isdigit() else None


def expected_end(now: float) -> float | None:
    """The job's end: $SLURM_JOB_END_TIME, else `squeue -j $SLURM_JOB_ID -o %e`, else None."""
    raw = os.environ.get("SLURM_JOB_END_TIME")
    if raw and raw.isdigit():
        return float(raw)
    job = os.environ.get("SLURM_JOB_ID")
    if not job or "_" in job:  # "_" is the local scheduler's id: no squeue to ask
        return None
    try:
        out = proc.run(["squeue", "-h", "-j", job, "-o", "%e"], timeout=10).stdout.strip()
        return datetime.fromisoformat(out.splitlines()[0]).timestamp()
    except (CommandError, ValueError, IndexError):
        return None


class Worker:
    def __init__(
        self,
        opts: WorkerOptions,
        client: Client,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.opts = opts
        self.client = client
        self.clock = clock
        self.worker_id = ""
        self.runs: dict[int, Run] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.output_dir = Path(opts.output_dir or Path.cwd() / "hpcscale-task-output").expanduser()
        now = clock()
        end = expected_end(now)
        limits = [t for t in (now + opts.max_time if opts.max_time else None, end) if t]
        self.state = WorkerState(started=now, deadline=min(limits) if limits else None)
        self._durations: dict[str, tuple[float, float]] = {}  # queue -> (fetched at, seconds)
        self.pending_results: list[TaskResult] = []
        self.killed_with_job: list[Run] = []  # runs the job's own stop signal ended
        self.heartbeat_interval = opts.heartbeat_interval

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Register, work until a reason to stop, deregister. Returns the process exit code."""
        try:
            self._register()
        except HpcscaleError as exc:
            log.error("cannot register with %s: %s", self.opts.url, exc)
            return 1
        self.heartbeat_once()  # learn the pool's control and surplus before the first claim
        heartbeat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        heartbeat.start()
        reason = "error"
        try:
            reason = self._loop()
        finally:
            self.stopping.set()
            self.wake.set()
            self._leave(reason)
        return 1 if reason == "unreachable" else 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            log.info("got SIGUSR1 (wall time near): no more claims; running tasks finish if "
                     "they can before the job ends, else they are released")  # fmt: skip
            self.state.walltime_warned = True
        else:
            log.info("got %s: stopping, releasing running tasks", signal.Signals(signum).name)
            self.state.signalled = True
        self.wake.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self.on_signal)

    def _register(self) -> None:
        job, index = job_identity()
        registration = WorkerRegistration(
            pool=self.opts.pool,
            queues=list(self.opts.queues),
            host=os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            slots=self.opts.slots,
            job_id=job,
            array_index=index,
            submission=self.opts.submission,
            expected_end=self.state.deadline,
        )
        self.worker_id = self.client.register(registration).id
        log.info(
            "registered as %s (pool %s, queues %s, slots %d, job %s)",
            self.worker_id, self.opts.pool, ",".join(self.opts.queues), self.opts.slots,
            f"{job}_{index}" if index is not None else job,
        )  # fmt: skip

    def _leave(self, reason: str) -> None:
        if self.runs:  # only after an error: deregistering below releases their tasks
            self._kill(list(self.runs), "worker stopping")
        self._flush_results(retry_for=min(30.0, self.opts.unreachable_timeout))
        try:
            self.client.deregister(self.worker_id, reason, retry_for=10.0)
        except HpcscaleError as exc:
            log.warning("could not deregister (%s); the lease TTL will requeue its tasks", exc)
        log.info("worker %s ended: %s", self.worker_id, reason)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> str:
        while True:
            self._reap()
            self._flush_results(retry_for=5.0)
            now = self.clock()
            with self.lock:
                self.state.running = len(self.runs)
            reason = stop_reason(self.state, self.opts, now)
            if reason == "idle":
                self.heartbeat_once()  # is the pool still above min_workers right now?
                reason = stop_reason(self.state, self.opts, now)
                if reason is None:
                    self.state.empty_claims = 0
            if (self.runs or self.killed_with_job) and must_abandon(reason, self.state, now):
                why = reason if reason in ("signal", "exit", "unreachable") else "walltime"
                self._release_all(why)
                return why
            if reason is not None:
                if not self.runs:
                    return reason
                self.wake.wait(POLL)
                self.wake.clear()
                continue
            free = self.opts.slots - self._busy_slots()
            want = claim_size(self.state, self.opts, free)
            if want <= 0:
                self.wake.wait(POLL)
                self.wake.clear()
                continue
            if not may_claim(self.state, self.opts, now, self._expected_duration()):
                log.info("not enough time left for another task: stop claiming")
                self.state.claiming_stopped = "walltime"
                continue
            try:
                claimed = self.client.claim(
                    self.worker_id, self.opts.queues, want, free, retry_for=5.0
                )
                self._reached()
            except ServerUnavailable as exc:
                self._unreached(exc)
                self.wake.wait(min(5.0, self.opts.empty_claim_sleep))
                self.wake.clear()
                continue
            if claimed:
                self.state.empty_claims = 0
                for task in claimed:
                    self._start(task)
                continue
            if not self.runs:
                self.state.empty_claims += 1
            log.debug("empty claim %d", self.state.empty_claims)
            if stop_reason(self.state, self.opts, self.clock()) is None:
                self.wake.wait(self.opts.empty_claim_sleep)
                self.wake.clear()

    def _busy_slots(self) -> int:
        with self.lock:
            return sum(r.task.slots for r in self.runs.values())

    def _expected_duration(self) -> float:
        """The longest expected duration among our queues: server statistics, else the prior."""
        longest = 0.0
        for queue in self.opts.queues:
            fetched, seconds = self._durations.get(queue, (-1e18, 0.0))
            if self.clock() - fetched > 60:
                seconds = self.opts.task_duration_prior
                with contextlib.suppress(HpcscaleError):
                    stats = self.client.queue_stats(queue)
                    if stats.p90 is not None:
                        seconds = stats.p90
                self._durations[queue] = (self.clock(), seconds)
            longest = max(longest, seconds)
        return longest

    def _reached(self) -> None:
        self.state.unreachable_since = None

    def _unreached(self, exc: Exception) -> None:
        if self.state.unreachable_since is None:
            self.state.unreachable_since = self.clock()
        log.warning("server unreachable: %s", exc)

    # -- tasks -----------------------------------------------------------------------------

    def _start(self, task: ClaimedTask) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem = f"task-{task.id}.{task.attempts}"  # one pair of files per attempt
        out, err = self.output_dir / f"{stem}.out", self.output_dir / f"{stem}.err"
        env = dict(os.environ)
        env.update(task.env)
        env.update({"HPCSCALE_TASK_ID": str(task.id), "HPCSCALE_TASK_ATTEMPT": str(task.attempts)})
        run = Run(task=task, process=None, started=self.clock(), out=out, err=err)
        try:
            run.files = [out.open("wb"), err.open("wb")]
            run.process = proc.spawn(
                task.command, stdout=run.files[0], stderr=run.files[1], env=env, cwd=task.cwd,
                die_with_parent=True,  # a worker killed with -9 takes its runs along
            )  # fmt: skip
            log.info("task %d (attempt %d) started: %s", task.id, task.attempts, task.command)
            threading.Thread(
                target=self._wake_at_exit, args=(run.process,), name=f"task-{task.id}", daemon=True
            ).start()
        except (CommandError, OSError) as exc:
            run.start_error = str(exc)
            log.warning("task %d could not start: %s", task.id, exc)
        with self.lock:
            self.runs[task.id] = run
        self.state.tasks_started += 1

    def _wake_at_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Wake the loop the moment a task ends: its slot is claimed again at once instead of
        at the next poll (0.1 s per task on average, measured in bench/peers)."""
        process.wait()
        self.wake.set()

    def _reap(self) -> None:
        """Collect ended runs into results; kill runs past their timeout."""
        now = self.clock()
        finished: list[Run] = []
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            if run.process is None:
                finished.append(run)
                continue
            timeout = run.task.timeout
            if timeout and run.killed_for is None and now - run.started > timeout:
                log.warning("task %d ran past its timeout of %gs: killing", run.task.id, timeout)
                run.killed_for = f"timeout after {timeout:g}s"
                proc.kill_group(run.process.pid, signal.SIGTERM)
                threading.Timer(
                    KILL_GRACE, proc.kill_group, args=(run.process.pid, signal.SIGKILL)
                ).start()
            if run.process.poll() is not None:
                finished.append(run)
        for run in finished:
            with self.lock:
                self.runs.pop(run.task.id, None)
            for handle in run.files:
                handle.close()
            if run.process is not None:
                proc.kill_group(run.process.pid)  # whatever the task left behind
                # A run we killed ourselves (its timeout) failed on its own account: waiting
                # for the job's stop signal would only hold the whole loop, every slot, 1 s.
                ours = run.killed_for is not None and not self.state.signalled
                if not ours and self._killed_with_the_job(run.process.returncode):
                    self.killed_with_job.append(run)
                    continue
            self.pending_results.append(self._result(run))

    def _killed_with_the_job(self, code: int | None) -> bool:
        """Did this run die because our job is being stopped? scancel signals every process
        of the job, the task's too, so the run may end before our own handler has run: a
        task killed by SIGTERM/SIGKILL waits a moment for our signal before it counts as a
        failure. Its task is then released, not failed."""
        if code == 0 or code is None:
            return False
        if self.state.signalled:
            return True
        if code not in (
            -signal.SIGTERM,
            -signal.SIGKILL,
            128 + signal.SIGTERM,
            128 + signal.SIGKILL,
        ):
            return False
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self.state.signalled:
            time.sleep(0.05)
        return self.state.signalled

    def _result(self, run: Run) -> TaskResult:
        task = run.task
        if run.start_error is not None or run.process is None:
            return TaskResult(
                task_id=task.id, fence=task.fence, success=False, exit_code=None,
                reason=(run.start_error or "could not start")[:4000], retryable=False,
            )  # fmt: skip
        code = run.process.returncode
        output = tail([run.out, run.err])
        if run.killed_for:
            return TaskResult(
                task_id=task.id, fence=task.fence, success=False, exit_code=None,
                output_tail=output, reason=run.killed_for,
            )  # fmt: skip
        reason = None if code == 0 else (
            f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        )  # fmt: skip
        log.info("task %d ended: %s", task.id, reason or "ok")
        return TaskResult(
            task_id=task.id, fence=task.fence, success=code == 0,
            exit_code=code if -255 <= code <= 255 else None, output_tail=output, reason=reason,
        )  # fmt: skip

    def _flush_results(self, retry_for: float) -> None:
        if not self.pending_results:
            return
        batch, self.pending_results = self.pending_results, []
        try:
            outcomes = self.client.results(self.worker_id, batch, retry_for=retry_for)
            self._reached()
        except ServerUnavailable as exc:
            self.pending_results = batch + self.pending_results
            self._unreached(exc)
            return
        except ClientError as exc:
            log.error("results refused: %s", exc)
            return
        for outcome in outcomes:
            if outcome.outcome == "stale":
                log.warning("result of task %d refused: its lease had moved on", outcome.task_id)

    def _kill(self, task_ids: Sequence[int], why: str) -> list[Run]:
        """Stop the runs' process groups: SIGTERM, then SIGKILL after a short grace."""
        with self.lock:
            runs = [self.runs.pop(t) for t in task_ids if t in self.runs]
        live = [r.process for r in runs if r.process is not None and r.process.poll() is None]
        for process in live:
            proc.kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            proc.kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1.0)
        for run in runs:
            for handle in run.files:
                handle.close()
            log.info("task %d stopped: %s", run.task.id, why)
        return runs

    def _release_all(self, reason: str) -> None:
        """Stop every run and hand its task back without using up the attempt."""
        with self.lock:
            ids = list(self.runs)
        runs = self._kill(ids, reason) + self.killed_with_job
        self.killed_with_job = []
        leases = [Lease(task_id=r.task.id, fence=r.task.fence) for r in runs]
        if not leases:
            return
        try:
            # Cut short by the wall time: the attempt counts, so a task too long for any
            # worker ends `dead` instead of coming back forever. Any other stop does not count.
            released = self.client.release(
                self.worker_id, leases, reason, retry_for=5.0, attempt_used=reason == "walltime"
            )
            log.info("released tasks %s", released)
        except HpcscaleError as exc:
            log.warning("could not release %s (%s); the lease TTL will", leases, exc)

    # -- heartbeat -------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self.stopping.wait(self.heartbeat_interval):
            self.heartbeat_once()

    def heartbeat_once(self) -> None:
        with self.lock:
            running = list(self.runs)
            busy = sum(r.task.slots for r in self.runs.values())
        try:
            reply = self.client.heartbeat(
                self.worker_id, running, busy, retry_for=self.opts.heartbeat_interval
            )
        except ServerUnavailable as exc:
            self._unreached(exc)
            return
        except ClientError as exc:
            log.warning("heartbeat refused: %s", exc)
            return
        self._reached()
        if self.heartbeat_interval > reply.lease_ttl / 3:
            log.warning(
                "heartbeat_interval %gs is too long for the server's lease TTL of %gs; using %gs",
                self.heartbeat_interval, reply.lease_ttl, reply.lease_ttl / 3,
            )  # fmt: skip
            self.heartbeat_interval = reply.lease_ttl / 3
        if reply.control != self.state.control:
            log.info("pool control: %s", reply.control.value)
        self.state.control = reply.control
        self.state.surplus = reply.surplus
        if reply.lost:
            # Our lease on these is gone (cancelled, or requeued while we were silent): another
            # worker may run them now, so ours must stop.
            self._kill(reply.lost, "lease lost")
        self.wake.set()


def run_worker(opts: WorkerOptions, token: str) -> int:
    verify = str(Path(opts.tls_ca).expanduser()) if opts.tls_ca else True
    with Client(opts.url, token, retry_for=opts.unreachable_timeout, verify=verify) as client:
        worker = Worker(opts, client)
        worker.install_signal_handlers()
        return worker.run()
