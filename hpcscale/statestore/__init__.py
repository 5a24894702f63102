"""The task database behind the HTTP API: SQLite (default) or PostgreSQL, one interface."""

from hpcscale.statestore.store import Store, open_store

__all__ = ["Store", "open_store"]
