"""Helpers for tests that use the throwaway Slurm (scripts/slurm-lab.sh) or the local backend.

The real cluster is found through SLURM_CONF in the environment (`eval "$(scripts/slurm-lab.sh
env)"`); without it the Slurm tests skip with the reason, which HPCSCALE_NO_SKIP=1 turns into a
failure. Each test uses its own manager name, so its `status()` sees only its own jobs even when
someone else uses the same lab at the same time (scripts/test.sh runs the suite with xdist).

Two more labs have fixtures here (a plugin: `pytest_plugins` in conftest.py registers it):
`accounting_slurm`, the lab with slurmdbd and enforced limits (HPCSCALE_TEST_SLURM_ACCOUNTING_CONF,
beside the plain lab's SLURM_CONF), and `soak_labs`, the chaos soak's own Slurm and PostgreSQL
(it restarts them, so under xdist it must not share them with other tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

ACCOUNTING_GROUP = "slurm-accounting"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the accounting lab joins one xdist group: its limits are the user's (every
    test runs as root), so they must not run beside each other (see accounting_slurm)."""
    for item in items:
        if "accounting_slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(ACCOUNTING_GROUP))


REPO = Path(__file__).resolve().parent.parent


def require_slurm() -> str:
    """SLURM_CONF of a reachable lab, or skip saying how to get one."""
    conf = os.environ.get("SLURM_CONF", "")
    if not conf or not Path(conf).is_file() or shutil.which("sbatch") is None:
        pytest.skip(
            "no Slurm lab: run `scripts/slurm-lab.sh up` and export SLURM_CONF "
            '(eval "$(scripts/slurm-lab.sh env)")'
        )
    return conf


@dataclass(frozen=True)
class AccountingLab:
    """The accounting lab as a test sees it: its slurm.conf, ClusterName and account."""

    conf: str
    cluster: str
    account: str


@pytest.fixture
def accounting_slurm(monkeypatch: pytest.MonkeyPatch) -> Iterator[AccountingLab]:
    """The lab with accounting and enforced limits (`SLURM_LAB_ACCOUNTING=1 scripts/slurm-lab.sh
    up`), made this test's SLURM_CONF; skips saying how to get one (a failure under
    HPCSCALE_NO_SKIP=1).

    Its QOS limits and partition state are shared by every job of the user (all tests run as
    root), so a test that changes them would refuse or hold another test's jobs: conftest.py puts
    every test using this fixture in one xdist group, run one at a time on one worker, and a lock
    file in the lab's directory keeps that true across workers and pytest processes too."""
    conf = os.environ.get("HPCSCALE_TEST_SLURM_ACCOUNTING_CONF", "")
    if not conf or not Path(conf).is_file() or shutil.which("sbatch") is None:
        pytest.skip(
            "no accounting lab: run `SLURM_LAB_ACCOUNTING=1 scripts/slurm-lab.sh up` and export "
            "HPCSCALE_TEST_SLURM_ACCOUNTING_CONF (its env.sh)"
        )
    monkeypatch.setenv("SLURM_CONF", conf)
    with one_at_a_time(Path(conf).parent):
        yield AccountingLab(
            conf=conf,
            cluster=os.environ.get("HPCSCALE_TEST_SLURM_CLUSTER", "hpcscaleacct"),
            account=os.environ.get("HPCSCALE_TEST_SLURM_ACCOUNT", "hpcscale-lab"),
        )


@pytest.fixture
def soak_labs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the chaos soak at its own labs when scripts/test.sh brought them up
    (HPCSCALE_TEST_SOAK_SLURM_CONF/_SLURM_LAB_DIR, HPCSCALE_TEST_SOAK_PG_URL/_PG_LAB_DIR): the
    soak restarts slurmctld and PostgreSQL, which would break the tests running beside it on the
    shared labs. Without them it uses the shared labs, as a run of the soak alone may."""
    moves = {
        "HPCSCALE_TEST_SOAK_SLURM_CONF": "SLURM_CONF",
        "HPCSCALE_TEST_SOAK_SLURM_LAB_DIR": "SLURM_LAB_DIR",
        "HPCSCALE_TEST_SOAK_PG_URL": "HPCSCALE_TEST_PG_URL",
        "HPCSCALE_TEST_SOAK_PG_LAB_DIR": "PG_LAB_DIR",
    }
    for own, shared in moves.items():
        if os.environ.get(own):
            monkeypatch.setenv(shared, os.environ[own])
    conf = os.environ.get("SLURM_CONF", "")
    if not conf or not Path(conf).is_file():
        yield  # the test skips (require_slurm)
        return
    with one_at_a_time(Path(conf).parent):
        yield


@contextlib.contextmanager
def one_at_a_time(lab_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock file in the lab's directory: tests that change a lab's shared state
    (limits, partitions, a daemon restart) wait for each other, whichever xdist worker or pytest
    process runs them. xdist's loadgroup already puts them on one worker (so they never wait);
    the lock is what makes it true when that grouping does not hold."""
    with (lab_dir / ".hpcscale-tests.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def unique(prefix: str = "t") -> str:
    """A manager name (or tag) no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def slurm(*argv: str) -> str:
    """Run a Slurm command; its stdout (a failure raises, with Slurm's stderr)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return result.stdout


def set_qos(**limits: int) -> None:
    """`sacctmgr modify qos normal set ...` on the accounting lab (-1 clears a limit)."""
    slurm(
        "sacctmgr", "-i", "modify", "qos", "normal", "set", *(f"{k}={v}" for k, v in limits.items())
    )


def partition(state: str) -> None:
    """Set the accounting lab's partition's state (up, down, drain, inactive)."""
    slurm("scontrol", "update", "partitionname=debug", f"state={state}")


def cancel_and_wait(*job_names: str, timeout: float = 60.0) -> None:
    """scancel every job of these names and wait until squeue shows none of them: scancel only
    asks, and a job still completing counts against the user's submit limit, so the next test on
    the accounting lab would read it as the user's own (seen in CI: "with 3 of root's jobs")."""
    for name in job_names:  # scancel takes one name, squeue a list
        subprocess.run(["scancel", f"--name={name}"], timeout=30, check=False)
    names = ",".join(job_names)

    def gone() -> bool:
        argv = ["squeue", "--noheader", f"--name={names}", "--format=%i"]
        listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return listed.returncode == 0 and not listed.stdout.strip()

    wait_for(f"squeue to show no job named {names}", gone, timeout, every=0.5)


def script(body: str, *directives: str) -> str:
    """A batch script: shebang, #SBATCH lines, body."""
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), body, ""]
    return "\n".join(lines)


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in `bin_dir` (prepend bin_dir to PATH to make it win)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path
