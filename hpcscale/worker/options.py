"""The worker's options, in ONE table, so the config, the command line and the job script agree.

An option of `hpcscale worker` used to be written four times: as a [pools.worker] key, as a
dataclass field with its own default, as a flag, and as an argument in the job script. Now
each is one field of `WorkerOptions`: its type and default, and in its `metadata` its help, how
it is read (`kind`), whether the config may set it (and within what bounds) and where the config
keeps its value. From that table come:
  - the [pools.worker] keys: config.WorkerConfig takes their defaults and bounds from here
    (`config_key`), and `check_config_keys` refuses a model that names other keys;
  - the flags of `hpcscale worker` (`add_flags`);
  - the options a worker runs with: flags first, then the config, then the default (`resolve`);
  - the argv a job script starts the worker with (`command_line`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from hpcscale.units import duration_flag, format_seconds

if TYPE_CHECKING:
    from hpcscale.config import PoolConfig, Settings

Kind = Literal["text", "int", "duration", "queues"]
DURATION_HELP = "a duration, e.g. 30s, 5m, 01:00:00"


@dataclass(frozen=True)
class About:
    """What the table says of one option besides its type and default."""

    kind: Kind
    help: str | None  # None: the flag has no help line (as `hpcscale worker --help` always had)
    key: bool = False  # a [pools.worker] key of the config
    ge: int | None = None  # the config's bounds for the key
    le: int | None = None
    config: str | None = None  # where else the config keeps the value: "server.url", ...
    aliases: tuple[str, ...] = ()  # more flags for it, e.g. --queue


def _about(kind: Kind, help: str | None = None, **more: Any) -> dict[str, About]:
    return {"about": About(kind, help, **more)}


def _duration(default: float, **more: Any) -> Any:
    return field(default=default, metadata=_about("duration", DURATION_HELP, **more))


@dataclass(frozen=True)
class WorkerOptions:
    """What one worker runs with; the fields are in the order a job script passes them."""

    pool: str = field(metadata=_about("text", "pool name"))
    url: str = field(
        metadata=_about("text", "statestore URL (default: [server] url)", config="server.url")
    )
    token_file: str = field(
        metadata=_about("text", "0600 token file ([server] token_file)", config="server.token_file")
    )
    submission: str | None = field(
        default=None, metadata=_about("text", "submission tag (set by job scripts)")
    )
    slots: int = field(default=1, metadata=_about("int", key=True, ge=1))
    max_tasks: int = field(
        default=0, metadata=_about("int", "0: no limit", key=True, ge=0, le=2**31 - 1)
    )
    max_time: float = _duration(0.0, key=True)
    max_empty_claims: int = field(default=1, metadata=_about("int", key=True, ge=1))
    empty_claim_sleep: float = _duration(10.0, key=True)
    heartbeat_interval: float = _duration(30.0, key=True)
    claim_margin: float = _duration(30.0, key=True)
    task_duration_prior: float = _duration(300.0, config="pool.task_duration_prior")
    unreachable_timeout: float = _duration(600.0, key=True)
    queues: tuple[str, ...] = field(
        default=("default",),
        metadata=_about(
            "queues", "comma-separated queues", config="pool.queues", aliases=("--queue",)
        ),
    )
    output_dir: str | None = field(
        default=None, metadata=_about("text", "where task stdout/stderr files go", key=True)
    )
    # A CA file to trust for an https url, instead of the system's.
    tls_ca: str | None = field(
        default=None,
        metadata=_about(
            "text", "CA file to trust for https ([server] tls_ca)", config="server.tls_ca"
        ),
    )


TABLE: dict[str, About] = {f.name: f.metadata["about"] for f in fields(WorkerOptions)}
DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(WorkerOptions) if f.default is not MISSING
}
# The order `hpcscale worker --help` lists the flags in: older than the table, and frozen.
HELP_ORDER = (
    "pool", "url", "token_file", "tls_ca", "queues", "submission", "slots", "max_tasks",
    "max_time", "empty_claim_sleep", "heartbeat_interval", "claim_margin",
    "task_duration_prior", "unreachable_timeout", "max_empty_claims", "output_dir",
)  # fmt: skip
if sorted(HELP_ORDER) != sorted(TABLE):
    raise TypeError("every option of the table has its place in HELP_ORDER, and only those")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- the config


def config_key(name: str) -> Any:
    """The pydantic field of a [pools.worker] key: the table's default and bounds."""
    about = TABLE[name]
    if not about.key:
        raise TypeError(f"{name} is not a [pools.worker] key")
    return Field(default=DEFAULTS[name], ge=about.ge, le=about.le)


def check_config_keys(model: type[BaseModel]) -> None:
    """Refuse a config model whose keys are not the table's [pools.worker] keys, in its order."""
    keys = [name for name, about in TABLE.items() if about.key]
    if list(model.model_fields) != keys:
        raise TypeError(f"{model.__name__} must have the keys {keys}, in that order")


# ----------------------------------------------------------------------------- the command line


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `hpcscale worker`; each defaults to None ("not given") except --pool,
    which a job's environment may name ($HPCSCALE_POOL)."""
    for name in HELP_ORDER:
        about = TABLE[name]
        default = os.environ.get("HPCSCALE_POOL") if name == "pool" else None
        kwargs: dict[str, Any] = {"default": default}
        if about.kind == "int":
            kwargs["type"] = int
        if about.help is not None:
            kwargs["help"] = about.help
        parser.add_argument(flag(name), *about.aliases, **kwargs)


def given_flags(args: argparse.Namespace) -> dict[str, object]:
    """The options given on the command line, read by their kind; a bad duration is a
    ConfigError naming its flag."""
    given: dict[str, object] = {}
    for name, about in TABLE.items():
        value = getattr(args, name)
        if value is None or (value == "" and about.kind in ("text", "queues")):
            continue  # not given (an empty text flag always meant "not given")
        if about.kind == "duration":
            value = duration_flag(flag(name), value)
        elif about.kind == "queues":
            value = tuple(q.strip() for q in value.split(",") if q.strip())
        given[name] = value
    return given


def from_command_line(args: argparse.Namespace, settings: Settings) -> WorkerOptions:
    """Flags first; then, when --pool names a pool of the config, its settings; then defaults."""
    given = given_flags(args)
    given.setdefault("pool", "manual")
    pool = next((p for p in settings.pools if p.name == given["pool"]), None)
    return resolve(settings, pool, given)


# ----------------------------------------------------------------------------- resolving


def resolve(
    settings: Settings, pool: PoolConfig | None, given: Mapping[str, object]
) -> WorkerOptions:
    """A worker's options: what is given (its pool's name at least), else the config's value
    (the pool's [pools.worker] keys, its queues and prior; the [server] url, token file and CA),
    else the table's default (also for a pool the config does not know: `pool` None)."""
    values: dict[str, Any] = {}
    for name, about in TABLE.items():
        if name in given:
            values[name] = given[name]
            continue
        where = f"pool.worker.{name}" if about.key else about.config
        found = _config_value(where, settings, pool) if where else None
        if found is not None:
            values[name] = tuple(found) if about.kind == "queues" else found
    return WorkerOptions(**values)


def _config_value(where: str, settings: Settings, pool: PoolConfig | None) -> Any:
    root, *path = where.split(".")
    value: Any = settings.server if root == "server" else pool
    for part in path:
        if value is None:
            return None
        value = getattr(value, part)
    return value


# ----------------------------------------------------------------------------- the job script


def command_line(opts: WorkerOptions) -> list[str]:
    """The flags that give a worker exactly `opts`, in the table's order (unset ones left out)."""
    argv: list[str] = []
    for name, about in TABLE.items():
        value = getattr(opts, name)
        if value is None or value == "":
            continue
        if about.kind == "duration":
            text = format_seconds(value)
        elif about.kind == "queues":
            text = ",".join(value)
        else:
            text = str(value)
        argv += [flag(name), text]
    return argv
