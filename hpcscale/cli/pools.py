"""What an admin does to a running pool: ask why it decided, pause, resume, drain, lower its cap,
and look at (or forgive) the hosts its workers ran on."""

from __future__ import annotations

import argparse
from typing import Any

from hpcscale import config
from hpcscale.cli import display
from hpcscale.cli.common import emit, make_client
from hpcscale.errors import ConfigError
from hpcscale.models import Control, PoolUpdate

CONTROLS = (
    ("pause", "submit nothing for POOL (workers keep running)"),
    ("resume", "undo pause or drain"),
    ("drain", "submit nothing, cancel pending, workers finish and exit"),
)


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("why", parents=[common, listing], help="a pool's last decisions and why")
    p.add_argument("pool")
    p.add_argument("--limit", type=int, default=5)
    p.set_defaults(func=cmd_why)

    for name, text in CONTROLS:
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("pool")
        if name == "drain":
            p.add_argument(
                "--cancel-running",
                action="store_true",
                help="also scancel running workers (their tasks are released)",
            )
        p.set_defaults(func=cmd_control, control=name)

    p = sub.add_parser(
        "hosts", parents=[common, listing], help="worker hosts: failure streaks, denied claims"
    )
    p.add_argument("--allow", metavar="NODE", help="let a denied node's workers claim again")
    p.set_defaults(func=cmd_hosts)

    p = sub.add_parser("set-max", parents=[common], help="lower (or restore) a pool's max_workers")
    p.add_argument("pool")
    p.add_argument("max", type=int, help="the new cap (the config's max_workers still bounds it)")
    p.set_defaults(func=cmd_set_max)


def cmd_why(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        records = client.decisions(args.pool, args.limit)
    emit(
        args,
        records,
        lambda: (
            display.decisions_text(records)
            if records
            else f"no decisions recorded for pool {args.pool!r} yet"
        ),
    )
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    control = {"pause": Control.PAUSE, "resume": Control.CONTINUE, "drain": Control.DRAIN}[
        args.control
    ]
    if args.control == "drain" and args.cancel_running:
        control = Control.EXIT
    settings = config.load(args.config)
    settings.pool(args.pool)  # a clear error for a pool the config does not know
    with make_client(args, settings) as client:
        info = client.update_pool(args.pool, PoolUpdate(control=control))
    print(f"pool {info.name}: {info.control.value} (takes effect within one manager cycle)")
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        hosts = client.allow_host(args.allow) if args.allow else client.hosts()
    emit(args, hosts, lambda: display.hosts_table(hosts))
    return 0


def cmd_set_max(args: argparse.Namespace) -> int:
    if args.max < 0:
        raise ConfigError([f"set-max: the cap must be ≥ 0, got {args.max}"])
    settings = config.load(args.config)
    pool = settings.pool(args.pool)
    with make_client(args, settings) as client:
        info = client.update_pool(args.pool, PoolUpdate(max_workers=args.max))
    effective = min(pool.max_workers, args.max)
    print(f"pool {info.name}: max workers {effective} (config max_workers {pool.max_workers})")
    return 0
