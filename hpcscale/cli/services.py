"""The long-running commands: server, serve (server + manager loops) and manager.

Each checks its config before binding a port or starting a loop, so a bad config answers at once
with one `error:` line naming the key, not a traceback from uvicorn or SQLAlchemy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from hpcscale import config, config_checks, lean_imports
from hpcscale.cli.common import load_settings
from hpcscale.errors import ConfigError, HpcscaleError

ALLOW_ROOT_HELP = "run even as root (not advised)"
# What server, serve and manager create (the store and its -wal/-shm, the local jobs' folders,
# tokens) holds task argv, env and output: nobody else's to read, whatever the login shell's
# umask. Worker jobs inherit it (sbatch passes its umask to the job as SLURM_UMASK): a pool that
# shares task outputs with a group sets `umask 027` in its setup lines.
PRIVATE_UMASK = 0o077


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("server", parents=[common], help="run the statestore API alone")
    p.add_argument("--allow-root", action="store_true", help=ALLOW_ROOT_HELP)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser(
        "serve", parents=[common], help="statestore API + the manager loops of the config's pools"
    )
    p.add_argument("--allow-root", action="store_true", help=ALLOW_ROOT_HELP)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "manager", parents=[common], help="the manager loops alone, against a remote server"
    )
    p.add_argument("--once", action="store_true", help="one cycle, then exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and print the sbatch argv; submit and record nothing",
    )
    p.set_defaults(func=cmd_manager)


def cmd_server(args: argparse.Namespace) -> int:
    os.umask(PRIVATE_UMASK)
    settings = server_settings(args)
    lean_imports.server_only()
    from hpcscale.server.run import run_server  # after the checks: a bad config answers at once

    run_server(settings)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    os.umask(PRIVATE_UMASK)
    settings = server_settings(args)
    lean_imports.server_only()
    from hpcscale.server.run import run_server  # after the checks: a bad config answers at once

    run_server(settings, with_manager=True)
    return 0


def cmd_manager(args: argparse.Namespace) -> int:
    from hpcscale.tokens import token_for

    os.umask(PRIVATE_UMASK)
    settings = config.load(args.config)
    problems = config_checks.unworkable(settings)
    if problems:
        raise ConfigError(problems)
    token = token_for(settings.server.token_file)
    from hpcscale.manager.loop import run_manager  # after the checks: a bad config answers at once

    return run_manager(settings, token, once=args.once, dry_run=args.dry_run)


def server_settings(args: argparse.Namespace) -> config.Settings:
    """The config of `server`/`serve`, refused before any port is bound when it cannot work:
    running as root, a token file others can read, TLS files that do not load, a database that
    does not open. Each is one `error:` line naming the key, not a traceback from uvicorn or
    SQLAlchemy."""
    settings = load_settings(args)
    refuse_root(args.allow_root)
    problems = config_checks.check_files(settings) + config_checks.unworkable(settings)
    if problems:
        raise ConfigError(problems)
    for line in config_checks.warnings(settings):
        print(f"warning: {line}", file=sys.stderr)
    check_port(settings.server.bind)
    check_database(settings.server.database)
    return settings


def check_port(bind: str) -> None:
    """The API's port, tried before anything starts or says it is up: taken is a failure
    (exit 1) naming what to do; a port that cannot be bound at all is a config error."""
    import errno
    import socket

    host, port = config_checks.host_port(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise HpcscaleError(
                    f"server.bind: {bind} is already in use: is `hpcscale serve` already "
                    "running (`hpcscale status` asks it)? Stop it, or set [server] bind"
                ) from exc
            raise ConfigError([f"server.bind: cannot bind {bind}: {exc.strerror}"]) from exc


def check_database(url: str) -> None:
    """Open the store once and close it: an SQLite path that cannot be created is a config
    error (exit 2); a PostgreSQL that does not answer is a failure (exit 1)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from hpcscale.statestore import open_store

    shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
    try:
        open_store(url).close()
    except OSError as exc:
        raise ConfigError([f"server.database: cannot open {shown}: {exc}"]) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise HpcscaleError(f"server.database: cannot open {shown}: {reason}") from exc


def refuse_root(allowed: bool) -> None:
    """A server holds every token's power: root would hand a leaked token the whole machine."""
    if os.geteuid() == 0 and not allowed:
        raise ConfigError(
            [
                "refusing to run as root: a compromised token would own the machine; "
                "run as a normal user, or pass --allow-root"
            ]
        )
