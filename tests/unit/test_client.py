"""hpcscale.client on its own, against httpx.MockTransport: what it sends, what it retries, and
which error of the errors.py tree each refusal becomes. No server, no sockets."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from hpcscale.client import Client
from hpcscale.errors import (
    AuthError,
    ClientError,
    NotFound,
    ServerUnavailable,
    StaleLease,
)
from hpcscale.models import TaskResult, TaskSpec

URL = "http://store.test:8000"
TOKEN = "secret"  # a made-up token for a mock server


class Recorder:
    """A MockTransport handler answering from a script of replies, recording every request."""

    def __init__(self, *replies: httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def client(self, token: str | None = TOKEN, retry_for: float = 5.0) -> Client:
        return Client(URL, token, retry_for=retry_for, transport=httpx.MockTransport(self))


def answer(status: int, body: object = None) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {"error": f"status {status}"})


# ---------------------------------------------------------------------- what it sends


def test_submit_sends_the_tasks_with_token_and_an_idempotency_key() -> None:
    server = Recorder(answer(200, {"ids": [7]}))
    with server.client() as client:
        reply = client.submit([TaskSpec(command=["echo", "hi"], queue="q")])
    assert reply.ids == [7]
    (request,) = server.requests
    assert (request.method, request.url.path) == ("POST", "/v1/tasks")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body["tasks"][0]["command"] == ["echo", "hi"] and body["tasks"][0]["queue"] == "q"
    assert len(body["idempotency_key"]) >= 16


def test_no_token_sends_no_authorization_header() -> None:
    server = Recorder(answer(200, {"status": "ok"}))
    with server.client(token=None) as client:
        client.healthz()
    assert "authorization" not in server.requests[0].headers


def test_listing_leaves_unset_filters_out_of_the_query() -> None:
    server = Recorder(answer(200, []))
    with server.client() as client:
        assert client.list_tasks(queue="gpu", limit=5) == []
    params = dict(server.requests[0].url.params)
    assert params == {"queue": "gpu", "limit": "5", "after": "0"}


# ---------------------------------------------------------------------- what it retries


def test_a_503_is_retried_and_the_retry_keeps_the_idempotency_key() -> None:
    server = Recorder(answer(503), answer(503), answer(200, {"ids": [1]}))
    with server.client() as client:
        assert client.submit([TaskSpec(command=["true"])]).ids == [1]
    keys = {json.loads(r.content)["idempotency_key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1


def test_a_connection_error_is_retried() -> None:
    server = Recorder(httpx.ConnectError("refused"), answer(200, {"cancelled": [3]}))
    with server.client() as client:
        assert client.cancel([3]) == [3]
    assert len(server.requests) == 2


def test_a_server_that_stays_down_is_unavailable_after_the_budget() -> None:
    server = Recorder(answer(503))
    with server.client(retry_for=0.3) as client, pytest.raises(ServerUnavailable) as down:
        client.cancel([1])
    assert down.value.status == 503 and "server error 503" in str(down.value)
    assert len(server.requests) >= 2


def test_an_unreachable_server_is_unavailable() -> None:
    server = Recorder(httpx.ConnectError("connection refused"))
    with server.client(retry_for=0) as client, pytest.raises(ServerUnavailable) as down:
        client.cancel([1])
    assert down.value.status == 0 and "cannot reach http://store.test:8000" in str(down.value)


def test_an_untrusted_certificate_is_not_retried() -> None:
    def untrusted(_request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError("self-signed certificate")
        except ssl.SSLCertVerificationError as exc:
            raise httpx.ConnectError("certificate verify failed") from exc

    client = Client(URL, "t", retry_for=5.0, transport=httpx.MockTransport(untrusted))
    with client, pytest.raises(ClientError) as refused:
        client.cancel([1])
    assert not isinstance(refused.value, ServerUnavailable)
    assert "tls_ca" in str(refused.value)


# ---------------------------------------------------------------------- what refusals become


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthError), (403, AuthError), (404, NotFound), (409, StaleLease), (422, ClientError)],
)
def test_a_refusal_is_its_branch_of_the_tree_and_is_not_retried(
    status: int, kind: type[Exception]
) -> None:
    server = Recorder(answer(status, {"error": "no, because"}))
    with server.client() as client, pytest.raises(kind) as refused:
        client.get_task(9)
    assert isinstance(refused.value, ClientError) and refused.value.status == status
    assert str(refused.value) == f"GET /v1/tasks/9: {status} no, because"
    assert len(server.requests) == 1


def test_a_4xx_is_never_unavailable() -> None:
    server = Recorder(answer(404))
    with server.client() as client, pytest.raises(ClientError) as refused:
        client.get_task(1)
    assert not isinstance(refused.value, ServerUnavailable | AuthError | StaleLease)


def test_results_refused_as_stale_come_back_as_stale_outcomes() -> None:
    server = Recorder(answer(409, {"error": "lease moved on"}))
    results = [TaskResult(task_id=4, fence=2, success=True, exit_code=0)]
    with server.client() as client:
        outcomes = client.results("w1", results)
    assert [(o.task_id, o.outcome) for o in outcomes] == [(4, "stale")]
    body = json.loads(server.requests[0].content)
    assert body["results"][0] == {**body["results"][0], "task_id": 4, "fence": 2}
