"""The tasks a worker runs, each as its own process group: start one, kill one past its timeout,
stop several, and turn an ended one into its result. Apart from the loop, which decides when:
here is only how, so a task's process never outlives what the worker meant for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hpcscale import proc
from hpcscale.errors import CommandError
from hpcscale.models import ClaimedTask, TaskResult

log = logging.getLogger("hpcscale.worker")

TAIL_BYTES = 4096
KILL_GRACE = 2.0  # SIGTERM -> SIGKILL for a task's group; well inside Slurm's KillWait
# How a task's process ends when its job is stopped (scancel signals every process of the job).
STOP_SIGNAL_CODES = frozenset(
    {-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGKILL}
)


@dataclass
class Run:
    """One task running as its own process group."""

    task: ClaimedTask
    process: proc.Process | None
    started: float
    out: Path
    err: Path
    files: list[IO[bytes]] = field(default_factory=list)
    killed_for: str | None = None
    start_error: str | None = None


def start(task: ClaimedTask, output_dir: Path, now: float) -> Run:
    """Start the task with its stdout and stderr in files of its own; a task that cannot start
    is a Run with `start_error` (its result says why)."""
    output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = f"task-{task.id}.{task.attempts}"  # one pair of files per attempt
    out, err = output_dir / f"{stem}.out", output_dir / f"{stem}.err"
    env = dict(os.environ)
    env.update(task.env)
    env.update({"HPCSCALE_TASK_ID": str(task.id), "HPCSCALE_TASK_ATTEMPT": str(task.attempts)})
    run = Run(task=task, process=None, started=now, out=out, err=err)
    try:
        run.files = [private_file(out), private_file(err)]
        run.process = proc.spawn(
            task.command, stdout=run.files[0], stderr=run.files[1], env=env, cwd=task.cwd,
            die_with_parent=True,  # a worker killed with -9 takes its runs along
        )  # fmt: skip
        log.info("task %d (attempt %d) started: %s", task.id, task.attempts, task.command)
    except (CommandError, OSError) as exc:
        run.start_error = str(exc)
        log.warning("task %d could not start: %s", task.id, exc)
    return run


def private_file(path: Path) -> IO[bytes]:
    """A task's output file, 0600 whatever the umask: it may hold what the task was given."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def drop_if_empty(run: Run) -> None:
    """No empty files kept per attempt: two a task add up to inode quotas on shared disks."""
    for path in (run.out, run.err):
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def kill_if_overdue(run: Run, now: float) -> None:
    """A run past its task's timeout: SIGTERM its group, SIGKILL after a short grace."""
    timeout = run.task.timeout
    if run.process is None or not timeout or run.killed_for is not None:
        return
    if now - run.started > timeout:
        log.warning("task %d ran past its timeout of %gs: killing", run.task.id, timeout)
        run.killed_for = f"timeout after {timeout:g}s"
        proc.kill_group(run.process.pid, signal.SIGTERM)
        threading.Timer(KILL_GRACE, proc.kill_group, args=(run.process.pid, signal.SIGKILL)).start()


def close(run: Run) -> None:
    """After the run's process ended: its files closed, whatever it left behind killed."""
    for handle in run.files:
        handle.close()
    if run.process is not None:
        proc.kill_group(run.process.pid)
    drop_if_empty(run)


def stop(runs: Sequence[Run], why: str) -> None:
    """Stop the runs' process groups: SIGTERM, then SIGKILL after a short grace."""
    live = [r.process for r in runs if r.process is not None and r.process.poll() is None]
    for process in live:
        proc.kill_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    for process in live:
        proc.wait(process, max(0.0, deadline - time.monotonic()))
        proc.kill_group(process.pid)
        proc.wait(process, 1.0)
    for run in runs:
        for handle in run.files:
            handle.close()
        drop_if_empty(run)
        log.info("task %d stopped: %s", run.task.id, why)


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


def result_of(run: Run) -> TaskResult:
    """What the server is told of an ended run."""
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
