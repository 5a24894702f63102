"""Where `hpcscale serve`'s idle memory goes, by import (issue 16; BENCHMARKS.md, "Footprint").

    python bench/footprint_imports.py

Imports what serve imports, one group after another in this one interpreter (as serve does:
pydantic.v1 kept out, see hpcscale.lean_imports), and prints each step's growth of VmRSS and of
its anonymous part, with the modules it added. What a step adds is what it needs beyond the
steps before it; running serve (its threads, the store's connections, the first cycles and the
modules first used by them) adds the rest of bench/footprint.py's idle figure.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

STEPS = [
    ("interpreter and hpcscale's CLI", ["hpcscale.lean_imports", "hpcscale.cli.main"]),
    ("pydantic and pydantic-core", ["pydantic", "pydantic.main"]),
    ("hpcscale.models and config", ["hpcscale.models", "hpcscale.config", "hpcscale.cli.services"]),
    ("SQLAlchemy and its SQLite dialect", ["sqlalchemy", "sqlalchemy.dialects.sqlite"]),
    ("the statestore", ["hpcscale.statestore"]),
    ("FastAPI (with OpenTelemetry)", ["fastapi"]),
    ("prometheus-client", ["prometheus_client"]),
    ("the routes", ["hpcscale.server.app", "hpcscale.server.run"]),
    ("httpx and tenacity", ["httpx", "tenacity"]),
    ("the manager", ["hpcscale.manager.loop"]),
    (
        "uvicorn, uvloop and httptools",
        ["uvicorn", "uvicorn.loops.uvloop", "uvicorn.protocols.http.httptools_impl"],
    ),
]


def rss() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()

    def kb(key: str) -> float:
        match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) / 1024 if match else float("nan")

    return kb("VmRSS"), kb("RssAnon")


def main() -> None:
    from hpcscale import lean_imports

    lean_imports.server_only()
    print("| step | VmRSS after | growth | of it anonymous | modules added |")
    print("|---|---|---|---|---|")
    before, anon = rss()
    print(f"| bare interpreter | {before:.1f} MB | | | |")
    for label, modules in STEPS:
        count = len(sys.modules)
        for name in modules:
            importlib.import_module(name)
        now, now_anon = rss()
        print(
            f"| {label} | {now:.1f} MB | +{now - before:.1f} MB | +{now_anon - anon:.1f} MB "
            f"| {len(sys.modules) - count} |"
        )
        before, anon = now, now_anon


if __name__ == "__main__":
    main()
