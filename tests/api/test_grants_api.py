"""The global cap through the API on both backends (issue 17): an operator sets it, a manager
asks for grants under it, anyone who reads sees each manager's share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcscale.client import Client
from hpcscale.errors import ClientError
from hpcscale.models import GrantRequest, ManagerRegistration, Role
from tests.conftest import LiveServer
from tests.unit.test_cli import hpcscale


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


def test_set_cap_and_status_as_an_operator_runs_them(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The command line: set-cap, status's GLOBAL CAPS with each manager's share, bad input."""
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nurl = "{live_server.url}"\ntoken_file = "{tmp_path}/none"\n')
    token = live_server.tokens[Role.MANAGER]
    ran = hpcscale("set-cap", "q", "4", "--config", str(config), token=token)
    assert ran.code == 0 and "queue q: global cap 4" in ran.out, ran
    with Client(live_server.url, token) as manager:
        manager.register_manager("alpha", ManagerRegistration(instance="a"))
        ask = GrantRequest(manager="alpha", instance="a", pool="p", tag="t", queues=["q"], count=3)
        assert manager.grant(ask).granted == 3
    ran = hpcscale("status", "--config", str(config), token=token)
    assert ran.code == 0, ran
    caps = ran.out[ran.out.index("GLOBAL CAPS") :].splitlines()
    assert caps[2].split() == ["q", "4", "3", "alpha", "3"], caps
    assert hpcscale("set-cap", "q", "-1", "--config", str(config), token=token).code == 2
    ran = hpcscale("set-cap", "q", "none", "--config", str(config), token=token)
    assert ran.code == 0 and "no global cap" in ran.out
    assert "GLOBAL CAPS" not in hpcscale("status", "--config", str(config), token=token).out
