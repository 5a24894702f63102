"""Behaviour every scheduler must share, run on the real Slurm lab and on the local backend.

Slurm cases are marked `slurm` and need SLURM_CONF (scripts/slurm-lab.sh); local cases need
nothing. Jobs are short (`sleep 1`-ish) and every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcscale.schedulers.base import (
    IN_FLIGHT,
    NORMAL_END,
    TERMINAL,
    ElementState,
    ElementStatus,
    Scheduler,
)
from hpcscale.schedulers.local.adapter import LocalScheduler
from hpcscale.schedulers.slurm.adapter import SlurmScheduler
from tests.slurm_fixtures import REPO, require_slurm, script, unique, wait_for

S = ElementState


@dataclass
class Backend:
    kind: str
    manager: str
    tmp: Path
    new: Callable[[], Scheduler]  # a fresh object on the same cluster/state: a "restart"
    busy: tuple[list[str], int]  # (directives, count) that leave some elements pending
    ctor: str  # python source that builds the same scheduler in another process

    def script(self, body: str, *directives: str) -> str:
        base = [f"--output={self.tmp}/%A_%a.out", "--time=5"] if self.kind == "slurm" else []
        return script(body, *base, *directives)


@pytest.fixture(params=["slurm", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    manager = unique("m")
    made: list[Scheduler] = []
    if request.param == "slurm":
        request.applymarker(pytest.mark.slurm)
        require_slurm()

        def new() -> Scheduler:
            made.append(SlurmScheduler(manager, "cpu", settle=0.5, retry_delay=0.2))
            return made[-1]

        ctor = (
            "from hpcscale.schedulers.slurm.adapter import SlurmScheduler as C; "
            f"s = C({manager!r}, 'cpu')"
        )
        # 4 nodes x 4 CPUs: 4-CPU elements run four at a time, so six leave two pending.
        busy = (["--cpus-per-task=4"], 6)
    else:
        state = tmp_path / "state"

        def new() -> Scheduler:
            made.append(LocalScheduler(manager, "cpu", state, time_limit=120, slots=4))
            return made[-1]

        ctor = (
            "from hpcscale.schedulers.local.adapter import LocalScheduler as C; "
            "from pathlib import Path; "
            f"s = C({manager!r}, 'cpu', Path({str(state)!r}), time_limit=120, slots=4)"
        )
        busy = ([], 6)  # four slots: six leave two pending
    yield Backend(request.param, manager, tmp_path, new, busy, ctor)
    # Leave nothing running behind, whatever the test did.
    if made:
        ids = sorted({e.job_id for e in made[-1].status() if e.state in IN_FLIGHT})
        if ids:
            made[-1].cancel(ids)


def states(scheduler: Scheduler, tag: str) -> dict[str, ElementState]:
    return {e.element_id: e.state for e in scheduler.find(tag)}


def test_state_sets_are_consistent() -> None:
    assert NORMAL_END <= TERMINAL
    assert S.UNKNOWN not in TERMINAL  # unknown counts against the hard max
    assert set(ElementState) == TERMINAL | IN_FLIGHT
    assert not TERMINAL & IN_FLIGHT


def test_ten_elements_go_pending_running_completed(backend: Backend) -> None:
    scheduler = backend.new()
    tag = unique("tag")
    sub = scheduler.submit(backend.script("sleep 1"), 10, tag)
    assert sub.count == 10 and len(sub.job_ids) == 1 and sub.tag == tag
    seen: dict[str, list[ElementState]] = {}

    def all_done() -> bool:
        elements = scheduler.find(tag)
        for e in elements:
            history = seen.setdefault(e.element_id, [])
            if not history or history[-1] is not e.state:
                history.append(e.state)
        return len(elements) == 10 and all(e.state in TERMINAL for e in elements)

    wait_for("10 elements to end", all_done, timeout=60, every=0.1)
    expected = {f"{sub.job_ids[0]}_{i}" for i in range(10)}
    assert set(seen) == expected
    for element_id, history in seen.items():
        assert history[0] in (S.PENDING, S.RUNNING), (element_id, history)
        assert S.RUNNING in history, (element_id, history)
        assert history[-1] is S.COMPLETED, (element_id, history)
    element = scheduler.find(tag)[0]
    assert element.pool == "cpu" and element.name == f"hpcscale.{backend.manager}.cpu"


def test_cancel_pending_only_leaves_running_alone(backend: Backend) -> None:
    scheduler = backend.new()
    tag = unique("tag")
    directives, count = backend.busy
    sub = scheduler.submit(backend.script("sleep 60", *directives), count, tag)

    def mixed() -> dict[str, ElementState] | None:
        # Settled: some running, some pending, unchanged half a second later (elements that
        # are about to start would make "pending only" race with the start).
        first = states(scheduler, tag)
        time.sleep(0.5)
        now = states(scheduler, tag)
        values = list(now.values())
        settled = now == first and len(now) == count
        return now if settled and S.RUNNING in values and S.PENDING in values else None

    before = wait_for("some running, some pending", mixed, timeout=30)
    scheduler.cancel(sub.job_ids, pending_only=True)
    pending = [e for e, s in before.items() if s is S.PENDING]
    running = [e for e, s in before.items() if s is S.RUNNING]

    def pending_cancelled() -> dict[str, ElementState] | None:
        now = states(scheduler, tag)
        return now if all(now[e] is S.CANCELLED for e in pending) else None

    after = wait_for("pending elements cancelled", pending_cancelled, timeout=30)
    assert all(after[e] is S.RUNNING for e in running), after
    # Cancelling one running element by its element id ends that one only.
    scheduler.cancel([running[0]])
    wait_for(
        "one running element cancelled",
        lambda: states(scheduler, tag)[running[0]] is S.CANCELLED,
        timeout=30,
    )
    assert all(states(scheduler, tag)[e] is S.RUNNING for e in running[1:])
    scheduler.cancel(sub.job_ids)
    wait_for(
        "all ended",
        lambda: all(s in TERMINAL for s in states(scheduler, tag).values()),
        timeout=30,
    )
    scheduler.cancel(sub.job_ids)  # cancelling what already ended is not an error


def test_failed_exit_is_failed_and_find_filters_by_tag(backend: Backend) -> None:
    scheduler = backend.new()
    ok_tag, bad_tag = unique("ok"), unique("bad")
    scheduler.submit(backend.script("true"), 1, ok_tag)
    scheduler.submit(backend.script("exit 3"), 2, bad_tag)

    def ended(tag: str, n: int) -> list[ElementStatus] | None:
        found = scheduler.find(tag)
        return found if len(found) == n and all(e.terminal for e in found) else None

    bad = wait_for("failing elements to end", lambda: ended(bad_tag, 2), timeout=30)
    ok = wait_for("good element to end", lambda: ended(ok_tag, 1), timeout=30)
    assert [e.state for e in bad] == [S.FAILED, S.FAILED]
    assert ok[0].state is S.COMPLETED
    assert {e.tag for e in bad} == {bad_tag}
    every = {e.tag for e in scheduler.status()}
    assert {ok_tag, bad_tag} <= every
    assert scheduler.status([ok_tag]) == scheduler.find(ok_tag)


def test_status_survives_restart_of_the_submitting_process(backend: Backend) -> None:
    tag = unique("tag")
    body = backend.script("sleep 2")
    program = (
        f"{backend.ctor}\n"
        "import json, sys\n"
        f"sub = s.submit(sys.stdin.read(), 3, {tag!r})\n"
        "print(json.dumps({'job_ids': sub.job_ids, 'count': sub.count}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    submitted = json.loads(done.stdout)
    assert submitted["count"] == 3
    # The submitting process is gone; a brand-new scheduler object sees its elements.
    scheduler = backend.new()
    first = scheduler.find(tag)
    assert {e.element_id for e in first} == {f"{submitted['job_ids'][0]}_{i}" for i in range(3)}
    assert all(e.state in IN_FLIGHT or e.state is S.COMPLETED for e in first)
    final = wait_for(
        "elements of the dead submitter to complete",
        lambda: (lambda f: f if all(e.terminal for e in f) else None)(backend.new().find(tag)),
        timeout=60,
    )
    assert [e.state for e in final] == [S.COMPLETED] * 3
