"""What Slurm's words mean to us: its job state codes and its error messages, as tables.

Kept apart from the adapter so they can be read, reviewed and table-tested without a cluster,
and shared by both Slurm backends (command line and pyslurm).
"""

from __future__ import annotations

import re

from hpcscale.schedulers.base import ElementState

S = ElementState

# Slurm's job state codes (long form, as squeue %T and sacct State print them) -> ours.
# Anything not listed maps to UNKNOWN, which counts as in flight.
SLURM_STATES: dict[str, ElementState] = {
    "PENDING": S.PENDING,
    "CONFIGURING": S.PENDING,  # nodes booting for it: not yet running the script
    "REQUEUED": S.PENDING,
    "REQUEUE_HOLD": S.PENDING,
    "REQUEUE_FED": S.PENDING,
    "RESV_DEL_HOLD": S.PENDING,
    "RUNNING": S.RUNNING,
    "SUSPENDED": S.RUNNING,  # still holds its allocation
    "STOPPED": S.RUNNING,
    "SIGNALING": S.RUNNING,
    "RESIZING": S.RUNNING,
    "STAGE_OUT": S.COMPLETING,
    "COMPLETING": S.COMPLETING,
    "COMPLETED": S.COMPLETED,
    "FAILED": S.FAILED,
    "SPECIAL_EXIT": S.FAILED,
    "TIMEOUT": S.TIMEOUT,
    "DEADLINE": S.TIMEOUT,
    "PREEMPTED": S.PREEMPTED,
    "CANCELLED": S.CANCELLED,
    "REVOKED": S.CANCELLED,  # a federated sibling ran it instead
    "NODE_FAIL": S.NODE_FAIL,
    "OUT_OF_MEMORY": S.OUT_OF_MEMORY,
    "BOOT_FAIL": S.BOOT_FAIL,
}

# Errors after which the job may or may not exist: look the tag up, then maybe retry.
TRANSIENT_PATTERNS = (
    "socket timed out",
    "unable to contact slurm controller",
    "resource temporarily unavailable",
    "slurm temporarily unable to accept job",
    "communication connection failure",
    "connection refused",
    "zero bytes were transmitted or received",
    "transport endpoint is not connected",
    "slurmctld is not responding",
    "try again",
)
# Refusals by site policy that pass by waiting or asking for fewer, as Slurm words them (its
# job_state_reason strings, which sbatch prints on the line before "Batch job submission
# failed"; src/common/job_state_reason.c, slurm_errno.c, job_submit/throttle) -> our key.
REFUSAL_PATTERNS = (
    ("qosmaxsubmitjobperuserlimit", "QOSMaxSubmitJobPerUserLimit"),
    ("qosgrpsubmitjobslimit", "QOSGrpSubmitJobsLimit"),
    ("assocmaxsubmitjoblimit", "AssocMaxSubmitJobLimit"),
    ("assocgrpsubmitjobslimit", "AssocGrpSubmitJobsLimit"),
    ("maxsubmitjobsperaccount", "MaxSubmitJobsPerAccount"),
    ("reached jobs per hour limit", "jobs per hour"),  # job_submit/throttle
    ("maxjobcount limit reached", "MaxJobCount"),  # the controller's queue is full
    ("required partition not available", "partition unavailable"),  # DRAIN or INACTIVE
)
ACCOUNTING_POLICY = "job violates accounting/qos policy"
# ESLURM_ACCOUNTING_POLICY also covers limits no wait will lift (MaxWall, MaxTRESPerJob, ...):
# Slurm then names that limit (QOSMaxWallDurationPerJobLimit, AssocMaxCpuPerJobLimit, ...).
_NAMED_LIMIT = re.compile(r"\b(?:QOS|Assoc)\w*Limit\b")
# Refusals that will repeat: report them, never retry.
PERMANENT_PATTERNS = (
    "invalid partition",
    "invalid account",
    "invalid qos",
    "invalid wckey",
    "invalid job array specification",
    "invalid generic resource",
    "invalid feature specification",
    "invalid --",
    "requested node configuration is not available",
    "requested time limit is invalid",
    "more processors requested than permitted",
    "memory specification can not be satisfied",
    "access/permission denied",
    "user's group not permitted to use this partition",
    "unrecognized option",
    "unknown option",
    "this does not look like a batch script",
)


def refusal_reason(text: str) -> str | None:
    """The key of a refusal that passes by waiting (see REFUSAL_PATTERNS), else None.
    An accounting-policy refusal naming no limit is taken as one (a site's job_submit plugin
    throttling); one naming a per-job limit is not."""
    low = text.lower()
    for pattern, reason in REFUSAL_PATTERNS:
        if pattern in low:
            return reason
    if ACCOUNTING_POLICY in low and not _NAMED_LIMIT.search(text):
        return "accounting policy"
    return None


def classify(text: str) -> str:
    """'refused' (for now: see refusal_reason), 'permanent', 'transient' or 'unknown' for an
    sbatch error text."""
    if refusal_reason(text) is not None:
        return "refused"
    low = text.lower()
    if ACCOUNTING_POLICY in low or any(p in low for p in PERMANENT_PATTERNS):
        return "permanent"
    if any(p in low for p in TRANSIENT_PATTERNS):
        return "transient"
    return "unknown"
