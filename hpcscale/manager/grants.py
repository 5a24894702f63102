"""The manager's side of the global cap (issue 17): before each submission it asks the store
how many of the elements it decided on it may submit, and says in `why` when a cap held it.

The cap itself is the store's (statestore/grants.py): managers on other clusters serve the
same queue, and only the store sees all their elements. A failed ask fails the pool's cycle
(it submits nothing) rather than submitting past a cap it could not check.
"""

from __future__ import annotations

import logging

from hpcscale.client import Client
from hpcscale.config import PoolConfig, Settings
from hpcscale.models import GrantRequest, QueueCap

log = logging.getLogger("hpcscale.manager")


def stale_after(settings: Settings) -> float:
    """As the manager's registration says it (loop.register): its grants end with it."""
    return max(90.0, 3 * settings.manager.poll_interval)


class GlobalCap:
    """Asks for a grant per submission; keeps why the last ask of each pool was cut."""

    def __init__(self, client: Client, settings: Settings, instance: str) -> None:
        self.client = client
        self.manager = settings.manager.name
        self.instance = instance
        self.stale_after = stale_after(settings)
        self._notes: dict[str, list[str]] = {}

    def ask(self, pool: PoolConfig, tag: str, count: int, dry_run: bool = False) -> int:
        """How many of `count` elements the pool may submit under `tag` now (all on a dry run,
        which writes nothing: the cap is then not asked)."""
        if dry_run:
            return count
        reply = self.client.grant(
            GrantRequest(
                manager=self.manager,
                instance=self.instance,
                pool=pool.name,
                tag=tag,
                queues=list(pool.queues),
                count=count,
                stale_after=self.stale_after,
            )
        )
        if reply.granted < count:
            notes = [limit_reason(cap, count, reply.granted) for cap in reply.limited_by]
            self._notes[pool.name] = notes
            log.info("pool %s: %s", pool.name, "; ".join(notes))
        return reply.granted

    def reasons(self, pool: str) -> list[str]:
        """Why this cycle's submission of `pool` was cut (once: the next cycle asks again)."""
        return self._notes.pop(pool, [])


def limit_reason(cap: QueueCap, wanted: int, granted: int) -> str:
    """A decision reason `hpcscale why` prints: which queue's global cap, and who holds it."""
    shares = ", ".join(f"{m} {n}" for m, n in cap.shares.items()) or "none"
    return (
        f"global cap of queue {cap.queue}: {cap.in_flight} of {cap.global_cap} in flight "
        f"across managers ({shares}); granted {granted} of {wanted}"
    )
