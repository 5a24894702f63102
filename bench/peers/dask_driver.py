"""dask-jobqueue on workload W: SLURMCluster(cores=1, processes=1) with
cluster.adapt(minimum_jobs=0, maximum_jobs=8) and dask's default adaptive settings (interval
1 s, wait_count 3, target_duration 5 s). One task = client.submit(time.sleep, d, pure=False)
(identical arguments would otherwise share one key and run once).

    .../dask-venv/bin/python -m bench.peers.dask_driver --workload W.json --out r.json --workdir D

Run by bench/peers/run.py with dask-jobqueue's own venv (installed from PyPI by run.py), from
the repository root. dask is imported with importlib, not at the top level, so the project's
mypy (strict, over bench/, in a venv without dask) type-checks this file with dask as Any.

The lab's nodes declare no memory (RealMemory=1 MB), so `#SBATCH --mem=...` is refused
("Requested node configuration is not available"): `job_directives_skip=["--mem"]` leaves it
out; `memory="1GB"` still sets the worker's own memory limit.
"""

from __future__ import annotations

import importlib
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

JOB_NAME = "peers-dask"


def drive(work: Workload, out: Path, root: Path, timeout: float) -> DriverResult:
    result = DriverResult(
        "dask-jobqueue",
        {
            "dask-jobqueue": version_of("dask-jobqueue"),
            "distributed": version_of("distributed"),
            "python": python_version(),
        },
        notes=["adapt: dask's defaults (interval 1 s, wait_count 3, target_duration 5 s)"],
    )
    jobqueue = importlib.import_module("dask_jobqueue")
    distributed = importlib.import_module("distributed")
    cluster = jobqueue.SLURMCluster(
        cores=1,
        processes=1,
        memory="1GB",
        queue=work.partition,
        walltime=work.walltime,
        job_name=JOB_NAME,
        job_directives_skip=["--mem"],
        python=sys.executable,
        log_directory=str(root / "logs"),
        local_directory=str(root / "local"),
    )
    client: Any = None
    futures: dict[int, Any] = {}
    result.done = [0.0] * work.tasks
    lock = threading.Lock()
    try:
        cluster.adapt(minimum_jobs=0, maximum_jobs=work.cap)
        client = distributed.Client(cluster)

        def on_done(index: int) -> Any:
            def record(future: Any) -> None:
                with lock:
                    result.done[index] = time.time()
                    if future.status != "finished":
                        result.failed += 1
                    # Collected: let go of it, as a user would, so no worker is kept alive
                    # for holding its (None) result in memory.
                    futures.pop(index, None)

            return record

        def submit(first: int, durations: list[float]) -> None:
            now = time.time()
            for n, duration in enumerate(durations):
                future = client.submit(time.sleep, duration, pure=False)
                with lock:
                    futures[first + n] = future  # until done: a dropped future is cancelled
                future.add_done_callback(on_done(first + n))
            result.submitted += [now] * len(durations)

        result.t0 = run_bursts(work, submit)
        if not wait_done(result.done, timeout):
            result.notes.append("not every task finished before the timeout")
        # adapt() retires idle workers by itself: wait for their jobs to go.
        result.jobs_gone = wait_jobs_gone(JOB_NAME, timeout=timeout)
        if result.jobs_gone is None:
            result.notes.append("dask still held jobs at the timeout (cancelled)")
    finally:
        if client is not None:
            client.close()
        cluster.close()
        leftover = live_jobs(JOB_NAME)
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
