"""The worker inside real Slurm jobs (the lab of scripts/slurm-lab.sh) against a real server.

Each test renders the pool's real job script and submits it with the real Slurm adapter, as the
manager will. Task commands leave their own traces (marker files, start/end stamps) so the
checks do not trust the worker's word.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.jobscript import render
from hpcscale.models import Control, PoolUpdate, TaskSpec, TaskState
from hpcscale.schedulers import ElementState, Scheduler, make_scheduler
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("m"))  # fmt: skip
    yield proc
    proc.stop()
    # A worker whose server is gone keeps its job for --unreachable-timeout (minutes), holding
    # the lab's CPUs from the tests after this one: end this test's jobs now.
    subprocess.run(["scancel", "--name", f"hpcscale.{proc.manager}.cpu"], check=False)


def start(server: ServerProcess, **pool: object) -> None:
    server.pools = [{"name": "cpu", **pool}]
    server.write_config()
    server.start()


def submit_workers(server: ServerProcess, count: int = 1) -> tuple[Scheduler, str]:
    settings = server.settings
    pool = settings.pool("cpu")
    tag = unique("s")
    job = render(pool, settings, tag, count, server.worker_token_file("cpu"))
    scheduler = make_scheduler(pool, settings.manager.name, server.root / "state")
    scheduler.submit(job.script, count, tag)
    return scheduler, tag


def in_queue(scheduler: Scheduler, tag: str) -> list[str]:
    return [e.element_id for e in scheduler.find(tag) if not e.terminal]


def submit(server: ServerProcess, *commands: list[str], **kw: object) -> list[int]:
    with server.admin() as admin:
        specs = [TaskSpec(command=c, **kw) for c in commands]
        return admin.submit(specs).ids


def states(server: ServerProcess, ids: list[int]) -> list[TaskState]:
    with server.admin() as admin:
        return [admin.get_task(i).state for i in ids]


def end_reasons(server: ServerProcess) -> list[str | None]:
    with server.admin() as admin:
        return [w.end_reason for w in admin.list_workers(pool="cpu")]


def test_three_workers_drain_the_backlog_and_leave(server: ServerProcess) -> None:
    start(server, max_empty_claims=2, empty_claim_sleep="2s")
    ids = submit(server, *[["sleep", "1"]] * 30)
    scheduler, tag = submit_workers(server, 3)
    wait_for("all 30 tasks to succeed",
             lambda: set(states(server, ids)) == {TaskState.SUCCEEDED}, timeout=120)  # fmt: skip
    last_result = time.monotonic()
    wait_for("the workers to leave the queue", lambda: not in_queue(scheduler, tag), timeout=30)
    assert time.monotonic() - last_result <= 2 * 2 + 10
    assert end_reasons(server) == ["idle"] * 3
    elements = scheduler.find(tag)
    assert {e.state for e in elements} == {ElementState.COMPLETED}  # exit 0: a normal end


def job_pids(job_id: str) -> list[int]:
    """Every process of a job on this machine (they all carry SLURM_JOB_ID in their
    environment; the lab's nodes are this host)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ:
            found.append(int(entry.name))
    return found


MARKED = "if [ -e {m} ]; then exit 0; fi; touch {m}; sleep 120"


def test_scancel_releases_the_task_at_once(server: ServerProcess, tmp_path: Path) -> None:
    start(server)
    marker = tmp_path / "first-run"
    (tid,) = submit(server, ["sh", "-c", MARKED.format(m=marker)], max_attempts=1)
    scheduler, tag = submit_workers(server)
    wait_for("the task to start", marker.exists, timeout=60)
    scheduler.cancel(in_queue(scheduler, tag))
    cancelled = time.monotonic()
    with server.admin() as admin:
        wait_for("the task back in waiting",
                 lambda: admin.get_task(tid).state == TaskState.WAITING, timeout=10)  # fmt: skip
        assert time.monotonic() - cancelled < 8  # at once, not after the 10 s lease TTL
        assert admin.get_task(tid).attempts == 0  # released: the attempt was not used
        assert "task.released" in [e.kind for e in admin.events(task=tid)]
    submit_workers(server)
    wait_for("the task to complete on another worker",
             lambda: states(server, [tid]) == [TaskState.SUCCEEDED], timeout=60)  # fmt: skip
    assert end_reasons(server)[0] == "signal"


def test_sigkill_of_the_job_loses_the_lease_within_the_ttl(
    server: ServerProcess, tmp_path: Path
) -> None:
    start(server)
    marker = tmp_path / "first-run"
    (tid,) = submit(server, ["sh", "-c", MARKED.format(m=marker)], max_attempts=3)
    scheduler, tag = submit_workers(server)
    wait_for("the task to start", marker.exists, timeout=60)
    # `scancel -s KILL` on Slurm 22.05 still lets the batch shell see SIGTERM first (measured:
    # the worker released its task). SIGKILL of every process of the job, as a node crash or the
    # OOM killer would, leaves the worker no chance at all.
    (element,) = in_queue(scheduler, tag)
    job_id = subprocess.run(["squeue", "-h", "-j", element, "-o", "%A"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    pids = job_pids(job_id)
    assert pids, f"no process of job {job_id} found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with server.admin() as admin:
        wait_for("the task back in waiting",
                 lambda: admin.get_task(tid).state == TaskState.WAITING, timeout=30)  # fmt: skip
        assert time.monotonic() - killed <= 10 + 2  # lease TTL + reaper interval and a margin
        assert admin.get_task(tid).attempts == 1  # the lost run counts as an attempt
    submit_workers(server)
    wait_for("the task to complete",
             lambda: states(server, [tid]) == [TaskState.SUCCEEDED], timeout=60)  # fmt: skip


def test_no_claim_without_time_left_before_the_wall_time(server: ServerProcess) -> None:
    """1-minute wall time, 20 s tasks, 5 s margin: two tasks run, the third is never taken."""
    start(server, time="00:01:00", prior="20s", claim_margin="5s", signal_margin="5s")
    ids = submit(server, *[["sleep", "20"]] * 3)
    scheduler, tag = submit_workers(server)
    wait_for("the worker to end", lambda: end_reasons(server) == ["walltime"], timeout=90)
    assert states(server, ids) == [TaskState.SUCCEEDED] * 2 + [TaskState.WAITING]
    with server.admin() as admin:
        kinds = {e.kind for e in admin.events(limit=1000)}
    assert not kinds & {"task.released", "task.requeued", "task.failed"}
    wait_for("the job to end", lambda: not in_queue(scheduler, tag), timeout=20)
    assert [e.state for e in scheduler.find(tag)] == [ElementState.COMPLETED]  # not TIMEOUT


def test_slots_are_never_oversubscribed(server: ServerProcess, tmp_path: Path) -> None:
    start(server, slots=4)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    commands = []
    for i, slots in enumerate([2, 1, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1]):
        record = f"echo \"$(date +%s.%N) {slots}\" > {stamps}/{i}.start; sleep 1.5; " \
                 f"echo \"$(date +%s.%N)\" > {stamps}/{i}.end"  # fmt: skip
        commands.append((["sh", "-c", record], slots))
    with server.admin() as admin:
        ids = admin.submit([TaskSpec(command=c, slots=s) for c, s in commands]).ids
    submit_workers(server)
    wait_for("all tasks to succeed",
             lambda: set(states(server, ids)) == {TaskState.SUCCEEDED}, timeout=90)  # fmt: skip
    points: list[tuple[float, int]] = []
    for i in range(len(commands)):
        start_at, width = (stamps / f"{i}.start").read_text().split()
        end_at = float((stamps / f"{i}.end").read_text())
        points += [(float(start_at), int(width)), (end_at, -int(width))]
    busy = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts on ties
        busy += delta
        peak = max(peak, busy)
    assert peak == 4  # full use of the slots, and never more


def test_warm_pool_keeps_its_last_worker_until_drained(server: ServerProcess) -> None:
    start(server, min_workers=1, max_empty_claims=1, empty_claim_sleep="1s")
    with server.admin() as admin:
        admin.update_pool("cpu", PoolUpdate(min_workers=1))
    scheduler, tag = submit_workers(server)
    with server.admin() as admin:
        wait_for("the worker to register", lambda: admin.list_workers(pool="cpu", live=True),
                 timeout=60)  # fmt: skip
        time.sleep(6)  # six empty claims: an idle worker of a pool above its minimum would go
        assert len(admin.list_workers(pool="cpu", live=True)) == 1
        assert in_queue(scheduler, tag)
        admin.update_pool("cpu", PoolUpdate(control=Control.DRAIN))
    wait_for("the drained worker to leave", lambda: not in_queue(scheduler, tag), timeout=20)
    assert end_reasons(server) == ["drain"]


def test_results_survive_a_server_outage(server: ServerProcess, tmp_path: Path) -> None:
    start(server, slots=2)
    runs = tmp_path / "runs"
    count_runs = f"echo run >> {runs}.$HPCSCALE_TASK_ID; sleep 8"
    ids = submit(server, ["sh", "-c", count_runs], ["sh", "-c", count_runs])
    submit_workers(server)
    wait_for("both tasks to run", lambda: set(states(server, ids)) == {TaskState.RUNNING},
             timeout=60)  # fmt: skip
    server.stop()
    time.sleep(30)
    server.start()
    wait_for("both results to arrive",
             lambda: set(states(server, ids)) == {TaskState.SUCCEEDED}, timeout=60)  # fmt: skip
    for tid in ids:
        assert Path(f"{runs}.{tid}").read_text() == "run\n"  # ran once, not twice
    with server.admin() as admin:
        claims = [e for e in admin.events(kind_prefix="task.claimed", limit=100)]
    assert len(claims) == 2
