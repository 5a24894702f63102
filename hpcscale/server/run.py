"""Starting the long-running processes: the API server, the manager loops, or both in one.

Also what only a started server needs: the first admin token, and uvicorn on [server] bind.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from hpcscale.config import Settings
from hpcscale.config_checks import host_port
from hpcscale.models import Role
from hpcscale.server.app import create_app
from hpcscale.statestore import Store, open_store
from hpcscale.statestore.hosts import HostRules
from hpcscale.tokens import check_token_file, read_token, write_secret

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
    if with_manager:  # the pools this process runs: a task none of them can run is refused
        app.state.served_pools = settings.pools
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
    # uvicorn raises a captured SIGTERM again once it has shut down: with the default handler
    # that killed the process before the lines below ran (the manager not joined, the store not
    # closed, local workers left to PID 1). Handled, it only lets server.run() return.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    try:
        server.run()
    finally:
        stop.set()
        if with_manager:
            thread.join(timeout=30)
            stop_local_workers(settings)
        store.close()


def stop_local_workers(settings: Settings) -> None:
    """The local pools' workers are this machine's processes: they end with `serve` (Slurm's
    jobs run on and end themselves)."""
    from hpcscale.schedulers import make_scheduler
    from hpcscale.schedulers.local.adapter import LocalScheduler

    state_dir = Path(settings.manager.state_dir).expanduser()
    local = [p for p in settings.pools if p.scheduler == "local"]
    scheduler = make_scheduler(local[0], settings.manager.name, state_dir) if local else None
    if isinstance(scheduler, LocalScheduler):  # one status covers every local pool
        stopped = scheduler.stop_all()
        if stopped:
            log.info("stopped %d local worker(s): %s", len(stopped), " ".join(stopped))


def ensure_admin_token(store: Store, token_file: str) -> Path:
    """Write an admin token to `token_file` (0600) on first start; refuse a file others can read."""
    path = Path(token_file).expanduser()
    if path.exists():
        check_token_file(path)
        token = path.read_text().strip()
        if store.verify_token(token) is None and not store.has_admin_token():
            # A fresh database next to an old token file: adopt the file's token.
            store.add_token(token, Role.ADMIN, None, "admin (adopted from token file)")
        return path
    token = store.create_token(Role.ADMIN, None, "admin (first start)")
    write_secret(path, token)
    return path


def build_uvicorn(app: FastAPI, settings: Settings) -> Any:
    """A uvicorn server for `app` on [server] bind, with TLS when tls_cert/tls_key are set."""
    import uvicorn

    host, port = host_port(settings.server.bind)
    tls: dict[str, Any] = {}
    if settings.server.tls_cert and settings.server.tls_key:
        tls = {
            "ssl_certfile": str(Path(settings.server.tls_cert).expanduser()),
            "ssl_keyfile": str(Path(settings.server.tls_key).expanduser()),
        }
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        **tls,
    )
    return uvicorn.Server(config)
