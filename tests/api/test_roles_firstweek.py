"""Operations on a real `hpcscale server` process (issue 16): a read-only role for monitoring
that reads /metrics and the read endpoints and changes nothing; pool controls for admins only
(a manager token still runs its cycle's calls); every configured pool and queue has its
series from the first scrape, zeros on a fresh install."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcscale.client import Client
from hpcscale.errors import AuthError
from hpcscale.models import Control, ObserveRequest, PoolUpdate, Role, TaskSpec
from tests.services import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("roles")
    proc = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db",
        pools=[{"name": "cpu", "queue": "alpha"}, {"name": "gpu", "queue": "beta"}],
    )  # fmt: skip
    proc.start()
    yield proc
    proc.stop()


def token(server: ServerProcess, role: Role) -> str:
    """A token made as an admin makes one: `hpcscale token create --role ROLE`."""
    out = server.root / f"{role.value}.token"
    if not out.exists():
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
        subprocess.run(
            [sys.executable, "-m", "hpcscale", "token", "create", "--role", role.value,
             "--output", str(out), "--config", str(server.config_path)],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
    return out.read_text().strip()


def as_role(server: ServerProcess, role: Role) -> Client:
    return Client(server.url, token(server, role), retry_for=2.0)


def test_every_configured_pool_and_queue_has_zero_series(server: ServerProcess) -> None:
    with as_role(server, Role.READER) as reader:
        text = reader.metrics()
    for pool in ("cpu", "gpu"):
        assert f'hpcscale_workers{{pool="{pool}"}} 0.0' in text
    for queue in ("alpha", "beta"):
        assert f'hpcscale_tasks{{queue="{queue}",state="waiting"}} 0.0' in text


def test_the_reader_reads_how_the_service_does_and_changes_nothing(server: ServerProcess) -> None:
    """The monitoring token (Prometheus', a dashboard's) reads counts, pools, workers and hosts;
    never what users run (a task's argv, env, output; the event log quoting them)."""
    with server.admin() as admin:
        task = admin.submit([TaskSpec(command=["true"], queue="alpha")]).ids[0]
    with as_role(server, Role.READER) as reader:
        assert reader.count_tasks(queue="alpha") == 1
        assert [b.queue for b in reader.backlog() if b.count] == ["alpha"]
        reader.pools(), reader.list_workers(), reader.hosts()
        refused: dict[str, Callable[[], object]] = {
            "show a task": lambda: reader.get_task(task),
            "list tasks": lambda: reader.list_tasks(queue="alpha"),
            "events": lambda: reader.events(),
            "submit": lambda: reader.submit([TaskSpec(command=["true"], queue="alpha")]),
            "cancel": lambda: reader.cancel([task]),
            "retry": lambda: reader.retry([task]),
            "pause": lambda: reader.update_pool("cpu", PoolUpdate(control=Control.PAUSE)),
            "token": lambda: reader.create_token(Role.ADMIN, None, "escalate"),
            "observe": lambda: reader.observe("m", ObserveRequest(pools=[], since=0.0)),
        }
        for what, call in refused.items():
            with pytest.raises(AuthError) as caught:
                call()
            assert caught.value.status == 403, what


def test_pool_controls_are_for_admins_only(server: ServerProcess) -> None:
    with as_role(server, Role.MANAGER) as manager:
        manager.metrics(), manager.pools()  # what its cycle and status read still work
        with pytest.raises(AuthError) as caught:
            manager.update_pool("cpu", PoolUpdate(max_workers=1))
        assert caught.value.status == 403
    with server.admin() as admin:
        assert admin.update_pool("cpu", PoolUpdate(max_workers=1)).max_workers_override == 1
        admin.update_pool("cpu", PoolUpdate(max_workers=None))


def test_token_create_offers_the_reader_role(server: ServerProcess) -> None:
    assert token(server, Role.READER)
    assert (Path(server.root) / "reader.token").stat().st_mode & 0o077 == 0


def test_status_and_why_work_with_a_reader_token(server: ServerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    env["HPCSCALE_TOKEN"] = token(server, Role.READER)
    for argv in (["status"], ["why", "cpu"], ["hosts"]):
        done = subprocess.run(
            [sys.executable, "-m", "hpcscale", *argv, "--config", str(server.config_path)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (argv, done.stderr)
