"""Which module holds each command, so `hpcscale` imports only the command it runs.

`hpcscale --help` lists every command from the one-line helps below, without importing any
command module (and so none of the web, database or HTTP libraries they use). The command being
run imports its module, whose `add_parsers(sub, common, listing)` adds the real parser.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, NamedTuple


class Command(NamedTuple):
    name: str
    module: str  # under hpcscale.cli
    help: str


# In the order `hpcscale --help` lists them: a first try, then a user's day (tasks), what to
# watch, an admin's controls, then the services and what job scripts run.
COMMANDS = (
    Command("demo", "demo", "the whole loop on this machine: embedded store, local workers"),
    Command("serve", "services", "statestore API + the manager loops of the config's pools"),
    Command("check-config", "configfile", "validate a config file and print it resolved"),
    Command(
        "render-script",
        "configfile",
        "print a pool's job script and sbatch argv, submitting nothing",
    ),
    Command("submit", "tasks", "submit tasks"),
    Command("tasks", "tasks", "list tasks, or `tasks show ID`"),
    Command("cancel", "tasks", "cancel tasks by id, or by --queue/--state"),
    Command("retry", "tasks", "send dead/failed/cancelled tasks back to waiting"),
    Command("events", "tasks", "the event log, newest last"),
    Command("status", "status", "backlog per queue, pools and their state, live workers"),
    Command("why", "pools", "a pool's last decisions and why"),
    Command("hosts", "pools", "worker hosts: failure streaks, denied claims"),
    Command("pause", "pools", "submit nothing for POOL (workers keep running)"),
    Command("resume", "pools", "undo pause or drain"),
    Command("drain", "pools", "submit nothing, cancel pending, workers finish and exit"),
    Command("set-max", "pools", "lower (or restore) a pool's max_workers"),
    Command("set-cap", "caps", "set (or remove) a queue's global cap across all its managers"),
    Command("token", "token", "manage API tokens"),
    Command("server", "services", "run the statestore API alone"),
    Command("manager", "services", "the manager loops alone, against a remote server"),
    Command("worker", "worker", "the worker loop (what job scripts run)"),
    Command(
        "simulate", "simulate", "simulate the pools of a config on a workload, with the real policy"
    ),
)
BY_NAME = {c.name: c for c in COMMANDS}


def add_commands(
    sub: Any,
    common: argparse.ArgumentParser,
    listing: argparse.ArgumentParser,
    running: str | None,
) -> None:
    """Every command in order: the real parser for `running`, a stub with its help for the rest."""
    for command in COMMANDS:
        if command.name == running:
            module = importlib.import_module(f"hpcscale.cli.{command.module}")
            module.add_parsers(OnlyCommand(sub, running), common, listing)
        else:
            sub.add_parser(command.name, help=command.help)


def command_in(argv: list[str]) -> str | None:
    """The command argv runs: its first word, when that names one (top-level options take no
    values, so the first word that is not an option is the command)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in BY_NAME else None


class OnlyCommand:
    """The subparsers action as a command module sees it, passing on only the parser of the
    command being run: a module adding several commands leaves the others to their stubs, in
    the registry's order."""

    def __init__(self, sub: Any, running: str) -> None:
        self._sub = sub
        self._running = running

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name == self._running:
            parser: argparse.ArgumentParser = self._sub.add_parser(name, **kwargs)
            return parser
        return argparse.ArgumentParser(add_help=False)  # a command not run: built and dropped
