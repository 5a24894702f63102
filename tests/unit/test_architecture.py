"""The architecture's rules (DESIGN.md, "Module map"), checked on the source's imports.

Each rule names the parts it keeps apart; a new import that crosses one fails here with the module
and the import that crossed.
"""

from __future__ import annotations

import ast

import pytest

from tests.importgraph import Module, cycles, internal_graph, is_stdlib, read_package

MODULES = read_package()
PURE = ("hpcscale.policy", "hpcscale.estimate", "hpcscale.schedule")
PROCESS_CALLS = ("os.kill", "os.killpg", "os.system", "os.fork", "os.popen")


def within(module: Module, *parts: str) -> bool:
    return any(module.name == p or module.name.startswith(p + ".") for p in parts)


def crossings(parts: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m.name} imports {i}"
        for m in MODULES.values()
        if within(m, *parts)
        for i in m.imports
        if any(i == f or i.startswith(f + ".") for f in forbidden)
    )


def test_the_graph_is_read() -> None:
    # A reader that found nothing would pass every rule below.
    assert len(MODULES) > 40
    assert "hpcscale.models" in MODULES["hpcscale.client"].imports


def test_no_import_cycle() -> None:
    assert cycles(internal_graph(MODULES)) == []


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_only_the_standard_library_and_models(name: str) -> None:
    module = MODULES[name]
    allowed = {"hpcscale.models", "hpcscale.units"}
    assert sorted(i for i in module.imports if not is_stdlib(i) and i not in allowed) == []


def test_schedulers_know_nothing_of_the_store_server_or_client() -> None:
    forbidden = ("hpcscale.statestore", "hpcscale.server", "hpcscale.client", "httpx", "fastapi")
    assert crossings(("hpcscale.schedulers",), forbidden) == []


def test_worker_and_manager_reach_the_server_only_through_the_client() -> None:
    forbidden = ("hpcscale.statestore", "hpcscale.server", "sqlalchemy", "fastapi")
    assert crossings(("hpcscale.worker", "hpcscale.manager"), forbidden) == []


def test_only_proc_starts_or_signals_processes() -> None:
    offenders = sorted(
        f"{m.name}: {what}"
        for m in MODULES.values()
        if m.name != "hpcscale.proc"
        for what in [*(i for i in m.imports if i == "subprocess"), *m.calls]
        if what == "subprocess" or what.startswith(PROCESS_CALLS)
    )
    assert offenders == []


# The size budgets that keep each file about one thing (issue 13): a file that outgrows them is
# two parts.
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def test_no_file_outgrows_its_budget() -> None:
    too_long = sorted(
        f"{m.name}: {n} lines"
        for m in MODULES.values()
        if (n := m.path.read_text().count("\n")) > MAX_FILE_LINES
    )
    assert too_long == []


def test_no_function_outgrows_its_budget() -> None:
    too_long = sorted(
        f"{m.name}:{node.lineno} {node.name}: {length} lines"
        for m in MODULES.values()
        for node in ast.walk(ast.parse(m.path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    )
    assert too_long == []
