"""Starting the long-running processes: the API server, the manager loops, or both in one."""

from __future__ import annotations

import logging
import threading

from hpcscale.config import Settings
from hpcscale.server.app import build_uvicorn, create_app, ensure_admin_token
from hpcscale.statestore import Store, open_store
from hpcscale.statestore.hosts import HostRules
from hpcscale.tokens import read_token

log = logging.getLogger("hpcscale.service")


def open_settings_store(settings: Settings) -> Store:
    server = settings.server
    rules = HostRules(server.host_failure_limit, server.host_failure_window, server.host_deny_time)
    return open_store(server.database, lease_ttl=server.lease_ttl, host_rules=rules)


def run_server(settings: Settings, *, with_manager: bool = False) -> None:
    """The statestore API in the foreground until SIGINT/SIGTERM; with the manager's loops in
    a thread of the same process when `with_manager` (the usual login-node deployment)."""
    from hpcscale.manager.loop import run_manager

    store = open_settings_store(settings)
    token_path = ensure_admin_token(store, settings.server.token_file)
    app = create_app(store, settings)
    server = build_uvicorn(app, settings)
    stop = threading.Event()

    def manage() -> None:
        while not server.started and not stop.wait(0.05):
            pass
        try:
            run_manager(settings, read_token(str(token_path)), stop=stop)
        except Exception:
            log.exception("the manager loop died; the API keeps serving")

    thread = threading.Thread(target=manage, name="manager", daemon=True)
    if with_manager:
        thread.start()
    log.info(
        "statestore API on %s (admin token in %s)%s",
        settings.server.bind,
        token_path,
        " with the manager loops" if with_manager else "",
    )
    try:
        server.run()
    finally:
        stop.set()
        if with_manager:
            thread.join(timeout=30)
        store.close()
