"""What users and scripts see must not move when the code does (issue 13): the OpenAPI document
byte for byte, every `--help` text, and what `render-script` prints, against copies taken before
the package was reorganised (tests/fixtures/contract/).

The one change is deliberate: the local scheduler's supervisor moved to
`hpcscale.schedulers.local.supervisor`, so the local pool's launch line names that module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hpcscale.config import Settings
from hpcscale.server.app import create_app
from hpcscale.statestore import open_store

ROOT = Path(__file__).resolve().parents[2]
FROZEN = ROOT / "tests" / "fixtures" / "contract"
COMMANDS = [
    "", "server", "submit", "tasks", "tasks show", "cancel", "events", "status", "token",
    "token create", "check-config", "worker", "render-script", "demo", "simulate", "serve",
    "manager", "why", "pause", "resume", "drain", "hosts", "set-max", "set-cap", "retry",
]  # fmt: skip
CONFIGS = [
    "example",
    "slurm-cpu-cluster",
    "slurm-gpu-cluster",
    "laptop-local",
    "postgres-multi-cluster",
]


def hpcscale(*argv: str, home: Path | None = None) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    if home is not None:
        env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "hpcscale", *argv], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_openapi_is_byte_identical(tmp_path: Path) -> None:
    app = create_app(open_store(f"sqlite:///{tmp_path}/s.db"), Settings(), reaper=False)
    with TestClient(app) as client:
        served = client.get("/v1/openapi.json").content
    assert served == (FROZEN / "openapi.json").read_bytes()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "hpcscale")
def test_help_text_is_unchanged(command: str) -> None:
    name = "help-" + ("_".join(command.split()) or "top") + ".txt"
    assert hpcscale(*command.split(), "--help") == (FROZEN / name).read_text()


@pytest.mark.parametrize("config", CONFIGS)
def test_render_script_is_unchanged(config: str, tmp_path: Path) -> None:
    path = ROOT / "config" / f"{config}.toml"
    for pool in tomllib.loads(path.read_text())["pools"]:
        shown = hpcscale(
            "render-script", pool["name"], "--count", "3", "--config", str(path), home=tmp_path
        )
        shown = shown.replace(sys.executable, "<python>").replace(str(tmp_path), "<home>")
        assert shown == (FROZEN / f"render-{config}-{pool['name']}.txt").read_text()
