"""`hpcscale serve` against the real Slurm lab: the hard max, restarts, faults, controls.

squeue is sampled from a thread all through each test: the hard max (invariant 3) is checked
at every sample, not only at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.models import SubmissionState, TaskSpec, TaskState
from tests.services import ServerProcess
from tests.slurm_fixtures import fake_command, require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm


class Sampler:
    """Counts the pool's live elements in squeue every `every` seconds."""

    def __init__(self, manager: str, every: float = 0.5) -> None:
        self.name = f"hpcscale.{manager}.cpu"
        self.every = every
        self.samples: list[int] = []
        self.job_ids: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            out = subprocess.run(
                ["squeue", "-h", "-r", "--name", self.name, "-o", "%i %T"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout.split()  # fmt: skip
            ids = out[0::2]
            self.samples.append(len(ids))
            self.job_ids.update(i.split("_")[0] for i in ids)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("m"), command="serve", poll_interval="1s")  # fmt: skip
    yield proc
    proc.stop()
    subprocess.run(["scancel", "--name", f"hpcscale.{proc.manager}.cpu"], check=False)


def start(serve: ServerProcess, **pool: object) -> None:
    serve.pools = [{"name": "cpu", "max_workers": 3, "max_pending": 3, "prior": "1s",
                    "max_empty_claims": 2, "empty_claim_sleep": "1s", **pool}]  # fmt: skip
    serve.write_config()
    serve.start()


def submit(serve: ServerProcess, n: int, command: list[str]) -> list[int]:
    with serve.admin() as admin:
        return admin.submit([TaskSpec(command=command)] * n).ids


def all_succeeded(serve: ServerProcess, ids: list[int]) -> bool:
    with serve.admin() as admin:
        done = admin.list_tasks(state="succeeded", limit=10_000)
    return {t.id for t in done} >= set(ids)


def pool_jobs(manager: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "--name", f"hpcscale.{manager}.cpu", "-o", "%i"],
                         capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    return out.stdout.split()


def test_serve_drains_forty_tasks_within_the_max(serve: ServerProcess) -> None:
    start(serve)
    with Sampler(serve.manager) as sampler:
        ids = submit(serve, 40, ["sleep", "1"])
        wait_for("all 40 tasks to succeed", lambda: all_succeeded(serve, ids), timeout=180)
        wait_for("the pool to return to 0 jobs", lambda: not pool_jobs(serve.manager), 60)
    assert max(sampler.samples) <= 3, sampler.samples
    assert max(sampler.samples) == 3  # and it did scale to the max
    with serve.admin() as admin:
        why = admin.decisions("cpu", 50)
    assert any(d.data.get("submit") for d in why) and all(d.data.get("reasons") for d in why)


def test_kill_9_and_restart_submits_nothing_twice(serve: ServerProcess) -> None:
    start(serve)
    with Sampler(serve.manager) as sampler:
        ids = submit(serve, 30, ["sleep", "2"])
        wait_for("workers running", lambda: len(pool_jobs(serve.manager)) == 3, timeout=60)
        serve.stop(signal.SIGKILL)
        time.sleep(3)
        serve.start()
        wait_for("all tasks to succeed", lambda: all_succeeded(serve, ids), timeout=240)
        wait_for("the pool to return to 0 jobs", lambda: not pool_jobs(serve.manager), 60)
    assert max(sampler.samples) <= 3, sampler.samples
    with serve.admin() as admin:
        subs = admin.submissions(manager=serve.manager)
    recorded = {j for s in subs for j in s.job_ids}
    assert sampler.job_ids <= recorded  # every job Slurm ran was a recorded submission
    assert len(recorded) == sum(len(s.job_ids) for s in subs)  # and none was recorded twice


# The manager's pre-flight (`sbatch --test-only`, issue 8) goes to the real sbatch: the fakes
# below model faults of real submissions only.
TEST_ONLY = 'for a in "$@"; do [ "$a" = --test-only ] && exec {real} "$@"; done\n'


def test_sbatch_that_times_out_after_submitting_never_breaks_the_max(
    serve: ServerProcess, tmp_path: Path
) -> None:
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True)
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "calls"
    fake_command(
        bin_dir,
        "sbatch",
        f"""{TEST_ONLY.format(real=real.stdout.strip())}echo call >> {calls}
{real.stdout.strip()} "$@" >/dev/null || exit 1
echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
exit 1
""",
    )
    serve.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    start(serve, max_pending=3, max_tasks=1)  # one task per worker: many sbatch calls
    with Sampler(serve.manager, every=0.25) as sampler:
        ids = submit(serve, 21, ["sleep", "0.5"])  # 21 workers: at least 7 arrays of 3
        with serve.admin() as admin:
            wait_for("40 manager cycles", lambda: len(admin.decisions("cpu", 50)) >= 40, 120)
        wait_for("all tasks to succeed", lambda: all_succeeded(serve, ids), timeout=180)
    assert max(sampler.samples) <= 3, sampler.samples
    with serve.admin() as admin:
        subs = admin.submissions(manager=serve.manager)
    assert all(len(s.job_ids) == 1 for s in subs if s.state != SubmissionState.FAILED)
    assert len(calls.read_text().splitlines()) == len(subs) >= 7  # each timed out, none redone
    assert len(sampler.job_ids) == len({j for s in subs for j in s.job_ids})


def test_breaker_opens_on_failed_starts_probes_and_closes(
    serve: ServerProcess, tmp_path: Path
) -> None:
    """A fake sbatch submits a script that dies at once; removing the fault closes the breaker."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True)
    broken = tmp_path / "broken"
    broken.touch()
    bin_dir = tmp_path / "bin"
    fake_command(
        bin_dir,
        "sbatch",
        f"""{TEST_ONLY.format(real=real.stdout.strip())}if [ -e {broken} ]; then
  cat >/dev/null
  printf '#!/bin/bash\\nexit 1\\n' | exec {real.stdout.strip()} "$@"
fi
exec {real.stdout.strip()} "$@"
""",
    )
    serve.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    serve.extra_manager = 'breaker_failures = 3\nbreaker_cooldown = "8s"\nstart_grace = "20s"'
    start(serve, max_workers=2, max_pending=2)
    ids = submit(serve, 6, ["sleep", "1"])
    with serve.admin() as admin:

        def degraded() -> bool:
            last = admin.decisions("cpu", 1)
            return bool(last) and last[-1].data.get("state") == "degraded"

        wait_for("the breaker to open", degraded, 90)
        assert len(admin.events(kind_prefix="pool.failed_start", limit=100)) >= 3
        broken.unlink()
        wait_for("all tasks to succeed after the probe", lambda: all_succeeded(serve, ids), 120)
        states = [d.data.get("state") for d in admin.decisions("cpu", 200)]
    assert "degraded" in states and states[-1] != "degraded"
    reasons = " ".join(r for d in admin_decisions(serve) for r in d)
    assert "breaker open" in reasons and "probing" in reasons


def admin_decisions(serve: ServerProcess) -> list[list[str]]:
    with serve.admin() as admin:
        records = admin.decisions("cpu", 200)
    reasons = [d.data.get("reasons") for d in records]
    return [[str(r) for r in rs] for rs in reasons if isinstance(rs, list)]


def hpcscale(serve: ServerProcess, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hpcscale", *args, "--config",
                          str(serve.config_path)], capture_output=True, text=True,
                         timeout=30, check=True)  # fmt: skip
    return out.stdout


def test_pause_set_max_and_drain_act_within_a_cycle(serve: ServerProcess) -> None:
    start(serve, max_workers=4, max_pending=4)
    hpcscale(serve, "pause", "cpu")
    time.sleep(2.5)  # > one cycle
    ids = submit(serve, 20, ["sleep", "5"])
    time.sleep(2.5)
    assert pool_jobs(serve.manager) == []
    assert "paused" in hpcscale(serve, "why", "cpu", "--limit", "1")
    hpcscale(serve, "set-max", "cpu", "2")
    hpcscale(serve, "resume", "cpu")
    with Sampler(serve.manager, every=0.25) as sampler:
        wait_for("two workers", lambda: len(pool_jobs(serve.manager)) == 2, timeout=30)
        time.sleep(3)
        hpcscale(serve, "drain", "cpu")
        wait_for("the drained pool to empty", lambda: not pool_jobs(serve.manager), timeout=60)
    assert max(sampler.samples) <= 2
    why = hpcscale(serve, "why", "cpu", "--limit", "1")
    assert "draining" in why
    with serve.admin() as admin:
        left = [t for t in (admin.get_task(i) for i in ids) if t.state == TaskState.WAITING]
        assert left, "a drain finishes running tasks but claims no more"
        assert all(t.state != TaskState.RUNNING for t in (admin.get_task(i) for i in ids))
