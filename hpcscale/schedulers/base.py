"""The scheduler interface: the manager's only hands on a cluster.

In the spirit of Parsl's providers, kept small: `submit` one array of `count` elements tagged
with the submission's tag, `test_submit` the same without creating anything (pre-flight),
`status` of every element of this manager (one scheduler query per cycle for all pools),
`cancel` whole submissions or pending elements only, plus what the site allows
(`max_array_size`, `site_limits`) and what it has charged (`accounted_seconds`). Each adapter
translates its own state codes into `ElementState` with a table next to it (see
`slurm/states.py`, `local/adapter.py`).

Schedulers know nothing of the statestore: they take a script, a count and a tag, and report
what the cluster says.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hpcscale.errors import SchedulerError

JOB_NAME_PREFIX = "hpcscale"

# A tag goes into `--comment` and file names: keep it to a safe, shell-inert alphabet.
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# Master ids ("123") or element ids ("123_4") only: nothing else reaches scancel or kill.
_ID_RE = re.compile(r"^\d+(?:_\d+)?$")


class ElementState(StrEnum):
    """One array element's state, the same words for every scheduler."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    NODE_FAIL = "node_fail"
    OUT_OF_MEMORY = "out_of_memory"
    BOOT_FAIL = "boot_fail"
    UNKNOWN = "unknown"


S = ElementState

# Ended for good. UNKNOWN is deliberately NOT terminal: an element whose state cannot be read
# still counts against the pool's hard max (over-counting is safe, under-counting is not).
TERMINAL: frozenset[ElementState] = frozenset(
    {
        S.COMPLETED,
        S.FAILED,
        S.TIMEOUT,
        S.PREEMPTED,
        S.CANCELLED,
        S.NODE_FAIL,
        S.OUT_OF_MEMORY,
        S.BOOT_FAIL,
    }
)
# Ends that are normal for a worker (wall time and preemption included): not failed starts.
NORMAL_END: frozenset[ElementState] = frozenset({S.COMPLETED, S.TIMEOUT, S.PREEMPTED, S.CANCELLED})
# Still holding (or waiting for) a slot: what the hard max counts.
IN_FLIGHT: frozenset[ElementState] = frozenset(ElementState) - TERMINAL


@dataclass(frozen=True)
class CreatedArrays:
    """What one `submit` created: one master job id per array chunk (several when split)."""

    tag: str
    job_ids: list[str]
    count: int


@dataclass(frozen=True)
class ElementStatus:
    """One array element as the scheduler sees it."""

    job_id: str  # the array's master id
    array_index: int  # -1: Slurm's one record for an ended array's never-started elements,
    # when this scheduler object never knew their indices (e.g. after a manager restart)
    element_id: str  # "<master>_<index>" (or "<master>" for -1), what `cancel` takes
    state: ElementState
    tag: str  # the submission tag (Slurm: the job's --comment)
    name: str  # hpcscale.<manager>.<pool>
    # Why it waits, in the scheduler's words (Slurm's squeue %r: Priority, Resources,
    # PartitionDown, QOSMaxJobsPerUserLimit, BeginTime, ...), or the adapter's note on how an
    # end was learnt; None when there is nothing to say (a running element).
    reason: str | None = None
    exit_code: int | None = None

    @property
    def pool(self) -> str:
        """The pool part of the job name (names are hpcscale.<manager>.<pool>)."""
        parts = self.name.split(".", 2)
        return parts[2] if len(parts) == 3 and parts[0] == JOB_NAME_PREFIX else ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class SiteLimits:
    """What the site allows this pool's jobs now, read from its limits and the user's queue.

    `allowance`: how many more elements it accepts now (the tightest of the submit limits
    minus the jobs that count against it, the user's other jobs included; an array element
    counts one); `running_allowance`: how many more may run at once (beyond it elements pend);
    `max_array_size`: an array's indices must be below it. None: no such limit known.
    `binding` names the limit that binds, for `status` and `why`; `read_at` is time.time().
    """

    allowance: int | None
    running_allowance: int | None
    max_array_size: int | None
    binding: str
    read_at: float


def job_name(manager: str, pool: str) -> str:
    """Worker jobs are named hpcscale.<manager>.<pool>: one squeue covers a manager's pools."""
    return f"{JOB_NAME_PREFIX}.{manager}.{pool}"


def manager_prefix(manager: str) -> str:
    return f"{JOB_NAME_PREFIX}.{manager}."


def check_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise SchedulerError(
            f"tag {tag!r} must be 1-128 of letters, digits, '_', '.', ':', '-' (it goes into "
            "--comment and file names)"
        )
    return tag


def check_ids(ids: Sequence[str]) -> list[str]:
    bad = [i for i in ids if not _ID_RE.match(str(i))]
    if bad:
        raise SchedulerError(f"not job or element ids (want 123 or 123_4): {bad!r}")
    return [str(i) for i in ids]


def split_count(count: int, max_array_size: int) -> list[int]:
    """Sizes of the arrays that carry `count` elements when one array may hold at most
    `max_array_size` (Slurm's MaxArraySize: indices 0..MaxArraySize-1)."""
    if count < 1:
        raise SchedulerError(f"count must be ≥ 1, got {count}")
    size = max(1, max_array_size)
    full, rest = divmod(count, size)
    return [size] * full + ([rest] if rest else [])


class Scheduler(ABC):
    """One pool's adapter. `status` covers every pool of the same manager, so the manager calls
    it once per cycle on any one scheduler of a kind and groups the elements by `pool`."""

    name: str  # "slurm", "pyslurm", "local"

    @property
    @abstractmethod
    def max_array_size(self) -> int:
        """The most elements one array may hold; larger submissions are split."""

    @abstractmethod
    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        """Submit `count` elements running `script`, tagged `tag`.

        Idempotent by tag where the scheduler can lose an answer: on a timeout or transient
        failure the adapter looks the tag up before retrying. Raises PermanentSubmitError for
        refusals a retry will not fix, TransientSchedulerError when the outcome is unknown
        (the caller must treat the tag as unconfirmed and reconcile with `find`).
        """

    @abstractmethod
    def test_submit(self, script: str, count: int, tag: str) -> None:
        """The scheduler's own test of a submission, creating nothing (Slurm: `sbatch
        --test-only` with the argv a real submit would use): the manager's pre-flight check.

        Returns when the scheduler would accept it. Raises PermanentSubmitError (or
        SchedulerError) with the scheduler's message when it would refuse it, and
        TransientSchedulerError when the scheduler could not be asked (the check is retried).
        """

    @abstractmethod
    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        """Every element of this manager's jobs (all pools), or only those of `tags`."""

    def find(self, tag: str) -> list[ElementStatus]:
        """The elements of one submission (reconciliation by tag)."""
        return self.status([check_tag(tag)])

    def site_limits(self) -> SiteLimits | None:
        """The site's limits for this pool now (None: this scheduler has none to tell).
        Raises SchedulerError when they could not be read."""
        return None

    def accounted_seconds(self, since: float) -> dict[str, float] | None:
        """CPU-seconds the site has charged per element of this pool's jobs since `since`
        (epoch seconds), from its accounting; None where there is no accounting."""
        return None

    @abstractmethod
    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        """Cancel whole arrays ("123") or elements ("123_4"); with `pending_only`, only the
        ones not yet started. Ids already gone are not an error."""
