"""The real API under schemathesis, then under hand-made hostile requests (issue 6).

Everything runs against uvicorn on a loopback port. What a client sends must never reach a 500,
what the server answers must be what /v1/openapi.json says it answers, and every refusal must
name the field at fault.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hpcscale.models import MAX_ARGV_BYTES, Role
from tests.conftest import LiveServer, threaded_server

# Examples per operation, derandomized: a failure found once is found again, and the matrix
# stays within the suite's budget. Admin, allowed everywhere, reaches every route's code; the
# other roles and no token are mostly refused before their input matters, so they get a third.
# HPCSCALE_FUZZ_EXAMPLES=200 digs deeper.
EXAMPLES = int(os.environ.get("HPCSCALE_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
BODY_LIMIT = 4 * 1024 * 1024  # above MAX_ARGV_BYTES, so the argv limit is reachable
HUGE = 2**70  # past any 64-bit column


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One SQLite-backed server for the module: the fuzz is about the HTTP layer, and a server
    per test would cost more than the tests."""
    db = Path(tmp_path_factory.mktemp("fuzz")) / "state.db"
    with threaded_server(f"sqlite:///{db}", max_body_bytes=BODY_LIMIT) as live:
        yield live


# ---------------------------------------------------------------------- schemathesis


def fuzz(
    operation: APIOperation[Any, Any, Any, Any], server: LiveServer, role: Role | None
) -> None:
    """Valid and invalid inputs for one operation; raises the first failing case, shrunk."""
    headers = {"Authorization": f"Bearer {server.tokens[role]}"} if role else {}
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES if role == Role.ADMIN else max(1, EXAMPLES // 3),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(cases)
    def run(case: schemathesis.Case[Any]) -> None:
        if case.path == "/v1/wait":
            query = case.query if isinstance(case.query, dict) else {}
            timeout = query.get("timeout", 30)
            if isinstance(timeout, int | float) and 0 < timeout <= 60:
                case.query = {**query, "timeout": 0}  # a valid long-poll: answer at once
        case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS, timeout=10)

    run()


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    """The document as the server serves it, loaded once: its strategies are built once."""
    return schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")


@pytest.mark.parametrize("role", [*Role, None], ids=lambda r: r.value if r else "anonymous")
def test_every_operation_as_every_role(
    server: LiveServer, api_schema: Any, role: Role | None
) -> None:
    """No 5xx, and status, content type and body as documented, for each role and for none:
    the errors (401, 403, 404, 409, 422) must be in the document as much as the successes."""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"unusable operation: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        try:
            fuzz(operation, server, role)
        except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure
            failures.append(f"{operation.label}:\n{exc}")
    assert operations >= 30, "the OpenAPI document lost operations"
    assert not failures, "\n\n".join(failures)


def test_served_routes_are_the_documented_ones(server: LiveServer) -> None:
    """The per-task routes are plain Starlette routes with FastAPI twins for the document: the
    twins must document exactly what the plain routes serve (path, method, body, errors)."""
    doc = httpx.get(f"{server.url}/v1/openapi.json", timeout=10).json()
    for name in ("claim", "heartbeat", "results"):
        operation = doc["paths"][f"/v1/workers/{{worker_id}}/{name}"]["post"]
        assert set(operation["responses"]) >= {"200", "401", "403", "413", "422"}, name
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.rsplit("/", 1)[1] in doc["components"]["schemas"], name
        (param,) = operation["parameters"]
        assert param["name"] == "worker_id" and param["schema"]["maxLength"] == 64
    assert "HTTPValidationError" not in doc["components"]["schemas"], "FastAPI's 422 is not ours"


# ---------------------------------------------------------------------- hostile requests


def send(
    server: LiveServer, method: str, path: str, body: Any = None, *, raw: Any = None
) -> httpx.Response:
    """One request as admin (who may call everything), the body as JSON or as raw bytes."""
    headers = {"Authorization": f"Bearer {server.tokens[Role.ADMIN]}"}
    if body is not None:
        raw = json.dumps(body)
    if raw is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, server.url + path, content=raw, headers=headers, timeout=30)


def refused(response: httpx.Response, status: int, *names: str) -> None:
    """`status`, an error body in the documented shape, and every one of `names` in it."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    for name in names:
        assert name in error, f"{name!r} not named in {error!r}"


def healthy(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_oversized_body_is_413_before_it_is_read(server: LiveServer) -> None:
    """Declared too large (Content-Length) and streamed too large (chunked, no length)."""
    body = b"x" * (BODY_LIMIT + 1)
    for path in ("/v1/tasks", "/v1/workers/w/results"):
        refused(send(server, "POST", path, raw=body), 413, f"over {BODY_LIMIT} bytes")
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        refused(send(server, "POST", path, raw=chunks), 413, f"over {BODY_LIMIT} bytes")
    healthy(server)


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/workers/w/claim", "/v1/decisions"])
def test_deeply_nested_json_is_refused_and_the_server_lives(server: LiveServer, path: str) -> None:
    """10,000 levels: FastAPI's json.loads (/v1/tasks, /v1/decisions) and pydantic's parser
    (the per-task routes) both give up; either way a 422 that names the body."""
    refused(send(server, "POST", path, raw="[" * 10_000 + "]" * 10_000), 422, "body")
    refused(send(server, "POST", path, raw='{"a":' * 10_000 + "1" + "}" * 10_000), 422, "body")
    healthy(server)


def test_deep_decision_data_cannot_poison_the_listing(server: LiveServer) -> None:
    """Shallow enough to parse, too deep to serialize back (~255 levels): refused when sent,
    or every later GET /v1/decisions of the pool would be a 500."""
    data = json.loads('{"a":' * 300 + "1" + "}" * 300)
    sent = send(server, "POST", "/v1/decisions", {"manager": "m", "pool": "deep", "data": data})
    refused(sent, 422, "data", "32 levels")
    assert send(server, "GET", "/v1/decisions?pool=deep").status_code == 200


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/workers/w/claim"])
def test_invalid_utf8_is_422_naming_the_body(server: LiveServer, path: str) -> None:
    refused(
        send(server, "POST", path, raw=b'{"tasks": ["\xff\xfe"], "queues": ["\xc3"]}'), 422, "body"
    )
    healthy(server)


def submit(command: list[str], **spec: Any) -> dict[str, Any]:
    return {"tasks": [{"command": command, **spec}]}


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (submit(["x"] * 4097), ["tasks.0.command", "4096"]),
        (submit(["x" * 65537]), ["tasks.0.command.0", "65536"]),
        (submit(["x" * 65000] * 17), ["tasks.0.command", str(MAX_ARGV_BYTES)]),
        (submit(["a\x00b"]), ["tasks.0.command.0", "NUL"]),
        (submit(["x"], env={"K\x00": "v"}), ["tasks.0.env", "NUL"]),
    ],
    ids=["argv-items", "argv-string", "argv-total", "argv-nul", "env-nul"],
)
def test_huge_or_unrunnable_argv_is_refused(
    server: LiveServer, body: dict[str, Any], names: list[str]
) -> None:
    """Bounds named in the error; a NUL is refused too: exec cannot pass one, and PostgreSQL
    cannot store one (a 500 there, where SQLite stores it)."""
    refused(send(server, "POST", "/v1/tasks", body), 422, *names)


REGISTRATION = {"pool": "p"}
NUMBERS: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/tasks", submit(["x"], priority=10**30), "tasks.0.priority"),
    ("POST", "/v1/tasks", submit(["x"], priority=-(10**30)), "tasks.0.priority"),
    ("POST", "/v1/tasks", submit(["x"], slots=-1), "tasks.0.slots"),
    ("POST", "/v1/tasks", submit(["x"], slots=10**9), "tasks.0.slots"),
    ("POST", "/v1/tasks", submit(["x"], max_attempts=0), "tasks.0.max_attempts"),
    ("POST", "/v1/tasks", submit(["x"], max_attempts=HUGE), "tasks.0.max_attempts"),
    ("POST", "/v1/tasks", submit(["x"], timeout=-1), "tasks.0.timeout"),
    ("POST", "/v1/tasks", submit(["x"], timeout=1e300), "tasks.0.timeout"),
    ("GET", "/v1/tasks?limit=-1", None, "query.limit"),
    ("GET", f"/v1/tasks?limit={HUGE}", None, "query.limit"),
    ("GET", f"/v1/tasks?after={HUGE}", None, "query.after"),
    ("GET", "/v1/events?limit=0", None, "query.limit"),
    ("GET", f"/v1/events?task={HUGE}", None, "query.task"),
    ("GET", "/v1/submissions?limit=-5", None, "query.limit"),
    ("GET", f"/v1/decisions?pool=p&limit={HUGE}", None, "query.limit"),
    ("GET", f"/v1/wait?since={HUGE}", None, "query.since"),
    ("GET", "/v1/wait?timeout=-1", None, "query.timeout"),
    ("GET", f"/v1/tasks/{HUGE}", None, "path.task_id"),
    ("GET", "/v1/tasks/-3", None, "path.task_id"),
    ("POST", "/v1/tasks/cancel", {"ids": [HUGE]}, "ids.0"),
    ("POST", "/v1/tasks/cancel", {"ids": [-1]}, "ids.0"),
    ("POST", "/v1/workers/w/claim", {"queues": ["q"], "max_tasks": 10**9}, "max_tasks"),
    ("POST", "/v1/workers/w/heartbeat", {"running": [HUGE]}, "running.0"),
    (
        "POST",
        "/v1/workers/w/results",
        {"results": [{"task_id": HUGE, "fence": 0, "success": True}]},
        "results.0.task_id",
    ),
    (
        "POST",
        "/v1/workers/w/results",
        {"results": [{"task_id": 1, "fence": HUGE, "success": True}]},
        "results.0.fence",
    ),
    ("POST", "/v1/workers/w/release", {"leases": [{"task_id": 1, "fence": -1}]}, "leases.0.fence"),
    ("POST", "/v1/workers", {**REGISTRATION, "array_index": HUGE}, "array_index"),
    ("POST", "/v1/workers", {**REGISTRATION, "slots": 0}, "slots"),
    ("POST", "/v1/managers/m/register", {"instance": "i", "pid": HUGE}, "pid"),
    ("POST", "/v1/managers/m/register", {"instance": "i", "pools": {"p": HUGE}}, "pools.p"),
    ("POST", "/v1/pools/p", {"min_workers": -1}, "min_workers"),
    ("POST", "/v1/submissions", {"tag": "t", "manager": "m", "pool": "p", "count": HUGE}, "count"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), NUMBERS, ids=lambda v: str(v)[:40])
def test_out_of_range_numbers_are_422_naming_the_field(
    server: LiveServer, method: str, path: str, body: Any, field: str
) -> None:
    """Negative, zero where it must be positive, or past what the database column holds."""
    refused(send(server, method, path, body), 422, field)


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/decisions", '{"manager": "m", "pool": "p", "ts": NaN}', "ts"),
        ("/v1/workers", '{"pool": "p", "expected_end": Infinity}', "expected_end"),
        ("/v1/decisions", '{"manager": "m", "pool": "p", "ts": 1e400}', "ts"),
    ],
)
def test_nan_and_infinity_are_refused(server: LiveServer, path: str, raw: str, field: str) -> None:
    """Python's json reads them; stored, they come back as null where the schema says number
    (or a NaN breaks a NOT NULL column)."""
    refused(send(server, "POST", path, raw=raw), 422, field)


@pytest.mark.parametrize("action", ["heartbeat", "deregister"])
def test_nul_in_a_worker_id_is_refused(server: LiveServer, action: str) -> None:
    """A plain per-task route and a FastAPI route check the path the same way."""
    refused(send(server, "POST", f"/v1/workers/a%00b/{action}", {}), 422, "worker_id", "NUL")
