"""The `hpcscale` command: the top-level parser, the one command being run, and exit codes.

Exit codes: 0 ok, 1 failure (server said no, unreachable, a task operation failed, `serve`'s
port taken, `submit --wait` tasks that did not all succeed), 2 usage or config error (bare
`hpcscale` prints the help and exits 2).

Only the run command's module is imported (see registry), so `hpcscale --help` starts fast and
loads no web, database or HTTP client library.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hpcscale import __version__
from hpcscale.cli.registry import add_commands, command_in
from hpcscale.errors import ConfigError, HpcscaleError


def build_parser(running: str | None = None) -> argparse.ArgumentParser:
    """The parser with the real subparser of `running` (None: only the listing of commands)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $HPCSCALE_CONFIG, then ~/.config/hpcscale/config.toml)",
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = argparse.ArgumentParser(
        prog="hpcscale",
        description="Keep the right number of worker jobs on an HPC cluster for a task backlog.",
    )
    parser.add_argument("--version", action="version", version=f"hpcscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub, common, listing, running)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:  # a first try: the help, not a usage error; still 2 for scripts
        build_parser().print_help()
        return 2
    args = build_parser(command_in(words)).parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except HpcscaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpcscale tasks | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
