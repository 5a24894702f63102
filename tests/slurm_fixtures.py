"""Helpers for tests that use the throwaway Slurm (scripts/slurm-lab.sh) or the local backend.

The real cluster is found through SLURM_CONF in the environment (`eval "$(scripts/slurm-lab.sh
env)"`); without it the Slurm tests skip with the reason, which HPCSCALE_NO_SKIP=1 turns into a
failure. Each test uses its own manager name, so its `status()` sees only its own jobs even when
someone else uses the same lab at the same time.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

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
