"""Configs that load but cannot work, through the real `hpcscale check-config` (issue 16): each
exits 2 with one line naming the key; a loopback url for a Slurm pool is a warning; the resolved
config shows effective values; pool keys are overridable from the environment, and a wrong
variable is named as a variable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

HEAD = """
[server]
url = "{url}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"
[manager]
state_dir = "{root}/manager"
[[pools]]
name = "cpu"
max_workers = 50
{pool}
[pools.slurm]
time = "01:00:00"
{slurm}
[pools.worker]
{worker}
"""


def write(root: Path, url: str = "http://login1:8765", **parts: str) -> Path:
    path = root / "config.toml"
    values = {"pool": "", "slurm": "", "worker": "", **parts}
    path.write_text(HEAD.format(url=url, port=free_port(), root=root, **values))
    return path


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    return subprocess.run(
        [sys.executable, "-m", "hpcscale", *argv], capture_output=True, text=True,
        env={**clean, **(env or {})}, timeout=60,
    )  # fmt: skip


CASES = [
    ("max-pending-0", "pools[0].max_pending", {"pool": "max_pending = 0"}),
    ("claim-margin-over-wall", "pools[0].worker.claim_margin", {"worker": 'claim_margin = "2h"'}),
    ("budget-below-one-worker", "pools[0].budget.core_hours",
     {"worker": "[pools.budget]\ncore_hours = 0.5"}),
    ("gpu-budget-below-one-worker", "pools[0].budget.gpu_hours",
     {"slurm": 'gres = "gpu:2"', "worker": "[pools.budget]\ngpu_hours = 1.5"}),
    ("slots-over-cpus", "pools[0].worker.slots", {"worker": "slots = 8"}),
]  # fmt: skip


@pytest.mark.parametrize(("key", "parts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_unworkable_config_exits_2_naming_the_key(
    key: str, parts: dict[str, str], tmp_path: Path
) -> None:
    ran = run("check-config", str(write(tmp_path, **parts)))
    assert ran.returncode == 2, ran
    assert ran.stderr.splitlines() == [ran.stderr.splitlines()[0]]
    assert ran.stderr.startswith(f"error: {key}: "), ran.stderr


def test_serve_refuses_an_unworkable_config_too(tmp_path: Path) -> None:
    config = write(tmp_path, pool="max_pending = 0")
    ran = run("serve", "--allow-root", "--config", str(config))
    assert ran.returncode == 2 and ran.stderr.startswith("error: pools[0].max_pending: "), ran


def test_pyslurm_that_does_not_import_is_refused(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyslurm") is not None:
        pytest.skip("pyslurm is installed here")
    ran = run("check-config", str(write(tmp_path, pool='scheduler = "pyslurm"')))
    assert ran.returncode == 2 and ran.stderr.startswith("error: pools[0].scheduler: "), ran


def test_a_loopback_url_for_a_slurm_pool_is_a_warning_naming_the_key(tmp_path: Path) -> None:
    ran = run("check-config", str(write(tmp_path, url="http://127.0.0.1:8765")))
    assert ran.returncode == 0, ran
    assert ran.stderr.startswith("warning: server.url: http://127.0.0.1:8765 "), ran.stderr
    assert run("check-config", str(write(tmp_path))).stderr == ""  # a real name: no warning


def test_the_resolved_config_shows_the_effective_submit_ceiling(tmp_path: Path) -> None:
    ran = run("check-config", "--json", str(write(tmp_path)))
    assert json.loads(ran.stdout)["pools"][0]["max_submit_per_hour"] == 200  # 4 x 50 x 1h/1h


def test_a_pool_key_is_overridden_from_the_environment(tmp_path: Path) -> None:
    env = {"HPCSCALE_POOLS__0__MAX_WORKERS": "3", "HPCSCALE_POOLS__0__SLURM__PARTITION": "long"}
    ran = run("check-config", "--json", str(write(tmp_path)), env=env)
    assert ran.returncode == 0, ran.stderr
    pool = json.loads(ran.stdout)["pools"][0]
    assert pool["max_workers"] == 3 and pool["slurm"]["partition"] == "long"
    assert pool["max_submit_per_hour"] == 12


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("HPCSCALE_SERVER__PORT", "1", "HPCSCALE_SERVER__PORT (environment): server.port: "),
        ("HPCSCALE_POOLS__0__MAX_WORKERS", "-1",
         "HPCSCALE_POOLS__0__MAX_WORKERS (environment): pools[0].max_workers: must be ≥ 0"),
        ("HPCSCALE_POOLS__4__MAX_WORKERS", "3",
         "HPCSCALE_POOLS__4__MAX_WORKERS (environment): no pools[4] in the file"),
    ],
)  # fmt: skip
def test_a_wrong_environment_variable_is_named_as_one(
    variable: str, value: str, said: str, tmp_path: Path
) -> None:
    ran = run("check-config", str(write(tmp_path)), env={variable: value})
    assert ran.returncode == 2 and ran.stderr.startswith(f"error: {said}"), ran.stderr
