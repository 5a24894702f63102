"""The HTTP API on a real uvicorn over loopback, on both statestores."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi.routing import APIRoute

from hpcscale.client import Client
from hpcscale.errors import ClientError
from hpcscale.models import Role, TaskResult, TaskSpec, TaskState, WorkerRegistration
from hpcscale.server.app import create_app
from tests.conftest import LiveServer

A, M, W, S, R = Role.ADMIN, Role.MANAGER, Role.WORKER, Role.SUBMITTER, Role.READER
# Who may call what. Written out by hand so that a dropped check fails a test.
ALLOWED: dict[tuple[str, str], set[Role]] = {
    ("GET", "/metrics"): {A, M, R},
    ("POST", "/v1/tasks"): {A, S},
    ("GET", "/v1/tasks"): {A, S, M},  # what users run: not the monitoring reader's (issue 16)
    ("GET", "/v1/tasks/count"): {A, S, M, R},
    ("GET", "/v1/tasks/{task_id}"): {A, S, M},
    ("POST", "/v1/tasks/cancel"): {A, S},
    ("POST", "/v1/tasks/retry"): {A, S},
    ("GET", "/v1/queues"): {A, S, M, R},
    ("GET", "/v1/queues/{queue}/stats"): {A, W, M, R},
    ("POST", "/v1/workers"): {A, W},
    ("GET", "/v1/workers"): {A, M, R},
    ("GET", "/v1/workers/{worker_id}"): {A, M, R},
    ("POST", "/v1/workers/{worker_id}/claim"): {A, W},
    ("POST", "/v1/workers/{worker_id}/heartbeat"): {A, W},
    ("POST", "/v1/workers/{worker_id}/results"): {A, W},
    ("POST", "/v1/workers/{worker_id}/release"): {A, W},
    ("POST", "/v1/workers/{worker_id}/deregister"): {A, W},
    ("GET", "/v1/events"): {A, S, M},
    ("GET", "/v1/pools"): {A, M, R},
    ("POST", "/v1/pools/{pool}"): {A},  # controls: admins only (issue 16)
    ("GET", "/v1/wait"): {A, M},
    ("POST", "/v1/managers/{name}/register"): {A, M},
    ("POST", "/v1/managers/{name}/observe"): {A, M},
    ("GET", "/v1/managers"): {A, S, M, R},
    ("POST", "/v1/submissions"): {A, M},
    ("POST", "/v1/submissions/{tag}"): {A, M},
    ("GET", "/v1/submissions"): {A, S, M, R},
    ("POST", "/v1/workers/{worker_id}/gone"): {A, M},
    ("GET", "/v1/pools/{pool}/history"): {A, M, R},
    ("POST", "/v1/decisions"): {A, M},
    ("POST", "/v1/decisions/batch"): {A, M},
    ("GET", "/v1/decisions"): {A, S, M, R},
    ("POST", "/v1/events"): {A, M},
    ("POST", "/v1/tokens"): {A},
    ("GET", "/v1/hosts"): {A, S, M, R},
    ("POST", "/v1/hosts/{host}/allow"): {A},
    ("PUT", "/v1/queues/{queue}/cap"): {A, M},  # the global cap (issue 17)
    ("GET", "/v1/caps"): {A, S, M, R},
    ("POST", "/v1/grants"): {A, M},
}
PUBLIC = {("GET", "/healthz")}
DOCS = {"/v1/openapi.json", "/v1/docs", "/v1/docs/oauth2-redirect"}


def client(server: LiveServer, role: Role, **kw: object) -> Client:
    return Client(server.url, server.tokens[role], **kw)  # type: ignore[arg-type]


def api_routes(server: LiveServer) -> list[tuple[str, str]]:
    app = create_app(server.store, server.settings, reaper=False)
    return sorted(
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    )


def call(server: LiveServer, method: str, path: str, token: str | None) -> int:
    filled = {"{task_id}": "1", "{queue}": "default", "{worker_id}": "nobody", "{pool}": "cpu",
              "{name}": "m", "{tag}": "t1", "/v1/wait": "/v1/wait?timeout=0"}  # fmt: skip
    for hole, value in filled.items():
        path = path.replace(hole, value)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, server.url + path, headers=headers, json={}, timeout=10
    ).status_code


def test_every_endpoint_is_guarded(live_server: LiveServer) -> None:
    routes = [r for r in api_routes(live_server) if r[1] not in DOCS]
    assert set(routes) == set(ALLOWED) | PUBLIC, "a new endpoint needs a row in ALLOWED"
    for method, path in ALLOWED:
        assert call(live_server, method, path, None) == 401, (method, path)
        assert call(live_server, method, path, "not-a-token") == 401, (method, path)
        for role in set(Role) - ALLOWED[(method, path)]:
            status = call(live_server, method, path, live_server.tokens[role])
            assert status == 403, (method, path, role)
        for role in ALLOWED[(method, path)]:
            status = call(live_server, method, path, live_server.tokens[role])
            assert status not in (401, 403), (method, path, role)
    assert call(live_server, "GET", "/healthz", None) == 200


def test_worker_token_is_limited_to_its_queues(live_server: LiveServer) -> None:
    token = client(live_server, A).create_token(Role.WORKER, ["gpu"]).token
    with Client(live_server.url, token) as scoped:
        with pytest.raises(ClientError) as wrong:
            scoped.register(WorkerRegistration(pool="p", queues=["default"]))
        assert wrong.value.status == 403 and "default" in str(wrong.value)
        w = scoped.register(WorkerRegistration(pool="p", queues=["gpu"]))
        with pytest.raises(ClientError) as other:
            scoped.claim(w.id, ["default"])
        assert other.value.status == 403
        assert scoped.claim(w.id, ["gpu"]) == []


def test_bad_request_names_the_field(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.tokens[S]}"}
    reply = httpx.post(
        f"{live_server.url}/v1/tasks",
        headers=headers,
        json={"tasks": [{"command": ["x"], "slots": 0}]},
        timeout=10,
    )
    assert reply.status_code == 422
    assert "tasks.0.slots" in reply.json()["error"]
    reply = httpx.post(f"{live_server.url}/v1/tasks", headers=headers, content=b"\xff{", timeout=10)
    assert reply.status_code == 422


def test_oversized_body_is_refused(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.tokens[S]}"}
    big = json.dumps({"tasks": [{"command": ["x" * 60000] * 300}]})
    assert len(big) > live_server.settings.server.max_body_bytes
    reply = httpx.post(f"{live_server.url}/v1/tasks", headers=headers, content=big, timeout=30)
    assert reply.status_code == 413


def test_stale_result_is_refused_with_409(live_server: LiveServer) -> None:
    sub, wrk = client(live_server, S), client(live_server, W)
    (tid,) = sub.submit([TaskSpec(command=["true"])]).ids
    w = wrk.register(WorkerRegistration(pool="p"))
    lease = wrk.claim(w.id, ["default"])[0]
    headers = {"Authorization": f"Bearer {live_server.tokens[W]}"}
    stale = {"results": [{"task_id": tid, "fence": lease.fence + 7, "success": True}]}
    reply = httpx.post(
        f"{live_server.url}/v1/workers/{w.id}/results", headers=headers, json=stale, timeout=10
    )
    assert reply.status_code == 409
    assert sub.get_task(tid).state == TaskState.RUNNING
    good = TaskResult(task_id=tid, fence=lease.fence, success=True, exit_code=0)
    assert wrk.results(w.id, [good])[0].outcome == "succeeded"


def test_silent_worker_loses_its_task_within_the_ttl(live_server: LiveServer) -> None:
    """TTL 2 s, reaper every 0.5 s: the task is back in `waiting` well within 3 s."""
    sub, wrk = client(live_server, S), client(live_server, W)
    (tid,) = sub.submit([TaskSpec(command=["true"])]).ids
    w = wrk.register(WorkerRegistration(pool="p"))
    wrk.claim(w.id, ["default"])
    claimed_at = time.monotonic()
    while sub.get_task(tid).state != TaskState.WAITING:
        assert time.monotonic() - claimed_at < 3.0, "lease not expired within TTL + reaper"
        time.sleep(0.05)
    assert time.monotonic() - claimed_at >= 2.0 - 0.1  # and not before the TTL


def test_sixteen_http_claimers_take_every_task_exactly_once(live_server: LiveServer) -> None:
    sub = client(live_server, S)
    ids: list[int] = []
    for _ in range(4):
        ids += sub.submit([TaskSpec(command=["true"], max_attempts=1)] * 500).ids
    claims: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(n: int) -> None:
        try:
            with client(live_server, W) as wrk:
                w = wrk.register(WorkerRegistration(pool="p"))
                while True:
                    got = wrk.claim(w.id, ["default"], max_tasks=1 + n % 8, free_slots=8)
                    if not got:
                        return
                    with lock:
                        claims.update(t.id for t in got)
                    wrk.results(
                        w.id, [TaskResult(task_id=t.id, fence=t.fence, success=True) for t in got]
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    assert sorted(claims) == sorted(ids) and set(claims.values()) == {1}
    done = sub.list_tasks(state="succeeded", limit=10_000)
    assert len(done) == 2000


def test_metrics_and_health(live_server: LiveServer) -> None:
    client(live_server, S).submit([TaskSpec(command=["true"])])
    text = client(live_server, M).metrics()
    assert 'hpcscale_tasks{queue="default",state="waiting"} 1.0' in text
    assert "hpcscale_http_request_seconds" in text
    assert httpx.get(f"{live_server.url}/healthz", timeout=5).json()["status"] == "ok"


def test_client_retries_while_the_server_is_down() -> None:
    """Connection refused is retried until the budget runs out, then named."""
    from tests.conftest import free_port

    port = free_port()
    started = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{port}", "t", retry_for=1.0) as dead,
        pytest.raises(ClientError, match="cannot reach"),
    ):
        dead.backlog()
    assert 0.9 < time.monotonic() - started < 15
