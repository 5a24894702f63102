"""Local backend specifics: time limit and signals, process groups, pid reuse, dead supervisors.

The behaviour it shares with Slurm is in test_schedulers_shared.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hpcscale.config import PoolConfig
from hpcscale.errors import PermanentSubmitError, SchedulerError
from hpcscale.schedulers import make_scheduler
from hpcscale.schedulers.base import ElementState, ElementStatus
from hpcscale.schedulers.local.adapter import LocalScheduler
from hpcscale.schedulers.local.records import (
    alive,
    element_path,
    proc_identity,
    read_json,
    write_json,
)
from hpcscale.schedulers.slurm.adapter import SlurmScheduler
from tests.slurm_fixtures import unique, wait_for

S = ElementState


def scheduler(tmp_path: Path, **kwargs: float) -> LocalScheduler:
    options = {"time_limit": 60.0, "signal_margin": 0.0, "kill_wait": 1.0} | kwargs
    return LocalScheduler(
        unique("m"),
        "cpu",
        tmp_path / "state",
        time_limit=options["time_limit"],
        signal_margin=options["signal_margin"],
        kill_wait=options["kill_wait"],
        slots=4,
    )


def ended(sched: LocalScheduler, tag: str) -> list[ElementStatus] | None:
    found = sched.find(tag)
    return found if found and all(e.terminal for e in found) else None


def test_time_limit_usr1_then_term(tmp_path: Path) -> None:
    log = tmp_path / "log"
    sched = scheduler(tmp_path, time_limit=3.0, signal_margin=1.5)
    body = (
        "#!/bin/bash\n"
        f"trap 'echo usr1 $SECONDS >> {log}' USR1\n"
        f"trap 'echo term $SECONDS >> {log}; exit 0' TERM\n"
        "while true; do sleep 0.1; done\n"
    )
    tag = unique("tag")
    started = time.monotonic()
    sched.submit(body, 1, tag)
    final = wait_for("time limit", lambda: ended(sched, tag), timeout=20)
    assert final[0].state is S.TIMEOUT and final[0].reason == "time limit reached"
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["usr1", "term"]
    assert time.monotonic() - started < 10


def test_term_ignored_is_killed_after_kill_wait(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, time_limit=1.0, kill_wait=1.0)
    tag = unique("tag")
    sched.submit("#!/bin/bash\ntrap '' TERM\nwhile true; do sleep 0.1; done\n", 1, tag)
    final = wait_for("kill after the grace", lambda: ended(sched, tag), timeout=20)
    assert final[0].state is S.TIMEOUT and final[0].exit_code == -signal.SIGKILL


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "bg.pid"
    sched = scheduler(tmp_path)
    tag = unique("tag")
    sub = sched.submit(f"#!/bin/bash\nsleep 300 &\necho $! > {pid_file}\nwait\n", 1, tag)
    wait_for("the background child", lambda: pid_file.exists() and pid_file.read_text().strip())
    background = int(pid_file.read_text())
    identity = proc_identity(background)
    assert alive(identity)
    sched.cancel(sub.job_ids)
    final = wait_for("cancel", lambda: ended(sched, tag), timeout=20)
    assert final[0].state is S.CANCELLED
    wait_for("the background child to die", lambda: not alive(identity), timeout=10)


def test_pid_reuse_does_not_pass_for_a_live_element(tmp_path: Path) -> None:
    me = proc_identity(os.getpid())
    assert alive(me)
    assert not alive(f"{os.getpid()}:1")  # same pid, another start time: not ours
    sched = scheduler(tmp_path)
    tag = unique("tag")
    sub = sched.submit("#!/bin/bash\nsleep 300\n", 1, tag)
    wait_for("running", lambda: sched.find(tag)[0].state is S.RUNNING)
    job_dir = tmp_path / "state" / "jobs" / sub.job_ids[0]
    record = read_json(element_path(job_dir, 0))
    assert record is not None
    real_supervisor = record["supervisor"]
    # Pretend the supervisor died and its pid now belongs to someone else (this test process).
    sched.cancel(sub.job_ids)
    wait_for("cancelled", lambda: ended(sched, tag))
    write_json(
        element_path(job_dir, 0), record | {"state": "running", "supervisor": f"{os.getpid()}:1"}
    )
    (job_dir / "0.cancel").unlink()
    element = sched.find(tag)[0]
    assert element.state is S.FAILED and "died" in (element.reason or "")
    assert real_supervisor != f"{os.getpid()}:1"


def test_orphaned_script_counts_as_running_until_cancelled(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    tag = unique("tag")
    sub = sched.submit("#!/bin/bash\nsleep 300\n", 1, tag)
    wait_for("running", lambda: sched.find(tag)[0].state is S.RUNNING)
    job_dir = tmp_path / "state" / "jobs" / sub.job_ids[0]
    record = read_json(element_path(job_dir, 0))
    assert record is not None
    os.kill(int(record["supervisor"].split(":")[0]), signal.SIGKILL)
    child = str(record["child"])
    # The script outlives its supervisor: still running (it holds its slot), cancel ends it.
    element = wait_for(
        "orphan noticed",
        lambda: (lambda e: e if "died" in (e.reason or "") else None)(sched.find(tag)[0]),
    )
    assert element.state is S.RUNNING and alive(child)
    sched.cancel(sub.job_ids)
    wait_for("orphan gone", lambda: not alive(child), timeout=10)
    element = sched.find(tag)[0]
    assert element.state in (S.CANCELLED, S.FAILED) and element.terminal


def test_boot_fail_when_no_supervisor_ever_ran(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    tag = unique("tag")
    sub = sched.submit("#!/bin/bash\ntrue\n", 1, tag)
    wait_for("done", lambda: ended(sched, tag))
    job_dir = tmp_path / "state" / "jobs" / sub.job_ids[0]
    job = read_json(job_dir / "job.json")
    assert job is not None
    write_json(job_dir / "job.json", job | {"created": 0.0, "supervisors": {"0": "1:1"}})
    element_path(job_dir, 0).unlink()
    assert sched.find(tag)[0].state is S.BOOT_FAIL


def test_make_scheduler_picks_the_backend(tmp_path: Path) -> None:
    local = make_scheduler(PoolConfig(name="p", scheduler="local"), "mgr", tmp_path)
    assert isinstance(local, LocalScheduler) and local.root == tmp_path / "local"
    assert local.time_limit == 3600.0 and local.signal_margin == 120.0
    slurm = make_scheduler(
        PoolConfig.model_validate({"name": "p", "slurm": {"array_throttle": 5}}), "mgr", tmp_path
    )
    assert isinstance(slurm, SlurmScheduler) and slurm.throttle == 5
    assert slurm.job_name == "hpcscale.mgr.p"
    with pytest.raises(SchedulerError, match="tag"):
        local.submit("#!/bin/bash\n", 1, "bad tag; rm")
    with pytest.raises(SchedulerError, match="count"):
        local.submit("#!/bin/bash\n", 0, "ok")


def test_test_submit_checks_the_script_and_starts_nothing(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    sched.test_submit("#!/bin/bash\necho ok\n", 3, unique("tag"))
    with pytest.raises(PermanentSubmitError, match="bash -n refused"):
        sched.test_submit("#!/bin/bash\nif then fi (\n", 1, unique("tag"))
    assert sched.status() == []
    assert not (tmp_path / "state" / "jobs").exists()
    assert list((tmp_path / "state" / "preflight").iterdir()) == []
