"""Commands that read a config and touch nothing: check-config and render-script, so an admin
sees what a file means (and what would be submitted) before any service runs it."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from hpcscale import config, config_checks
from hpcscale.errors import ConfigError


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "check-config",
        parents=[common, listing],
        help="validate a config file and print it resolved",
    )
    p.add_argument("file", nargs="?", help="the file (default: the --config lookup order)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "render-script", parents=[common],
        help="print a pool's job script and sbatch argv, submitting nothing",
    )  # fmt: skip
    p.add_argument("pool")
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(func=cmd_render_script)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.file or args.config)
    problems = config_checks.check_files(settings)
    if problems:
        raise ConfigError(problems)
    if args.json:
        print(settings.model_dump_json(indent=2))
    else:
        path = config.resolve_path(args.file or args.config)
        print(f"# {path or 'built-in defaults'}: OK")
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def cmd_render_script(args: argparse.Namespace) -> int:
    from hpcscale.jobscript import render

    settings = config.load(args.config)
    pool = settings.pool(args.pool)
    token_file = config.worker_token_file(settings, pool.name)
    job = render(pool, settings, "render-only", args.count, token_file)
    print(job.script)
    print(f"# submit with (the script on stdin), {args.count} element(s):")
    print(shlex.join(job.sbatch_argv))
    return 0
