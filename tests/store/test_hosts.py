"""A worker host that fails task after task is denied claims for a while, and `status` says so."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcscale.cli import display
from hpcscale.cli.status import status_data
from hpcscale.client import Client
from hpcscale.models import Role, TaskResult, TaskSpec, WorkerRegistration
from hpcscale.statestore import Store
from hpcscale.statestore.hosts import SETTLE, HostRules
from hpcscale.tokens import write_secret
from tests.conftest import FakeClock, LiveServer
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for

RULES = HostRules(limit=3, window=60.0, deny_for=300.0)


def _store(make_store: Callable[..., Store], clock: FakeClock) -> Store:
    return make_store(lease_ttl=10.0, clock=clock, host_rules=RULES)


def _on(store: Store, host: str) -> str:
    return store.register_worker(WorkerRegistration(pool="cpu", host=host)).id


def _run_one(store: Store, worker: str, success: bool) -> int:
    """Claim one task and report it; returns how many were claimed (0 when denied)."""
    claimed = store.claim(worker, ["default"], 1, 1)
    for task in claimed:
        store.results(
            worker,
            [TaskResult(task_id=task.id, fence=task.fence, success=success, exit_code=1 - success)],
        )
    return len(claimed)


def _settle(store: Store, clock: FakeClock) -> list[str]:
    clock.advance(SETTLE + 0.1)
    return store.account_hosts()


def test_failures_in_a_row_deny_the_host_until_its_time_is_up(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    store = _store(make_store, clock)
    store.submit([TaskSpec(command=["x"], max_attempts=20)] * 20)
    bad, good = _on(store, "node-bad"), _on(store, "node-good")
    store.account_hosts()  # the first pass: nothing failed yet
    for _ in range(RULES.limit):
        assert _run_one(store, bad, success=False) == 1
    assert _settle(store, clock) == ["node-bad"]
    assert store.claim(bad, ["default"], 1, 1) == []  # denied, though tasks wait
    assert _run_one(store, good, success=True) == 1  # other hosts are not
    [info] = [h for h in store.list_hosts() if h.host == "node-bad"]
    assert info.denied and info.denials == 1 and info.last_detail == "exit 1"
    assert next(e.detail or "" for e in store.events(kind_prefix="host.denied")).startswith(
        "node-bad"
    )
    clock.advance(RULES.deny_for)
    store.account_hosts()
    assert _run_one(store, bad, success=True) == 1  # forgiven when the time is up


def test_failures_mixed_with_successes_are_the_tasks_fault(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    store = _store(make_store, clock)
    store.submit([TaskSpec(command=["x"], max_attempts=20)] * 20)
    worker = _on(store, "node-a")
    store.account_hosts()
    for success in [False, False, True, False, False, True, False, False]:
        _run_one(store, worker, success)
    assert _settle(store, clock) == []
    assert _run_one(store, worker, success=True) == 1


def test_leases_lost_with_their_worker_count_against_its_host(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    store = _store(make_store, clock)
    store.submit([TaskSpec(command=["x"], max_attempts=20)] * 5)
    store.account_hosts()
    for _ in range(RULES.limit):  # a worker that dies with its task, again and again
        worker = _on(store, "node-flaky")
        assert len(store.claim(worker, ["default"], 1, 1)) == 1
        clock.advance(11)
        assert store.expire() == 1
    assert _settle(store, clock) == ["node-flaky"]
    assert store.claim(_on(store, "node-flaky"), ["default"], 1, 1) == []


def test_streaks_slower_than_the_window_never_deny(
    make_store: Callable[..., Store], clock: FakeClock
) -> None:
    store = _store(make_store, clock)
    store.submit([TaskSpec(command=["x"], max_attempts=20)] * 10)
    worker = _on(store, "node-slow")
    store.account_hosts()
    for _ in range(2 * RULES.limit):
        _run_one(store, worker, success=False)
        clock.advance(RULES.window / 2 + 1)  # fewer than `limit` within any window
        store.account_hosts()
    assert not any(h.denied for h in store.list_hosts())


def test_status_shows_a_denied_host_and_an_admin_can_allow_it(
    live_server: LiveServer, tmp_path: Path
) -> None:
    url, tokens = live_server.url, live_server.tokens
    with Client(url, tokens[Role.WORKER]) as worker, Client(url, tokens[Role.ADMIN]) as admin:
        admin.submit([TaskSpec(command=["x"], max_attempts=20)] * 10)
        wid = worker.register(WorkerRegistration(pool="cpu", host="node-bad")).id
        for _ in range(5):  # the server's default limit
            [task] = worker.claim(wid, ["default"], 1, 1)
            worker.results(wid, [TaskResult(task_id=task.id, fence=task.fence, success=False)])
        deadline = time.monotonic() + 15  # the reaper's next passes, SETTLE seconds later
        while not any(h.denied for h in admin.hosts()) and time.monotonic() < deadline:
            time.sleep(0.2)
        text = display.status_text(status_data(admin))
        assert "HOSTS DENIED CLAIMS" in text and "node-bad" in text
        assert worker.claim(wid, ["default"], 1, 1) == []
        config = tmp_path / "config.toml"
        write_secret(tmp_path / "token", tokens[Role.ADMIN])
        config.write_text(f'[server]\nurl = "{url}"\ntoken_file = "{tmp_path}/token"\n')
        listed = _cli("hosts", "--config", str(config))
        assert "node-bad" in listed and "denied" in listed
        _cli("hosts", "--allow", "node-bad", "--config", str(config))
        assert len(worker.claim(wid, ["default"], 1, 1)) == 1
        assert "HOSTS DENIED" not in display.status_text(status_data(admin))


@pytest.mark.slurm
def test_new_jobs_exclude_a_denied_node(tmp_path: Path) -> None:
    """Slurm would place the replacement workers on the denied node again (the soak saw a pool
    starve that way): the manager's sbatch excludes it."""
    require_slurm()
    serve = ServerProcess(
        root=tmp_path, database=f"sqlite:///{tmp_path}/state.db", command="serve",
        manager=unique("h"), poll_interval="1s",
        pools=[{"name": "cpu", "max_workers": 1, "prior": "1s", "max_empty_claims": 1,
                "empty_claim_sleep": "0.5s"},
               # serve takes tasks only for a queue a pool serves; this one never starts a worker
               {"name": "off", "queue": "elsewhere", "max_workers": 0}],
    )  # fmt: skip
    serve.write_config()
    serve.start()
    try:
        with serve.admin() as admin:
            # n2's worker fails five tasks of a queue no pool serves: n2 is denied.
            token = admin.create_token(Role.WORKER, None, "n2").token
            admin.submit([TaskSpec(command=["x"], queue="elsewhere", max_attempts=9)] * 5)
            with Client(serve.url, token) as n2:
                wid = n2.register(WorkerRegistration(pool="x", queues=["elsewhere"], host="n2")).id
                for _ in range(5):
                    [task] = n2.claim(wid, ["elsewhere"], 1, 1)
                    n2.results(wid, [TaskResult(task_id=task.id, fence=task.fence, success=False)])
            wait_for("n2 denied", lambda: [h for h in admin.hosts() if h.denied], timeout=30)
            [task_id] = admin.submit([TaskSpec(command=["true"])]).ids
            [job] = wait_for("the pool's job", lambda: _jobs(serve.manager), timeout=60)
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True,
                                   text=True, timeout=10, check=True).stdout  # fmt: skip
            assert "ExcNodeList=n2" in shown, shown
            wait_for("the task done", lambda: admin.get_task(task_id).state.value == "succeeded")
            [worker] = admin.list_workers(pool="cpu")
            assert worker.host != "n2"
    finally:
        serve.stop()
        subprocess.run(["scancel", "--name", f"hpcscale.{serve.manager}.cpu"], check=False)


def _cli(*args: str) -> str:
    argv = [sys.executable, "-m", "hpcscale", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _jobs(manager: str) -> list[str]:
    argv = ["squeue", "-h", "-r", "--name", f"hpcscale.{manager}.cpu", "-o", "%i"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.split()
