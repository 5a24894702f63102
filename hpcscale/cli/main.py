"""The `hpcscale` command: parses arguments and calls the modules that do the work.

Exit codes: 0 ok, 1 failure (server said no, unreachable, a task operation failed), 2 usage or
config error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpcscale import __version__, config
from hpcscale.cli import display
from hpcscale.errors import ConfigError, HpcscaleError
from hpcscale.models import Role, TaskSpec

SUBMIT_CHUNK = 1000


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $HPCSCALE_CONFIG, then ~/.config/hpcscale/config.toml)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = argparse.ArgumentParser(
        prog="hpcscale",
        description="Keep the right number of worker jobs on an HPC cluster for a task backlog.",
    )
    parser.add_argument("--version", action="version", version=f"hpcscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("server", parents=[common], help="run the statestore API alone")
    p.add_argument("--allow-root", action="store_true", help="run even as root (not advised)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser(
        "submit",
        parents=[common, listing],
        help="submit tasks",
        description="Submit one task (argv after --) or many (--file tasks.jsonl).",
    )
    p.add_argument("--queue", default=None, help="queue (default: default)")
    p.add_argument("--priority", type=int, default=None, help="higher runs first")
    p.add_argument("--slots", type=int, default=None, help="slots the task needs on a worker")
    p.add_argument("--max-attempts", type=int, default=None, help="tries before `dead`")
    p.add_argument("--timeout", default=None, help="kill the task after this long (e.g. 10m)")
    p.add_argument("--cwd", default=None, help="working directory of the task")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the task (repeatable)",
    )
    p.add_argument("--file", type=Path, help="JSONL file, one JSON task a line")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARG...")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("tasks", parents=[common, listing], help="list tasks, or `tasks show ID`")
    p.add_argument(
        "--state", default=None, help="waiting, running, succeeded, failed, dead, cancelled"
    )
    p.add_argument("--queue", default=None)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--after", type=int, default=0, help="only ids above this (paging)")
    tsub = p.add_subparsers(dest="tasks_command", metavar="show")
    show = tsub.add_parser("show", parents=[common, listing], help="one task in full")
    show.add_argument("id", type=int)
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("cancel", parents=[common, listing], help="cancel tasks by id")
    p.add_argument("ids", type=int, nargs="+")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("events", parents=[common, listing], help="the event log, newest last")
    p.add_argument("--kind-prefix", default=None, help="e.g. task. or worker.lost")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--task", type=int, default=None, help="only this task's events")
    p.set_defaults(func=cmd_events)

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

    p = sub.add_parser(
        "check-config",
        parents=[common, listing],
        help="validate a config file and print it resolved",
    )
    p.add_argument("file", nargs="?", help="the file (default: the --config lookup order)")
    p.set_defaults(func=cmd_check_config)

    _add_later_commands(sub, common, listing)
    return parser


def _add_later_commands(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    """Commands whose modules live elsewhere; imported lazily so `--help` stays fast."""
    from hpcscale.cli import more as cli_more

    cli_more.add_commands(sub, common, listing)


# ---------------------------------------------------------------------- helpers


def load_settings(args: argparse.Namespace) -> config.Settings:
    return config.load(getattr(args, "config", None))


def make_client(args: argparse.Namespace, settings: config.Settings | None = None) -> Any:
    from hpcscale.client import Client
    from hpcscale.tokens import read_token

    settings = settings or load_settings(args)
    token = os.environ.get("HPCSCALE_TOKEN") or read_token(settings.server.token_file)
    return Client(settings.server.url, token, retry_for=10.0, verify=settings.server.verify)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(_plain(data), indent=2))
    else:
        print(text())


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [_plain(d) for d in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return data


# ---------------------------------------------------------------------- commands


def cmd_server(args: argparse.Namespace) -> int:
    settings = server_settings(args)
    from hpcscale.server.run import run_server  # after the checks: a bad config answers at once

    run_server(settings)
    return 0


def server_settings(args: argparse.Namespace) -> config.Settings:
    """The config of `server`/`serve`, refused before any port is bound when it cannot work:
    running as root, a token file others can read, TLS files that do not load, a database that
    does not open. Each is one `error:` line naming the key, not a traceback from uvicorn or
    SQLAlchemy."""
    settings = load_settings(args)
    refuse_root(args.allow_root)
    problems = config.check_files(settings)
    if problems:
        raise ConfigError(problems)
    check_database(settings.server.database)
    return settings


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


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcscale.cli.taskfile import read_tasks

    settings = load_settings(args)
    defaults = _task_defaults(args)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.file and argv:
        raise ConfigError(["submit: give either --file or a command after --, not both"])
    if args.file:
        specs = read_tasks(args.file, defaults)
    elif argv:
        try:
            specs = [TaskSpec(command=argv, **defaults)]
        except ValidationError as exc:
            raise ConfigError(config.describe(exc)) from exc
    else:
        raise ConfigError(["submit: nothing to submit: give -- COMMAND ARG... or --file FILE"])
    ids: list[int] = []
    with make_client(args, settings) as client:
        show_progress = len(specs) > SUBMIT_CHUNK and sys.stderr.isatty() and not args.json
        for start in range(0, len(specs), SUBMIT_CHUNK):
            ids += client.submit(specs[start : start + SUBMIT_CHUNK]).ids
            if show_progress:
                print(f"\rsubmitted {len(ids)}/{len(specs)}", end="", file=sys.stderr)
        if show_progress:
            print(file=sys.stderr)
    emit(args, {"ids": ids}, lambda: _submitted_text(ids))
    return 0


def _submitted_text(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"submitted task {ids[0]}"
    return f"submitted {len(ids)} tasks ({ids[0]}..{ids[-1]})"


def _task_defaults(args: argparse.Namespace) -> dict[str, object]:
    defaults: dict[str, object] = {}
    for key in ("queue", "priority", "slots", "max_attempts", "cwd"):
        value = getattr(args, key)
        if value is not None:
            defaults[key] = value
    if args.timeout is not None:
        try:
            defaults["timeout"] = config.parse_duration(args.timeout)
        except ValueError as exc:
            raise ConfigError([f"--timeout: {exc}"]) from exc
    if args.env:
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError([f"--env: {item!r} must be KEY=VALUE"])
            env[key] = value
        defaults["env"] = env
    return defaults


def cmd_tasks(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        if args.tasks_command == "show":
            task = client.get_task(args.id)
            emit(args, task, lambda: display.task_detail(task))
            return 0
        tasks = client.list_tasks(
            state=args.state, queue=args.queue, limit=args.limit, after=args.after
        )
    emit(args, tasks, lambda: display.tasks_table(tasks) if tasks else "no tasks")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        cancelled = client.cancel(args.ids)
    missed = sorted(set(args.ids) - set(cancelled))
    emit(
        args,
        {"cancelled": cancelled, "not_cancelled": missed},
        lambda: (
            f"cancelled {len(cancelled)}: {' '.join(map(str, cancelled)) or '-'}"
            + (
                f"\nnot cancelled (unknown or already ended): {' '.join(map(str, missed))}"
                if missed
                else ""
            )
        ),
    )
    return 0 if not missed else 1


def cmd_events(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        events = client.events(kind_prefix=args.kind_prefix, limit=args.limit, task=args.task)
    emit(args, events, lambda: display.events_table(events) if events else "no events")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    settings = load_settings(args)
    with make_client(args, settings) as client:
        while True:
            data = status_data(client)
            if args.watch and not args.json:
                print("\033[2J\033[H", end="")
            emit(args, data, lambda data=data: display.status_text(data))  # type: ignore[misc]
            if not args.watch:
                return 0
            time.sleep(args.watch)


def status_data(client: Any) -> dict[str, Any]:
    pools = client.pools()
    return {
        "queues": client.backlog(),
        "pools": [{"pool": p, "last": (client.decisions(p.name, 1) or [None])[-1]} for p in pools],
        "workers": client.list_workers(live=True),
        "hosts": client.hosts(),
    }


def cmd_token(args: argparse.Namespace) -> int:
    from hpcscale.tokens import write_secret

    queues = [q.strip() for q in args.queues.split(",")] if args.queues else None
    with make_client(args) as client:
        reply = client.create_token(Role(args.role), queues, args.name)
    if args.output:
        write_secret(args.output, reply.token, key="--output")
        print(f"wrote a {reply.role.value} token to {args.output} (mode 0600)")
        return 0
    emit(args, reply, lambda: reply.token)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.file or args.config)
    problems = config.check_files(settings)
    if problems:
        raise ConfigError(problems)
    if args.json:
        print(settings.model_dump_json(indent=2))
    else:
        path = config.resolve_path(args.file or args.config)
        print(f"# {path or 'built-in defaults'}: OK")
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
