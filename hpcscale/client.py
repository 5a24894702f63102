"""The typed HTTP client: the only way the CLI, the manager and workers reach the statestore.

Connection errors and 5xx answers are retried with jittered exponential backoff for up to
`retry_for` seconds; 4xx answers are the caller's mistake and are raised at once. Submits carry
an idempotency key that stays the same across retries, so a submit whose reply was lost is not
stored twice.

A refusal is raised as a ClientError (with its HTTP `status`) that is also the matching branch
of the errors.py tree: 401/403 AuthError, 404 NotFound, 409 StaleLease; no answer (or 5xx after
every retry) is ServerUnavailable.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import Any, TypeVar

from hpcscale import lean_imports  # noqa: F401 - first: httpx without its CLI

# isort: split
import httpx
from pydantic import BaseModel, TypeAdapter
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from hpcscale.client_caps import CapCalls
from hpcscale.client_tasks import TaskCalls
from hpcscale.errors import AuthError, ClientError, NotFound, ServerUnavailable, StaleLease
from hpcscale.models import (
    Backlog,
    CancelReply,
    CancelRequest,
    ClaimedTask,
    ClaimRequest,
    CycleView,
    DecisionBatch,
    DecisionRecord,
    DeregisterRequest,
    Event,
    EventRequest,
    HeartbeatReply,
    HeartbeatRequest,
    HostInfo,
    Lease,
    ManagerInfo,
    ManagerRegistration,
    ObserveRequest,
    PoolInfo,
    PoolUpdate,
    QueueStats,
    ReleaseReply,
    ReleaseRequest,
    ResultOutcome,
    ResultsReply,
    ResultsRequest,
    Role,
    Submission,
    SubmissionIntent,
    SubmissionUpdate,
    Task,
    TaskResult,
    TokenReply,
    TokenRequest,
    WaitReply,
    Worker,
    WorkerGone,
    WorkerRegistration,
)

M = TypeVar("M", bound=BaseModel)


class Refused(ClientError):
    """The server answered with a 4xx that has a branch of its own in the errors.py tree."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, status)
        self.status = status  # the second base (AuthError) sets its own default on the way


class AuthRefused(Refused, AuthError):
    """401: a missing, unknown or revoked token; 403: a role or queue the token may not use."""


class NotFoundReply(Refused, NotFound):
    """404: no such task, worker, pool or submission."""


class StaleReply(Refused, StaleLease):
    """409: the store's state moved on — a lease that is no longer live, a transition no longer
    allowed — so what the caller acted on is stale."""


REFUSALS: dict[int, type[Refused]] = {
    401: AuthRefused,
    403: AuthRefused,
    404: NotFoundReply,
    409: StaleReply,
}


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ServerUnavailable)


def _untrusted(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _tls(url: str, verify: bool | str) -> ssl.SSLContext | bool:
    """What httpx checks the server's certificate with. Plain http:// (serve's own manager)
    never uses TLS (no redirects, only paths of `url`), unless via an https:// proxy: an empty
    context that trusts nothing, not the CA bundle httpx loads (~2 MB a process; issue 16)."""
    if isinstance(verify, str):  # a CA file (httpx deprecates verify=<path>), read as before
        return ssl.create_default_context(cafile=verify)
    tls_proxy = any(
        k.lower().endswith("_proxy") and v[:8].lower() == "https://" for k, v in os.environ.items()
    )
    if verify and url.lower().startswith("http://") and not tls_proxy:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts no certificate
    return verify


class Client(TaskCalls, CapCalls):  # the mixins: client_tasks.py, client_caps.py
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_for: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retry_for = retry_for
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=_tls(self.url, verify),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        retry_for: float | None = None,
    ) -> Any:
        content = body.model_dump_json(exclude_unset=False) if body is not None else None
        headers = {"content-type": "application/json"} if content is not None else None
        budget = self.retry_for if retry_for is None else retry_for
        for attempt in Retrying(
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.2, max=10),
            stop=stop_after_delay(budget),
            reraise=True,
        ):
            with attempt:
                return self._once(method, path, content, headers, params)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        path: str,
        content: str | None,
        headers: dict[str, str] | None,
        params: dict[str, Any] | None,
    ) -> Any:
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TransportError as exc:
            if _untrusted(exc):  # retrying cannot make a certificate trusted
                raise ClientError(
                    f"{self.url}: the server's TLS certificate is not trusted ({exc}); "
                    "set [server] tls_ca to the CA that signed it"
                ) from exc
            raise ServerUnavailable(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 500:
            raise ServerUnavailable(
                f"{method} {path}: server error {response.status_code}: {_message(response)}",
                response.status_code,
            )
        if response.status_code >= 400:
            refused = REFUSALS.get(response.status_code, ClientError)
            raise refused(
                f"{method} {path}: {response.status_code} {_message(response)}",
                response.status_code,
            )
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate(self._request("GET", path, params=_clean(params)))

    def _post(self, path: str, body: BaseModel, model: type[M]) -> M:
        return model.model_validate(self._request("POST", path, body=body))

    # ------------------------------------------------------------------ API

    def healthz(self) -> dict[str, str]:
        return dict(self._request("GET", "/healthz", retry_for=0))

    def metrics(self) -> str:
        return str(self._request("GET", "/metrics"))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: int = 0,
    ) -> list[Task]:
        raw = self._request(
            "GET",
            "/v1/tasks",
            params=_clean({"state": state, "queue": queue, "limit": limit, "after": after}),
        )
        return _list(Task, raw)

    def get_task(self, task_id: int) -> Task:
        return self._get(f"/v1/tasks/{task_id}", Task)

    def cancel(self, ids: Sequence[int]) -> list[int]:
        return self._post("/v1/tasks/cancel", CancelRequest(ids=list(ids)), CancelReply).cancelled

    def backlog(self, queues: Sequence[str] | None = None) -> list[Backlog]:
        params = {"queue": list(queues)} if queues else None
        return _list(Backlog, self._request("GET", "/v1/queues", params=params))

    def queue_stats(self, queue: str) -> QueueStats:
        return self._get(f"/v1/queues/{queue}/stats", QueueStats)

    def register(self, registration: WorkerRegistration) -> Worker:
        return self._post("/v1/workers", registration, Worker)

    def list_workers(
        self, pool: str | None = None, live: bool = False, since: float | None = None
    ) -> list[Worker]:
        params = _clean({"pool": pool, "live": live, "since": since})
        raw = self._request("GET", "/v1/workers", params=params)
        return _list(Worker, raw)

    def worker(self, worker_id: str) -> Worker:
        return self._get(f"/v1/workers/{worker_id}", Worker)

    def observe(self, manager: str, ask: ObserveRequest) -> CycleView:
        return self._post(f"/v1/managers/{manager}/observe", ask, CycleView)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int = 1,
        free_slots: int = 1,
        retry_for: float | None = None,
    ) -> list[ClaimedTask]:
        body = ClaimRequest(queues=list(queues), max_tasks=max_tasks, free_slots=free_slots)
        raw = self._request(
            "POST", f"/v1/workers/{worker_id}/claim", body=body, retry_for=retry_for
        )
        return _list(ClaimedTask, raw)

    def heartbeat(
        self,
        worker_id: str,
        running: Sequence[int] = (),
        busy_slots: int = 0,
        retry_for: float | None = None,
    ) -> HeartbeatReply:
        body = HeartbeatRequest(running=list(running), busy_slots=busy_slots)
        raw = self._request(
            "POST", f"/v1/workers/{worker_id}/heartbeat", body=body, retry_for=retry_for
        )
        return HeartbeatReply.model_validate(raw)

    def results(
        self, worker_id: str, results: Sequence[TaskResult], retry_for: float | None = None
    ) -> list[ResultOutcome]:
        try:
            raw = self._request(
                "POST",
                f"/v1/workers/{worker_id}/results",
                body=ResultsRequest(results=list(results)),
                retry_for=retry_for,
            )
        except StaleReply:
            return [ResultOutcome(task_id=r.task_id, outcome="stale") for r in results]
        return ResultsReply.model_validate(raw).outcomes

    def release(
        self,
        worker_id: str,
        leases: Sequence[Lease] | None = None,
        reason: str = "released",
        retry_for: float | None = None,
        attempt_used: bool = False,
    ) -> list[int]:
        body = ReleaseRequest(
            leases=list(leases) if leases is not None else None,
            reason=reason,
            attempt_used=attempt_used,
        )
        raw = self._request(
            "POST", f"/v1/workers/{worker_id}/release", body=body, retry_for=retry_for
        )
        return ReleaseReply.model_validate(raw).released

    def deregister(
        self, worker_id: str, reason: str = "ended", retry_for: float | None = None
    ) -> list[int]:
        raw = self._request(
            "POST",
            f"/v1/workers/{worker_id}/deregister",
            body=DeregisterRequest(reason=reason),
            retry_for=retry_for,
        )
        return ReleaseReply.model_validate(raw).released

    def pools(self) -> list[PoolInfo]:
        return _list(PoolInfo, self._request("GET", "/v1/pools"))

    def hosts(self) -> list[HostInfo]:
        return _list(HostInfo, self._request("GET", "/v1/hosts"))

    def allow_host(self, host: str) -> list[HostInfo]:
        return _list(HostInfo, self._request("POST", f"/v1/hosts/{host}/allow"))

    def update_pool(self, pool: str, update: PoolUpdate) -> PoolInfo:
        return self._post(f"/v1/pools/{pool}", update, PoolInfo)

    def events(
        self, *, kind_prefix: str | None = None, limit: int = 50, task: int | None = None
    ) -> list[Event]:
        raw = self._request(
            "GET",
            "/v1/events",
            params=_clean({"kind_prefix": kind_prefix, "limit": limit, "task": task}),
        )
        return _list(Event, raw)

    # ------------------------------------------------------------------ the manager's records

    def wait_for_work(self, since: int, timeout: float) -> WaitReply:
        raw = self._request(
            "GET", "/v1/wait", params={"since": since, "timeout": timeout}, retry_for=0
        )
        return WaitReply.model_validate(raw)

    def register_manager(self, name: str, registration: ManagerRegistration) -> ManagerInfo:
        return self._post(f"/v1/managers/{name}/register", registration, ManagerInfo)

    def managers(self) -> list[ManagerInfo]:
        return _list(ManagerInfo, self._request("GET", "/v1/managers"))

    def record_intent(self, intent: SubmissionIntent) -> Submission:
        return self._post("/v1/submissions", intent, Submission)

    def update_submission(self, tag: str, change: SubmissionUpdate) -> Submission:
        return self._post(f"/v1/submissions/{tag}", change, Submission)

    def submissions(
        self,
        *,
        manager: str | None = None,
        pool: str | None = None,
        open_only: bool = False,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Submission]:
        params = _clean(
            {
                "manager": manager,
                "pool": pool,
                "open": open_only or None,
                "since": since,
                "limit": limit,
            }
        )
        return _list(Submission, self._request("GET", "/v1/submissions", params=params))

    def worker_gone(self, worker_id: str, reason: str, attempt_used: bool = True) -> list[int]:
        body = WorkerGone(reason=reason, attempt_used=attempt_used)  # False: the site's doing
        raw = self._request("POST", f"/v1/workers/{worker_id}/gone", body=body)
        return ReleaseReply.model_validate(raw).released

    def record_decisions(self, records: Sequence[DecisionRecord]) -> None:
        self._request("POST", "/v1/decisions/batch", body=DecisionBatch(records=list(records)))

    def decisions(self, pool: str, limit: int = 10) -> list[DecisionRecord]:
        raw = self._request("GET", "/v1/decisions", params={"pool": pool, "limit": limit})
        return _list(DecisionRecord, raw)

    def add_event(self, kind: str, detail: str | None = None) -> None:
        self._request("POST", "/v1/events", body=EventRequest(kind=kind, detail=detail))

    def create_token(
        self, role: Role, queues: Sequence[str] | None = None, name: str = ""
    ) -> TokenReply:
        body = TokenRequest(role=role, queues=list(queues) if queues else None, name=name)
        return self._post("/v1/tokens", body, TokenReply)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _list(model: type[M], raw: Any) -> list[M]:
    return TypeAdapter(list[model]).validate_python(raw)  # type: ignore[valid-type]


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return str(data)[:500]
