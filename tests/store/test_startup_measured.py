"""A worker's paid start-up (issue 15): the job's age it sends at registration becomes the store's
`job_started_at`, the manager's measure of the pool's start-up, and an older worker that sends
none still registers and reads its reply. Schema 5 adds the column to a database of schema 4."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import sqlalchemy as sa

from hpcscale.manager.feed import Mirror
from hpcscale.manager.loop import HISTORY_WINDOW
from hpcscale.manager.observation import Measured
from hpcscale.models import Role, Worker, WorkerRegistration
from hpcscale.statestore import Store, schema
from hpcscale.statestore.schema import meta
from tests.conftest import FakeClock, LiveServer
from tests.store.test_worker_feed import POOL, back_to_schema_4, observe


def test_the_job_age_at_registration_is_the_start_up_the_manager_measures(
    store: Store, clock: FakeClock
) -> None:
    registered_at = clock()
    first = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"], job_age=2.5))
    assert first.job_started_at == pytest.approx(registered_at - 2.5)
    clock.advance(10)
    second = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"], job_age=3.5))
    old = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"]))  # sends none
    assert old.job_started_at is None
    mirror = Mirror(window=HISTORY_WINDOW)
    observe(store, mirror)  # the manager's copy, through the change feed
    workers = mirror.workers_of(POOL)
    assert {w.id: w.job_started_at for w in workers} == {
        first.id: first.job_started_at,
        second.id: second.job_started_at,
        old.id: None,
    }
    assert Measured.startup_of(workers) == pytest.approx(3.0)  # the mean of 2.5 and 3.5
    assert Measured.startup_of([w for w in workers if w.id == old.id]) is None  # prior stands


def test_an_older_worker_registers_and_reads_its_reply(live_server: LiveServer) -> None:
    """A worker of the release before sends no job_age, and its Worker model forbids unknown
    keys: the reply leaves job_started_at out unless it is known."""
    headers = {"Authorization": f"Bearer {live_server.tokens[Role.WORKER]}"}
    url = live_server.url + "/v1/workers"
    old = httpx.post(url, json={"pool": POOL, "queues": ["default"]}, headers=headers)
    assert old.status_code == 201, old.text
    assert "job_started_at" not in old.json()
    Worker.model_validate(old.json())
    new = httpx.post(url, json={"pool": POOL, "job_age": 4.0}, headers=headers)
    assert new.status_code == 201, new.text
    assert new.json()["job_started_at"] == pytest.approx(new.json()["started_at"] - 4.0)


def test_upgrade_from_schema_4_adds_the_job_start(make_store: Callable[..., Store]) -> None:
    store = make_store()
    before = store.register_worker(WorkerRegistration(pool=POOL, queues=["a"])).id
    back_to_schema_4(store)
    store.close()

    upgraded = make_store()
    with upgraded.engine.connect() as conn:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert version.scalar() == str(schema.SCHEMA_VERSION)
    assert upgraded.get_worker(before).job_started_at is None
    after = upgraded.register_worker(WorkerRegistration(pool=POOL, queues=["a"], job_age=1.5))
    assert after.job_started_at == pytest.approx(after.started_at - 1.5)
    mirror = Mirror(window=HISTORY_WINDOW)
    observe(upgraded, mirror)
    assert Measured.startup_of(mirror.workers_of(POOL)) == pytest.approx(1.5)
