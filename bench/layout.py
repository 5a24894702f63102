"""The shape of the package: files, the largest file, the longest function, import cycles, and
what `hpcscale --help` costs (wall time, modules imported). Issue 13's before/after table.

    python bench/layout.py [--runs N] [--root CHECKOUT]

--root measures another checkout (e.g. `git worktree add /tmp/before 783daa2`) with this
checkout's import reader (tests/importgraph.py, the one the architecture test uses).
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import importgraph

HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx", "tenacity")


def longest_function(package: Path) -> tuple[int, str]:
    best = (0, "")
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > best[0]:
                    best = (length, f"{path.relative_to(package.parent)}:{node.lineno} {node.name}")
    return best


def help_cost(runs: int, root: Path) -> tuple[float, int, list[str]]:
    """`python -m hpcscale --help` run in `root`, so the checkout there is the one imported."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "hpcscale", "--help"], capture_output=True, check=True, cwd=root
        )
        times.append(time.perf_counter() - start)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hpcscale", "--help"],
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    modules = [line.rsplit("|", 1)[-1].strip() for line in trace.stderr.splitlines()[1:]]
    heavy = sorted({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY})
    return statistics.median(times), len(modules), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    package = args.root.resolve() / "hpcscale"
    importgraph.PACKAGE = package
    files = sorted(package.rglob("*.py"))
    sizes = sorted(((p.read_text().count("\n"), p) for p in files), reverse=True)
    over = [f"{p.relative_to(package.parent)} {n}" for n, p in sizes if n > 450]
    length, where = longest_function(package)
    found = importgraph.cycles(importgraph.internal_graph(importgraph.read_package()))
    seconds, modules, heavy = help_cost(args.runs, args.root)
    print(f"python files            {len(files)}")
    print(
        f"largest file            {sizes[0][1].relative_to(package.parent)} ({sizes[0][0]} lines)"
    )
    print(f"files over 450 lines    {len(over)}: {', '.join(over) or '-'}")
    print(f"longest function        {where} ({length} lines)")
    print(
        f"import cycles           {len(found)}: {'; '.join(' <-> '.join(c) for c in found) or '-'}"
    )
    print(
        f"hpcscale --help         {seconds * 1000:.0f} ms median of {args.runs}, {modules} modules"
    )
    print(f"  heavy libraries       {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
