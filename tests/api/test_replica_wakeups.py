"""Two `hpcscale server` processes on one PostgreSQL, as replicas behind a load balancer
(issue 17): tasks submitted through one wake the managers long-polling the other at once.

Without the wake-up the other replica's long-poll finds the tasks only when it reads the store
again (every 5 s), so an answer under a second can only come from LISTEN/NOTIFY.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.client import Client
from hpcscale.models import Role, TaskSpec, WaitReply
from tests.conftest import _pg_database
from tests.services import ServerProcess

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    for url in _pg_database():
        pair = (ServerProcess(tmp_path / "a", url), ServerProcess(tmp_path / "b", url))
        try:
            for server in pair:
                server.start()
            yield pair
        finally:
            for server in pair:
                server.stop()


def long_poll(client: Client, since: int, replies: list[WaitReply]) -> None:
    replies.append(client.wait_for_work(since, 20.0))


def test_a_submission_through_one_replica_wakes_a_long_poll_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        manager = admin.create_token(Role.MANAGER, None, "manager").token
        submitter = admin.create_token(Role.SUBMITTER, None, "submitter").token
    with Client(b.url, manager) as on_b, Client(a.url, submitter) as on_a:
        since = on_b.wait_for_work(0, 0).seq
        for _ in range(3):  # more than once: the listener keeps listening
            replies: list[WaitReply] = []
            poll = threading.Thread(target=long_poll, args=(on_b, since, replies))
            poll.start()
            time.sleep(0.7)  # the long-poll is waiting on replica B
            sent = time.monotonic()
            on_a.submit([TaskSpec(command=["true"])])
            poll.join(timeout=25)
            woke = time.monotonic() - sent
            assert replies and replies[0].changed, replies
            assert woke < 1.0, f"replica B answered {woke:.2f}s after the submit through A"
            since = replies[0].seq
