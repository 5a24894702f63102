"""The shape of the package: files, the largest file, the longest function, import cycles, and
what `hpcscale --help` costs (wall time, modules imported). Issue 13's before/after table.

    python bench/layout.py [--runs N]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hpcscale"
HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx", "tenacity")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every hpcscale module `path` imports, at any depth, outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name == "hpcscale" or name.startswith("hpcscale.")}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in imports_of(path) if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return found


def longest_function() -> tuple[int, str]:
    best = (0, "")
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > best[0]:
                    best = (length, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    return best


def help_cost(runs: int) -> tuple[float, int, list[str]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "hpcscale", "--help"], capture_output=True, check=True
        )
        times.append(time.perf_counter() - start)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hpcscale", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    modules = [line.rsplit("|", 1)[-1].strip() for line in trace.stderr.splitlines()[1:]]
    heavy = sorted({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY})
    return statistics.median(times), len(modules), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    files = sorted(PACKAGE.rglob("*.py"))
    sizes = sorted(((p.read_text().count("\n"), p) for p in files), reverse=True)
    over = [f"{p.relative_to(PACKAGE.parent)} {n}" for n, p in sizes if n > 450]
    length, where = longest_function()
    found = cycles(import_graph())
    seconds, modules, heavy = help_cost(args.runs)
    print(f"python files            {len(files)}")
    print(
        f"largest file            {sizes[0][1].relative_to(PACKAGE.parent)} ({sizes[0][0]} lines)"
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
