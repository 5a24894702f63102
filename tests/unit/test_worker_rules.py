"""The worker's rules (pure) and its task handling against a live server, outside Slurm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcscale.client import Client
from hpcscale.models import Control, Role, StopReason, TaskSpec, TaskState
from hpcscale.tokens import write_secret
from hpcscale.worker.options import WorkerOptions
from hpcscale.worker.rules import (
    WorkerProgress,
    claim_size,
    deadline_of,
    may_claim,
    must_abandon,
    stop_reason,
)
from hpcscale.worker.runs import tail
from tests.conftest import LiveServer
from tests.slurm_fixtures import wait_for

OPTS = WorkerOptions(pool="p", url="http://x", token_file="t", max_tasks=5, max_time=100.0,
                     max_empty_claims=3, claim_margin=10.0, unreachable_timeout=60.0)  # fmt: skip


def state(**kw: Any) -> WorkerProgress:
    return WorkerProgress(started=0.0, deadline=kw.pop("deadline", 200.0), **kw)


@pytest.mark.parametrize(
    ("fields", "now", "reason"),
    [
        ({}, 10.0, None),
        ({"signalled": True}, 10.0, "signal"),
        ({"control": Control.EXIT}, 10.0, "exit"),
        ({"control": Control.DRAIN}, 10.0, "drain"),
        ({"tasks_started": 5}, 10.0, "max_tasks"),
        ({}, 100.0, "max_time"),
        ({"walltime_warned": True}, 10.0, "walltime"),
        ({"unreachable_since": 5.0}, 64.0, None),
        ({"unreachable_since": 5.0}, 65.0, "unreachable"),
        ({"empty_claims": 3}, 10.0, "idle"),
        ({"empty_claims": 3, "surplus": False}, 10.0, None),  # a warm pool keeps its minimum
        ({"empty_claims": 3, "running": 1}, 10.0, None),  # busy is not idle
        ({"empty_claims": 2}, 10.0, None),
    ],
)
def test_stop_reasons(fields: dict[str, object], now: float, reason: str | None) -> None:
    assert stop_reason(state(**fields), OPTS, now) == reason


def test_no_limits_means_no_stop() -> None:
    opts = WorkerOptions(pool="p", url="u", token_file="t")
    assert stop_reason(state(tasks_started=10_000), opts, 10**6) is None


@pytest.mark.parametrize(
    ("reason", "fields", "now", "abandon"),
    [
        (StopReason.SIGNAL, {}, 10.0, True),
        (StopReason.EXIT, {}, 10.0, True),
        (StopReason.DRAIN, {}, 10.0, False),
        (StopReason.WALLTIME, {"walltime_warned": True}, 150.0, False),  # early warning: go on
        (StopReason.WALLTIME, {"walltime_warned": True}, 191.0, True),  # job ends in 10 s: release
        (None, {}, 191.0, True),
        (StopReason.WALLTIME, {"walltime_warned": True, "deadline": None}, 10.0, True),
    ],
)
def test_when_running_tasks_are_given_back(
    reason: StopReason | None, fields: dict[str, object], now: float, abandon: bool
) -> None:
    assert must_abandon(reason, state(**fields), now) is abandon


def test_claims_need_time_for_a_task_plus_margin() -> None:
    assert may_claim(state(deadline=100.0), OPTS, now=40.0, expected_duration=50.0)
    assert not may_claim(state(deadline=100.0), OPTS, now=41.0, expected_duration=50.0)
    assert may_claim(state(deadline=None), OPTS, now=1e9, expected_duration=1e9)


def test_the_deadline_is_the_earlier_of_max_time_and_the_jobs_end() -> None:
    assert deadline_of(100.0, 50.0, 120.0) == 120.0
    assert deadline_of(100.0, 50.0, 200.0) == 150.0
    assert deadline_of(100.0, 0.0, 200.0) == 200.0  # no max_time
    assert deadline_of(100.0, 50.0, None) == 150.0  # no known end
    assert deadline_of(100.0, 0.0, None) is None


def test_claim_size_respects_slots_and_max_tasks() -> None:
    assert claim_size(state(), OPTS, free_slots=8) == 5
    assert claim_size(state(tasks_started=4), OPTS, free_slots=8) == 1
    assert claim_size(state(), OPTS, free_slots=2) == 2
    assert claim_size(state(tasks_started=5), OPTS, free_slots=2) == 0


def test_tail_keeps_the_last_bytes(tmp_path: Path) -> None:
    out, err = tmp_path / "o", tmp_path / "e"
    out.write_text("x" * 10_000 + "END-OUT")
    err.write_text("oops")
    text = tail([out, err], limit=100)
    assert text.endswith("END-OUToops") and len(text) <= 100


# ---------------------------------------------------------------------------- live


def worker_process(server: LiveServer, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    token = tmp_path / "worker.token"
    write_secret(token, server.tokens[Role.WORKER])
    argv = [sys.executable, "-m", "hpcscale", "worker", "--pool", "p", "--url", server.url,
            "--token-file", str(token), "--output-dir", str(tmp_path / "out"),
            "--heartbeat-interval", "0.5s", "--empty-claim-sleep", "0.2s", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen(argv, env=env, stdout=(tmp_path / "worker.log").open("wb"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def test_results_for_exit_codes_timeouts_and_bad_commands(
    live_server: LiveServer, tmp_path: Path
) -> None:
    with server_client(live_server) as admin:
        ok, bad, missing, slow = admin.submit([
            TaskSpec(command=["sh", "-c", "echo hello; echo warn >&2"]),
            TaskSpec(command=["sh", "-c", "echo failing; exit 3"], max_attempts=2),
            TaskSpec(command=["/no/such/program"]),
            TaskSpec(command=["sleep", "30"], timeout=1.0, max_attempts=1),
        ]).ids  # fmt: skip
    worker = worker_process(live_server, tmp_path, "--max-empty-claims", "2", "--slots", "4")
    assert worker.wait(timeout=60) == 0
    with server_client(live_server) as admin:
        done = {t: admin.get_task(t) for t in (ok, bad, missing, slow)}
    assert done[ok].state == TaskState.SUCCEEDED and done[ok].output_tail == "hello\nwarn\n"
    assert (done[bad].state, done[bad].exit_code, done[bad].attempts) == (TaskState.DEAD, 3, 2)
    assert done[missing].state == TaskState.FAILED  # cannot succeed by retrying
    assert "No such file" in (done[missing].reason or "")
    assert done[slow].state == TaskState.DEAD and "timeout after 1s" in (done[slow].reason or "")
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert f"task-{bad}.1.out" in outputs and f"task-{bad}.2.out" in outputs  # one per attempt
    assert f"task-{bad}.1.err" not in outputs  # an empty one is not kept (issue 16)


def test_a_lost_lease_stops_the_run(live_server: LiveServer, tmp_path: Path) -> None:
    """Cancelling a running task: the worker hears it at the next heartbeat and kills it."""
    pidfile = tmp_path / "pid"
    with server_client(live_server) as admin:
        (tid,) = admin.submit(
            [TaskSpec(command=["sh", "-c", f"echo $$ > {pidfile}; sleep 60"])]
        ).ids
    # idle, it stays for the SIGTERM below (it would leave at its first empty claim)
    worker = worker_process(live_server, tmp_path, "--max-empty-claims", "3")
    try:
        wait_for("the task to start", lambda: pidfile.exists() and pidfile.read_text(), 30)
        pid = int(pidfile.read_text())
        with server_client(live_server) as admin:
            admin.cancel([tid])
        wait_for("the task process to be killed", lambda: not _alive(pid), timeout=10)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_sigterm_releases_and_exits_zero_quickly(live_server: LiveServer, tmp_path: Path) -> None:
    with server_client(live_server) as admin:
        (tid,) = admin.submit([TaskSpec(command=["sleep", "60"])]).ids
    worker = worker_process(live_server, tmp_path)
    with server_client(live_server) as admin:
        wait_for("the claim", lambda: admin.get_task(tid).state == TaskState.RUNNING, 30)
        time.sleep(0.5)
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - sent < 5  # well inside Slurm's KillWait
        task = admin.get_task(tid)
        assert (task.state, task.attempts) == (TaskState.WAITING, 0)
        assert [w.end_reason for w in admin.list_workers(pool="p")] == ["signal"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def server_client(server: LiveServer) -> Client:
    return Client(server.url, server.tokens[Role.ADMIN])
