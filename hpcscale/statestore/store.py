"""The statestore as one object: the server, the CLI and the tests open a Store and call it.

Each part is a module with one job, and every one subclasses database.StoreBase (the engine,
the clock, the transactions), so none re-declares another's methods. A part that calls another
builds on it: leases.Leases on hosts.HostRecords (a claim asks whether the host is denied),
workers.Workers on Leases (a worker that leaves hands back its leases), observe.Observe on
Tasks, Workers and ManagerRecords (the manager's cycle reads them all in one snapshot). Store
puts them together with grants.Grants (the global cap), wakeups.WakeUps (new work announced
between API replicas), auth.Auth and event_log.EventLog.
"""

from __future__ import annotations

import time
from pathlib import Path

from hpcscale.statestore.auth import Auth
from hpcscale.statestore.database import Clock
from hpcscale.statestore.event_log import EventLog
from hpcscale.statestore.grants import Grants
from hpcscale.statestore.hosts import HostRecords, HostRules
from hpcscale.statestore.leases import Leases
from hpcscale.statestore.manager_records import ManagerRecords
from hpcscale.statestore.observe import Observe
from hpcscale.statestore.tasks import Tasks
from hpcscale.statestore.wakeups import WakeUps
from hpcscale.statestore.workers import Workers


def normalize_url(url: str) -> str:
    """SQLAlchemy URL from the config's: `~` expanded, psycopg 3 as the PostgreSQL driver."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class Store(
    Observe, Tasks, Workers, Leases, HostRecords, ManagerRecords, Grants, WakeUps, Auth, EventLog
):
    """The statestore. Thread-safe; one instance per process is enough. Each base comes before
    the parts it builds on, as Python's method resolution order requires."""

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: float = 120.0,
        clock: Clock = time.time,
        host_rules: HostRules | None = None,
    ) -> None:
        super().__init__(
            normalize_url(url), lease_ttl=lease_ttl, clock=clock, host_rules=host_rules
        )


def open_store(
    url: str,
    *,
    lease_ttl: float = 120.0,
    clock: Clock = time.time,
    host_rules: HostRules | None = None,
) -> Store:
    return Store(url, lease_ttl=lease_ttl, clock=clock, host_rules=host_rules)
