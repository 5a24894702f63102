"""Commands that read a config and touch nothing: check-config and render-script, so an admin
sees what a file means (and what would be submitted) before any service runs it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
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
    problems = config_checks.check_files(settings) + config_checks.unworkable(settings)
    if problems:
        raise ConfigError(problems)
    for line in config_checks.warnings(settings):
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(resolved(settings), indent=2))
    else:
        path = config.resolve_path(args.file or args.config)
        print(f"# {path or 'built-in defaults'}: OK")
        print(json.dumps(resolved(settings), indent=2))
    return 0


def resolved(settings: config.Settings) -> dict[str, Any]:
    """The config as it applies: defaults that depend on other keys shown as their values
    (max_submit_per_hour's default is 4 turnovers of the pool per hour, not `null`)."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for shown, pool in zip(data["pools"], settings.pools, strict=True):
        shown["max_submit_per_hour"] = pool.submit_ceiling
    return data


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
