"""PURE: when a worker claims, how much, and when it stops (invariant 6), as functions of plain
values, so the worker's loop and the simulator follow the very same rules and tests need no
server, process or clock.

Ways out, each recorded with the server as the deregistration reason:
  max_tasks, max_time, walltime (no time left for another task), idle (max_empty_claims empty
  claims while the pool is above min_workers), drain, exit, signal (SIGTERM/SIGUSR1/SIGINT),
  unreachable (the server could not be reached for unreachable_timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcscale.models import Control, StopReason
from hpcscale.worker.options import WorkerOptions

END_GRACE = 10.0  # release running tasks this long before the job's end, before Slurm kills
ABANDONING = frozenset(
    {StopReason.SIGNAL, StopReason.EXIT, StopReason.UNREACHABLE}
)  # running tasks are stopped at once


@dataclass
class WorkerProgress:
    """What the rules look at; the loop keeps it current."""

    started: float
    deadline: float | None  # the earliest of start + max_time and the job's end
    tasks_started: int = 0
    empty_claims: int = 0
    running: int = 0
    control: Control = Control.CONTINUE
    surplus: bool = True
    signalled: bool = False  # SIGTERM/SIGINT: stop now
    walltime_warned: bool = False  # SIGUSR1: Slurm's warning that the wall time is near
    unreachable_since: float | None = None
    claiming_stopped: StopReason | None = None  # why no more claims (the worker leaves when idle)


def deadline_of(started: float, max_time: float, job_end: float | None) -> float | None:
    """The earliest of start + max_time (0: none) and the job's end (None: unknown)."""
    limits = [t for t in (started + max_time if max_time else None, job_end) if t]
    return min(limits) if limits else None


def stop_reason(state: WorkerProgress, opts: WorkerOptions, now: float) -> StopReason | None:
    """Why the worker should stop claiming now, or None. Running tasks still finish unless
    the reason is `signal`, `exit` or `unreachable` (see `must_abandon`)."""
    if state.signalled:
        return StopReason.SIGNAL
    if state.control == Control.EXIT:
        return StopReason.EXIT
    if (
        state.unreachable_since is not None
        and now - state.unreachable_since >= opts.unreachable_timeout
    ):
        return StopReason.UNREACHABLE
    if state.control == Control.DRAIN:
        return StopReason.DRAIN
    if opts.max_tasks and state.tasks_started >= opts.max_tasks:
        return StopReason.MAX_TASKS
    if opts.max_time and now - state.started >= opts.max_time:
        return StopReason.MAX_TIME
    if state.walltime_warned:
        return StopReason.WALLTIME
    if state.claiming_stopped:
        return state.claiming_stopped
    if state.running == 0 and state.empty_claims >= opts.max_empty_claims and state.surplus:
        return StopReason.IDLE
    return None


def must_abandon(reason: StopReason | None, state: WorkerProgress, now: float) -> bool:
    """Whether running tasks must be stopped and released now instead of finishing.

    At once for `signal`, `exit`, `unreachable`. Otherwise only when the job's end is
    END_GRACE away (or unknown after Slurm's SIGUSR1): Slurm delivers that warning up to ~30 s
    early, and a task that can still finish should not be thrown away.
    """
    if reason in ABANDONING:
        return True
    if state.deadline is None:
        return state.walltime_warned
    return now >= state.deadline - END_GRACE


def may_claim(
    state: WorkerProgress, opts: WorkerOptions, now: float, expected_duration: float
) -> bool:
    """A claim only when the time left covers a task of the expected duration plus a margin."""
    if state.deadline is None:
        return True
    return state.deadline - now >= expected_duration + opts.claim_margin


def claim_size(state: WorkerProgress, opts: WorkerOptions, free_slots: int) -> int:
    """How many tasks to ask for: the free slots, no more than max_tasks leaves."""
    room = free_slots
    if opts.max_tasks:
        room = min(room, opts.max_tasks - state.tasks_started)
    return max(0, room)
