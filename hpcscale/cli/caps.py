"""`hpcscale set-cap QUEUE N`: a queue's global cap across every manager that serves it, and the
part of `hpcscale status` that shows each manager's share of it (issue 17).

The cap lives in the store, not in any config file: two clusters' managers read different
files, and only the store sees both their elements.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from hpcscale.cli.common import emit, make_client
from hpcscale.cli.display import table
from hpcscale.errors import ConfigError
from hpcscale.models import QueueCap


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, _listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "set-cap",
        parents=[common],
        help="set (or remove) a queue's global cap across all its managers",
    )
    p.add_argument("queue")
    p.add_argument(
        "cap",
        help="the most elements (workers, pending or running) of every manager together; "
        "'none' removes the cap",
    )
    p.set_defaults(func=cmd_set_cap)


def cmd_set_cap(args: argparse.Namespace) -> int:
    cap = None if args.cap.lower() == "none" else _count(args.cap)
    with make_client(args) as client:
        caps = client.set_queue_cap(args.queue, cap)
    emit(
        args,
        caps,
        lambda: (
            f"queue {args.queue}: global cap {cap} (in flight now {caps[0].in_flight}); "
            "managers take it into account from their next submission"
            if caps
            else f"queue {args.queue}: no global cap"
        ),
    )
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError([f"set-cap: the cap must be a whole number ≥ 0 or 'none', got {text!r}"])
    return value


def caps_text(caps: Sequence[QueueCap]) -> list[str]:
    """`status`'s lines for the capped queues: the cap, what is in flight, each manager's
    share; nothing when no queue is capped."""
    if not caps:
        return []
    rows = [
        [c.queue, c.global_cap, c.in_flight, ", ".join(f"{m} {n}" for m, n in c.shares.items())]
        for c in caps
    ]
    return ["", "GLOBAL CAPS", table(["QUEUE", "CAP", "IN FLIGHT", "SHARES"], rows)]
