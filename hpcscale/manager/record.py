"""The manager's decision records: what each pool observed, decided and why, written to the
store at the end of the cycle.

They are what `hpcscale why` shows, what the replay test decides again (the manager's and the
simulator's `decide` must agree on them), and what an operator reads after the fact, so their
shape is kept in one place. A cycle's records go in one request after every pool has acted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from hpcscale import estimate
from hpcscale.client import Client
from hpcscale.config import PoolConfig
from hpcscale.errors import HpcscaleError
from hpcscale.manager.observation import Measured, held_notes
from hpcscale.manager.site import SiteWatch
from hpcscale.manager.waits import notes, pending_reasons
from hpcscale.models import DecisionRecord
from hpcscale.policy import Budget, Decision, Observation, PoolState

log = logging.getLogger("hpcscale.manager")


class DecisionLog:
    """This cycle's records, sent together by `flush` (printed instead on a dry run)."""

    def __init__(self, manager: str, dry_run: bool, out: Callable[[str], None]) -> None:
        self.manager = manager
        self.dry_run = dry_run
        self.out = out
        self.records: list[DecisionRecord] = []

    def add(
        self,
        pool: str,
        ts: float,
        decision: Decision | None,
        obs: Observation | None,
        reasons: list[str],
        extra: dict[str, object],
    ) -> None:
        """`extra`: the cycle's timings and whatever else the record carries."""
        data: dict[str, object] = {
            "reasons": reasons,
            "observation": asdict(obs) if obs is not None else {},
            **extra,
        }
        if decision is not None:
            data.update(
                desired=decision.desired,
                submit=decision.submit,
                cancel_pending=decision.cancel_pending,
                state=decision.state.value,
                needed=decision.needed,
                in_flight=decision.in_flight,
            )
        else:
            data.update(state=PoolState.DEGRADED.value, submit=0)  # the cycle failed
        if self.dry_run:
            self.out(f"pool {pool}: " + "; ".join(reasons))
            return
        self.records.append(DecisionRecord(manager=self.manager, pool=pool, ts=ts, data=data))

    def flush(self, client: Client) -> None:
        """The cycle's decisions in one request, after every pool has acted."""
        records, self.records = self.records, []
        if records:
            try:
                client.record_decisions(records)
            except HpcscaleError as exc:
                log.warning("could not record the decisions: %s", exc)


def decision_extra(
    pool: PoolConfig,
    decision: Decision,
    measured: Measured,
    site: SiteWatch,
    cancelled: Sequence[str],
) -> dict[str, object]:
    """What a decision's record carries besides the observation and the decision: among it
    the effective cap, what the site allows, why the pending elements wait and the manager's
    own notes for `why` (issue 14: the site's refusal, the long-pending ones it cancelled)."""
    view = measured.view
    waiting = pending_reasons(view.pending)
    held = held_notes(pool, measured.observed)
    burning = len(view.starting) + len(view.registered)  # elements running now
    return {
        "queue_wait": estimate.queue_wait(measured.observed.history.queue_waits),
        "cap": decision.cap,
        "site": site.report(),
        "pending_reasons": waiting,
        "notes": [*notes(waiting, site.refusal, cancelled), *held],
        "held": held,  # the tasks wider than the pool's workers (issue 16)
        "submitted_last_hour": measured.observed.submitted,
        "max_submit_per_hour": pool.submit_ceiling,
        "alarm": measured.health.alarm,
        "preflight": measured.blocked or "ok",
        "budget": budget_report(measured.budgets, burning),
    }


def budget_report(budgets: tuple[Budget, ...], running: int) -> dict[str, dict[str, Any]]:
    """Each budget in hours, with its burn rate and time to exhaustion."""
    return {
        b.kind: {
            "limit_hours": b.limit / 3600,
            "burned_hours": b.burned / 3600,
            "reserved_hours": b.reserved / 3600,
            "left_hours": b.left / 3600,
            "per_worker_hours": b.per_worker / 3600,
            **_exhaustion(b, running),
        }
        for b in budgets
    }


def _exhaustion(budget: Budget, running: int) -> dict[str, float | None]:
    """The current burn rate (resource-hours per hour: what the running elements hold) and the
    hours until the budget is burned at that rate (None while nothing runs)."""
    rate = float(running * budget.resources)
    remaining = (budget.limit - budget.burned) / 3600
    return {
        "rate_per_hour": rate,
        "hours_to_exhaustion": max(0.0, remaining) / rate if rate > 0 else None,
    }
