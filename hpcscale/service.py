"""Starting the long-running processes: the API server (and, later, the manager loops)."""

from __future__ import annotations

import logging

from hpcscale.config import Settings
from hpcscale.server import build_uvicorn, create_app, ensure_admin_token
from hpcscale.statestore import Store, open_store

log = logging.getLogger("hpcscale.service")


def open_settings_store(settings: Settings) -> Store:
    return open_store(settings.server.database, lease_ttl=settings.server.lease_ttl)


def run_server(settings: Settings) -> None:
    """The statestore API in the foreground until SIGINT/SIGTERM."""
    store = open_settings_store(settings)
    token_path = ensure_admin_token(store, settings.server.token_file)
    app = create_app(store, settings)
    server = build_uvicorn(app, settings)
    log.info("statestore API on %s (admin token in %s)", settings.server.bind, token_path)
    try:
        server.run()
    finally:
        store.close()
