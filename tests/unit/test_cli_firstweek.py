"""The command line a new user meets (issue 16): bare `hpcscale` helps, commands come in a
user's order, a server that is down is said so at once with how to start it, a missing token
file says who writes it, a taken port is one clear line, `tasks` says what it did not show,
`cancel` by queue or state, `retry` of ended tasks. Real processes against a real server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.models import Role, TaskSpec
from tests.conftest import LiveServer, free_port, threaded_server
from tests.unit.test_cli import hpcscale


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("cli-firstweek")
    with threaded_server(f"sqlite:///{root}/state.db") as live:
        yield live


def config_for(url: str, root: Path, **server: str) -> str:
    path = root / "config.toml"
    extra = "".join(f'{k} = "{v}"\n' for k, v in server.items())
    path.write_text(f'[server]\nurl = "{url}"\ntoken_file = "{root}/no-token"\n{extra}')
    return str(path)


def test_bare_hpcscale_prints_the_help_in_a_users_order(tmp_path: Path) -> None:
    ran = hpcscale(home=tmp_path)
    assert ran.code == 2 and ran.out.startswith("usage: hpcscale "), ran
    listed = [line.split()[0] for line in ran.out.splitlines() if re.match(r"^    [a-z]", line)]
    first = ["demo", "serve", "check-config", "render-script", "submit", "tasks", "cancel"]
    assert listed[: len(first)] == first
    assert listed.index("status") < listed.index("pause") < listed.index("token")
    assert listed[-2:] == ["worker", "simulate"]


def test_status_with_the_server_down_says_so_at_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    ran = hpcscale("status", "--config", config_for(url, tmp_path), token="t", home=tmp_path)
    took = time.monotonic() - started
    assert ran.code == 1, ran
    assert ran.err.startswith(f"error: the server is not running at {url} "), ran.err
    assert "hpcscale serve" in ran.err and took < 5, (took, ran.err)


def test_a_missing_token_file_says_serve_writes_it(tmp_path: Path) -> None:
    config = config_for("http://127.0.0.1:1", tmp_path)
    ran = hpcscale("tasks", "--config", config, home=tmp_path)
    assert ran.code == 2 and ran.err.startswith("error: server.token_file: "), ran
    assert "`hpcscale serve` (or `server`) writes it on its first start" in ran.err


def test_a_taken_port_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bind = f"127.0.0.1:{port}"
        config = config_for(
            f"http://{bind}", tmp_path, bind=bind, database=f"sqlite:///{tmp_path}/s.db"
        )
        ran = hpcscale("serve", "--allow-root", "--config", config, home=tmp_path)
    assert ran.code == 1, ran
    assert ran.err.splitlines() == [
        f"error: server.bind: {bind} is already in use: is `hpcscale serve` already running "
        "(`hpcscale status` asks it)? Stop it, or set [server] bind"
    ]


def submit(server: LiveServer, queue: str, count: int) -> list[int]:
    return server.store.submit([TaskSpec(command=["true"], queue=queue)] * count)[0]


def test_tasks_says_how_many_it_did_not_show(server: LiveServer, tmp_path: Path) -> None:
    ids = submit(server, "more", 5)
    config, admin = config_for(server.url, tmp_path), server.tokens[Role.ADMIN]
    ran = hpcscale("tasks", "--config", config, "--queue", "more", "--limit", "2", token=admin)
    assert ran.code == 0 and f"... and 3 more: `hpcscale tasks --after {ids[1]}`" in ran.err
    ran = hpcscale("tasks", "--config", config, "--queue", "more", "--limit", "5", token=admin)
    assert ran.code == 0 and ran.err == ""


def test_cancel_by_queue_and_retry_by_state(server: LiveServer, tmp_path: Path) -> None:
    ids = submit(server, "bulk", 3)
    other = submit(server, "keep", 1)
    config, admin = config_for(server.url, tmp_path), server.tokens[Role.ADMIN]
    ran = hpcscale("cancel", "--config", config, "--queue", "bulk", "--json", token=admin)
    assert ran.code == 0 and json.loads(ran.out)["cancelled"] == ids, ran
    assert server.store.get_task(other[0]).state.value == "waiting"
    ran = hpcscale("cancel", "--config", config, token=admin)
    assert ran.code == 2 and "give task ids, or --queue and/or --state" in ran.err

    ran = hpcscale("retry", "--config", config, "--queue", "bulk", "--state", "cancelled",
                   "--json", token=admin)  # fmt: skip
    assert ran.code == 0 and json.loads(ran.out)["retried"] == ids, ran
    assert {server.store.get_task(i).state.value for i in ids} == {"waiting"}
    ran = hpcscale("retry", "--config", config, str(other[0]), token=admin)
    assert ran.code == 1 and "not retried" in ran.out  # it had not ended


def test_the_client_leaves_httpxs_command_line_out() -> None:
    """httpx imports its CLI (rich, pygments, click) when they are installed: ~100 modules and
    ~6 MB in every serve, manager and worker (bench/footprint.py)."""
    probe = (
        "import sys, hpcscale.client\n"
        "print(sorted({'rich', 'click', 'pygments'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
