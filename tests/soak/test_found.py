"""What the chaos soak found, pinned down as small tests that need no Slurm (both statestores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcscale.models import TaskSpec, WorkerRegistration
from hpcscale.statestore import Store


def test_tasks_requeued_for_a_lost_job_are_logged_with_their_ids(store: Store) -> None:
    """worker_gone logged `worker.lost` and the tasks' `task.requeued`/`task.dead` in one
    executemany whose first row had no task_id: the column was dropped from every row, so the
    event log could not say which tasks went back (the soak's event-log check caught it)."""
    worker = store.register_worker(WorkerRegistration(pool="p", slots=2)).id
    ids, _ = store.submit(
        [TaskSpec(command=["true"], max_attempts=2), TaskSpec(command=["true"], max_attempts=1)]
    )
    assert {t.id for t in store.claim(worker, ["default"], 2, 2)} == set(ids)
    assert store.worker_gone(worker, "its job ended") == sorted(ids)
    logged = {(e.kind, e.task_id) for e in store.events(limit=100) if e.worker_id == worker}
    assert ("task.requeued", ids[0]) in logged
    assert ("task.dead", ids[1]) in logged
    assert ("worker.lost", None) in logged


PARENT = """
import sys, time
from hpcscale import proc
child = proc.spawn(["sleep", "60"], die_with_parent=sys.argv[1] == "1")
print(child.pid, flush=True)
time.sleep(60)
"""


def _orphan_after_kill_9(die_with_parent: bool) -> bool:
    """Start a parent that spawns `sleep 60`, kill -9 the parent: is the sleep still alive?"""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, "1" if die_with_parent else "0"], stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_task_does_not_outlive_its_worker_killed_with_9() -> None:
    """A worker SIGKILLed (a poison task, the OOM killer) left its tasks running, in sessions
    of their own; where Slurm tracks a job's processes by ancestry (proctrack/linuxproc, the
    lab's) nothing killed them, so a task requeued for the lost job ran twice at once."""
    assert _orphan_after_kill_9(die_with_parent=False)  # what a local element must do
    assert not _orphan_after_kill_9(die_with_parent=True)  # what a task does now
