"""The simulator: a config's pools on a workload, decided by the real policy, in simulated time.

Three rooms, imported directly: workloads (what it is fed), engine (the event loop), results
(what it measured, as text, JSON or a plot). The command is hpcscale/cli/simulate.py.
"""
