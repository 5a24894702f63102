"""Imported before httpx: keeps httpx's own command line out of the process.

httpx imports its CLI (rich, pygments, click: ~100 modules and ~6 MB of a login node's memory
in every serve, manager and worker) whenever those happen to be installed; nothing of hpcscale
runs it (bench/footprint.py, issue 16). A process that imported httpx first keeps its CLI.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
