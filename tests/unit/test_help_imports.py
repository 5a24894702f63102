"""`hpcscale --help` must stay light (DESIGN.md, "Module map"): a user on a login node asking
for help should not wait for a web framework, a database toolkit or an HTTP client to load.

Read from `python -X importtime`, so a lazy import that runs counts as much as a top-level one;
which command modules are loaded is read from sys.modules (importtime does not log a module
loaded by importlib.import_module, as the registry loads them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx", "tenacity", "pydantic_settings")


def imported_by(*argv: str) -> set[str]:
    """Every module `python -m hpcscale ARGV` imports (top-level package names and dotted)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hpcscale", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert done.returncode == 0, done.stderr
    modules = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return modules


def loaded_by(*argv: str) -> set[str]:
    """sys.modules after `hpcscale ARGV` has run in a fresh interpreter."""
    script = (
        "import json, sys\n"
        "from hpcscale.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=ROOT
    )
    return set(json.loads(done.stderr.splitlines()[-1]))


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("argv", [["--help"], ["--version"]], ids=" ".join)
def test_the_top_level_help_loads_no_heavy_library(argv: list[str]) -> None:
    modules = imported_by(*argv)
    assert "hpcscale.cli.main" in modules  # the reading worked
    assert sorted(roots(modules) & set(HEAVY)) == []


def test_the_top_level_help_imports_no_command_module() -> None:
    commands = {m for m in loaded_by("--help") if m.startswith("hpcscale.cli.")}
    assert commands == {"hpcscale.cli.main", "hpcscale.cli.registry"}


def test_a_command_help_loads_only_its_own_module() -> None:
    modules = loaded_by("check-config", "--help")
    assert "hpcscale.cli.configfile" in modules
    assert "hpcscale.cli.tasks" not in modules
    assert sorted(roots(modules) & {"fastapi", "uvicorn", "sqlalchemy", "httpx"}) == []
