"""`hpcscale status`: the one screen an admin watches — backlog, pools, live workers, hosts."""

from __future__ import annotations

import argparse
import time
from typing import Any

from hpcscale.cli import display
from hpcscale.cli.caps import caps_text
from hpcscale.cli.common import emit, load_settings, make_client


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "status",
        parents=[common, listing],
        help="backlog per queue, pools and their state, live workers",
    )
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=0.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2)",
    )
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    with make_client(args, settings) as client:
        while True:
            data = status_data(client)
            if args.watch and not args.json:
                print("\033[2J\033[H", end="")
            emit(args, data, lambda data=data: _text(data))  # type: ignore[misc]
            if not args.watch:
                return 0
            time.sleep(args.watch)


def status_data(client: Any) -> dict[str, Any]:
    """Everything the screen shows, fetched once per refresh."""
    pools = client.pools()
    return {
        "queues": client.backlog(),
        "pools": [{"pool": p, "last": (client.decisions(p.name, 1) or [None])[-1]} for p in pools],
        "workers": client.list_workers(live=True),
        "hosts": client.hosts(),
        "caps": client.queue_caps(),  # each manager's share of a global cap (cli/caps.py)
    }


def _text(data: dict[str, Any]) -> str:
    return "\n".join([display.status_text(data), *caps_text(data.get("caps", []))])
