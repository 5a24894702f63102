"""What the site allows a pool now (issue 14): its limits, read from the scheduler, and its
refusals, remembered between cycles (in memory only: a restarted manager reads the limits again
before its first decision, and a refusal again if the site still refuses).

A refusal by site policy (a submit limit, the jobs-per-hour throttle, a DRAIN or INACTIVE
partition: `errors.SubmitRefused`) is "not now, not that many". It is never a failed start:
the pool submits nothing more while it stands (the pre-flight's `sbatch --test-only`, re-run
every cycle meanwhile, says when it has passed, creating nothing), asks for fewer afterwards
(the limits are read again at once; with none to read, half the refused count), and names it
in `why` and `status`. The limits are read every SITE_LIMITS_INTERVAL, and every cycle while
they hold the pool back, so a limit an admin raises is seen within a poll interval.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from hpcscale.errors import SchedulerError, SubmitRefused
from hpcscale.policy import Decision, Observation
from hpcscale.schedulers import Scheduler, SiteLimits

log = logging.getLogger("hpcscale.manager")

_COUNTS = re.compile(r" with \d+ ")
SITE_LIMITS_INTERVAL = 180.0  # read the site's limits this often while they do not bind


@dataclass
class SiteWatch:
    """One pool's picture of its site: the last limits read and the standing refusal."""

    limits: SiteLimits | None = None
    limits_due: float = 0.0  # when to read them next
    spent: int = 0  # elements submitted since the limits were read (they count against them)
    refusal: str | None = None  # the site's words while it refuses the pool's submissions
    refused_count: int | None = None  # what it refused, when no limit says what it takes
    binding: bool = False  # the site's allowance held the last decision back

    def read(self, scheduler: Scheduler, now: float) -> bool:
        """Read the limits when due (every cycle while they bind or a refusal stands); True
        when they changed since the last read (the pre-flight is then re-run)."""
        if now < self.limits_due and not self.binding and self.refusal is None:
            return False
        self.limits_due = now + SITE_LIMITS_INTERVAL
        try:
            limits = scheduler.site_limits()
        except SchedulerError as exc:
            log.warning("could not read the site's limits: %s", exc)
            return False
        before, self.limits, self.spent = self.limits, limits, 0
        if before is None or limits is None:
            return before is not limits
        rose = before.allowance == 0 and (limits.allowance or 0) > 0  # a hold lifted
        return rose or _numbers(before) != _numbers(limits)

    def refused(self, exc: SubmitRefused, count: int) -> None:
        """An sbatch or a pre-flight the site refused for now: hold, read the limits again."""
        self.refusal = f"{exc.reason}: {exc.message}"
        self.refused_count = count
        self.limits_due = 0.0

    def passed(self) -> None:
        """The site took a submission or passed the pre-flight: the refusal is over."""
        self.refusal = None
        self.refused_count = None

    def submitted(self, count: int) -> None:
        self.spent += count

    def allowance(self) -> tuple[int | None, str | None]:
        """(more elements the site takes now, the limit that says so) for the policy's
        Observation: none while a refusal stands; else the limits read, less what was
        submitted since; else, after a refusal lifted with no limit known, half of what was
        refused (retry smaller)."""
        if self.refusal is not None:
            return 0, f"sbatch refused: {self.refusal}"
        if self.limits is not None and self.limits.allowance is not None:
            return max(0, self.limits.allowance - self.spent), self.limits.binding
        if self.refused_count is not None:
            return max(1, self.refused_count // 2), "retrying smaller after a refusal"
        return None, None

    def probe_count(self, most: int) -> int:
        """How many elements the pre-flight tests: at most `most`, no more than the limits
        read allow (or half of what was refused, none being known), at least one."""
        if self.limits is not None and self.limits.allowance is not None:
            return max(1, min(most, self.limits.allowance - self.spent))
        if self.refused_count is not None:
            return max(1, min(most, self.refused_count // 2))
        return most

    def report(self) -> dict[str, object]:
        """What the decision record carries for `status`, `why` and the metrics."""
        allowance, limit = self.allowance()
        limits = self.limits
        return {
            "allowance": allowance,
            "limit": limit,
            "refusal": self.refusal,
            "running_allowance": None if limits is None else limits.running_allowance,
            "read_at": None if limits is None else limits.read_at,
        }


def site_binds(obs: Observation, decision: Decision) -> bool:
    """The site's allowance is what holds the pool back: the pool wants more than its cap and
    the cap is what the site allows (its limits are then read every cycle)."""
    if obs.site_allowance is None or decision.needed <= decision.cap:
        return False
    return obs.all_in_flight + obs.site_allowance <= decision.cap


def _numbers(limits: SiteLimits | None) -> tuple[object, ...] | None:
    """What counts as a change of the limits: another binding limit or array size. The
    allowance itself, and the count of queued jobs in the binding text, move with every job
    that starts or ends."""
    if limits is None:
        return None
    return (_COUNTS.sub("", limits.binding), limits.max_array_size)
