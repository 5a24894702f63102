"""Imported before httpx: keeps httpx's own command line out of the process.

httpx imports its CLI (rich, pygments, click: ~100 modules and ~6 MB of a login node's memory
in every serve, manager and worker) whenever those happen to be installed; nothing of hpcscale
runs it (bench/footprint.py, issue 16). A process that imported httpx first keeps its CLI.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def server_only() -> None:
    """For the `server`/`serve` process, before FastAPI: keep pydantic.v1 out.

    FastAPI imports pydantic.v1 (a second copy of pydantic: 22 modules, ~1 MB of memory)
    only to ask of each route's types whether they are v1 models; hpcscale has none, and
    with pydantic.v1 unimportable FastAPI answers no, as it does when pydantic ships without it.
    Only here, not on import: a program using hpcscale's Python API may use pydantic.v1.
    """
    sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
