"""The soak's checks catch what they claim to (tests/soak/checks.py), on made-up histories."""

from __future__ import annotations

from tests.soak.checks import Execution, Plan, TaskEvent, TaskRow, check

OK = Plan(0, "ok", "qa", 0.1, 0, 4, None, None)
POISON = Plan(0, "poison", "qa", 0.1, 0, 2, None, None)


def events(*steps: tuple[float, str, str | None]) -> list[TaskEvent]:
    return [TaskEvent(i + 1, ts, kind, 1, detail) for i, (ts, kind, detail) in enumerate(steps)]


def run(
    start: float, end: float | None, result: str | None, attempt: int = 1, **kw: float
) -> Execution:
    return Execution(1, attempt, 100 + int(start), "1", "7", "ok", start, end, result, **kw)


CLEAN = events(
    (0.0, "submitted", None),
    (1.0, "claimed", "fence 1"),
    (2.0, "requeued", "worker lost: its job ended"),
    (3.0, "claimed", "fence 2"),
    (4.0, "succeeded", None),
)


def test_a_clean_history_passes() -> None:
    runs = [run(1.1, None, None, last_alive=1.5), run(3.1, 3.5, "0", attempt=2)]
    found = check([OK], {0: 1}, set(), [TaskRow(1, "succeeded", 2, 4, None)], CLEAN, runs)
    assert found.problems == [] and found.double_runs == found.mismatches == 0


def test_a_killed_run_still_alive_after_the_next_start_is_a_double_run() -> None:
    runs = [run(1.1, None, None, last_alive=3.3), run(3.1, 3.5, "0", attempt=2)]
    found = check([OK], {0: 1}, set(), [TaskRow(1, "succeeded", 2, 4, None)], CLEAN, runs)
    assert found.double_runs == 1
    assert "DOUBLE RUN" in found.problems[0]


def test_an_event_without_its_task_breaks_the_path() -> None:
    """The worker_gone bug: the requeue was logged without a task id, so the task's own log
    goes claimed -> claimed."""
    log = [e for e in CLEAN if e.kind != "requeued"]
    runs = [run(1.1, None, None, last_alive=1.5), run(3.1, 3.5, "0", attempt=2)]
    found = check([OK], {0: 1}, set(), [TaskRow(1, "succeeded", 2, 4, None)], log, runs)
    assert found.mismatches == 1
    assert "task.claimed is not a transition from running" in found.problems[0]


def test_a_success_the_task_did_not_write_is_a_mismatch() -> None:
    runs = [run(1.1, None, None, last_alive=1.5), run(3.1, 3.5, "137", attempt=2)]
    found = check([OK], {0: 1}, set(), [TaskRow(1, "succeeded", 2, 4, None)], CLEAN, runs)
    assert found.mismatches == 1 and "ended 137" in found.problems[0]


def test_attempts_must_be_claims_minus_releases() -> None:
    found = check([OK], {0: 1}, set(), [TaskRow(1, "succeeded", 1, 4, None)], CLEAN, [])
    assert "attempts 1, but claims - releases = 2" in " ".join(found.problems)


def test_lost_unacknowledged_and_wrong_states_are_counted() -> None:
    rows = [TaskRow(1, "waiting", 0, 4, None), TaskRow(2, "dead", 2, 2, None)]
    found = check([OK, POISON], {0: 1}, set(), rows, [], [])
    assert found.lost == 1 and found.unacknowledged == 1
    poison_by_result = events(
        (0.0, "submitted", None), (1.0, "claimed", "fence 1"), (1.5, "failed", "exit 7: x"),
        (1.5, "dead", None),
    )  # fmt: skip
    runs = [run(1.1, 1.2, "7")]
    found = check([POISON], {0: 1}, set(), [TaskRow(1, "dead", 1, 2, None)], poison_by_result, runs)
    assert found.wrong_state == 1
