"""Slurm: its words as tables (states), its output read (parse), the command-line adapter, and
the pyslurm adapter that shares all of it but two calls."""
