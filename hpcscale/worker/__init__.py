"""The worker, the process each batch job runs: options (one table for config keys, flags and
the job script's argv), rules (pure: when to claim, when to stop), runs (tasks as process
groups), jobenv (what the job's environment says), loop (the I/O that ties them together)."""
