"""The Slurm adapter with the two hot calls (submit, status) through pyslurm's RPCs.

Chosen by `scheduler = "pyslurm"`. Everything else (reconciling by tag, splitting arrays,
classifying errors, vanished elements, scancel, scontrol) is SlurmScheduler's, so both backends
behave the same; cancel stays on scancel because pyslurm cannot cancel one pending element of
an array that has not been split yet.

pyslurm must match the cluster's Slurm release exactly (PyPI's pyslurm refuses to build
against Debian's Slurm 22.05), so this backend is tested only where `import pyslurm` works;
elsewhere constructing it raises SchedulerError("pyslurm is not importable: ...").
Written against pyslurm's object API (>= 23.2: JobSubmitDescription, Jobs, Job).

Pre-flight (`test_submit`): pyslurm's object API has no test-only submission, so the check runs
`sbatch --test-only` (SlurmScheduler's) when sbatch is on PATH; where it is not, it raises
PreflightUnsupported and the manager skips the check, saying so, instead of blocking the pool.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from hpcscale.errors import CommandError, PreflightUnsupported, SchedulerError
from hpcscale.schedulers.base import ElementState, ElementStatus
from hpcscale.schedulers.slurm.adapter import SlurmScheduler, array_spec
from hpcscale.schedulers.slurm.parse import expand_indices
from hpcscale.schedulers.slurm.states import SLURM_STATES


def import_pyslurm() -> Any:
    """pyslurm, or a SchedulerError that says how to get a working one."""
    try:
        import pyslurm  # optional dependency: imported on use
    except Exception as exc:  # ImportError, or a version mismatch raised at import
        raise SchedulerError(
            f"pyslurm is not importable: {exc} (install the pyslurm release that matches "
            'this cluster\'s Slurm, or use scheduler = "slurm")'
        ) from exc
    return pyslurm


class PyslurmScheduler(SlurmScheduler):
    """SlurmScheduler with sbatch and squeue replaced by pyslurm's RPCs."""

    name = "pyslurm"

    def __init__(self, manager: str, pool: str, **kwargs: Any) -> None:
        self._pyslurm = import_pyslurm()
        super().__init__(manager, pool, **kwargs)

    def test_submit(self, script: str, count: int, tag: str) -> None:
        if shutil.which("sbatch") is None:
            raise PreflightUnsupported(
                "pyslurm has no test-only submission and sbatch is not on PATH: "
                "the job script cannot be checked before it is submitted"
            )
        super().test_submit(script, count, tag)

    def _rpc_error(self, what: str, exc: Exception) -> CommandError:
        """pyslurm's RPC errors carry Slurm's own messages: classify them like sbatch's."""
        return CommandError([f"pyslurm.{what}"], 1, "", str(exc))

    def _sbatch(self, script: str, count: int, tag: str) -> str:
        desc = self._pyslurm.JobSubmitDescription(
            script=script,
            name=self.job_name,
            comment=tag,
            array=array_spec(count, self.throttle),
            is_requeueable=True,  # sbatch --requeue, as the command-line backend
        )
        desc.load_sbatch_options()  # the script's #SBATCH lines, as sbatch would read them
        try:
            return str(int(desc.submit()))
        except Exception as exc:
            raise self._rpc_error("submit", exc) from exc

    def _squeue(self) -> list[ElementStatus]:
        jobs_cls = self._pyslurm.Jobs
        try:
            jobs = jobs_cls.load() if hasattr(jobs_cls, "load") else jobs_cls()
        except Exception as exc:
            raise SchedulerError(f"pyslurm could not load jobs: {exc}") from exc
        uid = os.getuid()
        out: list[ElementStatus] = []
        for job in jobs.values():
            name = str(getattr(job, "name", "") or "")
            if getattr(job, "user_id", uid) != uid or not name.startswith(self.prefix):
                continue
            raw = str(getattr(job, "state", "") or "")
            state = SLURM_STATES.get(raw.split()[0] if raw else "", ElementState.UNKNOWN)
            master = str(getattr(job, "array_id", None) or getattr(job, "id", ""))
            task = getattr(job, "array_task_id", None)
            indices = (
                [int(task)]
                if task is not None
                else expand_indices(str(getattr(job, "array_tasks_waiting", "") or ""))
            )
            reason = str(getattr(job, "state_reason", "") or "")
            for index in indices:
                out.append(
                    ElementStatus(
                        master,
                        index,
                        f"{master}_{index}",
                        state,
                        str(getattr(job, "comment", "") or ""),
                        name,
                        None if reason in ("", "None") else reason,
                    )
                )
        return out
