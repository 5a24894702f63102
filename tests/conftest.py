"""Shared test settings.

With HPCSCALE_NO_SKIP=1 (set by scripts/test.sh in CI and on the project's machines) a skipped
test fails instead: every part the suite needs is brought up there, so a skip means a hole. The
rewrite happens where the test runs, so it holds in xdist's workers too (scripts/test.sh -n).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcscale.config import Settings, from_mapping
from hpcscale.models import Role
from hpcscale.statestore import Store, open_store

# The lab fixtures (accounting_slurm, soak_labs) and the hook that groups the accounting lab's
# tests for xdist, for every test module.
pytest_plugins = ["tests.slurm_fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and os.environ.get("HPCSCALE_NO_SKIP") == "1"
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but HPCSCALE_NO_SKIP=1 forbids skips: {report.longrepr}"


# ---------------------------------------------------------------------- statestores


PG_URL = os.environ.get("HPCSCALE_TEST_PG_URL")


class FakeClock:
    """A clock the test moves by hand, so lease expiry needs no sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def _pg_cluster_lock(exclusive: bool) -> Iterator[None]:
    """A lock on the PostgreSQL lab, per URL, in the temp dir: tests marked `pg_exclusive` take it
    alone, every other test on the lab shares it. Under xdist other workers' transactions hold
    back the cluster-wide snapshot xmin, which some tests must see undisturbed (the worker
    feed's "nothing comes again", for one)."""
    key = hashlib.sha256((PG_URL or "").encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"hpcscale-pg-tests-{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pg_database(exclusive: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not PG_URL:
        pytest.skip("PostgreSQL not available: run scripts/pg-lab.sh up (HPCSCALE_TEST_PG_URL)")
    with _pg_cluster_lock(exclusive):
        yield from _pg_fresh_database(PG_URL)


def _pg_fresh_database(url: str) -> Iterator[str]:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    admin_url = url.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for each backend; every statestore test runs on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
    else:
        alone = request.node.get_closest_marker("pg_exclusive") is not None
        yield from _pg_database(exclusive=alone)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[..., Store]]:
    made: list[Store] = []

    def make(**kwargs: object) -> Store:
        store = open_store(store_url, **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store], clock: FakeClock) -> Store:
    return make_store(lease_ttl=60.0, clock=clock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    store: Store
    settings: Settings
    tokens: dict[Role, str]


@contextlib.contextmanager
def threaded_server(database: str, **server: object) -> Iterator[LiveServer]:
    """The real API on a loopback port (uvicorn in a thread), with a token of every role;
    `server`: more [server] keys."""
    import uvicorn

    from hpcscale.server.app import create_app

    port = free_port()
    address = {"url": f"http://127.0.0.1:{port}", "bind": f"127.0.0.1:{port}"}
    settings = from_mapping({"server": {**address, "database": database, **server}})
    store = open_store(database, lease_ttl=settings.server.lease_ttl)
    tokens = {role: store.create_token(role, None, f"test {role.value}") for role in Role}
    app = create_app(store, settings)
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(settings.server.url, store, settings, tokens)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)
        store.close()


@pytest.fixture
def live_server(store_url: str) -> Iterator[LiveServer]:
    """The real API over each backend, leases of 2 s reaped every 0.5 s."""
    with threaded_server(store_url, lease_ttl="2s", reaper_interval="0.5s") as server:
        yield server
