"""One array element of the local scheduler: wait for a slot, run the script, enforce the time
limit, record how it ended.

    python -m hpcscale.schedulers.local.supervisor JOB_DIR INDEX

It runs in its own session (started detached), so it outlives whoever submitted. The script
runs in a process group of its own: SIGUSR1 goes to the script's process alone at
`time_limit - signal_margin` (Slurm's `--signal=B:USR1@margin`), SIGTERM to the whole group at
the limit or on cancel, SIGKILL `kill_wait` later (Slurm's KillWait), and whatever is left of
the group is killed when the script exits (Slurm's proctrack does the same).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from hpcscale import proc
from hpcscale.errors import CommandError
from hpcscale.schedulers.local.records import (
    cancel_mode,
    element_path,
    proc_identity,
    read_json,
    write_json,
)

POLL = 0.05


class Supervisor:
    """One element's whole life, as Slurm's slurmstepd would live it: the only writer of the
    element's record."""

    def __init__(self, job_dir: Path, index: int) -> None:
        job = read_json(job_dir / "job.json")
        if job is None:
            raise SystemExit(f"{job_dir}/job.json is missing or unreadable")
        self.job: dict[str, Any] = job
        self.job_dir = job_dir
        self.index = index
        self.term_requested = False
        self.record: dict[str, Any] = {
            "state": "pending",
            "supervisor": proc_identity(os.getpid()),
            "child": None,
            "started_at": None,
            "ended_at": None,
            "exit_code": None,
            "reason": "waiting for a slot",
        }

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.term_requested = True

    def _save(self, **changes: Any) -> None:
        self.record.update(changes)
        write_json(element_path(self.job_dir, self.index), self.record)

    def _cancelled(self, started: bool) -> bool:
        """A cancel asked for this element: 'pending' cancels only before the script starts."""
        mode = cancel_mode(self.job_dir, self.index)
        if mode is None:
            return self.term_requested  # a bare SIGTERM (e.g. from a shutdown): obey it
        return mode == "all" or not started

    def _acquire_slot(self) -> IO[str] | None:
        """Hold one of the `slots` lock files; None when cancelled while waiting. The lock
        goes with the process, so a killed supervisor never leaks a slot."""
        slots_dir = Path(self.job["slots_dir"])
        slots_dir.mkdir(parents=True, exist_ok=True)
        while True:
            for slot in range(int(self.job["slots"])):
                handle = (slots_dir / f"{slot}.lock").open("a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()
                    continue
                return handle
            if self._cancelled(started=False):
                return None
            time.sleep(POLL * 4)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._save()
        if self._cancelled(started=False):
            self._save(state="cancelled", ended_at=time.time(), reason="cancelled while pending")
            return 0
        slot = self._acquire_slot()
        if slot is None or self._cancelled(started=False):
            self._save(state="cancelled", ended_at=time.time(), reason="cancelled while pending")
            return 0
        with slot:
            return self._run_script()

    def _script_env(self) -> dict[str, str]:
        """The job's allow-listed environment plus the variables Slurm gives an element."""
        env = dict(self.job["env"])
        element_id = f"{self.job['job_id']}_{self.index}"
        env.update(
            {
                "SLURM_ARRAY_TASK_ID": str(self.index),
                "SLURM_ARRAY_TASK_COUNT": str(self.job["count"]),
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": str(int(self.job["count"]) - 1),
                "SLURM_ARRAY_JOB_ID": str(self.job["job_id"]),
                "SLURM_JOB_ID": element_id,
                "SLURM_JOB_NAME": str(self.job["name"]),
                "HPCSCALE_LOCAL_JOB_ID": element_id,
            }
        )
        return env

    def _run_script(self) -> int:
        out_path = self.job_dir / f"{self.index}.out"
        with out_path.open("ab") as out:
            try:
                child = proc.spawn(
                    ["/bin/bash", str(self.job_dir / "script.sh")],
                    stdout=out,
                    stderr=proc.STDOUT,
                    env=self._script_env(),
                    cwd=self.job.get("cwd") or None,
                )
            except CommandError as exc:
                self._save(state="failed", ended_at=time.time(), reason=f"cannot start: {exc}")
                return 1
        started = time.time()
        self._save(state="running", child=proc_identity(child.pid), started_at=started, reason="")
        why = self._watch(child, time.monotonic())
        proc.kill_group(child.pid)  # leftovers of the group
        code = child.returncode
        state, reason = final_state(why, code)
        self._save(state=state, ended_at=time.time(), exit_code=code, reason=reason)
        return 0

    def _watch(self, child: proc.Process, start: float) -> str:
        """Signal the script as Slurm would until it exits; why it was stopped, or ''."""
        limit = float(self.job["time_limit"])
        margin = float(self.job["signal_margin"])
        kill_wait = float(self.job["kill_wait"])
        usr1_at = start + max(0.0, limit - margin) if margin > 0 else None
        why = ""
        term_at: float | None = None
        while child.poll() is None:
            now = time.monotonic()
            if term_at is None and self._cancelled(started=True):
                why, term_at = "cancelled", now
                proc.kill_group(child.pid, signal.SIGTERM)
            if usr1_at is not None and now >= usr1_at:
                usr1_at = None
                proc.signal_process(child.pid, signal.SIGUSR1)
            if term_at is None and now >= start + limit:
                why, term_at = "timeout", now
                proc.kill_group(child.pid, signal.SIGTERM)
            if term_at is not None and now >= term_at + kill_wait:
                proc.kill_group(child.pid, signal.SIGKILL)
            proc.wait(child, POLL)
        return why


def final_state(why: str, code: int | None) -> tuple[str, str]:
    """The record's final (state, reason) from why the watch stopped the script and its exit
    code: a stop we caused names itself; otherwise the exit code decides."""
    if why == "cancelled":
        return "cancelled", "cancelled"
    if why == "timeout":
        return "timeout", "time limit reached"
    if code == 0:
        return "completed", ""
    return (
        "failed",
        f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print(
            "usage: python -m hpcscale.schedulers.local.supervisor JOB_DIR INDEX", file=sys.stderr
        )
        return 2
    return Supervisor(Path(args[0]), int(args[1])).run()


if __name__ == "__main__":
    raise SystemExit(main())
