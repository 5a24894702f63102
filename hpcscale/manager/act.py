"""The manager's acts on the cluster: submitting an array, cancelling elements, and the worker
token a job needs.

Submissions are recorded as intents before `sbatch` and confirmed after (invariant 3): an sbatch
whose answer is lost leaves an intent that counts against the pool's max until the next cycle
finds its job by tag (elements.reconcile) or gives it up. A refused submission is recorded
failed and counted as a failed start, so a pool whose job script the scheduler keeps refusing
opens its breaker like one whose workers keep dying.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, worker_token_file
from hpcscale.errors import (
    ClientError,
    ConfigError,
    PermanentSubmitError,
    SchedulerError,
    TransientSchedulerError,
)
from hpcscale.jobscript import RenderedJob
from hpcscale.manager.elements import PoolView, StartWatch, quick_end
from hpcscale.models import (
    Control,
    PoolInfo,
    Role,
    Submission,
    SubmissionIntent,
    SubmissionState,
    SubmissionUpdate,
    Worker,
)
from hpcscale.policy import Decision
from hpcscale.schedulers import ElementStatus, Scheduler
from hpcscale.tokens import write_secret

log = logging.getLogger("hpcscale.manager")

FAILED_START = "pool.failed_start"  # the event kind every counted failed start is recorded as


def submit_array(
    client: Client,
    scheduler: Scheduler,
    job: RenderedJob,
    intent: SubmissionIntent,
    watch: StartWatch,
) -> Submission | None:
    """Intent, sbatch, confirm. None when the scheduler refused (recorded failed) or its answer
    was lost (left an intent, reconciled next cycle)."""
    client.record_intent(intent)
    pool, tag = intent.pool, intent.tag
    try:
        created = scheduler.submit(job.script, intent.count, tag)
    except PermanentSubmitError as exc:
        record_refusal(client, pool, tag, f"refused by the scheduler: {exc}", watch)
        return None
    except TransientSchedulerError as exc:
        log.warning("pool %s: submission %s uncertain (%s); reconciling next cycle", pool, tag, exc)
        return None
    except SchedulerError as exc:
        record_refusal(client, pool, tag, str(exc), watch)
        return None
    log.info(
        "pool %s: submitted %d worker(s) as %s (jobs %s)",
        pool,
        created.count,
        tag,
        ",".join(created.job_ids),
    )
    return client.update_submission(
        tag,
        SubmissionUpdate(
            state=SubmissionState.CONFIRMED, job_ids=created.job_ids, count=created.count
        ),
    )


def record_refusal(client: Client, pool: str, tag: str, why: str, watch: StartWatch) -> None:
    """A refused submission counts as a failed start: a pool the scheduler keeps refusing
    opens its breaker."""
    log.error("pool %s: submission %s failed: %s", pool, tag, why)
    client.update_submission(tag, SubmissionUpdate(state=SubmissionState.FAILED, detail=why[:4000]))
    watch.counted.add(tag)
    client.add_event(FAILED_START, f"{pool} {tag}")


def record_failed_start(
    client: Client, scheduler: Scheduler, pool: str, element_id: str, watch: StartWatch,
    dry_run: bool,
) -> bool:  # fmt: skip
    """Record (once) and cancel an element that failed to start a worker; True if new."""
    if element_id in watch.counted:
        return False
    watch.counted.add(element_id)
    log.warning("pool %s: element %s failed to start a worker", pool, element_id)
    client.add_event(FAILED_START, f"{pool} {element_id}")
    if not dry_run:
        try:
            scheduler.cancel([element_id])
        except SchedulerError as exc:
            log.warning("could not cancel %s: %s", element_id, exc)
    return True


def record_quick_end(
    client: Client, pool: str, worker: Worker, watch: StartWatch, crash_seconds: float
) -> bool:
    """Record (once) a worker that ended at once without a task as a failed start; True if
    new (elements.quick_end says which count)."""
    life = quick_end(worker, crash_seconds, watch.counted)
    if life is None:
        return False
    watch.counted.add(worker.id)
    log.warning(
        "pool %s: worker %s ended %.0fs after registering without a task (%s)",
        pool, worker.id, life, worker.end_reason or "no reason",
    )  # fmt: skip
    client.add_event(FAILED_START, f"{pool} {worker.id}")
    return True


def cancel_as_decided(
    scheduler: Scheduler, pool: str, decision: Decision, view: PoolView, info: PoolInfo | None
) -> None:
    """The pending elements the decision gives up (the newest first), and every running one
    when an admin drained the pool with --cancel-running."""
    if decision.cancel_pending and view.pending:
        ids = _newest(view.pending, decision.cancel_pending)
        scheduler.cancel(ids, pending_only=True)
        log.info("pool %s: cancelled pending %s", pool, ids)
    if info is not None and info.control == Control.EXIT and view.running:
        ids = [e.element_id for e in view.running]
        scheduler.cancel(ids)
        log.info("pool %s: drain --cancel-running: cancelled %s", pool, ids)


def _newest(elements: Sequence[ElementStatus], count: int) -> list[str]:
    newest = sorted(elements, key=lambda e: (e.job_id, e.array_index), reverse=True)
    return [e.element_id for e in newest[:count]]


def worker_token(settings: Settings, client: Client, pool: PoolConfig, dry_run: bool) -> Path:
    """The pool's worker token file (0600), created through the API when missing."""
    path = worker_token_file(settings, pool.name)
    if path.exists() or dry_run:
        return path
    try:
        reply = client.create_token(Role.WORKER, pool.queues, f"workers of {pool.name}")
    except ClientError as exc:
        raise ConfigError(
            [
                f"pools.{pool.name}: no worker token at {path} and this manager's token may "
                f"not create one ({exc}); run: hpcscale token create --role worker --queues "
                f"{','.join(pool.queues)} --output {path}"
            ]
        ) from exc
    write_secret(path, reply.token)
    return path
