"""PURE: one observation of a pool + its settings -> how many workers to submit or cancel, and why.

No I/O and no clock of its own (`now` is in the observation), so the manager, the simulator and
the tests run the very same decisions. The sizing rule (DESIGN.md):

    overhead   = startup + tail  (a worker's paid seconds that run no task; measured, else priors)
    by_cost    = floor(work * (1 - efficiency) / (efficiency * slots * overhead))
    needed     = max(1, by_cost, by the deadline if set), at most ceil(claimable_slots / slots)
    desired    = clamp(needed, min_workers (or a window's), max_workers)
    in_flight  = unconfirmed + pending + starting + registered - leaving soon
    submit     = clamp(desired - in_flight, 0, max_submit_per_cycle, max_pending - pending,
                       max_workers - all in flight, array limit, left of max_submit_per_hour)

Cost safety (issue 8): a failed pre-flight (`blocked`) submits nothing (DEGRADED);
`submit_allowance` (left of the hourly ceiling) caps `submit` and, when the ceiling could not
buy them back, holds idle workers (`hold`); `alarm` (a crash loop) is in the reasons. The hard
max counts every element that exists or may exist (unconfirmed submissions included) and never
subtracts workers that are leaving: they hold their slot until their job is gone (invariant 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hpcscale.models import BreakerState, Control

STARTUP_SECONDS = 10.0
# The priors of a worker's overhead, until the manager has measured its pool's workers:
# job start -> first claim (interpreter, imports, registration: 2.7 s mean on the lab Slurm,
# BENCHMARKS.md "Side by side"; measured from registrations, estimate.startup_overhead), and
# the idle tail after its last task (the worker's empty claims: PoolRules.tail_prior).
STARTUP_PRIOR = 3.0
EFFICIENCY = 0.9


class PoolState(StrEnum):
    IDLE = "idle"
    WARMING = "warming"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    PAUSED = "paused"
    DEGRADED = "degraded"
    BUDGET_EXHAUSTED = "budget-exhausted"


@dataclass(frozen=True)
class PoolRules:
    """The settings of one pool that the decision reads (from PoolConfig and the store)."""

    min_workers: int
    max_workers: int
    max_pending: int
    max_submit_per_cycle: int
    target_drain_time: float | None = None  # a user's deadline: may ask for more workers
    slots: int = 1
    max_tasks: int = 0
    lifetime: float = math.inf  # min(max_time, wall time)
    max_array_size: int = 1000
    cancel_unneeded_pending: bool = False
    max_submit_per_hour: int | None = None  # the runaway ceiling, for the reason text (the
    # allowance left of it comes in the observation)
    # The share of a worker's paid seconds that must run tasks: more workers while each one's
    # overhead (start-up + tail) stays within (1 - efficiency) of what it is paid for.
    efficiency: float = EFFICIENCY
    startup_prior: float = STARTUP_PRIOR  # seconds, job start -> first claim, until measured
    tail_prior: float = 0.0  # seconds, last result -> end, until measured


@dataclass(frozen=True)
class Budget:
    """One `[pools.budget]` limit as the manager measured it, in resource-seconds
    (core-seconds or GPU-seconds) over the rolling window."""

    kind: str  # "core" | "gpu"
    limit: float  # the budget for the window
    burned: float  # used by the pool's elements within the window
    reserved: float  # the worst case still to come from elements in flight
    per_worker: float  # the worst case of one new element: cpus (or GPUs) x wall time
    resources: int = 1  # cpus (or GPUs) one element holds

    @property
    def left(self) -> float:
        return self.limit - self.burned - self.reserved

    @property
    def allowance(self) -> int:
        """New elements whose worst case fits in what is left."""
        if self.per_worker <= 0:
            return 1_000_000_000  # this pool asks for none of this resource
        return max(0, math.floor(self.left / self.per_worker + 1e-9))

    def describe(self) -> str:
        return (
            f"{self.kind}-hours budget {self.limit / 3600:.4g}: {self.burned / 3600:.4g} burned,"
            f" {self.reserved / 3600:.4g} reserved by elements in flight, {self.left / 3600:.4g}"
            f" left, {self.per_worker / 3600:.4g} per new worker (worst case)"
        )


@dataclass(frozen=True)
class Observation:
    now: float
    claimable: int  # claimable tasks in the pool's queues
    claimable_slots: int  # slots those tasks ask for
    est_duration: float  # seconds per task
    unconfirmed: int = 0  # elements of submissions recorded but not yet seen in the scheduler
    pending: int = 0
    starting: int = 0  # running, no worker registered yet
    registered: int = 0  # running with a live worker (idle or busy)
    leaving_soon: int = 0  # registered workers that will not take another task
    control: Control = Control.CONTINUE
    max_workers_override: int | None = None  # `hpcscale set-max`
    window: tuple[int, int] | None = None  # a scheduled window's (min, max)
    breaker: BreakerState = BreakerState.CLOSED
    blocked: str | None = None  # the pre-flight check's refusal (the scheduler's message)
    submit_allowance: int | None = None  # workers left of the hourly ceiling; None: no ceiling
    alarm: str | None = None  # e.g. a crash loop: elements ending within seconds, again and again
    budgets: tuple[Budget, ...] = ()  # `[pools.budget]`, as measured by the manager
    # More elements the site accepts now (QOS/association submit limits, MaxJobCount, counting
    # the user's other jobs) and the limit that binds; None: no limit known.
    site_allowance: int | None = None
    site_limit: str | None = None
    # A worker's measured overhead in seconds (the manager's, from its pool's workers; None:
    # not measured yet, the rules' priors stand): job start -> registration (the newest
    # registered workers), and the idle rest of its paid time (the newest ended workers).
    startup: float | None = None
    tail: float | None = None

    @property
    def all_in_flight(self) -> int:
        return self.unconfirmed + self.pending + self.starting + self.registered

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Observation:
        """An observation back from its recorded form (`dataclasses.asdict`, then JSON), so a
        recorded sequence can be decided again by the manager or the simulator."""
        window = data.get("window")
        budgets = tuple(Budget(**b) for b in data.get("budgets") or ())
        return cls(**{**data, "window": tuple(window) if window else None, "budgets": budgets})


@dataclass(frozen=True)
class Decision:
    desired: int
    submit: int
    cancel_pending: int
    state: PoolState
    reasons: tuple[str, ...] = field(default_factory=tuple)
    needed: int = 0
    in_flight: int = 0
    cap: int = 0  # the effective cap: min(max_workers, set-max, window, what the site allows)
    hold: int = 0  # idle workers the store keeps from leaving (hold_idle)


LEAVING_MARGIN = 30.0


def leaving_soon(
    now: float,
    deadline: float | None,
    draining: bool,
    tasks_started: int,
    max_tasks: int,
    est_duration: float,
) -> bool:
    """A registered worker that will not take another task: drained, at its max_tasks, or
    with less time left than a task and a margin. The manager counts it out of `in_flight`,
    so it is replaced before it goes (the hard max still counts it until its job is gone)."""
    if draining or (max_tasks and tasks_started >= max_tasks):
        return True
    return (deadline if deadline is not None else math.inf) - now < est_duration + LEAVING_MARGIN


def breaker_state(
    failures: Sequence[float],
    last_registration: float | None,
    now: float,
    threshold: int,
    cooldown: float,
) -> BreakerState:
    """closed | open | probe, from the failed starts since the last worker that registered."""
    recent = [t for t in failures if t > (last_registration or 0.0)]
    if len(recent) < threshold:
        return BreakerState.CLOSED
    return BreakerState.OPEN if now - recent[-1] < cooldown else BreakerState.PROBE


def crash_alarm(
    quick_ends: Sequence[float], now: float, window: float, threshold: int
) -> str | None:
    """The crash-loop alarm: `threshold` or more elements of the pool failed to start or ended
    within seconds of starting (having done no task) in the last `window` seconds. Unlike the
    breaker it is not reset by a worker that registers: a worker that registers and dies at once
    again and again is the loop it names."""
    recent = [t for t in quick_ends if now - t <= window]
    if len(recent) < threshold:
        return None
    return (
        f"crash loop: {len(recent)} elements failed to start or ended at once without a task"
        f" in the last {window:g}s (threshold {threshold})"
    )


def effective_bounds(rules: PoolRules, obs: Observation) -> tuple[int, int]:
    """(floor, cap) after `set-max`, any scheduled window and what the site allows now."""
    cap = rules.max_workers
    if obs.max_workers_override is not None:
        cap = min(cap, obs.max_workers_override)
    floor = rules.min_workers
    if obs.window is not None:
        floor = max(floor, obs.window[0])
        cap = min(cap, obs.window[1])
    if obs.site_allowance is not None:  # the site counts what we have plus what it still takes
        cap = min(cap, obs.all_in_flight + max(0, obs.site_allowance))
    return min(floor, cap), cap


def site_cap_reason(rules: PoolRules, obs: Observation, cap: int) -> list[str]:
    """Name the site's limit when it, not the config, sets the cap."""
    if obs.site_allowance is None or cap >= rules.max_workers:
        return []
    if cap < obs.all_in_flight + obs.site_allowance:
        return []
    limit = obs.site_limit or "a site limit"
    return [f"cap {cap}: the site allows {max(0, obs.site_allowance)} more now ({limit})"]


def overhead_of(rules: PoolRules, obs: Observation) -> tuple[float, float]:
    """(start-up, tail) of one worker in seconds: measured, else the rules' priors."""
    startup = rules.startup_prior if obs.startup is None else obs.startup
    tail = rules.tail_prior if obs.tail is None else obs.tail
    return max(0.0, startup), max(0.0, tail)


def by_cost(rules: PoolRules, obs: Observation, work: float) -> tuple[int, str]:
    """Workers whose overhead stays within (1 - efficiency) of the paid worker-seconds, when
    they share `work` slot-seconds: a task's run time is paid whoever runs it, so what more
    workers cost is only their start-up and tail."""
    startup, tail = overhead_of(rules, obs)
    overhead = max(0.1, startup + tail)
    efficiency = min(1.0, max(1e-3, rules.efficiency))
    count = math.floor(work * (1 - efficiency) / (efficiency * rules.slots * overhead) + 1e-9)
    source = ["prior" if seen is None else "measured" for seen in (obs.startup, obs.tail)]
    return count, (
        f"overhead {startup:.3g}s start-up ({source[0]}) + {tail:.3g}s tail ({source[1]})"
        f" a worker; efficiency {efficiency:g} allows {count}"
    )


def needed_workers(rules: PoolRules, obs: Observation) -> tuple[int, list[str]]:
    """As many workers as the backlog keeps busy while their overhead stays a small share of
    what they are paid (efficiency), or what a deadline asks, never more than the backlog
    fills; and the arithmetic. A worker's life (max_tasks, wall time) bounds what it does, not
    how many start: keep_workers replaces those that leave while the backlog fills them."""
    if obs.claimable <= 0:
        return 0, ["no claimable tasks"]
    lifetime = max(1.0, rules.lifetime - STARTUP_SECONDS)
    # A worker whose life is shorter than one task runs none (invariant 6): submitting it only
    # churns jobs (test_lifetime_shorter_than_a_task_*). The floor still applies in decide().
    if lifetime < obs.est_duration:
        return 0, [
            f"{obs.claimable} claimable, but a worker's life ({lifetime:g}s after startup) is"
            f" shorter than one task ({obs.est_duration:.3g}s): none could finish one -> needed 0"
            " (raise [pools.slurm] time or [pools.worker] max_time)"
        ]
    per_life = lifetime / obs.est_duration
    if rules.max_tasks:
        per_life = min(per_life, rules.max_tasks)
    work = obs.claimable_slots * obs.est_duration
    cost, cost_why = by_cost(rules, obs, work)
    by_count = math.ceil(obs.claimable_slots / rules.slots)
    wanted = max(1, cost)
    deadline = ""
    if rules.target_drain_time is not None:
        by_drain = math.ceil(work / (rules.slots * max(1.0, rules.target_drain_time)))
        wanted = max(wanted, by_drain)
        deadline = f"; drain in {rules.target_drain_time:g}s needs {by_drain}"
    needed = min(wanted, by_count)
    reasons = [
        f"{obs.claimable} claimable ({obs.claimable_slots} slots) x {obs.est_duration:.3g}s"
        f" = {work:.0f} slot-s; {cost_why}{deadline};"
        f" at most {by_count} can be busy -> needed {needed}"
        f" (a worker does ~{rules.slots * per_life:.3g} tasks in its life)"
    ]
    return needed, reasons


def keep_workers(rules: PoolRules, obs: Observation, needed: int) -> tuple[int, list[str]]:
    """Replace workers that leave (max_tasks, wall time) while the backlog still fills them all.

    `needed` follows the shrinking backlog; without this, every worker that ends on its own is
    replaced by fewer and the tail of a campaign decays slowly (found with the simulator:
    max_tasks = 1 took a burst's makespan from 2,594 s to 12,103 s). The pool never grows here:
    it only keeps the size it has, and only while there is a task for each worker."""
    if needed <= 0 or obs.claimable <= 0:
        return needed, []
    fill = math.ceil(obs.claimable_slots / rules.slots)
    keep = min(obs.starting + obs.registered, fill)  # running ones: pending may still go
    if keep <= needed:
        return needed, []
    return keep, [f"keep {keep}: replace leaving workers while the backlog fills the pool"]


def decide(rules: PoolRules, obs: Observation) -> Decision:
    """The sizing rule's stages in order; each appends the reasons `why` prints."""
    floor, cap = effective_bounds(rules, obs)
    needed, reasons = needed_workers(rules, obs)
    reasons += site_cap_reason(rules, obs, cap)
    needed, kept = keep_workers(rules, obs, needed)
    reasons += kept
    desired = max(floor, min(needed, cap))
    if desired != needed:
        reasons.append(f"desired {desired} (bounds {floor}..{cap})")
    in_flight = counted_in_flight(obs, reasons)
    if obs.alarm:
        reasons.append(f"ALARM {obs.alarm}")
    if obs.blocked is not None:
        reasons.append(f"pre-flight failed: {obs.blocked}")
    held = held_by_control_or_preflight(obs, reasons)
    if held is not None:
        submit, cancel, state = held
        return Decision(desired, submit, cancel, state, tuple(reasons), needed, in_flight, cap)

    submit, shortfall = submit_within_limits(rules, obs, desired - in_flight, cap, reasons)
    state = _state(obs, desired, in_flight)
    if submit == 0 and shortfall > 0 and any(b.allowance == 0 for b in obs.budgets):
        state = PoolState.BUDGET_EXHAUSTED  # wants workers, none fits; running ones carry on
    submit, state = through_the_breaker(obs, submit, state, reasons)
    cancel = surplus_pending(rules, obs, desired, in_flight, reasons)
    hold = hold_idle(rules, obs, submit)
    return Decision(desired, submit, cancel, state, tuple(reasons), needed, in_flight, cap, hold)


def hold_idle(rules: PoolRules, obs: Observation, submit: int) -> int:
    """Workers to keep past their empty claims: all once half the hourly ceiling is spent. A
    trickle of tasks under workers that leave at their first empty claim would spend the hour
    in minutes, a job a task, then wait for it to roll (found with the simulator)."""
    ceiling, left = rules.max_submit_per_hour, (obs.submit_allowance or 0) - submit
    held = obs.submit_allowance is not None and 2 * left < (ceiling or obs.submit_allowance or 0)
    return obs.all_in_flight + submit if held else 0


def counted_in_flight(obs: Observation, reasons: list[str]) -> int:
    """Workers that exist or will: what `desired` is compared with (leaving ones are replaced)."""
    in_flight = max(
        0, obs.unconfirmed + obs.pending + obs.starting + obs.registered - obs.leaving_soon
    )
    reasons.append(
        f"in flight {in_flight} = {obs.unconfirmed} unconfirmed + {obs.pending} pending"
        f" + {obs.starting} starting + {obs.registered} registered - {obs.leaving_soon} leaving"
    )
    return in_flight


def held_by_control_or_preflight(
    obs: Observation, reasons: list[str]
) -> tuple[int, int, PoolState] | None:
    """(submit, cancel, state) when an admin's control or a failed pre-flight holds the pool."""
    if obs.control in (Control.DRAIN, Control.EXIT):
        reasons.append(f"pool is {obs.control}ing: submit nothing, cancel pending")
        return 0, obs.pending, PoolState.DRAINING
    if obs.control == Control.PAUSE:
        reasons.append("pool is paused: submit nothing")
        return 0, 0, PoolState.PAUSED
    if obs.blocked is not None:
        reasons.append("submit nothing until the job script passes the scheduler's test")
        return 0, 0, PoolState.DEGRADED
    return None


def submit_within_limits(
    rules: PoolRules, obs: Observation, shortfall: int, cap: int, reasons: list[str]
) -> tuple[int, int]:
    """(submit, shortfall): the shortfall clamped by every limit, naming the one that binds."""
    limits = {
        "shortfall": shortfall,
        "max_submit_per_cycle": rules.max_submit_per_cycle,
        "max_pending": rules.max_pending - obs.pending - obs.unconfirmed,
        "max_workers": cap - obs.all_in_flight,
        "array limit": rules.max_array_size,
    }
    if obs.submit_allowance is not None:
        limits["max_submit_per_hour"] = obs.submit_allowance
    for budget in obs.budgets:
        limits[f"{budget.kind}-hours budget"] = budget.allowance
    submit = max(0, min(limits.values()))
    if submit < shortfall:
        reasons.append(_binding_limit(rules, obs, submit, min(limits, key=lambda k: limits[k])))
    elif submit:
        reasons.append(f"submit {submit} to close the shortfall")
    return submit, shortfall


def _binding_limit(rules: PoolRules, obs: Observation, submit: int, binding: str) -> str:
    if binding == "max_submit_per_hour":
        hourly = rules.max_submit_per_hour
        ceiling = "" if hourly is None else f" of {hourly}"
        return (
            f"submit {submit}: capped by max_submit_per_hour"
            f" ({obs.submit_allowance}{ceiling} left in the last hour)"
        )
    if binding.endswith("-hours budget"):
        budget = next(b for b in obs.budgets if f"{b.kind}-hours budget" == binding)
        return f"submit {submit}: capped by the {budget.describe()}"
    return f"submit {submit}: capped by {binding}"


def through_the_breaker(
    obs: Observation, submit: int, state: PoolState, reasons: list[str]
) -> tuple[int, PoolState]:
    """Open: submit nothing; probing: one worker at a time until one registers."""
    if obs.breaker == BreakerState.OPEN:
        if submit:
            reasons.append("breaker open after failed starts: submit nothing until the cooldown")
        return 0, PoolState.DEGRADED
    if obs.breaker == BreakerState.PROBE:
        if submit and obs.unconfirmed + obs.pending + obs.starting == 0:
            reasons.append("breaker probing after its cooldown: one worker to test the waters")
            return 1, PoolState.DEGRADED
        if submit:
            reasons.append("breaker probing: waiting for the probe worker to start")
        return 0, PoolState.DEGRADED
    return submit, state


def surplus_pending(
    rules: PoolRules, obs: Observation, desired: int, in_flight: int, reasons: list[str]
) -> int:
    """Pending elements the backlog no longer needs, to cancel before they start."""
    if not (rules.cancel_unneeded_pending and in_flight > desired and obs.pending):
        return 0
    cancel = min(obs.pending, in_flight - desired)
    reasons.append(f"cancel {cancel} pending: the backlog no longer needs them")
    return cancel


def _state(obs: Observation, desired: int, in_flight: int) -> PoolState:
    if obs.claimable == 0 and obs.all_in_flight == 0:
        return PoolState.IDLE
    if obs.registered == 0 and desired > 0:
        return PoolState.WARMING
    if obs.claimable > 0:
        return PoolState.BUSY
    return PoolState.READY
