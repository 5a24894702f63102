"""hpcscale: keep the right number of worker jobs on an HPC cluster for a backlog of tasks."""

import sys

__version__ = "0.1.0"

# httpx imports its own command line (rich, pygments, click: ~100 modules, ~6 MB of a login
# node's memory in every serve, manager and worker) whenever those happen to be installed;
# nothing of hpcscale runs it (bench/footprint.py, issue 16). Set before any hpcscale module
# imports httpx; a program that imported httpx first keeps its CLI.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
