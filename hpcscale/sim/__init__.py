"""The simulator: a config's pools on a workload, decided by the real policy, in simulated time.

Imported directly, each module one job: workloads (what it is fed), engine (the event loop, the
tasks and the workers), state (the simulated pools, queues and elements), cluster (Slurm's side of
an element's life), manager (the manager's cycle, on the real policy.py), limits (the hourly
ceiling, budgets, what it does not model), sweep (one key over several values), results (what it
measured, as text, JSON or a plot). The command is hpcscale/cli/simulate.py.
"""
