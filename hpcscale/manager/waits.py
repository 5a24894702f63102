"""Why a pool's elements wait, and which waited too long for nothing (issue 14). Pure.

On a busy cluster elements pend for reasons Slurm names (Priority, Resources, PartitionDown,
QOSMaxJobsPerUserLimit, BeginTime after a requeue, ...): they are counted per reason for
`status`, `why` and the hpcscale_pending_elements metric. An element that has pended longer
than LONG_PENDING while the backlog is gone (nothing claimable, more in flight than desired)
would start a worker with nothing to do: it is cancelled, whatever `cancel_unneeded_pending`
says (that option cancels surplus pending ones at once; this is the backstop for the rest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hpcscale.models import Submission
from hpcscale.policy import Decision, Observation
from hpcscale.schedulers import ElementStatus

LONG_PENDING = 300.0  # seconds an element may pend with no backlog before it is cancelled
NO_REASON = "None"


def pending_reasons(pending: Sequence[ElementStatus]) -> dict[str, int]:
    """How many pending elements wait for each reason (the scheduler's words)."""
    counts: dict[str, int] = {}
    for element in pending:
        reason = element.reason or NO_REASON
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def newest(elements: Sequence[ElementStatus], count: int) -> list[str]:
    """The ids of the `count` newest elements: the ones to cancel first (the oldest are
    nearest to starting)."""
    ordered = sorted(elements, key=lambda e: (e.job_id, e.array_index), reverse=True)
    return [e.element_id for e in ordered[:count]]


def stale_surplus(
    pending: Sequence[ElementStatus],
    submissions: Mapping[str, Submission],
    obs: Observation,
    decision: Decision,
    now: float,
) -> list[str]:
    """Pending elements to cancel: submitted more than LONG_PENDING ago, with nothing
    claimable and more in flight than desired, beyond those the decision cancels; the newest
    first. An element whose submission is not known is left alone."""
    already = set(newest(pending, decision.cancel_pending))
    surplus = decision.in_flight - decision.desired - len(already)
    if obs.claimable > 0 or surplus <= 0:
        return []
    old = [
        e
        for e in pending
        if e.element_id not in already
        and e.tag in submissions
        and now - submissions[e.tag].created_at > LONG_PENDING
    ]
    return newest(old, surplus)


def notes(reasons: Mapping[str, int], refusal: str | None, cancelled: Sequence[str]) -> list[str]:
    """The manager's own lines for `why`, beside the policy's reasons."""
    out = []
    if refusal is not None:
        out.append(f"the site refuses submissions for now (not a failure): {refusal}")
    if reasons:
        waits = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        out.append(f"pending elements wait for: {waits}")
    if cancelled:
        out.append(
            f"cancel {len(cancelled)} pending that waited over {LONG_PENDING:g}s with no backlog:"
            f" {', '.join(cancelled)}"
        )
    return out
