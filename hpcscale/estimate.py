"""PURE: throughput and queue-wait estimates from recent measurements. No I/O, no clock.

EWMA over the newest samples: it follows a campaign whose tasks change length, yet one odd
task does not swing the pool's size. With no samples, the config's prior stands.
"""

from __future__ import annotations

from collections.abc import Sequence

ALPHA = 0.2
# How many recent run times a queue's estimates look at (the store returns this many).
RECENT_DURATIONS = 100


def ewma(samples_newest_first: Sequence[float], alpha: float = ALPHA) -> float | None:
    """Exponentially weighted mean, the newest sample weighing most; None for no samples."""
    if not samples_newest_first:
        return None
    value = samples_newest_first[-1]
    for sample in reversed(samples_newest_first[:-1]):
        value = alpha * sample + (1 - alpha) * value
    return value


def task_duration(samples_newest_first: Sequence[float], prior: float) -> float:
    """Expected seconds per task: EWMA of recent run times, else the prior; never below 0.1 s."""
    measured = ewma(samples_newest_first)
    return max(0.1, prior if measured is None else measured)


def queue_wait(samples_newest_first: Sequence[float], prior: float = 0.0) -> float:
    """Expected seconds from sbatch to a registered worker."""
    measured = ewma(samples_newest_first)
    return max(0.0, prior if measured is None else measured)


def p90(samples: Sequence[float]) -> float | None:
    """The 90th-percentile sample (nearest rank): how long a worker expects the next task may take
    before it claims one, so one long task in ten does not run past the wall time."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def pool_task_duration(per_queue: Sequence[tuple[Sequence[float], int]], prior: float) -> float:
    """A pool's seconds per task, for the manager and the simulator alike: each queue's
    task_duration (recent run times newest first, else the prior), blended by its backlog
    (the longest queue's when nothing waits)."""
    durations = [(task_duration(samples, prior), count) for samples, count in per_queue]
    return blended_duration(durations, max((d for d, _ in durations), default=prior))


def blended_duration(per_queue: Sequence[tuple[float, int]], default: float) -> float:
    """One duration for a pool serving several queues: the mean weighted by backlog."""
    weight = sum(count for _, count in per_queue)
    if weight <= 0:
        return default
    return sum(duration * count for duration, count in per_queue) / weight


# How many of a pool's newest ended workers its overhead is measured on.
RECENT_WORKERS = 20


def mean_duration(samples: Sequence[Sequence[float]], prior: float) -> float:
    """The plain mean of a pool's recent run times (all its queues'), else the prior: what a
    worker's tasks took on average, unbiased, for idle_overhead (the EWMA follows the newest
    tasks, and a worker's whole life is better measured by the mean)."""
    flat = [d for queue in samples for d in queue]
    return sum(flat) / len(flat) if flat else prior


def idle_overhead(ended: Sequence[tuple[float, float, int, int]], duration: float) -> float | None:
    """A worker's paid seconds that ran no task, beyond its start-up before it registered: the
    mean over the newest ended workers, given as (registered at, ended at, tasks done, slots),
    of its registered time less its tasks' (tasks done x `duration` / slots). It holds what the
    sizing rule calls the tail (the wait for a first claim, gaps, the empty claims before
    leaving); None until a worker has ended. Per worker the task time is an estimate, so
    single workers are noisy; the mean over several is not, and it is never below 0."""
    newest = sorted(ended, key=lambda w: w[1], reverse=True)[:RECENT_WORKERS]
    if not newest:
        return None
    idle = [(end - start) - done * duration / max(1, slots) for start, end, done, slots in newest]
    return max(0.0, sum(idle) / len(idle))


def startup_overhead(registered: Sequence[tuple[float, float]]) -> float | None:
    """A worker's paid start-up: the mean over the newest workers that registered, given as
    (job started at, registered at), of the seconds between (the job script's first line,
    else Slurm's start time, to the store's registration: interpreter, setup, imports). With
    idle_overhead, which counts from the registration on, it makes a worker's whole paid time
    less its tasks. None until a worker registered with its job's start (older workers send
    none); never below 0 (clocks of two hosts)."""
    newest = sorted(registered, key=lambda w: w[1], reverse=True)[:RECENT_WORKERS]
    if not newest:
        return None
    return max(0.0, sum(at - began for began, at in newest) / len(newest))
