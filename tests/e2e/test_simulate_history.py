"""`hpcscale simulate --from-server` replays what the store really saw (issue 15: a sweep "from
the store's own history"): tasks run by `serve`'s local workers, read back over the API."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest

from hpcscale.cli.history import read_history
from tests.services import ServerProcess
from tests.slurm_fixtures import wait_for


def submit(server: ServerProcess, cwd: Path, *argv: str) -> int:
    ran = server.cli("submit", "--json", "--", *argv, cwd=cwd)
    assert ran.returncode == 0, ran.stderr
    return int(json.loads(ran.stdout)["ids"][0])


def test_simulate_replays_the_stores_own_history(serve: ServerProcess, tmp_path: Path) -> None:
    empty = serve.cli("simulate", "--from-server", cwd=tmp_path)
    assert empty.returncode == 2
    assert "--from-server: no task of queue default has run yet" in empty.stderr

    assert serve.cli("pause", "loc", cwd=tmp_path).returncode == 0
    never_ran = submit(serve, tmp_path, "sleep", "1")
    assert serve.cli("cancel", str(never_ran), cwd=tmp_path).returncode == 0
    assert serve.cli("resume", "loc", cwd=tmp_path).returncode == 0
    ids = [submit(serve, tmp_path, "sleep", "1")]
    time.sleep(2.5)  # a second arrival the replay must keep apart from the first
    ids += [submit(serve, tmp_path, "sleep", "2")]
    ids += [submit(serve, tmp_path, sys.executable, "-c", "raise SystemExit(3)")]
    wait_for("the tasks to end", lambda: all(serve.ended(t, tmp_path) for t in ids), 90)

    with serve.admin() as admin:
        real = [admin.get_task(task) for task in ids]
        workers = admin.list_workers(pool="loc")
        history = read_history(admin, serve.settings.pools)
    first = min(t.submitted_at for t in real)
    assert [(round(t.arrival, 6), round(t.duration, 6)) for t in history.tasks] == sorted(
        (round(t.submitted_at - first, 6), round(t.ended_at - t.started_at, 6))  # type: ignore[operator]
        for t in real
    )
    assert history.tasks[1].arrival >= 2.5
    assert [t.duration >= 1.0 for t in history.tasks[:2]] == [True, True]
    startups = [w.started_at - w.job_started_at for w in workers if w.job_started_at]
    assert startups, "local workers say when their job started"
    assert history.startup == pytest.approx(statistics.mean(startups))
    assert len(history.queue_waits) == len(startups)

    ran = serve.cli("simulate", "--from-server", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["tasks"], result["tasks_done"]) == (3, 3)
    assert result["source"] == "the store's history"
    assert "3 tasks that ran, of 4 ended in the store" in result["notes"]
    ran_for = sum(t.duration for t in history.tasks)
    assert result["busy_worker_seconds"] == pytest.approx(ran_for, abs=0.01)
    assert f"start-up {history.startup:.1f}s (measured in the store)" in result["notes"]
    swept = serve.cli("simulate", "--from-server", "--sweep", "efficiency=0.8,0.95", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.count("<- config") == 1 and "makespan s" in swept.stdout
    waits = f"queue wait measured in the store: {len(history.queue_waits)} waits"
    assert any(note.startswith(waits) for note in result["notes"])
