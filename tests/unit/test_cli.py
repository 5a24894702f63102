"""The `hpcscale` command as a user runs it: a real process, its exit code (0 ok, 1 failure,
2 usage or config error), what it prints, and a real server on the other side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcscale.cli.main import build_parser
from hpcscale.cli.registry import COMMANDS
from hpcscale.models import Role
from tests.conftest import LiveServer, threaded_server

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    code: int
    out: str
    err: str


def hpcscale(*argv: str, token: str | None = None, home: Path | None = None) -> Ran:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    env["COLUMNS"] = "100"
    if token is not None:
        env["HPCSCALE_TOKEN"] = token
    if home is not None:
        env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "hpcscale", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


# ---------------------------------------------------------------------- usage errors: exit 2


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    ran = hpcscale(home=tmp_path)
    assert ran.code == 2  # with the whole help on stdout (issue 16)
    assert ran.out.startswith("usage: hpcscale ") and "submit" in ran.out


def test_an_unknown_command_is_a_usage_error_listing_the_commands(tmp_path: Path) -> None:
    ran = hpcscale("frobnicate", home=tmp_path)
    assert ran.code == 2
    assert "invalid choice: 'frobnicate'" in ran.err
    assert "'submit'" in ran.err and "'set-max'" in ran.err


@pytest.mark.parametrize(
    ("argv", "missing"),
    [(["why"], "pool"), (["tasks", "show"], "id"), (["token", "create"], "--role")],
)
def test_a_missing_argument_names_it_under_the_command_usage(
    argv: list[str], missing: str, tmp_path: Path
) -> None:
    ran = hpcscale(*argv, home=tmp_path)
    assert ran.code == 2
    assert ran.err.startswith(f"usage: hpcscale {' '.join(argv)} ")
    assert "the following arguments are required" in ran.err and missing in ran.err


def test_version_and_help_exit_0(tmp_path: Path) -> None:
    assert hpcscale("--version", home=tmp_path).out.startswith("hpcscale ")
    ran = hpcscale("submit", "--help", home=tmp_path)
    assert ran.code == 0 and ran.out.startswith("usage: hpcscale submit ")


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_the_registry_lists_each_command_as_its_module_does(name: str) -> None:
    # The listing comes from the registry's stubs unless that command runs; both must agree.
    assert build_parser(name).format_help() == build_parser(None).format_help()


# ---------------------------------------------------------------------- config: exit 2


def test_check_config_of_a_broken_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[server]\nlease_ttl = "banana"\nleese_ttl = "1s"\n')
    ran = hpcscale("check-config", str(broken), home=tmp_path)
    assert ran.code == 2 and ran.out == ""
    lines = ran.err.splitlines()
    assert any(line.startswith("error: server.lease_ttl: 'banana'") for line in lines)
    assert "error: server.leese_ttl: unknown key" in lines
    assert "Traceback" not in ran.err


def test_check_config_of_a_good_file_prints_it_resolved(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[server]\nlease_ttl = "2m"\n')
    ran = hpcscale("check-config", str(good), "--json", home=tmp_path)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["server"]["lease_ttl"] == 120


# ---------------------------------------------------------------------- against a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("cli-server")
    with threaded_server(f"sqlite:///{root}/state.db") as live:
        yield live


@pytest.fixture
def config(server: LiveServer, tmp_path: Path) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nurl = "{server.url}"\ntoken_file = "{tmp_path}/no-token"\n')
    return str(path)


def test_submit_list_and_cancel_a_task(server: LiveServer, config: str, tmp_path: Path) -> None:
    admin = server.tokens[Role.ADMIN]
    ran = hpcscale("submit", "--config", config, "--queue", "cli", "--", "echo", "hi",
                   token=admin, home=tmp_path)  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.out.startswith("submitted task ")
    task_id = int(ran.out.split()[-1])

    ran = hpcscale("tasks", "--config", config, "--queue", "cli", "--json", token=admin)
    assert ran.code == 0, ran.err
    listed = {t["id"]: t for t in json.loads(ran.out)}
    assert listed[task_id]["command"] == ["echo", "hi"]
    assert listed[task_id]["state"] == "waiting"

    ran = hpcscale("cancel", "--config", config, str(task_id), token=admin)
    assert (ran.code, ran.out.strip()) == (0, f"cancelled 1: {task_id}")

    ran = hpcscale("cancel", "--config", config, str(task_id), "--json", token=admin)
    assert ran.code == 1
    assert json.loads(ran.out) == {"cancelled": [], "not_cancelled": [task_id]}

    ran = hpcscale("tasks", "show", str(task_id), "--config", config, token=admin)
    assert ran.code == 0 and "state: cancelled" in ran.out


def test_submit_without_a_command_exits_2_before_sending(config: str, tmp_path: Path) -> None:
    ran = hpcscale("submit", "--config", config, token="unused", home=tmp_path)
    assert ran.code == 2
    assert ran.err == "error: submit: nothing to submit: give -- COMMAND ARG... or --file FILE\n"


def test_a_wrong_token_is_a_failure_naming_the_refusal(config: str, tmp_path: Path) -> None:
    ran = hpcscale("tasks", "--config", config, token="not-a-token", home=tmp_path)
    assert ran.code == 1
    assert ran.err.startswith("error: GET /v1/tasks: 401 ")


def test_a_missing_token_file_is_a_config_error(config: str, tmp_path: Path) -> None:
    ran = hpcscale("tasks", "--config", config, home=tmp_path)
    assert ran.code == 2
    assert ran.err.startswith("error: server.token_file: ") and "does not exist" in ran.err
