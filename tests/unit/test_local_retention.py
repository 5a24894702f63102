"""The local scheduler's job folders follow a retention rule (issue 16): a folder whose elements
all ended is removed once nothing was written in it for `keep_ended`, as Slurm forgets ended
jobs; a folder with a live element, or a recent one, is kept."""

from __future__ import annotations

from pathlib import Path

from hpcscale.schedulers.local.adapter import KEEP_ENDED, LocalScheduler
from tests.slurm_fixtures import unique, wait_for

SCRIPT = "#!/bin/bash\n{body}\n"


def scheduler(tmp_path: Path, keep_ended: float) -> LocalScheduler:
    return LocalScheduler(
        unique("m"), "cpu", tmp_path / "state", time_limit=60.0, kill_wait=1.0, slots=4,
        keep_ended=keep_ended,
    )  # fmt: skip


def folders(sched: LocalScheduler) -> list[str]:
    """The job folders left after a status() (the manager's every cycle)."""
    sched.status()
    return sorted(p.name for p in (sched.root / "jobs").iterdir())


def test_an_ended_job_folder_is_removed_past_the_retention(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, keep_ended=0.0)
    done = sched.submit(SCRIPT.format(body="exit 0"), 2, unique("s")).job_ids[0]
    running = sched.submit(SCRIPT.format(body="sleep 30"), 1, unique("s")).job_ids[0]
    wait_for("the short job's folder to go", lambda: done not in folders(sched), timeout=30)
    assert folders(sched) == [running]  # a live element keeps its folder whatever its age
    assert [e.job_id for e in sched.status()] == [running]
    sched.cancel([f"{running}_0"])


def test_an_ended_job_folder_is_kept_within_the_retention(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, keep_ended=KEEP_ENDED)
    tag = unique("s")
    job = sched.submit(SCRIPT.format(body="exit 0"), 1, tag).job_ids[0]
    wait_for("the job to end", lambda: all(e.terminal for e in sched.find(tag)), timeout=30)
    assert folders(sched) == [job]
