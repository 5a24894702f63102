"""What Slurm's words mean to us: its job state codes and its error messages, as tables.

Kept apart from the adapter so they can be read, reviewed and table-tested without a cluster,
and shared by both Slurm backends (command line and pyslurm).
"""

from __future__ import annotations

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
# Refusals that will repeat: report them, never retry.
PERMANENT_PATTERNS = (
    "qosmaxsubmitjob",
    "maxsubmitjob",
    "assocmaxsubmitjob",
    "job violates accounting/qos policy",
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


def classify(text: str) -> str:
    """'permanent', 'transient' or 'unknown' for an sbatch error text."""
    low = text.lower()
    if any(p in low for p in PERMANENT_PATTERNS):
        return "permanent"
    if any(p in low for p in TRANSIENT_PATTERNS):
        return "transient"
    return "unknown"
