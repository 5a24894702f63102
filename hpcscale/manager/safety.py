"""Cost safety (issue 8): what may stop a pool from submitting, measured for the policy.

The policy decides on plain values; these are the parts that measure them from the world. The
pre-flight puts each pool's real job script through the scheduler's own test (`sbatch
--test-only`) at start and every `preflight_interval`; a refused pool submits nothing and shows
degraded with the scheduler's message while the others run (the outcome is held in memory only:
a restarted manager checks again before its first decision). Submissions per rolling hour are
counted from the store (a restart does not reset them) and capped by the pool's
`max_submit_per_hour`. `[pools.budget]` caps them by what the worst case of new elements may
still burn, measured from the store's worker records so a restart forgets nothing
(`budget-exhausted`; running workers are never cancelled). The breaker and the crash-loop alarm
count failed starts, and what closes the breaker is a healthy registration, not any.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpcscale.config import ManagerConfig, PoolConfig, Settings, gpus_of, worker_token_file
from hpcscale.errors import (
    ConfigError,
    PreflightUnsupported,
    SchedulerError,
    SubmitRefused,
    TransientSchedulerError,
)
from hpcscale.jobscript import render
from hpcscale.manager.elements import PoolView
from hpcscale.manager.site import SiteWatch
from hpcscale.models import LIVE_WORKER_STATES, BreakerState, PoolHistory, Worker
from hpcscale.policy import Budget, Decision, PoolState, breaker_state, crash_alarm
from hpcscale.schedulers import Scheduler

log = logging.getLogger("hpcscale.manager")

PREFLIGHT_RETRY = 60.0  # a pre-flight the scheduler could not answer is tried again this soon


class Preflight:
    """Each pool's last pre-flight outcome and when the next is due (memory only)."""

    def __init__(self, settings: Settings, manager: str) -> None:
        self.settings = settings
        self.manager = manager
        # pool -> (when the next pre-flight is due, the scheduler's refusal or None)
        self.outcomes: dict[str, tuple[float, str | None]] = {}

    def check(
        self,
        pool: PoolConfig,
        scheduler: Scheduler,
        now: float,
        event: Callable[[str, str], None],
        site: SiteWatch,
    ) -> str | None:
        """None when the pool's job script passes the scheduler's test, else its message;
        asked again only when due. A refusal for now (a submit limit, a closed partition) is
        not a failure: it goes to `site` (the pool waits, not degraded) and the test is asked
        again next cycle, with as many elements as the site allows."""
        due, blocked = self.outcomes.get(pool.name, (0.0, None))
        if pool.name in self.outcomes and now < due:
            return blocked
        interval = self.settings.manager.preflight_interval
        tag = f"{self.manager}.{pool.name}.{int(now)}.test"  # no longer than a real submission's
        count = site.probe_count(max(1, min(pool.max_workers, pool.max_submit_per_cycle)))
        try:
            token_file = worker_token_file(self.settings, pool.name)  # its path: nothing created
            job = render(pool, self.settings, tag, count, token_file)
            scheduler.test_submit(job.script, count, tag)
            refusal = None
        except PreflightUnsupported as exc:
            log.warning("pool %s: no pre-flight check: %s", pool.name, exc)
            self.outcomes[pool.name] = (now + interval, None)
            return None
        except TransientSchedulerError as exc:
            log.warning("pool %s: pre-flight could not ask the scheduler: %s", pool.name, exc)
            self.outcomes[pool.name] = (now + PREFLIGHT_RETRY, blocked)
            return blocked
        except SubmitRefused as exc:
            if site.refusal is None:
                log.info("pool %s: the site refuses submissions for now: %s", pool.name, exc)
            site.refused(exc, count)
            self.outcomes[pool.name] = (now, None)  # asked again next cycle
            return None
        except (SchedulerError, ConfigError) as exc:
            refusal = str(exc)
        if refusal is None and site.refusal is not None:
            log.info("pool %s: the site takes submissions again", pool.name)
            site.passed()
        self.outcomes[pool.name] = (now + interval, refusal)
        if refusal is not None:
            log.error("pool %s: pre-flight failed, submitting nothing: %s", pool.name, refusal)
            event("pool.preflight_failed", f"{pool.name} {refusal}")
        elif blocked is not None:
            log.info("pool %s: pre-flight passes again", pool.name)
            event("pool.preflight_passed", pool.name)
        return refusal

    def soon(self, pool: str) -> None:
        """Ask again next cycle: after a refusal, or when the site's limits changed."""
        if pool in self.outcomes:
            self.outcomes[pool] = (0.0, self.outcomes[pool][1])


@dataclass(frozen=True)
class Health:
    """The breaker's and the alarm's inputs and outcome for one pool and cycle."""

    failures: list[float]  # when each failed start in the store's window happened
    breaker: BreakerState  # policy.breaker_state
    alarm: str | None  # the crash-loop alarm's message (policy.crash_alarm)


def pool_health(
    history: PoolHistory,
    recorded_now: int,
    workers: Sequence[Worker],
    counted: set[str],
    cfg: ManagerConfig,
    now: float,
) -> Health:
    """The breaker and the crash-loop alarm. The history was read before this cycle recorded
    its failed starts (`recorded_now`): they count now."""
    failures = [*history.failed_starts, *[now] * recorded_now]
    last = last_healthy_registration(workers, history, counted)
    breaker = breaker_state(failures, last, now, cfg.breaker_failures, cfg.breaker_cooldown)
    alarm = crash_alarm(failures, now, cfg.breaker_window, cfg.breaker_failures)
    return Health(failures, breaker, alarm)


def last_healthy_registration(
    workers: Sequence[Worker], history: PoolHistory, counted: set[str]
) -> float | None:
    """What closes the breaker: the last registration of a worker that did not end at once
    without a task. Registering alone does not prove a pool healthy (a crash loop of workers
    that register would otherwise never open it). Workers are listed for HISTORY_WINDOW,
    longer than the breaker's window, so an older registration changes nothing."""
    quick = {w.id for w in workers if w.id in counted}
    healthy = [w.started_at for w in workers if w.submission and w.id not in quick]
    if healthy:
        return max(healthy)
    return None if quick else history.last_registration


def measure_budgets(
    pool: PoolConfig,
    view: PoolView,
    now: float,
    read_workers: Callable[[float], Sequence[Worker]],
    accounted: Callable[[float], dict[str, float] | None] | None = None,
) -> tuple[Budget, ...]:
    """`[pools.budget]` measured: burn from the site's accounting where it has one
    (`accounted(since)`: Scheduler.accounted_seconds, CPU-seconds per element, every run of a
    requeued element included), else from the store's worker records of the pool (registration
    to end, clipped to the window; so a restart forgets nothing), read only when the pool has
    a budget; and the worst case still to come from what is in flight (pending, unconfirmed
    and starting elements: a whole wall time each; registered workers: until their job's end)."""
    cfg = pool.budget
    if cfg is None or (cfg.core_hours is None and cfg.gpu_hours is None):
        return ()
    wall = pool.slurm.wall_seconds
    start = now - cfg.window
    cpus = pool.slurm.cpus_per_task
    charged = _accounted(accounted, start)
    if charged is not None:  # the site's own figure: CPU-seconds, whatever it allocated
        burned = {"core": charged, "gpu": gpus_of(pool.slurm) * charged / max(1, cpus)}
    else:
        seconds = _registered_seconds(read_workers(start - wall), start, now)
        burned = {"core": cpus * seconds, "gpu": gpus_of(pool.slurm) * seconds}
    waiting = view.unconfirmed + len(view.pending) + len(view.starting)
    ahead = waiting * wall + sum(
        max(0.0, (w.expected_end or w.started_at + wall) - now) for w in view.registered
    )
    out = []
    for kind, hours, per in (
        ("core", cfg.core_hours, cpus),
        ("gpu", cfg.gpu_hours, gpus_of(pool.slurm)),
    ):
        if hours is not None and per > 0:
            out.append(Budget(kind, hours * 3600, burned[kind], per * ahead, per * wall, per))
    return tuple(out)


def _accounted(
    accounted: Callable[[float], dict[str, float] | None] | None, since: float
) -> float | None:
    """CPU-seconds the site charged the pool since `since`; None without accounting (or when
    it cannot be read: the registration-time estimate is the fallback)."""
    if accounted is None:
        return None
    try:
        charged = accounted(since)
    except SchedulerError as exc:
        log.warning("accounting unreadable, budgets from worker records: %s", exc)
        return None
    return None if charged is None else sum(charged.values())


def _registered_seconds(workers: Sequence[Worker], start: float, now: float) -> float:
    """Worker-seconds of registered life within [start, now]: the estimate without accounting."""
    seconds = 0.0
    for worker in workers:
        live = worker.state.value in LIVE_WORKER_STATES
        end = worker.ended_at or (now if live else worker.last_heartbeat)
        seconds += max(0.0, min(end, now) - max(worker.started_at, start))
    return seconds


def newly_exhausted(
    previous: Decision | None, decision: Decision, budgets: tuple[Budget, ...]
) -> str | None:
    """The spent budgets, described, when they start holding the pool: worth an event once,
    not every cycle they hold it."""
    held = PoolState.BUDGET_EXHAUSTED
    if decision.state != held or (previous is not None and previous.state == held):
        return None
    return "; ".join(b.describe() for b in budgets if b.allowance == 0)
