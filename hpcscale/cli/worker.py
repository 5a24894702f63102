"""`hpcscale worker`: what job scripts run. Its flags come from the worker's table of options
(worker/options.py), so they cannot drift from the [pools.worker] keys or the job script's argv.
"""

from __future__ import annotations

import argparse
from typing import Any

from hpcscale import config
from hpcscale.worker import options


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "worker", parents=[common], help="the worker loop (what job scripts run)",
        description="Claim and run tasks until a reason to stop. Every option defaults to the "
        "pool's [pools.worker] settings when --pool names a pool of the config.",
    )  # fmt: skip
    options.add_flags(parser)
    parser.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from hpcscale.tokens import token_for
    from hpcscale.worker.loop import run_worker

    settings = config.load(args.config)
    opts = options.from_command_line(args, settings)
    key = "--token-file" if args.token_file else "server.token_file"
    return run_worker(opts, token_for(opts.token_file, key))
