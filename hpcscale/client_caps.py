"""The client's calls for the global cap of a queue across managers (issue 17), a mixin of
client.Client kept apart so that client.py stays one readable file."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from hpcscale.models import GrantReply, GrantRequest, QueueCap, QueueCapUpdate


class CapCalls:
    """Set a queue's cap, read every cap with each manager's share, ask for a grant."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        retry_for: float | None = None,
    ) -> Any:
        raise NotImplementedError  # client.Client's

    def set_queue_cap(self, queue: str, global_cap: int | None) -> list[QueueCap]:
        """[] once the cap is removed (None)."""
        body = QueueCapUpdate(global_cap=global_cap)
        raw = self._request("PUT", f"/v1/queues/{queue}/cap", body=body)
        return TypeAdapter(list[QueueCap]).validate_python(raw)

    def queue_caps(self) -> list[QueueCap]:
        return TypeAdapter(list[QueueCap]).validate_python(self._request("GET", "/v1/caps"))

    def grant(self, ask: GrantRequest) -> GrantReply:
        """Not retried: a grant lost on the way is replaced by the next ask under its tag."""
        return GrantReply.model_validate(self._request("POST", "/v1/grants", body=ask, retry_for=0))
