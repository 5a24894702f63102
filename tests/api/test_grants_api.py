"""The global cap through the API on both backends (issue 17): an operator sets it, a manager
asks for grants under it, anyone who reads sees each manager's share."""

from __future__ import annotations

import pytest

from hpcscale.client import Client
from hpcscale.errors import ClientError
from hpcscale.models import GrantRequest, ManagerRegistration, Role
from tests.conftest import LiveServer


def test_a_cap_set_through_the_api_bounds_the_grants_of_every_manager(
    live_server: LiveServer,
) -> None:
    tokens = live_server.tokens
    with (
        Client(live_server.url, tokens[Role.MANAGER]) as manager,
        Client(live_server.url, tokens[Role.SUBMITTER]) as submitter,
    ):
        with pytest.raises(ClientError) as refused:
            submitter.set_queue_cap("q", 3)
        assert refused.value.status == 403
        (cap,) = manager.set_queue_cap("q", 3)
        assert (cap.queue, cap.global_cap, cap.in_flight) == ("q", 3, 0)
        granted = []
        for name in ("alpha", "bravo"):
            manager.register_manager(name, ManagerRegistration(instance=f"{name}-1"))
            ask = GrantRequest(
                manager=name, instance=f"{name}-1", pool="cpu", tag=f"{name}.1",
                queues=["q"], count=2,
            )  # fmt: skip
            granted.append(manager.grant(ask).granted)
        assert granted == [2, 1]
        (seen,) = submitter.queue_caps()
        assert seen.shares == {"alpha": 2, "bravo": 1}
        assert manager.set_queue_cap("q", None) == []
        assert submitter.queue_caps() == []
