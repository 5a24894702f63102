"""`hpcscale demo` as a new user runs it: its summary must be what the store recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpcscale.statestore import open_store


def test_demo_summary_is_true() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hpcscale", "demo", "--json", "--tasks", "12", "--max-workers", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout)
    store = open_store(f"sqlite:///{Path(summary['directory'])}/state.db")
    try:
        tasks = store.list_tasks(queue="demo", limit=1000)
        workers = store.list_workers(pool="demo")
    finally:
        store.close()
    assert summary["tasks"] == len(tasks) == 12
    assert summary["succeeded"] == sum(t.state.value == "succeeded" for t in tasks) == 12
    assert summary["workers_started"] == len(workers) >= 1
    assert all(w.state.value == "ended" for w in workers)  # back to zero
    assert 1 <= summary["peak_workers"] <= summary["max_workers"] == 3
    busy = sum((t.ended_at or 0) - (t.started_at or 0) for t in tasks)
    spans = sum((w.ended_at or 0) - w.started_at for w in workers)
    assert abs(summary["busy_seconds"] - busy) < 0.2
    assert abs(summary["worker_seconds"] - spans) < 0.2
    assert 0 <= summary["idle_share"] < 1
