"""`hpcscale token create`: issue API tokens, written 0600 when they go to a file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcscale.cli.common import emit, make_client
from hpcscale.models import Role
from hpcscale.tokens import write_secret


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("token", parents=[common], help="manage API tokens")
    tok = p.add_subparsers(dest="token_command", required=True, metavar="create")
    create = tok.add_parser("create", parents=[common, listing], help="issue a token")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--queues", default=None, help="comma-separated queues it may use")
    create.add_argument("--name", default="", help="a note to recognise it by")
    create.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the token to this file (mode 0600) instead of printing it",
    )
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",")] if args.queues else None
    with make_client(args) as client:
        reply = client.create_token(Role(args.role), queues, args.name)
    if args.output:
        write_secret(args.output, reply.token, key="--output")
        print(f"wrote a {reply.role.value} token to {args.output} (mode 0600)")
        return 0
    emit(args, reply, lambda: reply.token)
    return 0
