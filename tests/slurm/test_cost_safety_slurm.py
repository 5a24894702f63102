"""Issue 8 against the real Slurm lab through `hpcscale serve`: the pre-flight check and the
runaway guards (hourly ceiling, crash-loop alarm). The rules themselves are table-tested in
tests/test_policy.py; here the whole loop shows them on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcscale.models import SubmissionState, TaskSpec
from tests.services import ServerProcess
from tests.slurm_fixtures import fake_command, require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("m"), command="serve", poll_interval="1s")  # fmt: skip
    yield proc
    proc.stop()
    for pool in ("cpu", "bad"):
        subprocess.run(["scancel", "--name", f"hpcscale.{proc.manager}.{pool}"], check=False)


def submit(serve: ServerProcess, n: int, command: list[str], queue: str = "default") -> list[int]:
    with serve.admin() as admin:
        return admin.submit([TaskSpec(command=command, queue=queue)] * n).ids


def hpcscale(serve: ServerProcess, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hpcscale", *args, "--config",
                          str(serve.config_path)], capture_output=True, text=True,
                         timeout=30, check=True)  # fmt: skip
    return out.stdout


def reasons_of(data: dict[str, Any]) -> str:
    reasons = data.get("reasons")
    return " | ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""


def elements_in_slurm(manager: str, pool: str) -> int:
    """Every element Slurm knows of for the pool, ended ones included (MinJobAge)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "--name", f"hpcscale.{manager}.{pool}", "-o", "%i"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return len(out.stdout.split())


def test_invalid_partition_is_degraded_at_start_while_the_other_pool_runs(
    serve: ServerProcess,
) -> None:
    serve.pools = [
        {"name": "bad", "queue": "badq", "partition": "no_such_partition", "max_workers": 2},
        {"name": "cpu", "max_workers": 2, "prior": "1s"},
    ]
    serve.write_config()
    serve.start()
    bad = submit(serve, 3, ["true"], queue="badq")
    good = submit(serve, 6, ["sleep", "1"])
    with serve.admin() as admin:

        def all_done() -> bool:
            done = {t.id for t in admin.list_tasks(state="succeeded", limit=1000)}
            return done >= set(good)

        wait_for("the valid pool to run its tasks", all_done, timeout=60)
        last = admin.decisions("bad", 1)[-1].data
        assert last["state"] == "degraded" and last["submit"] == 0
        reasons = reasons_of(last)
        assert "pre-flight failed" in reasons
        assert "invalid partition specified: no_such_partition" in reasons  # Slurm's words
        failed = admin.events(kind_prefix="pool.preflight_failed", limit=10)
        assert [e.detail.split(" ")[0] for e in failed if e.detail] == ["bad"]  # once, at start
        assert admin.submissions(pool="bad") == []
        assert all(t.state.value == "waiting" for t in (admin.get_task(i) for i in bad))
        cpu = admin.decisions("cpu", 50)
        assert all(d.data.get("preflight") == "ok" for d in cpu)
        assert any(d.data.get("submit") for d in cpu)
    assert elements_in_slurm(serve.manager, "bad") == 0
    assert "invalid partition" in hpcscale(serve, "why", "bad", "--limit", "1")
    status = hpcscale(serve, "status")
    bad_row = next(line for line in status.splitlines() if line.startswith("bad "))
    assert "degraded" in bad_row and "failed" in bad_row


def test_job_script_that_exits_at_once_stays_under_the_hourly_ceiling(
    serve: ServerProcess, tmp_path: Path
) -> None:
    """A fake sbatch submits a script that dies at once. The breaker cools down in 1 s, so it
    probes again and again: the hourly ceiling is what stops the churn, and the alarm shows."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True)
    fake_command(
        tmp_path / "bin",
        "sbatch",
        f"""for arg in "$@"; do [ "$arg" = --test-only ] && exec {real.stdout.strip()} "$@"; done
cat >/dev/null
printf '#!/bin/bash\\n#SBATCH --output=/dev/null\\nexit 1\\n' | exec {real.stdout.strip()} "$@"
""",
    )
    serve.env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    serve.extra_manager = 'breaker_failures = 3\nbreaker_cooldown = "1s"\nstart_grace = "20s"'
    ceiling = 6
    serve.pools = [{"name": "cpu", "max_workers": 2, "prior": "1s",
                    "pool_extra": f"max_submit_per_hour = {ceiling}"}]  # fmt: skip
    serve.write_config()
    serve.start()
    submit(serve, 50, ["sleep", "1"])
    with serve.admin() as admin:

        def capped() -> bool:
            last = admin.decisions("cpu", 1)
            return bool(last) and f"max_submit_per_hour (0 of {ceiling} left" in reasons_of(
                last[-1].data
            )

        wait_for("the hourly ceiling to bind", capped, timeout=50)
        wait_for("the alarm", lambda: admin.decisions("cpu", 1)[-1].data.get("alarm"), 20)
        submitted = [s for s in admin.submissions(pool="cpu") if s.state != SubmissionState.FAILED]
        last = admin.decisions("cpu", 1)[-1].data
    assert sum(s.count for s in submitted) == ceiling
    assert elements_in_slurm(serve.manager, "cpu") == ceiling
    assert last["submitted_last_hour"] == ceiling and last["max_submit_per_hour"] == ceiling
    assert "crash loop" in str(last["alarm"])
    assert f"{ceiling}/{ceiling}" in hpcscale(serve, "status") and "crash-loop" in hpcscale(
        serve, "status"
    )
    assert "ALARM crash loop" in hpcscale(serve, "why", "cpu", "--limit", "1")
    # a restart does not reset the count: it comes from the store
    serve.stop()
    serve.start()
    with serve.admin() as admin:
        wait_for("a decision after the restart", lambda: len(admin.decisions("cpu", 500)) > 0)
        before = len(admin.decisions("cpu", 500))
        wait_for("3 cycles", lambda: len(admin.decisions("cpu", 500)) >= before + 3, 20)
        after = [s for s in admin.submissions(pool="cpu") if s.state != SubmissionState.FAILED]
    assert sum(s.count for s in after) == ceiling
    assert elements_in_slurm(serve.manager, "cpu") == ceiling


def test_workers_that_register_and_die_at_once_open_the_breaker(
    serve: ServerProcess, tmp_path: Path
) -> None:
    """Each worker registers, claims a task and is killed 5 s later (a crash loop that
    registration alone would hide): they count as failed starts, the breaker opens and holds,
    the alarm shows."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True)
    fake_command(
        tmp_path / "bin",
        "sbatch",
        f"""sed 's/^exec /exec timeout -s KILL 5 /' | exec {real.stdout.strip()} "$@"\n""",
    )
    serve.env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    serve.extra_manager = 'breaker_failures = 3\nbreaker_cooldown = "120s"\ncrash_seconds = "30s"'
    serve.pools = [{"name": "cpu", "max_workers": 1, "prior": "60s"}]
    serve.write_config()
    serve.start()
    submit(serve, 5, ["sleep", "60"])
    with serve.admin() as admin:

        def breaker_open() -> bool:
            last = admin.decisions("cpu", 1)
            return bool(last) and "breaker open" in reasons_of(last[-1].data)

        wait_for("the breaker to open", breaker_open, timeout=60)
        workers = admin.list_workers(pool="cpu")
        failed = admin.events(kind_prefix="pool.failed_start", limit=100)
        last = admin.decisions("cpu", 1)[-1].data
    assert len(workers) >= 3 and all(w.tasks_done == 0 for w in workers)  # they did register
    assert {e.detail.split(" ")[-1] for e in failed if e.detail} >= {w.id for w in workers[:3]}
    assert last["state"] == "degraded" and last["alarm"]
    assert elements_in_slurm(serve.manager, "cpu") == len(workers)  # nothing after it opened


def slurm_core_seconds(manager: str, pool: str) -> tuple[int, float]:
    """(elements, core-seconds) of the pool's ended elements by Slurm's own start/end times
    (1 cpu each)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "--name", f"hpcscale.{manager}.{pool}",
         "-o", "%T %S %e"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.split("\n")  # fmt: skip
    total, count = 0.0, 0
    for line in out:
        parts = line.split()
        if len(parts) == 3 and "T" in parts[1] and "T" in parts[2]:
            start, end = (datetime.fromisoformat(p) for p in parts[1:])
            total += max(0.0, (end - start).total_seconds())
            count += 1
    return count, total


def test_budget_stops_submitting_shows_exhausted_and_resumes_when_raised(
    serve: ServerProcess,
) -> None:
    """0.015 core-hours (54 core-s) with 20 s jobs: two workers fit, then (once they have
    burned what they did) maybe one more, then nothing; running workers finish their time;
    raising the budget resumes."""
    budget = '[pools.budget]\ncore_hours = {hours}\nwindow = "1h"'
    pool = {"name": "cpu", "max_workers": 2, "prior": "2s", "time": "00:00:20",
            "signal_margin": "5s", "pool_tables": budget.format(hours=0.015)}  # fmt: skip
    serve.pools = [pool]
    serve.write_config()
    serve.start()
    ids = submit(serve, 60, ["sleep", "2"])
    with serve.admin() as admin:

        def exhausted() -> bool:
            """Exhausted with nothing in flight: what is burned leaves no room for a worker."""
            last = admin.decisions("cpu", 1)
            if not last or last[-1].data.get("state") != "budget-exhausted":
                return False
            return last[-1].data.get("in_flight") == 0 and not admin.submissions(
                pool="cpu", open_only=True
            )

        wait_for("the budget to run out", exhausted, timeout=75)
        last = admin.decisions("cpu", 1)[-1].data
        events = admin.events(kind_prefix="pool.budget_exhausted", limit=10)
        waiting = [t for t in (admin.get_task(i) for i in ids) if t.state.value == "waiting"]
        subs = admin.submissions(pool="cpu")
    assert last["state"] == "budget-exhausted" and last["submit"] == 0
    reasons = reasons_of(last)
    assert "capped by the core-hours budget 0.015" in reasons and "per new worker" in reasons
    budgets = last["budget"]
    assert isinstance(budgets, dict)
    numbers = budgets["core"]
    assert numbers["limit_hours"] == pytest.approx(0.015)
    assert numbers["left_hours"] < numbers["per_worker_hours"]
    assert numbers["hours_to_exhaustion"] is None  # nothing runs: it burns nothing more
    assert events and (events[0].detail or "").startswith("cpu ")
    assert waiting, "the budget ran out before the backlog"
    elements = sum(s.count for s in subs)
    seen, slurm_seconds = slurm_core_seconds(serve.manager, "cpu")
    assert seen == elements  # every element has ended; none was cancelled by the budget
    # Slurm's own records agree with the manager's measure within one element
    assert slurm_seconds <= 0.015 * 3600 + 20
    assert abs(slurm_seconds - numbers["burned_hours"] * 3600) <= 20
    status = hpcscale(serve, "status")
    assert "budget-exhausted" in status and "/0.015h" in status
    token = (serve.root / "token").read_text().strip()
    metrics = httpx.get(
        f"{serve.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).text
    assert 'hpcscale_pool_budget_hours{kind="core",pool="cpu",what="left"}' in metrics
    assert 'hpcscale_pool_state{pool="cpu",state="budget-exhausted"} 1.0' in metrics
    # raising the budget resumes submitting
    serve.stop()
    serve.pools = [{**pool, "pool_tables": budget.format(hours=1)}]
    serve.write_config()
    serve.start()
    with serve.admin() as admin:
        wait_for("a new submission", lambda: len(admin.submissions(pool="cpu")) > len(subs), 20)

        def eta() -> object:
            budgets = admin.decisions("cpu", 1)[-1].data.get("budget")
            return isinstance(budgets, dict) and budgets["core"]["hours_to_exhaustion"]

        wait_for("a projected exhaustion while workers run", eta, 20)
    assert "(out in " in hpcscale(serve, "status")
