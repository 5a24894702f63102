"""Parsl on workload W: HighThroughputExecutor + SlurmProvider, max_blocks = 8, Parsl's default
strategy ("simple", max_idletime 120 s). One task = one python_app sleeping its duration.

    .../parsl-venv/bin/python -m bench.peers.parsl_driver --workload W.json --out r.json --workdir D

Run by bench/peers/run.py with Parsl's own venv (installed from PyPI by run.py), from the
repository root. Parsl is imported with importlib, not at the top level: the project's mypy
(strict, over bench/) runs in the project's venv, where Parsl is not installed, so this file
type-checks there with Parsl's objects as Any, and no pyproject override is needed.

What it takes to run here at all (issue 7): the venv's bin on PATH (the block's job script runs
`process_worker_pool.py`), `worker_init` activating the venv, `exclusive=False` and
`cores_per_node=1` (else each block asks for a whole node). `init_blocks=0` and `min_blocks=0`:
nothing is held before the first task arrives, as for the other two systems. The lab has no
accounting (sacct), so SlurmProvider falls back to squeue for job states, by itself.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.peers.common import (
    DriverResult,
    Workload,
    driver_args,
    live_jobs,
    python_version,
    run_bursts,
    version_of,
    wait_done,
    wait_jobs_gone,
)

JOB_PREFIX = "parsl.htex."  # Parsl names block jobs parsl.<executor label>.block-<n>.<time>


def sleep_for(seconds: float) -> float:
    """The task: runs in a Parsl worker (serialized by value: this module is __main__)."""
    import time

    time.sleep(seconds)
    return seconds


def config(work: Workload, root: Path) -> Any:
    parsl_config = importlib.import_module("parsl.config")
    htex = importlib.import_module("parsl.executors")
    providers = importlib.import_module("parsl.providers")
    venv = Path(sys.prefix)
    provider = providers.SlurmProvider(
        partition=work.partition,
        nodes_per_block=1,
        cores_per_node=1,
        exclusive=False,
        init_blocks=0,
        min_blocks=0,
        max_blocks=work.cap,
        walltime=work.walltime,
        worker_init=f"source {venv}/bin/activate",
    )
    executor = htex.HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        cores_per_worker=1,
        max_workers_per_node=1,
        provider=provider,
    )
    return parsl_config.Config(executors=[executor], run_dir=str(root / "runinfo"))


def drive(work: Workload, out: Path, root: Path, timeout: float) -> DriverResult:
    result = DriverResult(
        "parsl",
        {"parsl": version_of("parsl"), "python": python_version()},
        notes=["strategy: Parsl's default (simple, max_idletime 120 s, 5 s period)"],
    )
    os.environ["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    parsl = importlib.import_module("parsl")
    app = parsl.python_app(sleep_for, executors=["htex"])
    dfk = parsl.load(config(work, root))
    futures: list[Any] = []
    result.done = [0.0] * work.tasks
    lock = threading.Lock()
    try:

        def on_done(index: int) -> Any:
            def record(future: Any) -> None:
                with lock:
                    result.done[index] = time.time()
                    if future.exception() is not None:
                        result.failed += 1

            return record

        def submit(first: int, durations: list[float]) -> None:
            now = time.time()
            for n, duration in enumerate(durations):
                future = app(duration)
                future.add_done_callback(on_done(first + n))
                futures.append(future)
            result.submitted += [now] * len(durations)

        result.t0 = run_bursts(work, submit)
        if not wait_done(result.done, timeout):
            result.notes.append("not every task finished before the timeout")
        # Parsl scales its blocks in by itself (after max_idletime): wait for that.
        result.jobs_gone = wait_jobs_gone(JOB_PREFIX, timeout=timeout)
        if result.jobs_gone is None:
            result.notes.append("Parsl still held jobs at the timeout (cancelled)")
    finally:
        dfk.cleanup()
        leftover = live_jobs(JOB_PREFIX)
        if leftover:
            subprocess.run(["scancel", *leftover], check=False, timeout=30)
            result.notes.append(f"cancelled leftover jobs {leftover}")
        result.write(out)
    return result


def main(argv: list[str] | None = None) -> int:
    work, out, root, timeout = driver_args(argv)
    result = drive(work, out, root, timeout)
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
