"""`simulate --from-server`: the store's own history as the simulator's workload and cluster.

Why: "what should I set?" is best answered on the work a site really ran. The store already
holds it: when each task was submitted and how long it ran, when each worker's job started
and registered, when each array was submitted. Read over the API (a submitter's token), so it
works against any server, not only a local database file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcscale.config import PoolConfig
from hpcscale.errors import ConfigError
from hpcscale.manager.observation import Measured
from hpcscale.models import FINAL_STATES, Task, Worker
from hpcscale.sim.workloads import SimTask

if TYPE_CHECKING:
    from hpcscale.client import Client

PAGE = 10_000  # the API's largest page


@dataclass(frozen=True)
class History:
    """What the store measured: the tasks as a workload, and the pools' workers' start-up
    and queue waits (None / empty until a worker registered with its job's start)."""

    tasks: list[SimTask]
    startup: float | None
    queue_waits: list[float]
    notes: list[str]


def read_history(client: Client, pools: Sequence[PoolConfig]) -> History:
    queues = sorted({q for p in pools for q in p.queues})
    ended = [t for q in queues for t in _every_task(client, q) if t.state in FINAL_STATES]
    tasks = tasks_from_history(ended)
    if not tasks:
        raise ConfigError(
            [f"--from-server: no task of queue {', '.join(queues)} has run yet: nothing to replay"]
        )
    workers = [w for p in pools for w in client.list_workers(pool=p.name)]
    submitted = {
        s.tag: s.created_at for p in pools for s in client.submissions(pool=p.name, limit=PAGE)
    }
    waits = queue_waits(workers, submitted)
    notes = [f"{len(tasks)} tasks that ran, of {len(ended)} ended in the store"]
    # The manager's own measure, so the simulator and the manager's rule see one start-up.
    return History(tasks, Measured.startup_of(workers), waits, notes)


def tasks_from_history(ended: Sequence[Task]) -> list[SimTask]:
    """Each task that ran arrives when it was submitted (the first at 0) and runs as long as
    its last run took. One that never ran (cancelled while waiting) cost no worker: left out."""
    ran = [
        (t.submitted_at, max(0.0, t.ended_at - t.started_at), t.queue, t.priority)
        for t in ended
        if t.started_at is not None and t.ended_at is not None
    ]
    first = min((submitted for submitted, *_ in ran), default=0.0)
    return sorted(
        (SimTask(at - first, duration, queue, priority) for at, duration, queue, priority in ran),
        key=lambda t: t.arrival,
    )


def queue_waits(workers: Sequence[Worker], submitted: dict[str, float]) -> list[float]:
    """Seconds from an array's sbatch to its element's job starting, per worker that said
    when its job started."""
    return [
        max(0.0, w.job_started_at - submitted[w.submission])
        for w in workers
        if w.job_started_at and w.submission in submitted
    ]


def _every_task(client: Client, queue: str) -> Iterator[Task]:
    after = 0
    while True:
        page = client.list_tasks(queue=queue, limit=PAGE, after=after)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].id
