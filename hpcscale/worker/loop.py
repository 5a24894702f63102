"""The worker: one process per array element that claims tasks under leases, runs them, and
ends itself, since the manager has no handle on it once submitted (invariants 2 and 6).

This is the loop, the I/O around the pure rules of worker/rules.py (when to claim, how much,
when to stop, fed a `WorkerProgress` the loop keeps current): the store through the client, the
tasks as process groups (worker/runs.py), a heartbeat thread, and signals. The ways out are
listed in worker/rules.py; each is recorded with the server as the deregistration reason.
Exit status 0 for all but `unreachable` and a failed registration: Slurm's job state then says
something true.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from hpcscale import proc
from hpcscale.client import Client
from hpcscale.errors import ClientError, HpcscaleError, ServerUnavailable
from hpcscale.models import ClaimedTask, Lease, StopReason, TaskResult, WorkerRegistration
from hpcscale.worker import jobenv, runs
from hpcscale.worker.options import WorkerOptions
from hpcscale.worker.rules import (
    ABANDONING,
    WorkerProgress,
    claim_size,
    deadline_of,
    may_claim,
    must_abandon,
    stop_reason,
)
from hpcscale.worker.runs import Run

log = logging.getLogger("hpcscale.worker")

POLL = 0.2


class WorkerLoop:
    """One worker's life: register, claim and run until a rule says stop, leave."""

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
        self.state = WorkerProgress(now, deadline_of(now, opts.max_time, jobenv.expected_end()))
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
        job, index = jobenv.job_identity()
        registration = WorkerRegistration(
            pool=self.opts.pool,
            queues=list(self.opts.queues),
            host=jobenv.host(),
            slots=self.opts.slots,
            job_id=job,
            array_index=index,
            submission=self.opts.submission,
            expected_end=self.state.deadline,
            job_age=jobenv.job_age(time.time()),
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
                why = reason if reason in ABANDONING else "walltime"
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
                self.state.claiming_stopped = StopReason.WALLTIME
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
        run = runs.start(task, self.output_dir, self.clock())
        if run.process is not None:
            threading.Thread(
                target=self._wake_at_exit, args=(run.process,), name=f"task-{task.id}", daemon=True
            ).start()
        with self.lock:
            self.runs[task.id] = run
        self.state.tasks_started += 1

    def _wake_at_exit(self, process: proc.Process) -> None:
        """Wake the loop the moment a task ends: its slot is claimed again at once instead of
        at the next poll (0.1 s per task on average, measured in bench/peers)."""
        process.wait()
        self.wake.set()

    def _reap(self) -> None:
        """Collect ended runs into results; kill runs past their timeout."""
        now = self.clock()
        with self.lock:
            current = list(self.runs.values())
        finished: list[Run] = []
        for run in current:
            runs.kill_if_overdue(run, now)
            if run.process is None or run.process.poll() is not None:
                finished.append(run)
        for run in finished:
            with self.lock:
                self.runs.pop(run.task.id, None)
            runs.close(run)
            if run.process is not None:
                # A run we killed ourselves (its timeout) failed on its own account: waiting
                # for the job's stop signal would only hold the whole loop, every slot, 1 s.
                ours = run.killed_for is not None and not self.state.signalled
                if not ours and self._killed_with_the_job(run.process.returncode):
                    self.killed_with_job.append(run)
                    continue
            self.pending_results.append(runs.result_of(run))

    def _killed_with_the_job(self, code: int | None) -> bool:
        """Did this run die because our job is being stopped? scancel signals every process
        of the job, the task's too, so the run may end before our own handler has run: a
        task killed by SIGTERM/SIGKILL waits a moment for our signal before it counts as a
        failure. Its task is then released, not failed."""
        if code == 0 or code is None:
            return False
        if self.state.signalled:
            return True
        if code not in runs.STOP_SIGNAL_CODES:
            return False
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self.state.signalled:
            time.sleep(0.05)
        return self.state.signalled

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
        """Stop these runs (if still ours) and forget them."""
        with self.lock:
            stopped = [self.runs.pop(t) for t in task_ids if t in self.runs]
        runs.stop(stopped, why)
        return stopped

    def _release_all(self, reason: str) -> None:
        """Stop every run and hand its task back without using up the attempt."""
        with self.lock:
            ids = list(self.runs)
        stopped = self._kill(ids, reason) + self.killed_with_job
        self.killed_with_job = []
        leases = [Lease(task_id=r.task.id, fence=r.task.fence) for r in stopped]
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
        worker = WorkerLoop(opts, client)
        worker.install_signal_handlers()
        return worker.run()
