"""Table tests of the PURE scaling policy (hpcscale/policy.py): DESIGN.md's sizing rule, every
cap with the reason that names it, controls, the breaker, and a closed-loop regression test that
the decisions never oscillate (in the spirit of Parsl's test_regression_1621 / issue 3696).

No I/O, no clock: every test builds an Observation by hand and reads the Decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcscale.config import PoolConfig, SlurmConfig, WorkerConfig, rules_from_pool
from hpcscale.models import BreakerState, Control
from hpcscale.policy import (
    STARTUP_SECONDS,
    Budget,
    Decision,
    Observation,
    PoolRules,
    PoolState,
    crash_alarm,
    decide,
    effective_bounds,
    needed_workers,
)

RULES: dict[str, Any] = {
    "min_workers": 0,
    "max_workers": 50,
    "max_pending": 10,
    "max_submit_per_cycle": 20,
    "target_drain_time": 1800.0,
    # The deadline alone sizes these tables (efficiency 1: no overhead is worth a worker);
    # the efficiency rule has its own tests below.
    "efficiency": 1.0,
}


def rules(**changes: Any) -> PoolRules:
    return PoolRules(**{**RULES, **changes})


def obs(claimable: int = 0, est: float = 60.0, **changes: Any) -> Observation:
    changes.setdefault("claimable_slots", claimable)
    changes.setdefault("now", 1_000_000.0)
    return Observation(claimable=claimable, est_duration=est, **changes)


def reasons(decision: Decision) -> str:
    return " | ".join(decision.reasons)


# ---------------------------------------------------------------------- sizing: needed


@pytest.mark.parametrize(
    ("case", "rule", "claimable", "slots_asked", "est", "needed"),
    [
        # bursts: the drain target decides
        ("burst", {}, 1000, 1000, 60.0, 34),  # 60000 slot-s / 1800 s = 33.3
        ("burst of short tasks", {}, 100_000, 100_000, 1.0, 56),
        ("burst, 15 min target", {"target_drain_time": 900.0}, 1000, 1000, 60.0, 67),
        # trickles: one worker, never zero while anything is claimable
        ("one task", {}, 1, 1, 60.0, 1),
        ("a few short tasks", {}, 5, 5, 10.0, 1),
        ("one instant task", {}, 1, 1, 0.1, 1),
        # long tails: never more workers than tasks can keep busy at once
        ("3 tasks of 10 h", {}, 3, 3, 36_000.0, 3),
        ("3 tasks of 10 h, 2 slots", {"slots": 2}, 3, 3, 36_000.0, 2),
        # slots > 1
        ("4 slots", {"slots": 4}, 1000, 1000, 60.0, 9),  # 60000 / (4 * 1800) = 8.3
        ("4 slots, 6 hour-long tasks", {"slots": 4}, 6, 6, 3600.0, 2),
        ("multi-slot tasks", {"slots": 4}, 10, 40, 3600.0, 10),  # 40 slots / 4 per worker
        # a zero drain target counts as 1 s: as many as can be busy
        ("no drain target", {"target_drain_time": 0.0}, 7, 7, 60.0, 7),
        ("nothing claimable", {}, 0, 0, 60.0, 0),
        # max_tasks and a finite life change what one worker does, not how many are needed
        ("max_tasks", {"max_tasks": 5, "lifetime": 3600.0}, 1000, 1000, 60.0, 34),
        ("max_tasks=1", {"max_tasks": 1}, 10, 10, 60.0, 1),
    ],
)
def test_needed_workers(
    case: str, rule: dict[str, Any], claimable: int, slots_asked: int, est: float, needed: int
) -> None:
    got, why = needed_workers(rules(**rule), obs(claimable, est, claimable_slots=slots_asked))
    assert got == needed, (case, why)
    assert why, "every sizing carries its arithmetic"


def test_needed_explains_the_arithmetic_and_a_workers_life() -> None:
    _, why = needed_workers(rules(max_tasks=5, lifetime=3600.0), obs(1000, 60.0))
    text = " ".join(why)
    assert "1000 claimable" in text and "needs 34" in text and "needed 34" in text
    assert "~5 tasks in its life" in text  # min(max_tasks, 3590 s / 60 s)
    _, why = needed_workers(rules(lifetime=610.0), obs(1000, 60.0))
    assert "~10 tasks in its life" in " ".join(why)  # (610 - startup) / 60


# ---------------------------------------------------------------------- wall-time edges


def test_lifetime_shorter_than_a_task_submits_nothing() -> None:
    """A worker whose whole life is shorter than one task can never run one: the worker refuses
    to claim without time left (invariant 6) and ends at once, so submitting it only churns jobs
    through the scheduler, cycle after cycle, while the backlog never moves."""
    decision = decide(rules(lifetime=600.0), obs(10, est=3600.0))
    assert decision.needed == 0
    assert decision.submit == 0, reasons(decision)
    assert "shorter than one task" in reasons(decision)


def test_lifetime_shorter_than_a_task_keeps_the_warm_floor() -> None:
    """min_workers is the admin's explicit wish: the floor stands even then."""
    decision = decide(rules(lifetime=600.0, min_workers=2), obs(10, est=3600.0))
    assert (decision.desired, decision.submit) == (2, 2)


@pytest.mark.parametrize(
    ("lifetime", "est", "submits"),
    [
        (3600.0 + STARTUP_SECONDS, 3600.0, True),  # exactly one task fits
        (3600.0 + STARTUP_SECONDS - 1.0, 3600.0, False),  # startup eats the margin
        (math.inf, 1e6, True),  # no wall time at all
        (7200.0, 0.1, True),
    ],
)
def test_walltime_edges(lifetime: float, est: float, submits: bool) -> None:
    decision = decide(rules(lifetime=lifetime), obs(5, est=est))
    assert (decision.submit > 0) is submits, reasons(decision)


# ---------------------------------------------------------------------- decide: table


@dataclass(frozen=True)
class Row:
    case: str
    rule: dict[str, Any]
    seen: dict[str, Any]
    desired: int
    submit: int
    cancel: int = 0
    state: PoolState | None = None
    reason: str | None = None


ROWS = [
    # idle / trickle / ready / busy
    Row("empty system", {}, {}, 0, 0, state=PoolState.IDLE, reason="no claimable tasks"),
    Row("one task arrives", {}, {"claimable": 1}, 1, 1, state=PoolState.WARMING,
        reason="submit 1 to close the shortfall"),
    Row("one task, worker pending", {}, {"claimable": 1, "pending": 1}, 1, 0,
        state=PoolState.WARMING),
    Row("one task, worker there", {}, {"claimable": 1, "registered": 1}, 1, 0,
        state=PoolState.BUSY),
    Row("no work, workers there", {}, {"registered": 2}, 0, 0, state=PoolState.READY),
    # bursts: each cap binds in turn and is named
    Row("burst: max_pending binds", {}, {"claimable": 1000}, 34, 10,
        reason="capped by max_pending"),
    Row("burst: max_submit_per_cycle binds", {"max_pending": 100}, {"claimable": 1000}, 34, 20,
        reason="capped by max_submit_per_cycle"),
    Row("burst: array limit binds", {"max_pending": 100, "max_array_size": 3},
        {"claimable": 1000}, 34, 3, reason="capped by array limit"),
    Row("max_pending counts unconfirmed", {}, {"claimable": 1000, "pending": 4, "unconfirmed": 3},
        34, 3, reason="capped by max_pending"),
    Row("max_pending already full", {}, {"claimable": 1000, "pending": 12}, 34, 0,
        reason="capped by max_pending"),
    # the hard max counts unconfirmed + pending + starting + registered, leaving ones included
    Row("max_workers counts everything in flight",
        {"max_pending": 100, "max_submit_per_cycle": 100},
        {"claimable": 100_000, "unconfirmed": 2, "pending": 2, "starting": 2, "registered": 40,
         "leaving_soon": 6}, 50, 4, state=PoolState.BUSY, reason="capped by max_workers"),
    Row("at the hard max", {"max_pending": 100},
        {"claimable": 100_000, "registered": 44, "leaving_soon": 10, "pending": 6}, 50, 0,
        reason="capped by max_workers"),
    Row("above the max after set-max", {}, {"claimable": 1000, "registered": 10,
        "max_workers_override": 5}, 5, 0),
    # leaving workers are replaced (within the hard max)
    Row("replace leaving workers", {}, {"claimable": 1000, "registered": 34, "leaving_soon": 4},
        34, 4, reason="submit 4 to close the shortfall"),
    # min_workers floor: a warm pool
    Row("warm pool from empty", {"min_workers": 3}, {}, 3, 3, reason="desired 3 (bounds 3..50)"),
    Row("warm pool kept", {"min_workers": 3}, {"registered": 3}, 3, 0, state=PoolState.READY),
    Row("warm pool replaces a leaver", {"min_workers": 3}, {"registered": 3, "leaving_soon": 1},
        3, 1),
    Row("floor above set-max", {"min_workers": 5}, {"max_workers_override": 2}, 2, 2,
        reason="bounds 2..2"),
    # set-max: lowers the cap; never raises it above the config's hard max
    Row("set-max 5", {}, {"claimable": 1000, "max_workers_override": 5}, 5, 5),
    Row("set-max 0", {}, {"claimable": 1000, "max_workers_override": 0}, 0, 0,
        reason="bounds 0..0"),
    Row("set-max above the config", {"max_pending": 100, "max_submit_per_cycle": 100},
        {"claimable": 100_000, "max_workers_override": 500}, 50, 50),
    # scheduled windows: (min, max)
    Row("window raises the floor", {}, {"window": (8, 20)}, 8, 8, reason="bounds 8..20"),
    Row("window lowers the cap", {}, {"claimable": 1000, "window": (0, 4)}, 4, 4,
        reason="bounds 0..4"),
    Row("window above max_workers", {"max_pending": 100, "max_submit_per_cycle": 100},
        {"window": (60, 80)}, 50, 50, reason="bounds 50..50"),
    Row("window and set-max: the lower cap", {}, {"claimable": 1000, "window": (2, 9),
        "max_workers_override": 6}, 6, 6),
    # controls
    Row("pause", {}, {"claimable": 1000, "pending": 3, "control": "pause"}, 34, 0, 0,
        PoolState.PAUSED, "paused"),
    Row("pause keeps pending", {"cancel_unneeded_pending": True},
        {"pending": 3, "control": "pause"}, 0, 0, 0, PoolState.PAUSED),
    Row("drain cancels pending", {}, {"claimable": 1000, "pending": 3, "unconfirmed": 2,
        "registered": 4, "control": "drain"}, 34, 0, 3, PoolState.DRAINING, "draining"),
    Row("exit cancels pending", {}, {"claimable": 1000, "pending": 3, "control": "exit"}, 34,
        0, 3, PoolState.DRAINING, "exiting"),
    Row("drain beats the warm floor", {"min_workers": 3}, {"control": "drain"}, 3, 0, 0,
        PoolState.DRAINING),
    Row("drain beats a probe", {}, {"claimable": 10, "breaker": "probe", "control": "drain",
        "pending": 1}, 1, 0, 1, PoolState.DRAINING),
    # breaker
    Row("breaker open", {}, {"claimable": 1000, "breaker": "open"}, 34, 0, 0,
        PoolState.DEGRADED, "breaker open"),
    Row("breaker open, nothing to do", {}, {"registered": 1, "breaker": "open"}, 0, 0, 0,
        PoolState.DEGRADED),
    Row("probe: one worker", {}, {"claimable": 1000, "breaker": "probe"}, 34, 1, 0,
        PoolState.DEGRADED, "one worker to test"),
    Row("probe: registered workers do not block it", {},
        {"claimable": 1000, "registered": 2, "breaker": "probe"}, 34, 1, 0,
        PoolState.DEGRADED, "one worker to test"),
    Row("probe: waits for a pending one", {},
        {"claimable": 1000, "pending": 1, "breaker": "probe"}, 34, 0, 0,
        PoolState.DEGRADED, "waiting for the probe"),
    Row("probe: waits for an unconfirmed one", {},
        {"claimable": 1000, "unconfirmed": 1, "breaker": "probe"}, 34, 0, 0,
        PoolState.DEGRADED, "waiting for the probe"),
    Row("probe: waits for a starting one", {},
        {"claimable": 1000, "starting": 1, "breaker": "probe"}, 34, 0, 0,
        PoolState.DEGRADED, "waiting for the probe"),
    Row("probe: nothing needed", {}, {"registered": 1, "breaker": "probe"}, 0, 0, 0,
        PoolState.DEGRADED),
    Row("probe: at the hard max", {"max_workers": 2},
        {"claimable": 1000, "registered": 2, "breaker": "probe"}, 2, 0, 0, PoolState.DEGRADED),
    # cancel_unneeded_pending (opt-in)
    Row("cancel the pending the backlog no longer needs", {"cancel_unneeded_pending": True},
        {"claimable": 100, "pending": 5, "registered": 3}, 4, 0, 4,
        reason="cancel 4 pending"),
    # 10 running workers are kept while 100 tasks fill them (keep_workers); the pending go.
    Row("cancel at most what is pending", {"cancel_unneeded_pending": True},
        {"claimable": 100, "pending": 2, "registered": 10}, 10, 0, 2),
    Row("leaving workers are replaced while the backlog fills the pool", {},
        {"claimable": 100, "registered": 8, "leaving_soon": 3}, 8, 3, 0,
        reason="replace leaving workers"),
    Row("but only as many as the backlog fills", {},
        {"claimable": 5, "registered": 8, "leaving_soon": 3}, 5, 0, 0),
    Row("backlog gone: cancel all pending", {"cancel_unneeded_pending": True}, {"pending": 5},
        0, 0, 5, reason="no longer needs them"),
    Row("unconfirmed cannot be cancelled", {"cancel_unneeded_pending": True},
        {"unconfirmed": 4, "pending": 1}, 0, 0, 1),
    Row("off by default", {}, {"claimable": 100, "pending": 5, "registered": 3}, 4, 0, 0),
    Row("the warm floor is not cancelled", {"cancel_unneeded_pending": True, "min_workers": 2},
        {"pending": 2}, 2, 0, 0),
    Row("leaving workers do not make pending unneeded", {"cancel_unneeded_pending": True,
        "min_workers": 2}, {"registered": 4, "leaving_soon": 4, "pending": 2}, 2, 0, 0),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.case for r in ROWS])
def test_decide_table(row: Row) -> None:
    decision = decide(rules(**row.rule), obs(**row.seen))
    got = (decision.desired, decision.submit, decision.cancel_pending)
    assert got == (row.desired, row.submit, row.cancel), reasons(decision)
    if row.state is not None:
        assert decision.state is row.state, reasons(decision)
    if row.reason is not None:
        assert row.reason in reasons(decision)


def test_every_decision_shows_its_in_flight_arithmetic() -> None:
    decision = decide(
        rules(),
        obs(1000, unconfirmed=1, pending=2, starting=3, registered=4, leaving_soon=1),
    )
    assert decision.in_flight == 9
    assert (
        "in flight 9 = 1 unconfirmed + 2 pending + 3 starting + 4 registered - 1 leaving"
        in reasons(decision)
    )


@pytest.mark.parametrize(
    ("rule", "seen", "bounds"),
    [
        ({}, {}, (0, 50)),
        ({"min_workers": 4}, {}, (4, 50)),
        ({}, {"max_workers_override": 7}, (0, 7)),
        ({}, {"max_workers_override": 70}, (0, 50)),  # set-max never raises the hard max
        ({"min_workers": 10}, {"max_workers_override": 7}, (7, 7)),
        ({"min_workers": 2}, {"window": (5, 9)}, (5, 9)),
        ({"min_workers": 6}, {"window": (1, 9)}, (6, 9)),  # a window never lowers the floor
        ({}, {"window": (60, 80)}, (50, 50)),
        ({}, {"window": (5, 9), "max_workers_override": 3}, (3, 3)),
    ],
)
def test_effective_bounds(
    rule: dict[str, Any], seen: dict[str, Any], bounds: tuple[int, int]
) -> None:
    assert effective_bounds(rules(**rule), obs(**seen)) == bounds


# ---------------------------------------------------------------------- rules_from_pool


@pytest.mark.parametrize(
    ("wall", "max_time", "lifetime"),
    [
        ("02:00:00", 0.0, 7200.0),  # no max_time: the wall time
        ("02:00:00", 600.0, 600.0),  # max_time shorter: it wins
        ("02:00:00", 3 * 3600.0, 7200.0),  # max_time longer than the wall: the wall
        ("1-00:00:00", 0.0, 86400.0),
    ],
)
def test_rules_from_pool(wall: str, max_time: float, lifetime: float) -> None:
    pool = PoolConfig(
        name="cpu",
        min_workers=1,
        max_workers=7,
        max_pending=3,
        max_submit_per_cycle=2,
        target_drain_time=900.0,
        cancel_unneeded_pending=True,
        slurm=SlurmConfig(time=wall),
        worker=WorkerConfig(slots=4, max_tasks=9, max_time=max_time),
    )
    assert rules_from_pool(pool, max_array_size=77) == PoolRules(
        min_workers=1,
        max_workers=7,
        max_pending=3,
        max_submit_per_cycle=2,
        target_drain_time=900.0,
        slots=4,
        max_tasks=9,
        lifetime=lifetime,
        max_array_size=77,
        cancel_unneeded_pending=True,
        max_submit_per_hour=pool.submit_ceiling,
        tail_prior=0.0,  # the worker's default: it leaves at its first empty claim
    )


# ---------------------------------------------------------------------- property: the caps


@st.composite
def rule_sets(draw: st.DrawFn) -> PoolRules:
    max_workers = draw(st.integers(0, 60))
    return PoolRules(
        min_workers=draw(st.integers(0, max_workers)),
        max_workers=max_workers,
        max_pending=draw(st.integers(0, 30)),
        max_submit_per_cycle=draw(st.integers(0, 30)),
        target_drain_time=draw(st.floats(0.0, 1e5)),
        slots=draw(st.integers(1, 64)),
        max_tasks=draw(st.integers(0, 100)),
        lifetime=draw(st.one_of(st.just(math.inf), st.floats(0.0, 1e6))),
        max_array_size=draw(st.integers(1, 2000)),
        cancel_unneeded_pending=draw(st.booleans()),
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    claimable = draw(st.integers(0, 1_000_000))
    registered = draw(st.integers(0, 80))
    return Observation(
        now=draw(st.floats(0.0, 2e9)),
        claimable=claimable,
        claimable_slots=claimable * draw(st.integers(1, 4)),
        est_duration=draw(st.floats(0.1, 1e6)),  # estimate.task_duration never goes below 0.1
        unconfirmed=draw(st.integers(0, 80)),
        pending=draw(st.integers(0, 80)),
        starting=draw(st.integers(0, 80)),
        registered=registered,
        leaving_soon=draw(st.integers(0, registered)),
        control=draw(st.sampled_from([Control.CONTINUE, Control.CONTINUE, *Control])),
        max_workers_override=draw(st.one_of(st.none(), st.integers(0, 100))),
        window=draw(st.one_of(st.none(), st.tuples(st.integers(0, 100), st.integers(0, 100)))),
        breaker=draw(st.sampled_from([BreakerState.CLOSED, *BreakerState])),
        site_allowance=draw(st.one_of(st.none(), st.integers(-5, 100))),
    )


@settings(max_examples=300, deadline=None)
@given(rule_sets(), observations())
def test_no_decision_exceeds_a_cap(rule: PoolRules, seen: Observation) -> None:
    d = decide(rule, seen)
    in_flight = seen.all_in_flight
    assert d.submit >= 0 and d.cancel_pending >= 0
    # the hard max: every element that exists or may exist, leaving ones included
    assert d.submit <= max(0, rule.max_workers - in_flight)
    floor, cap = effective_bounds(rule, seen)
    assert d.submit <= max(0, cap - in_flight)
    assert d.cap == cap
    if seen.site_allowance is not None:  # the site's submit limit, counting the user's other jobs
        assert d.submit <= max(0, seen.site_allowance)
    # max_pending counts unconfirmed submissions too
    before = seen.pending + seen.unconfirmed
    if before <= rule.max_pending:
        assert before + d.submit <= rule.max_pending
    else:
        assert d.submit == 0
    assert d.submit <= rule.max_submit_per_cycle
    assert d.submit <= rule.max_array_size
    assert d.cancel_pending <= seen.pending
    # desired within its bounds, and those within the config's
    assert 0 <= floor <= d.desired <= cap <= rule.max_workers
    # never more than the shortfall, never submit and cancel at once
    assert d.submit <= max(0, d.desired - d.in_flight)
    assert not (d.submit and d.cancel_pending)
    # controls and the breaker
    if seen.control != "continue" or seen.breaker == "open":
        assert d.submit == 0
    if seen.control in ("drain", "exit"):
        assert d.cancel_pending == seen.pending
    if seen.breaker == "probe":
        assert d.submit <= 1
        if seen.unconfirmed + seen.pending + seen.starting:
            assert d.submit == 0
    if not (seen.control in ("drain", "exit") or rule.cancel_unneeded_pending):
        assert d.cancel_pending == 0
    assert d.reasons


def test_the_site_allowance_caps_the_pool_and_why_names_the_limit() -> None:
    seen = obs(
        claimable=40,
        est=60.0,
        pending=1,
        registered=2,
        site_allowance=1,
        site_limit="QOS normal MaxSubmitJobsPerUser=4",
    )
    d = decide(rules(max_workers=8, target_drain_time=60.0), seen)
    assert (d.cap, d.submit) == (4, 1)
    assert any("MaxSubmitJobsPerUser=4" in r for r in d.reasons)
    unlimited = decide(rules(max_workers=8), obs(claimable=40, est=60.0, site_allowance=50))
    assert unlimited.cap == 8 and not any("site allows" in r for r in unlimited.reasons)


# ---------------------------------------------------------------------- closed loop: no oscillation


@dataclass
class ClosedLoop:
    """A pool in a toy cluster, fed back into `decide` every cycle.

    An element is unconfirmed for `confirm_after` cycles after sbatch, then pending, then
    starting for one cycle, then a registered worker. A worker claims up to `slots` tasks
    whenever it has a free slot, runs each for `duration` seconds, and ends when it has nothing
    to run and nothing is claimable (workers stay while there is work). With `steady`, each
    claimed task is replaced at once by a new one, so the backlog never changes.
    """

    rules: PoolRules
    backlog: int
    duration: float
    steady: bool = False
    dt: float = 30.0
    confirm_after: int = 1
    register_after: int = 4
    ages: list[int] = field(default_factory=list)  # elements not yet registered
    workers: list[list[float]] = field(default_factory=list)  # time left on each running task
    actions: list[tuple[int, str, int]] = field(default_factory=list)  # (cycle, kind, count)
    submitted: int = 0
    peak_in_flight: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def observe(self, cycle: int) -> Observation:
        starting_age = self.register_after - 1
        return obs(
            self.backlog,
            est=self.duration,
            now=cycle * self.dt,
            unconfirmed=sum(1 for a in self.ages if a < self.confirm_after),
            pending=sum(1 for a in self.ages if self.confirm_after <= a < starting_age),
            starting=sum(1 for a in self.ages if a == starting_age),
            registered=len(self.workers),
        )

    def step(self, cycle: int) -> Decision:
        seen = self.observe(cycle)
        decision = decide(self.rules, seen)
        self.decisions.append(decision)
        self.peak_in_flight = max(self.peak_in_flight, seen.all_in_flight + decision.submit)
        if decision.submit:
            self.actions.append((cycle, "submit", decision.submit))
            self.submitted += decision.submit
            self.ages += [0] * decision.submit
        if decision.cancel_pending:
            self.actions.append((cycle, "cancel", decision.cancel_pending))
            pending = sorted(
                a for a in self.ages if self.confirm_after <= a < self.register_after - 1
            )  # the newest first, as the manager cancels them
            for age in pending[: decision.cancel_pending]:
                self.ages.remove(age)
        self._advance()
        return decision

    def _advance(self) -> None:
        self.ages = [a + 1 for a in self.ages]
        arrived = sum(1 for a in self.ages if a >= self.register_after)
        self.ages = [a for a in self.ages if a < self.register_after]
        self.workers += [[] for _ in range(arrived)]
        alive = []
        for tasks in self.workers:
            tasks = [left - self.dt for left in tasks if left - self.dt > 0]
            while len(tasks) < self.rules.slots and self.backlog > 0:
                tasks.append(self.duration)
                if not self.steady:
                    self.backlog -= 1
            if tasks:
                alive.append(tasks)
        self.workers = alive

    def run(self, cycles: int) -> None:
        for cycle in range(cycles):
            self.step(cycle)
            if not (self.backlog or self.ages or self.workers) and not self.steady:
                break

    def kinds(self) -> list[str]:
        """The sequence of actions with repeats folded: ['submit', 'cancel'] at most."""
        folded: list[str] = []
        for _, kind, _ in self.actions:
            if not folded or folded[-1] != kind:
                folded.append(kind)
        return folded


@pytest.mark.parametrize("cancel", [False, True])
@pytest.mark.parametrize(
    ("backlog", "duration", "rule"),
    [
        (1000, 60.0, {}),  # 34 needed, throttled by max_pending 10
        (1000, 60.0, {"max_pending": 100, "max_submit_per_cycle": 100}),
        (100_000, 600.0, {}),  # far above the hard max
        (14, 3600.0, {"slots": 48}),  # Parsl #3696: few tasks, many slots per worker
        (143, 3600.0, {"slots": 48}),
        (5, 30.0, {"min_workers": 2}),  # a trickle above a warm floor
        (200, 600.0, {"max_workers": 7, "max_pending": 3, "max_submit_per_cycle": 2}),
    ],
)
def test_steady_backlog_converges_without_oscillating(
    backlog: int, duration: float, rule: dict[str, Any], cancel: bool
) -> None:
    """A backlog that stays the same size: the pool grows to `desired` once and then holds,
    submitting exactly what is needed in total, cancelling nothing, never above the max."""
    loop = ClosedLoop(rules(cancel_unneeded_pending=cancel, **rule), backlog, duration, True)
    loop.run(300)
    desired = loop.decisions[0].desired
    assert loop.submitted == desired, loop.actions
    assert loop.kinds() in ([], ["submit"]), loop.actions
    assert loop.peak_in_flight <= loop.rules.max_workers
    assert len(loop.workers) == desired
    assert all(d.submit == 0 and d.cancel_pending == 0 for d in loop.decisions[-50:])


@pytest.mark.parametrize("cancel", [False, True])
@pytest.mark.parametrize(
    ("backlog", "duration", "rule", "total"),
    [
        (1000, 60.0, {}, 34),
        (1000, 60.0, {"max_pending": 100, "max_submit_per_cycle": 100}, 34),
        (5000, 600.0, {}, 50),
        (14, 3600.0, {"slots": 48}, 1),  # Parsl #3696: one worker, not 0, 1, 0, 1, ...
        (143, 3600.0, {"slots": 48}, 3),
        (60, 1800.0, {"slots": 4}, 15),
        (3, 36_000.0, {}, 3),  # a long tail
        (200, 600.0, {"max_workers": 7, "max_pending": 3, "max_submit_per_cycle": 2}, 7),
    ],
)
def test_draining_burst_never_submits_more_than_needed(
    backlog: int, duration: float, rule: dict[str, Any], total: int, cancel: bool
) -> None:
    """One burst, drained to the end by the workers it brings: no more submissions in total
    than the burst needed at first, never a cancel followed by a new submission (no back and
    forth), never above the max, and the pool back to zero at the end."""
    loop = ClosedLoop(rules(cancel_unneeded_pending=cancel, **rule), backlog, duration)
    loop.run(5000)
    assert loop.decisions[0].desired == total
    assert loop.submitted <= total, loop.actions
    assert loop.kinds() in ([], ["submit"], ["submit", "cancel"]), loop.actions
    if not cancel:
        assert loop.kinds() == ["submit"]
    assert loop.peak_in_flight <= loop.rules.max_workers
    assert loop.backlog == 0 and not loop.workers and not loop.ages  # drained, back to zero
    assert loop.decisions[-1].submit == 0


def test_closed_loop_never_exceeds_a_lowered_max() -> None:
    """`set-max` mid-run below what is in flight: nothing more is submitted until the pool
    has shrunk below the new max on its own."""
    loop = ClosedLoop(rules(max_pending=100, max_submit_per_cycle=100), 100_000, 600.0, True)
    loop.run(20)
    assert len(loop.workers) == 50
    lowered = rules(max_workers=20, max_pending=100, max_submit_per_cycle=100)
    for cycle in range(20, 40):
        decision = decide(lowered, loop.observe(cycle))
        assert decision.submit == 0 and decision.desired == 20


# ---------------------------------------------------------------------- cost safety (issue 8)

BURST: dict[str, Any] = {"claimable": 1000, "est": 60.0}  # needs 34 workers: every cap binds


@pytest.mark.parametrize(
    ("case", "seen", "submit", "state", "reason"),
    [
        ("pre-flight refused", {"blocked": "invalid partition specified: nope"}, 0,
         PoolState.DEGRADED, "pre-flight failed: invalid partition specified: nope"),
        ("pre-flight refused, nothing claimable", {"claimable": 0, "blocked": "bad account"}, 0,
         PoolState.DEGRADED, "pre-flight failed: bad account"),
        ("pre-flight refused beats a probe", {"blocked": "x", "breaker": "probe"}, 0,
         PoolState.DEGRADED, "submit nothing until the job script passes"),
        ("pre-flight refused, paused", {"blocked": "x", "control": "pause"}, 0,
         PoolState.PAUSED, "pre-flight failed: x"),
        ("pre-flight passed", {"blocked": None}, 10, PoolState.WARMING, "submit 10: capped by"),
        ("hourly ceiling binds", {"submit_allowance": 3}, 3, PoolState.WARMING,
         "submit 3: capped by max_submit_per_hour (3 of 40 left in the last hour)"),
        ("hourly ceiling used up", {"submit_allowance": 0}, 0, PoolState.WARMING,
         "submit 0: capped by max_submit_per_hour (0 of 40 left"),
        ("hourly ceiling not binding", {"submit_allowance": 500}, 10, PoolState.WARMING,
         "capped by max_pending"),
        ("no ceiling (simulator)", {"submit_allowance": None}, 10, PoolState.WARMING,
         "capped by max_pending"),
        ("alarm is shown, decides nothing", {"alarm": "crash loop: 5 elements"}, 10,
         PoolState.WARMING, "ALARM crash loop: 5 elements"),
    ],
)  # fmt: skip
def test_cost_safety_table(
    case: str, seen: dict[str, Any], submit: int, state: PoolState, reason: str
) -> None:
    d = decide(rules(max_submit_per_hour=40), obs(**{**BURST, **seen}))
    assert (d.submit, d.state) == (submit, state), case
    assert reason in reasons(d), (case, reasons(d))


def test_blocked_pool_cancels_nothing_and_keeps_its_arithmetic() -> None:
    d = decide(rules(cancel_unneeded_pending=True), obs(0, pending=4, blocked="refused"))
    assert (d.submit, d.cancel_pending, d.state) == (0, 0, PoolState.DEGRADED)
    assert "in flight 4" in reasons(d)


def test_a_drained_blocked_pool_still_cancels_pending() -> None:
    d = decide(rules(), obs(10, pending=3, blocked="refused", control="drain"))
    assert (d.submit, d.cancel_pending, d.state) == (0, 3, PoolState.DRAINING)


@settings(max_examples=200, deadline=None)
@given(rule_sets(), observations(), st.integers(0, 60))
def test_no_decision_exceeds_the_hourly_allowance(
    rule: PoolRules, seen: Observation, allowance: int
) -> None:
    d = decide(rule, Observation(**{**seen.__dict__, "submit_allowance": allowance}))
    assert d.submit <= allowance


@settings(max_examples=100, deadline=None)
@given(rule_sets(), observations(), st.text(min_size=1, max_size=20))
def test_a_blocked_pool_never_submits(rule: PoolRules, seen: Observation, why: str) -> None:
    assert decide(rule, Observation(**{**seen.__dict__, "blocked": why})).submit == 0


@pytest.mark.parametrize(
    ("ends", "threshold", "alarm"),
    [
        ([], 3, False),
        ([990.0, 995.0], 3, False),  # two: below the threshold
        ([990.0, 995.0, 999.0], 3, True),
        ([10.0, 20.0, 999.0], 3, False),  # two of them fell out of the window
        ([999.0], 1, True),
    ],
)
def test_crash_alarm(ends: list[float], threshold: int, alarm: bool) -> None:
    text = crash_alarm(ends, 1000.0, 900.0, threshold)
    assert (text is not None) == alarm
    if text:
        assert text.startswith("crash loop:") and f"threshold {threshold}" in text


@pytest.mark.parametrize(
    ("max_workers", "wall", "explicit", "ceiling"),
    [
        (10, "01:00:00", None, 40),  # 4 x max_workers for an hour-long job
        (3, "00:05:00", None, 144),  # short jobs turn the pool over 12 times an hour
        (10, "1-00:00:00", None, 40),  # long jobs: never below 4 x max_workers
        (0, "01:00:00", None, 0),
        (10, "01:00:00", 7, 7),
        (10, "01:00:00", 0, 0),  # an explicit 0 submits nothing
    ],
)
def test_submit_ceiling_default(
    max_workers: int, wall: str, explicit: int | None, ceiling: int
) -> None:
    pool = PoolConfig(
        name="p",
        max_workers=max_workers,
        max_submit_per_hour=explicit,
        slurm=SlurmConfig(time=wall),
    )
    assert pool.submit_ceiling == ceiling


# ---------------------------------------------------------------------- budgets (issue 8)


def core(
    limit_h: float, burned_h: float = 0.0, reserved_h: float = 0.0, per_h: float = 1.0
) -> Budget:
    return Budget("core", limit_h * 3600, burned_h * 3600, reserved_h * 3600, per_h * 3600)


@pytest.mark.parametrize(
    ("case", "budgets", "submit", "state", "reason"),
    [
        ("plenty left", (core(100.0),), 10, PoolState.WARMING, "capped by max_pending"),
        ("room for 3", (core(10.0, burned_h=7.0),), 3, PoolState.WARMING,
         "submit 3: capped by the core-hours budget 10: 7 burned, 0 reserved by elements in"
         " flight, 3 left, 1 per new worker (worst case)"),
        ("in-flight worst case reserved", (core(10.0, burned_h=2.0, reserved_h=6.5),), 1,
         PoolState.WARMING, "1.5 left"),
        ("less than one worker left", (core(10.0, burned_h=9.5),), 0,
         PoolState.BUDGET_EXHAUSTED, "submit 0: capped by the core-hours budget 10: 9.5 burned"),
        ("overspent", (core(1.0, burned_h=2.0),), 0, PoolState.BUDGET_EXHAUSTED, "-1 left"),
        ("zero budget", (core(0.0),), 0, PoolState.BUDGET_EXHAUSTED, "core-hours budget 0"),
        ("gpu binds before core",
         (core(100.0), Budget("gpu", 2 * 3600.0, 0.0, 0.0, 3600.0)), 2,
         PoolState.WARMING, "capped by the gpu-hours budget 2"),
        ("no gpus asked: gpu budget ignored",
         (Budget("gpu", 0.0, 0.0, 0.0, 0.0),), 10, PoolState.WARMING, "capped by max_pending"),
    ],
)  # fmt: skip
def test_budget_table(
    case: str, budgets: tuple[Budget, ...], submit: int, state: PoolState, reason: str
) -> None:
    d = decide(rules(), obs(**BURST, budgets=budgets))
    assert (d.submit, d.state) == (submit, state), case
    assert reason in reasons(d), (case, reasons(d))


def test_exhausted_budget_cancels_no_running_worker_and_is_not_a_state_when_idle() -> None:
    spent = (core(1.0, burned_h=1.0),)
    busy = decide(rules(), obs(**BURST, registered=5, budgets=spent))
    assert (busy.submit, busy.cancel_pending, busy.state) == (0, 0, PoolState.BUDGET_EXHAUSTED)
    idle = decide(rules(), obs(0, budgets=spent))  # nothing wanted: nothing exhausted
    assert idle.state == PoolState.IDLE


def test_budget_allowance_and_description() -> None:
    gpu = Budget("gpu", 10 * 3600.0, 3 * 3600.0, 1 * 3600.0, 2 * 3600.0, resources=2)
    assert (gpu.left, gpu.allowance) == (6 * 3600.0, 3)
    assert gpu.describe() == (
        "gpu-hours budget 10: 3 burned, 1 reserved by elements in flight, 6 left,"
        " 2 per new worker (worst case)"
    )
    assert Budget("gpu", 0.0, 0.0, 0.0, 0.0, resources=0).allowance > 10**6  # asks for none


def test_budget_resumes_when_the_window_moves_on() -> None:
    assert decide(rules(), obs(**BURST, budgets=(core(5.0, burned_h=5.0),))).submit == 0
    assert decide(rules(), obs(**BURST, budgets=(core(5.0, burned_h=3.0),))).submit == 2


@settings(max_examples=200, deadline=None)
@given(
    rule_sets(),
    observations(),
    st.floats(0, 100),
    st.floats(0, 100),
    st.floats(0, 50),
    st.floats(0.01, 10),
)
def test_new_workers_worst_case_always_fits_the_budget(
    rule: PoolRules, seen: Observation, limit: float, burned: float, reserved: float, per: float
) -> None:
    budget = core(limit, burned, reserved, per)
    d = decide(rule, Observation(**{**seen.__dict__, "budgets": (budget,)}))
    assert d.submit * budget.per_worker <= max(0.0, budget.left) + 1e-6


# ---------------------------------------------------------------------- sizing: efficiency


def untuned(**changes: Any) -> PoolRules:
    """A pool as a new admin writes it: a cap, nothing else (no deadline, default efficiency)."""
    return PoolRules(
        **{
            "min_workers": 0,
            "max_workers": 8,
            "max_pending": 8,
            "max_submit_per_cycle": 20,
            **changes,
        }
    )


def test_workload_w_burst_gets_the_whole_cap_untuned() -> None:
    """Issue 15: 200 tasks of 3.5 s, workers that cost ~3 s beyond their tasks. The deadline
    rule (target_drain_time 30m) started one worker for it; the efficiency rule starts the cap:
    8 workers' start-up and tail (24 s) are 3% of the 724 s they are paid."""
    seen = obs(200, 3.5, startup=2.7, tail=0.3)
    decision = decide(untuned(), seen)
    assert (decision.needed, decision.desired, decision.submit) == (25, 8, 8), reasons(decision)
    assert "efficiency 0.9 allows 25" in reasons(decision)
    old = decide(untuned(target_drain_time=1800.0, efficiency=1.0), seen)
    assert old.submit == 1  # what issue 15 found


@pytest.mark.parametrize(
    ("case", "rule", "seen", "needed"),
    [
        # work x (1 - e) / (e x slots x overhead): 700 x 0.1 / 0.9 / 3 = 25.9
        ("measured", {}, {"startup": 2.7, "tail": 0.3}, 25),
        # priors until measured: startup_prior 3 + tail_prior 0 give the same 25
        ("priors", {}, {}, 25),
        ("a lingering tail", {}, {"startup": 3.0, "tail": 20.0}, 3),  # 77.8 / 23 = 3.4
        ("tail prior from the config", {"tail_prior": 20.0}, {}, 3),
        ("measured beats the prior", {"tail_prior": 20.0}, {"tail": 0.0}, 25),
        ("a lower efficiency", {"efficiency": 0.8}, {"startup": 3.0, "tail": 20.0}, 7),
        ("efficiency 1: overhead buys no worker", {"efficiency": 1.0}, {}, 1),
        ("a higher efficiency, fewer", {"efficiency": 0.95}, {}, 12),  # 700 x .05/.95 / 3
        ("slots share the overhead", {"slots": 4}, {}, 6),  # 700 x .1/.9 / (4 x 3)
        ("a deadline asks for more", {"target_drain_time": 10.0}, {"tail": 100.0}, 70),
        ("a loose deadline asks for none", {"target_drain_time": 1e6}, {}, 25),
        ("never more than the backlog fills", {}, {"startup": 0.0, "tail": 0.0}, 200),
    ],
)
def test_needed_by_efficiency(
    case: str, rule: dict[str, Any], seen: dict[str, Any], needed: int
) -> None:
    got, why = needed_workers(untuned(**rule), obs(200, 3.5, **seen))
    assert got == needed, (case, why)


def test_the_reason_names_overhead_its_source_and_efficiency() -> None:
    _, why = needed_workers(untuned(), obs(200, 3.5, startup=2.7, tail=0.3))
    assert "overhead 2.7s start-up (measured) + 0.3s tail (measured)" in why[0]
    _, why = needed_workers(untuned(tail_prior=20.0), obs(200, 3.5))
    assert "3s start-up (prior) + 20s tail (prior)" in why[0]
    _, why = needed_workers(untuned(tail_prior=20.0), obs(200, 3.5, startup=2.5))
    assert "2.5s start-up (measured) + 20s tail (prior)" in why[0]


@settings(max_examples=300, deadline=None)
@given(
    claimable=st.integers(1, 10_000),
    est=st.floats(0.1, 1e4),
    startup=st.floats(0.0, 600.0),
    tail=st.floats(0.0, 600.0),
    efficiency=st.floats(0.05, 1.0),
    slots=st.integers(1, 8),
)
def test_efficiency_rule_properties(
    claimable: int, est: float, startup: float, tail: float, efficiency: float, slots: int
) -> None:
    """At least one worker, never more than the backlog fills; beyond one, the workers'
    overhead stays within (1 - efficiency) of what they are paid; more overhead never asks for
    more workers, a lower efficiency never for fewer."""
    rule = untuned(efficiency=efficiency, slots=slots)
    seen = obs(claimable, est, startup=startup, tail=tail)
    n, _ = needed_workers(rule, seen)
    assert 1 <= n <= math.ceil(claimable / slots)
    work = claimable * est
    overhead = max(0.1, startup + tail)
    if n > 1:
        paid = work + n * slots * overhead
        assert n * slots * overhead <= (1 - efficiency) * paid * (1 + 1e-6)
    more, _ = needed_workers(rule, obs(claimable, est, startup=startup, tail=tail + 10.0))
    assert more <= n
    looser, _ = needed_workers(untuned(efficiency=efficiency * 0.9, slots=slots), seen)
    assert looser >= n


def test_config_efficiency_and_optional_deadline_reach_the_rules() -> None:
    pool = PoolConfig(name="p", max_workers=8, efficiency=0.9)
    rule = rules_from_pool(pool)
    assert (rule.efficiency, rule.target_drain_time) == (0.9, None)
    # a surplus worker claims max_empty_claims times, empty_claim_sleep apart, then leaves
    assert rule.tail_prior == (pool.worker.max_empty_claims - 1) * pool.worker.empty_claim_sleep
    assert rules_from_pool(PoolConfig(name="p", target_drain_time=30.0)).target_drain_time == 30.0


@pytest.mark.parametrize(
    ("case", "seen", "hold"),
    [
        ("no ceiling", {"registered": 3}, 0),
        ("plenty left", {"registered": 3, "submit_allowance": 20}, 0),
        ("half spent: keep them all", {"registered": 3, "submit_allowance": 15}, 3),
        ("none left", {"registered": 3, "submit_allowance": 0}, 3),
        # the decision's own submission spends the allowance and is held too
        ("the one submitted now", {"submit_allowance": 1}, 1),
        ("submitted with plenty left", {"submit_allowance": 30}, 0),
    ],
)
def test_hold_idle_keeps_workers_once_half_the_hourly_ceiling_is_spent(
    case: str, seen: dict[str, Any], hold: int
) -> None:
    """A trickle under workers that leave at their first empty claim would spend the hour's
    submissions in minutes and then wait for the hour to roll: the store keeps them instead."""
    decision = decide(untuned(max_submit_per_hour=32), obs(1, 3.5, **seen))
    assert decision.hold == hold, (case, reasons(decision))
