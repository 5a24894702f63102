"""What the chaos soak checks at the end, as pure functions of what it collected.

Three witnesses that do not trust each other:

- the tasks' own records (tests/soak/task.sh): a start and, unless SIGKILLed, an end line per
  execution, with the process's pid and start time;
- the soak's watcher, which saw each of those processes alive in /proc (same host as the lab's
  nodes) until some instant, and then gone;
- the store: the tasks table and its event log (task.* kinds).

The overlap rule (no two live executions of one task at once):
  An execution is alive from its start record until its end record; one without an end record
  (SIGKILL: poison, scancel -s KILL, a node-crash-like kill) is alive at least until the watcher
  last saw its process in /proc (pid AND start time matching, not a zombie). The watcher polls
  every 0.1 s, so this lower bound is within 0.1 s of the real death, and it never needs the
  system under test's word: not the lease, not Slurm's job end (a task that outlived its job,
  orphaned, is still seen). Two executions of a task overlap when one starts before the other,
  started earlier, was last known alive. A bound that is too early can only hide an overlap of
  under 0.1 s, never invent one.

The event-log rule: per task, the task.* events in id order are a path of this machine, ending
in the task row's state, with nothing after a final state:
  (none)  --submitted-->  waiting
  waiting --claimed--> running;  waiting --cancelled--> cancelled
  running --succeeded--> succeeded;  running --released|requeued--> waiting;
  running --dead--> dead;  running --cancelled--> cancelled
  running --failed--> (a result that failed: then requeued -> waiting, dead -> dead, or nothing
                       more: the task is failed, which only a non-retryable failure is)
and the counts match: attempts = claims - releases (a release gives the attempt back); each
execution record falls under exactly one claim (the last one before its start) and carries that
claim's attempt number; every result event is the task's own word (succeeded: its execution
wrote `end 0`; failed with exit N: it wrote N, or TERM for 143/-15, or nothing for a signal).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FINAL = frozenset({"succeeded", "failed", "dead", "cancelled"})
MAX_PROBLEMS = 60


@dataclass(frozen=True)
class Plan:
    """One task of the workload, as planned before it is submitted."""

    index: int
    kind: str  # ok, flaky, fail, timeout, poison, unstartable
    queue: str
    seconds: float
    arg: int
    max_attempts: int
    timeout: float | None
    cancel_at: float | None  # seconds into the run to cancel it at, or None


@dataclass
class Execution:
    """One run of a task, from its own records and the watcher."""

    task: int
    attempt: int
    pid: int
    starttime: str
    job: str
    kind: str
    start: float
    end: float | None = None
    result: str | None = None  # the end record's: exit code, TERM, poison
    last_alive: float | None = None  # the watcher saw the process alive then
    gone: float | None = None  # ... and first found it gone then

    @property
    def alive_until(self) -> float:
        """Until when it was certainly alive (see the overlap rule)."""
        if self.end is not None:
            return self.end
        return max(self.start, self.last_alive or self.start)


@dataclass(frozen=True)
class TaskRow:
    id: int
    state: str
    attempts: int
    max_attempts: int
    reason: str | None


@dataclass(frozen=True)
class TaskEvent:
    id: int
    ts: float
    kind: str  # without the "task." prefix
    task: int
    detail: str | None


@dataclass
class Findings:
    lost: int = 0  # acknowledged by submit, but missing or not final
    unacknowledged: int = 0  # in the store, never acknowledged to the client
    wrong_state: int = 0  # final, but not in a state its kind allows
    double_runs: int = 0  # tasks with two executions alive at once
    mismatches: int = 0  # tasks whose event log does not account for what happened
    dead_by_faults: int = 0  # ok/flaky tasks whose attempts the faults used up (allowed)
    reruns: int = 0  # succeeded tasks that completed more than once (allowed, counted)
    unwatched: int = 0  # executions without an end record the watcher never saw alive
    states: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def check(
    plans: Sequence[Plan],
    acked: dict[int, int],
    cancelled: set[int],
    rows: Iterable[TaskRow],
    events: Iterable[TaskEvent],
    executions: Iterable[Execution],
) -> Findings:
    """`acked`: plan index -> the task id submit returned; `cancelled`: ids cancel returned."""
    found = Findings()
    by_id = {r.id: r for r in rows}
    plan_of = {tid: plans[i] for i, tid in acked.items()}
    history: dict[int, list[TaskEvent]] = {}
    for event in events:
        history.setdefault(event.task, []).append(event)
    runs: dict[int, list[Execution]] = {}
    for run in executions:
        runs.setdefault(run.task, []).append(run)

    for tid in sorted(set(by_id) - set(plan_of)):
        found.unacknowledged += 1
        found.problem(f"task {tid} is in the store but no submit returned its id")
    for tid, plan in sorted(plan_of.items()):
        row = by_id.get(tid)
        if row is None or row.state not in FINAL:
            found.lost += 1
            found.problem(
                f"task {tid} ({plan.kind}): acknowledged, but "
                f"{'missing' if row is None else row.state}"
            )
            continue
        found.states[row.state] += 1
        mine = sorted(runs.get(tid, []), key=lambda r: r.start)
        path = history.get(tid, [])
        _check_state(found, plan, row, path, tid in cancelled)
        if _overlaps(found, tid, mine):
            found.double_runs += 1
        problems = _check_log(row, path, mine)
        if problems:
            found.mismatches += 1
            for text in problems:
                found.problem(f"task {tid} ({plan.kind}): {text}")
        if row.state == "succeeded" and sum(r.result == "0" for r in mine) > 1:
            found.reruns += 1
        found.unwatched += sum(r.end is None and r.last_alive is None for r in mine)
    for tid in sorted(set(runs) - set(by_id)):
        found.mismatches += 1
        found.problem(f"executions of task {tid}, which the store does not have")
    return found


def _dead_by_faults(path: Sequence[TaskEvent]) -> bool:
    """Its last transition was not a result: the attempts went on kills, expiries, lost jobs."""
    return len(path) >= 2 and path[-1].kind == "dead" and path[-2].kind != "failed"


def _check_state(
    found: Findings, plan: Plan, row: TaskRow, path: Sequence[TaskEvent], cancelled: bool
) -> None:
    allowed = {
        "ok": {"succeeded"},
        "flaky": {"succeeded"},
        "fail": {"dead"},
        "timeout": {"dead"},
        "poison": {"dead"},
        "unstartable": {"failed"},
    }[plan.kind]
    if cancelled:
        allowed = {"cancelled"}  # the cancel call said it cancelled this one
    elif plan.cancel_at is not None:
        allowed = allowed | {"cancelled"}  # cancel said no (or its reply was lost and retried)
    if row.state in allowed:
        if plan.kind == "poison" and not _dead_by_faults(path):
            found.wrong_state += 1
            found.problem(f"task {row.id} (poison): dead by a result, not by its killed workers")
        return
    faults_only = row.state == "dead" and _dead_by_faults(path)
    if faults_only and plan.kind in ("ok", "flaky", "unstartable") and not cancelled:
        found.dead_by_faults += 1
        return
    found.wrong_state += 1
    found.problem(
        f"task {row.id} ({plan.kind}): ended {row.state}, expected "
        f"{'/'.join(sorted(allowed))} ({row.reason})"
    )


def _overlaps(found: Findings, tid: int, runs: Sequence[Execution]) -> bool:
    overlap = False
    for i, early in enumerate(runs):
        for late in runs[i + 1 :]:
            if late.start < early.alive_until:
                overlap = True
                found.problem(
                    f"task {tid}: DOUBLE RUN: pid {late.pid} (job {late.job}, attempt "
                    f"{late.attempt}) started at {late.start:.3f} while pid {early.pid} (job "
                    f"{early.job}, attempt {early.attempt}, started {early.start:.3f}) was alive "
                    f"until at least {early.alive_until:.3f} "
                    f"({'end record' if early.end is not None else 'seen in /proc'})"
                )
    return overlap


TRANSITIONS = {
    (None, "submitted"): "waiting",
    ("waiting", "claimed"): "running",
    ("waiting", "cancelled"): "cancelled",
    ("running", "succeeded"): "succeeded",
    ("running", "released"): "waiting",
    ("running", "requeued"): "waiting",
    ("running", "dead"): "dead",
    ("running", "cancelled"): "cancelled",
    ("running", "failed"): "failing",
    ("failing", "requeued"): "waiting",
    ("failing", "dead"): "dead",
}
EXIT = re.compile(r"^exit (-?\d+|None)")


def _check_log(row: TaskRow, path: Sequence[TaskEvent], runs: Sequence[Execution]) -> list[str]:
    """Problems with the task's event log against its row and its own records."""
    problems: list[str] = []
    state: str | None = None
    attempts = 0
    claims: list[tuple[TaskEvent, int, TaskEvent | None]] = []  # claim, attempt, its outcome
    for event in path:
        nxt = TRANSITIONS.get((state, event.kind))
        if nxt is None:
            problems.append(f"event {event.id} task.{event.kind} is not a transition from {state}")
            return problems
        if event.kind == "claimed":
            attempts += 1
            claims.append((event, attempts, None))
        elif event.kind == "released":
            attempts -= 1
        if state in ("running", "failing") and claims and claims[-1][2] is None:
            claims[-1] = (claims[-1][0], claims[-1][1], event)
        state = nxt
    if state == "failing":
        state = "failed"
    if state != row.state:
        problems.append(f"the event log ends {state}, the task row says {row.state}")
    if attempts != row.attempts:
        problems.append(f"attempts {row.attempts}, but claims - releases = {attempts}")
    # Each execution under the last claim before its start, at most one per claim.
    under: dict[int, Execution] = {}
    for run in runs:
        k = max((i for i, (c, _, _) in enumerate(claims) if c.ts <= run.start), default=None)
        if k is None:
            problems.append(f"pid {run.pid} started at {run.start:.3f}, before any claim")
            continue
        if k in under:
            problems.append(
                f"pids {under[k].pid} and {run.pid} both ran under claim {claims[k][0].id}"
            )
        under[k] = run
        if run.attempt != claims[k][1]:
            problems.append(
                f"pid {run.pid} ran as attempt {run.attempt}, claim {claims[k][0].id} "
                f"was attempt {claims[k][1]}"
            )
    for k, (claim, _, outcome) in enumerate(claims):
        ran = under.get(k)
        if outcome is None or outcome.kind not in ("succeeded", "failed"):
            continue  # released, requeued by expiry or a lost job, dead, cancelled: a kill
        if outcome.kind == "succeeded":
            if ran is None or ran.result != "0":
                how = "never started" if ran is None else f"ended {ran.result}"
                problems.append(f"claim {claim.id} succeeded, but its execution {how}")
            continue
        detail = outcome.detail or ""
        if "could not start" in detail:
            if ran is not None:
                problems.append(f"claim {claim.id}: 'could not start', but pid {ran.pid} ran")
            continue
        if ran is None:
            problems.append(f"claim {claim.id} failed ({detail}) without an execution")
            continue
        match = EXIT.match(detail)
        code = match.group(1) if match else None
        ok = {
            None: False,
            "None": "timeout" in detail and ran.result in (None, "TERM"),
        }.get(code)
        if ok is None:  # an exit code: what the execution itself said
            number = int(code or 0)
            if ran.result is None:
                ok = number < 0
            elif ran.result == "TERM":
                ok = number in (143, -15)
            else:
                ok = ran.result == str(number)
        if not ok:
            problems.append(
                f"claim {claim.id} failed as '{detail}', but its execution ended {ran.result}"
            )
    return problems
