"""Table tests of the pure estimators (hpcscale/estimate.py): no I/O, no clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcscale import estimate

finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        ([7.0], 7.0),
        ([5.0, 5.0, 5.0], 5.0),
        # newest first: the newest sample weighs alpha, the history 1 - alpha
        ([10.0, 0.0], 0.2 * 10.0),
        ([0.0, 10.0], 0.8 * 10.0),
        ([3.0, 2.0, 1.0], 0.2 * 3.0 + 0.8 * (0.2 * 2.0 + 0.8 * 1.0)),
    ],
)
def test_ewma_table(samples: list[float], expected: float | None) -> None:
    got = estimate.ewma(samples)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_ewma_alpha_one_is_the_newest_sample() -> None:
    assert estimate.ewma([4.0, 100.0, 9.0], alpha=1.0) == 4.0


def test_one_odd_task_moves_the_estimate_by_alpha_only() -> None:
    steady = [60.0] * 50
    odd = estimate.ewma([6000.0, *steady])
    assert odd == pytest.approx(60.0 + estimate.ALPHA * (6000.0 - 60.0))
    # ...and it fades: ten normal tasks later it is within 11 % of its weight again
    later = estimate.ewma([60.0] * 10 + [6000.0, *steady])
    assert later is not None and later < 60.0 + 0.11 * estimate.ALPHA * 5940.0


def test_ewma_follows_a_campaign_whose_tasks_get_longer() -> None:
    samples = [600.0] * 30 + [60.0] * 30  # newest first: the last 30 tasks took 10 min
    got = estimate.ewma(samples)
    assert got is not None and got == pytest.approx(600.0, rel=1e-2)


@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0.01, max_value=1.0))
def test_ewma_stays_within_the_samples(samples: list[float], alpha: float) -> None:
    got = estimate.ewma(samples, alpha)
    assert got is not None
    assert min(samples) - 1e-6 <= got <= max(samples) + 1e-6


@pytest.mark.parametrize(
    ("samples", "prior", "expected"),
    [
        ([], 300.0, 300.0),  # no results yet: the config's prior
        ([12.0], 300.0, 12.0),  # one result beats the prior
        ([], 0.0, 0.1),  # never below 0.1 s (the policy divides by it)
        ([0.0, 0.0], 300.0, 0.1),  # instant tasks: still 0.1 s
        ([0.05], 300.0, 0.1),
    ],
)
def test_task_duration_table(samples: list[float], prior: float, expected: float) -> None:
    assert estimate.task_duration(samples, prior) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("samples", "prior", "expected"),
    [
        ([], 0.0, 0.0),
        ([], 45.0, 45.0),
        ([30.0], 45.0, 30.0),
        ([-5.0], 45.0, 0.0),  # clock skew between hosts: never negative
    ],
)
def test_queue_wait_table(samples: list[float], prior: float, expected: float) -> None:
    assert estimate.queue_wait(samples, prior) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("per_queue", "default", "expected"),
    [
        ([], 300.0, 300.0),
        ([(10.0, 0), (20.0, 0)], 300.0, 300.0),  # nothing waiting anywhere: the default
        ([(10.0, 1), (20.0, 1)], 300.0, 15.0),
        ([(10.0, 3), (100.0, 1)], 300.0, 32.5),  # weighted by backlog
        ([(10.0, 0), (100.0, 5)], 300.0, 100.0),  # an empty queue does not count
    ],
)
def test_blended_duration_table(
    per_queue: list[tuple[float, int]], default: float, expected: float
) -> None:
    assert estimate.blended_duration(per_queue, default) == pytest.approx(expected)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.1, max_value=1e5, allow_nan=False),
            st.integers(min_value=0, max_value=10_000),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_blended_duration_is_between_the_queues(per_queue: list[tuple[float, int]]) -> None:
    got = estimate.blended_duration(per_queue, default=math.pi)
    weighted = [d for d, n in per_queue if n > 0]
    if not weighted:
        assert got == math.pi
    else:
        assert min(weighted) * (1 - 1e-9) <= got <= max(weighted) * (1 + 1e-9)


def test_idle_overhead_is_paid_time_less_the_tasks_averaged_over_ended_workers() -> None:
    # (registered at, ended at, tasks done, slots); tasks of 3.5 s
    assert estimate.idle_overhead([], 3.5) is None
    one = [(0.0, 100.0, 28, 1)]  # 100 s registered, 98 s of tasks: 2 s idle
    assert estimate.idle_overhead(one, 3.5) == pytest.approx(2.0)
    two_slots = [(0.0, 100.0, 56, 2)]  # 56 tasks over two slots: 98 s of each slot
    assert estimate.idle_overhead(two_slots, 3.5) == pytest.approx(2.0)
    idle_only = [(0.0, 20.0, 0, 1)]  # a worker that found nothing: all of it overhead
    assert estimate.idle_overhead(one + idle_only, 3.5) == pytest.approx(11.0)
    lucky = [(0.0, 90.0, 28, 1)]  # its tasks ran short: never below zero
    assert estimate.idle_overhead(lucky, 3.5) == 0.0


def test_idle_overhead_reads_the_newest_workers_only() -> None:
    old = [(float(t), t + 100.0, 0, 1) for t in range(estimate.RECENT_WORKERS)]
    new = [(1e6 + t, 1e6 + t + 1.0, 0, 1) for t in range(estimate.RECENT_WORKERS)]
    assert estimate.idle_overhead(old + new, 1.0) == pytest.approx(1.0)


def test_startup_overhead_is_job_start_to_registration_over_the_newest_workers() -> None:
    """(job started at, registered at): the mean of the differences, the newest registrations
    only; None before any (the prior stands); never below 0 (two hosts' clocks)."""
    assert estimate.startup_overhead([]) is None
    assert estimate.startup_overhead([(100.0, 102.5)]) == pytest.approx(2.5)
    assert estimate.startup_overhead([(100.0, 102.5), (200.0, 203.5)]) == pytest.approx(3.0)
    old = [(float(t), t + 60.0) for t in range(estimate.RECENT_WORKERS)]  # 60 s each, long ago
    new = [(1000.0 + t, 1002.0 + t) for t in range(estimate.RECENT_WORKERS)]  # 2 s each
    assert estimate.startup_overhead(old + new) == pytest.approx(2.0)
    assert estimate.startup_overhead([(105.0, 100.0)]) == 0.0
