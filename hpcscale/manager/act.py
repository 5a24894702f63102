"""The manager's acts on the cluster: submitting an array, cancelling elements, and the worker
token a job needs.

Submissions are recorded as intents before `sbatch` and confirmed after (invariant 3): an sbatch
whose answer is lost leaves an intent that counts against the pool's max until the next cycle
finds its job by tag (elements.reconcile) or gives it up. A refused submission is recorded
failed and counted as a failed start, so a pool whose job script the scheduler keeps refusing
opens its breaker like one whose workers keep dying; a refusal by site policy for now (a submit
limit, a closed partition) is recorded failed but counts as nothing of the kind (site.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings, worker_token_file
from hpcscale.errors import (
    ClientError,
    ConfigError,
    PermanentSubmitError,
    SchedulerError,
    SubmitRefused,
    TransientSchedulerError,
)
from hpcscale.jobscript import RenderedJob
from hpcscale.manager.elements import PoolView, StartWatch, quick_end
from hpcscale.manager.feed import Mirror
from hpcscale.manager.site import SiteWatch
from hpcscale.manager.waits import newest
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


def read_elements(
    pools: Sequence[PoolConfig], schedulers: Mapping[str, Scheduler]
) -> tuple[list[ElementStatus], dict[str, str]]:
    """Every element of this manager: one status() per kind of scheduler (it lists every
    pool's); the kinds it could not read, with why."""
    elements: list[ElementStatus] = []
    unreadable: dict[str, str] = {}
    asked: set[str] = set()
    for pool in pools:
        if pool.scheduler in asked:
            continue
        asked.add(pool.scheduler)
        try:
            elements += schedulers[pool.name].status()
        except SchedulerError as exc:
            unreadable[pool.scheduler] = f"scheduler status unreadable: {exc}"
    return elements, unreadable


def submit_array(
    client: Client,
    scheduler: Scheduler,
    job: RenderedJob,
    intent: SubmissionIntent,
    watch: StartWatch,
    site: SiteWatch,
) -> Submission | None:
    """Intent, sbatch, confirm. None when the scheduler refused (recorded failed) or its answer
    was lost (left an intent, reconciled next cycle). A refusal for now (SubmitRefused) is
    recorded failed but is no failed start: it goes to `site`, which holds the pool."""
    client.record_intent(intent)
    pool, tag = intent.pool, intent.tag
    try:
        created = scheduler.submit(job.script, intent.count, tag)
    except SubmitRefused as exc:
        log.warning("pool %s: the site refused %d worker(s) for now: %s", pool, intent.count, exc)
        site.refused(exc, intent.count)
        detail = f"refused for now (not a failed start): {exc}"
        client.update_submission(
            tag, SubmissionUpdate(state=SubmissionState.FAILED, detail=detail[:4000])
        )
        return None
    except PermanentSubmitError as exc:
        record_refusal(client, pool, tag, f"refused by the scheduler: {exc}", watch)
        return None
    except TransientSchedulerError as exc:
        log.warning("pool %s: submission %s uncertain (%s); reconciling next cycle", pool, tag, exc)
        return None
    except SchedulerError as exc:
        record_refusal(client, pool, tag, str(exc), watch)
        return None
    site.passed()
    site.submitted(created.count)
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


def settle_ends(
    client: Client,
    scheduler: Scheduler,
    mirror: Mirror,
    watch: StartWatch,
    pool: PoolConfig,
    view: PoolView,
    settings: Settings,
    dry_run: bool,
) -> tuple[list[Worker], int]:
    """What the view found ended, settled this cycle: a worker whose job ended (or was
    requeued) gives its tasks back now, not a lease TTL later; failed starts are recorded and
    cancelled; quick ends are counted, but never a worker the site ended (preempted,
    requeued, its node failed). Returns the pool's workers (the gone ones read back as ended,
    so a quick end counts this cycle) and how many failed starts were recorded now."""
    for worker_id in view.gone_workers:
        why = view.gone_why.get(worker_id, "its job ended")
        released = client.worker_gone(worker_id, why, worker_id not in view.attempt_kept)
        log.info("pool %s: worker %s gone (%s); requeued %s", pool.name, worker_id, why, released)
    recorded = sum(
        record_failed_start(client, scheduler, pool.name, e, watch, dry_run)
        for e in view.failed_starts
    )
    if view.gone_workers:
        mirror.update([client.worker(w) for w in view.gone_workers])
    workers = mirror.workers_of(pool.name)
    crash_seconds = settings.manager.crash_seconds
    recorded += sum(
        record_quick_end(client, pool.name, w, watch, crash_seconds)
        for w in workers
        if (w.job_id, w.array_index) not in view.site_ended
    )
    return workers, recorded


def cancel_as_decided(
    scheduler: Scheduler,
    pool: str,
    decision: Decision,
    view: PoolView,
    info: PoolInfo | None,
    stale: Sequence[str] = (),
) -> None:
    """The pending elements the decision gives up (the newest first) and those that waited
    too long for nothing (`stale`, waits.stale_surplus), and every running one when an admin
    drained the pool with --cancel-running."""
    ids = newest(view.pending, decision.cancel_pending)
    ids += [i for i in stale if i not in ids]
    if ids:
        scheduler.cancel(ids, pending_only=True)
        log.info("pool %s: cancelled pending %s", pool, ids)
    if info is not None and info.control == Control.EXIT and view.running:
        ids = [e.element_id for e in view.running]
        scheduler.cancel(ids)
        log.info("pool %s: drain --cancel-running: cancelled %s", pool, ids)


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
