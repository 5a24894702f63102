"""What the batch job's environment tells a worker about itself: which job and array element it
is, on which node, and when the job will be killed. Kept apart from the loop so the loop holds
no Slurm variable names, and a worker outside Slurm (a shell, the local scheduler) reads None.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from hpcscale import proc
from hpcscale.errors import CommandError


def job_identity() -> tuple[str | None, int | None]:
    """The job id (the array's, for an array element) and the element's index."""
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    index = env.get("SLURM_ARRAY_TASK_ID")
    return job, int(index) if index and index.isdigit() else None


def host() -> str:
    """The node Slurm runs us on, else this machine's name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def job_age(now: float) -> float | None:
    """Seconds since the job started: from $HPCSCALE_JOB_STARTED, which the job script sets on
    its first line ($EPOCHREALTIME, a decimal comma in some locales), else Slurm's own
    $SLURM_JOB_START_TIME (23.02 and later; whole seconds), else None."""
    for name in ("HPCSCALE_JOB_STARTED", "SLURM_JOB_START_TIME"):
        try:
            started = float(os.environ.get(name, "").replace(",", "."))
        except ValueError:
            continue
        if 0 < started <= now + 1:
            return max(0.0, now - started)
    return None


def expected_end() -> float | None:
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
