"""The task commands a user types every day: submit, tasks (and `tasks show ID`), cancel, events."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from hpcscale import config
from hpcscale.cli import display
from hpcscale.cli.common import emit, load_settings, make_client
from hpcscale.errors import ConfigError
from hpcscale.models import Task, TaskSpec, TaskState
from hpcscale.units import duration_flag

if TYPE_CHECKING:
    from hpcscale.client import Client

SUBMIT_CHUNK = 1000

SUBMIT_EPILOG = """\
Where a task runs: in the directory `submit` ran in, as sbatch does, unless --cwd DIR says
otherwise (a relative DIR is taken from here). In a --file, a task's "cwd" key does the same:
a relative "cwd" is taken from the directory `submit` ran in (not the file's), and a task
without one runs in --cwd or here. The directory must exist on the node the worker runs on.

Its environment (like sbatch --export=NONE plus the variables named): the worker job's own
environment (what the pool's job script sets up), then each --env KEY=VALUE, then
HPCSCALE_TASK_ID and HPCSCALE_TASK_ATTEMPT. Nothing else of this shell is carried; --env KEY
copies this shell's value of KEY.
"""


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    _add_submit(sub, common, listing)

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

    p = sub.add_parser(
        "cancel", parents=[common, listing], help="cancel tasks by id, or by --queue/--state",
        description="Cancel tasks by id, or every waiting or running task that matches "
        "--queue and/or --state.",
    )  # fmt: skip
    p.add_argument("ids", type=int, nargs="*")
    p.add_argument("--queue", default=None, help="every not-ended task of this queue")
    p.add_argument("--state", default=None, choices=["waiting", "running"])
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "retry", parents=[common, listing],
        help="send dead/failed/cancelled tasks back to waiting",
        description="A redrive: tasks that ended dead, failed or cancelled go back to waiting "
        "with their attempts from zero (by id, or every one matching --state/--queue).",
    )  # fmt: skip
    p.add_argument("ids", type=int, nargs="*")
    p.add_argument("--queue", default=None, help="every matching task of this queue")
    p.add_argument("--state", default=None, choices=["dead", "failed", "cancelled"])
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("events", parents=[common, listing], help="the event log, newest last")
    p.add_argument("--kind-prefix", default=None, help="e.g. task. or worker.lost")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--task", type=int, default=None, help="only this task's events")
    p.set_defaults(func=cmd_events)


def _add_submit(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "submit",
        parents=[common, listing],
        help="submit tasks",
        description="Submit one task (argv after --) or many (--file tasks.jsonl).",
        epilog=SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--queue", default=None, help="queue (default: default)")
    p.add_argument("--priority", type=int, default=None, help="higher runs first")
    p.add_argument("--slots", type=int, default=None, help="slots the task needs on a worker")
    p.add_argument("--max-attempts", type=int, default=None, help="tries before `dead`")
    p.add_argument("--timeout", default=None, help="kill the task after this long (e.g. 10m)")
    p.add_argument(
        "--cwd", default=None, help="directory the task runs in (default: this one, like sbatch)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="environment variable for the task; KEY alone copies this shell's value (repeatable)",
    )
    p.add_argument("--file", type=Path, help="JSONL file, one JSON task a line")
    p.add_argument(
        "--wait", action="store_true",
        help="wait for the tasks to end; exit 0 if all succeeded, else 1 (each one's end shown)",
    )  # fmt: skip
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARG...")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    specs = _specs(args)
    ids: list[int] = []
    with make_client(args, settings) as client:
        show_progress = len(specs) > SUBMIT_CHUNK and sys.stderr.isatty() and not args.json
        for start in range(0, len(specs), SUBMIT_CHUNK):
            ids += client.submit(specs[start : start + SUBMIT_CHUNK]).ids
            if show_progress:
                print(f"\rsubmitted {len(ids)}/{len(specs)}", end="", file=sys.stderr)
        if show_progress:
            print(file=sys.stderr)
        if not args.wait:
            emit(args, {"ids": ids}, lambda: _submitted_text(ids))
            return 0
        print(_submitted_text(ids), file=sys.stderr)
        from hpcscale.client_tasks import TaskHandle

        ended = [TaskHandle(client, i).wait() for i in ids]
    emit(args, ended, lambda: "\n".join(_ended_text(t) for t in ended))
    return 0 if all(t.state == TaskState.SUCCEEDED for t in ended) else 1


def _ended_text(task: Task) -> str:
    how = f"exit code {task.exit_code}" if task.exit_code is not None else task.reason or "-"
    return f"task {task.id}: {task.state.value} ({how})"


def _specs(args: argparse.Namespace) -> list[TaskSpec]:
    """The tasks to send, all checked before anything is sent."""
    from hpcscale.cli.taskfile import read_tasks

    defaults = _task_defaults(args)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.file and argv:
        raise ConfigError(["submit: give either --file or a command after --, not both"])
    if args.file:
        return read_tasks(args.file, defaults, base=Path.cwd())
    if not argv:
        raise ConfigError(["submit: nothing to submit: give -- COMMAND ARG... or --file FILE"])
    try:
        return [TaskSpec(command=argv, **defaults)]
    except ValidationError as exc:
        raise ConfigError(config.describe(exc)) from exc


def _submitted_text(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"submitted task {ids[0]}"
    return f"submitted {len(ids)} tasks ({ids[0]}..{ids[-1]})"


def _task_defaults(args: argparse.Namespace) -> dict[str, object]:
    """What every task of this submit gets unless it says otherwise, the directory it runs in
    made absolute here (the worker's own cwd means nothing to the submitter)."""
    defaults: dict[str, object] = {"cwd": str(Path(args.cwd or ".").resolve())}
    for key in ("queue", "priority", "slots", "max_attempts"):
        value = getattr(args, key)
        if value is not None:
            defaults[key] = value
    if args.timeout is not None:
        defaults["timeout"] = duration_flag("--timeout", args.timeout)
    if args.env:
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep and key in os.environ:
                value = os.environ[key]
            elif not sep or not key:
                raise ConfigError([f"--env: {item!r}: give KEY=VALUE, or KEY set in this shell"])
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
        more = 0
        if len(tasks) == args.limit:
            more = client.count_tasks(state=args.state, queue=args.queue, after=tasks[-1].id)
    if more and not args.json:
        print(f"... and {more} more: `hpcscale tasks --after {tasks[-1].id}`", file=sys.stderr)
    emit(args, tasks, lambda: display.tasks_table(tasks) if tasks else "no tasks")
    return 0


def _chosen(args: argparse.Namespace, client: Client, states: tuple[str, ...]) -> list[int]:
    """The ids given, or every task in `states` (narrowed by --state) of --queue."""
    if args.ids:
        return list(args.ids)
    ids: list[int] = []
    for state in [args.state] if args.state else states:
        after = 0
        while page := client.list_tasks(state=state, queue=args.queue, limit=1000, after=after):
            ids += [t.id for t in page]
            after = page[-1].id
    return sorted(ids)


def _check_selection(args: argparse.Namespace) -> None:
    """Ids, or filters: checked before any token is read or request sent."""
    if args.ids and (args.queue or args.state):
        raise ConfigError([f"{args.command}: give ids, or --queue/--state, not both"])
    if not args.ids and not (args.queue or args.state):
        raise ConfigError([f"{args.command}: give task ids, or --queue and/or --state"])


def cmd_cancel(args: argparse.Namespace) -> int:
    _check_selection(args)
    with make_client(args) as client:
        ids = _chosen(args, client, ("waiting", "running"))
        cancelled = [i for c in range(0, len(ids), 1000) for i in client.cancel(ids[c : c + 1000])]
    if not ids:
        print("no task matches")
        return 0
    missed = sorted(set(ids) - set(cancelled))
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


def cmd_retry(args: argparse.Namespace) -> int:
    _check_selection(args)
    with make_client(args) as client:
        ids = _chosen(args, client, ("dead", "failed"))
        retried = [i for c in range(0, len(ids), 1000) for i in client.retry(ids[c : c + 1000])]
    missed = sorted(set(ids) - set(retried))
    emit(
        args,
        {"retried": retried, "not_retried": missed},
        lambda: f"retried {len(retried)}: {' '.join(map(str, retried)) or '-'}"
        + (f"\nnot retried (unknown, or not ended unsuccessfully): {' '.join(map(str, missed))}"
           if missed else ""),
    )  # fmt: skip
    return 0 if not missed else 1


def cmd_events(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        events = client.events(kind_prefix=args.kind_prefix, limit=args.limit, task=args.task)
    emit(args, events, lambda: display.events_table(events) if events else "no events")
    return 0
