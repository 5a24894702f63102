"""hpcscale: keep the right number of worker jobs on an HPC cluster for a backlog of tasks."""

__version__ = "0.1.0"
