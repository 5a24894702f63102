"""What the config refuses, and how it says so: one line per problem, naming the key.

Kept apart from the models (config.py) because these are the rules an admin meets when a file
is wrong, and the CLI reuses them for task files: names that reach job names, file names and
URLs; values that reach an #SBATCH line; and pydantic's errors rewritten as
`pools[0].max_workers: must be ≥ 0`, so a file can be fixed without reading a traceback.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from hpcscale.tokens import token_file_problem

if TYPE_CHECKING:
    from hpcscale.config import Settings, SlurmConfig

# Values that end up on an #SBATCH line: no newline (a line of its own is shell), no quotes,
# `$`, backquote or `;`, and no whitespace (sbatch splits an #SBATCH line on it, so "debug
# --wrap=..." would be two options). Wide enough for real partitions, accounts, constraints
# ("a&b|c"), gres ("gpu:a100:2") and output patterns ("%x-%A_%a.out"). The `setup` lines are
# the one place that is shell by design: whoever writes the config already runs the jobs.
_SHELL_SAFE_RE = re.compile(r"^[A-Za-z0-9_.,:=+\-/@%&|!*\[\]()~]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def keyed(key: str, message: str) -> PydanticCustomError:
    """An error of a model validator that names the field it is about (`pools[0].min_workers`),
    where a plain ValueError would name only the model (`pools[0]`)."""
    return PydanticCustomError("config_key", "{message}", {"key": key, "message": message})


def one_line(value: str) -> None:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError("must not contain a newline")


def shell_safe(value: str) -> str:
    one_line(value)
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace (sbatch splits #SBATCH lines on it)")
    if not _SHELL_SAFE_RE.match(value):
        bad = sorted({c for c in value if not _SHELL_SAFE_RE.match(c)})
        raise ValueError(f"contains characters a job script must not see: {''.join(bad)!r}")
    return value


def safe_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r}: must be letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return value


def http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+(:\d+)?(/\S*)?$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def database_url(value: str) -> str:
    if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        scheme = value.partition("://")[0] if "://" in value else value[:20]
        raise ValueError(f"unknown scheme {scheme!r}: must start with sqlite:/// or postgresql://")
    return value


def host_port(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def describe(exc: ValidationError) -> list[str]:
    """One line per problem: `key.path: what is wrong`."""
    lines = []
    for error in exc.errors():
        key = _key(error["loc"])
        if error["type"] == "config_key":
            sub = error["ctx"]["key"]
            key = f"{key}{'' if not key or sub.startswith('[') else '.'}{sub}"
        lines.append(f"{key}: {_message(error)}" if key else _message(error))
    return lines


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in {"str", "int", "float", "list"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx['ge']}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be ≤ {ctx['le']}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def check_files(settings: Settings) -> list[str]:
    """Problems with the files the config names that can be seen without starting anything:
    a token file others can read, TLS files that do not load. One line each, naming the key;
    `check-config`, `server` and `serve` refuse them before binding a port. A token file that
    does not exist yet is fine: `server`/`serve` write it on first start."""
    server = settings.server
    problems = []
    token = Path(server.token_file).expanduser()
    if token.exists() or token.is_symlink():
        problem = token_file_problem(token)
        if problem:
            problems.append(f"server.token_file: {problem}")
    for key in ("tls_cert", "tls_key", "tls_ca"):
        value = getattr(server, key)
        if value and not Path(value).expanduser().is_file():
            problems.append(f"server.{key}: {Path(value).expanduser()} is not a readable file")
    if problems:
        return problems
    if server.tls_cert and server.tls_key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(
                Path(server.tls_cert).expanduser(), Path(server.tls_key).expanduser()
            )
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"server.tls_cert: cannot load it with server.tls_key: {exc}")
    if server.tls_ca:
        try:
            ssl.create_default_context(cafile=Path(server.tls_ca).expanduser())
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"server.tls_ca: cannot load it as PEM certificates: {exc}")
    return problems


_GPU_RE = re.compile(r"(?:^|,)gpu(?::[A-Za-z][\w\-]*)?(?::(\d+))?(?:\(\S*\))?(?:,|$)")


def gpus_of(slurm: SlurmConfig) -> int:
    """GPUs one element asks for: `gres = "gpu:a100:2"` or `--gres=gpu:2` / `--gpus=2` in
    extra_directives (0 when it asks for none)."""
    texts = [slurm.gres or ""] + [
        d.split("=", 1)[1] for d in slurm.extra_directives if d.startswith("--gres=")
    ]
    for text in texts:
        match = _GPU_RE.search(text)
        if match:
            return int(match.group(1) or 1)
    for directive in slurm.extra_directives:
        name, _, value = directive.partition("=")
        if name in ("--gpus", "--gpus-per-task", "-G") and value.isdigit():
            return int(value)
    return 0


def unworkable(settings: Settings) -> list[str]:
    """Values each valid alone that together cannot work: a pool that could never start a worker,
    a worker that could never claim, a budget no worker fits. One line each, naming the key;
    `check-config`, `server`, `serve` and `manager` refuse them (exit 2) before any sbatch."""
    problems: list[str] = []
    for index, pool in enumerate(settings.pools):
        key = f"pools[{index}]"
        wall = pool.slurm.wall_seconds
        if pool.max_pending == 0 and pool.max_workers > 0:
            problems.append(
                f"{key}.max_pending: 0 lets no worker be submitted (each starts pending); "
                "at least 1, or max_workers = 0 to switch the pool off"
            )
        if pool.worker.claim_margin >= wall:
            problems.append(
                f"{key}.worker.claim_margin: {pool.worker.claim_margin:g}s is not less than "
                f"the wall time ({key}.slurm.time = {pool.slurm.time}): no worker could claim"
            )
        if pool.scheduler in ("slurm", "pyslurm") and pool.worker.slots > pool.slurm.cpus_per_task:
            problems.append(
                f"{key}.worker.slots: {pool.worker.slots} tasks at once on "
                f"{key}.slurm.cpus_per_task = {pool.slurm.cpus_per_task} CPU(s) oversubscribes "
                "them; raise cpus_per_task or lower slots"
            )
        if pool.scheduler == "pyslurm" and not _pyslurm_imports():
            problems.append(
                f'{key}.scheduler: pyslurm does not import here; use scheduler = "slurm"'
            )
        problems += _budget_problems(pool, key)
    return problems


def _budget_problems(pool: Any, key: str) -> list[str]:
    """A budget smaller than one worker's worst case (its CPUs or GPUs for the whole wall time)
    would never let the manager submit a single worker."""
    if pool.budget is None:
        return []
    hours = pool.slurm.wall_seconds / 3600.0
    worst = {
        "core_hours": pool.slurm.cpus_per_task * hours,
        "gpu_hours": gpus_of(pool.slurm) * hours,
    }
    problems = []
    for name, need in worst.items():
        have = getattr(pool.budget, name)
        if have is not None and need > 0 and have < need:
            problems.append(
                f"{key}.budget.{name}: {have:g} is less than one worker's worst case "
                f"({need:.3g}: {key}.slurm.time = {pool.slurm.time}); no worker would be submitted"
            )
    return problems


def _pyslurm_imports() -> bool:
    import importlib

    try:
        importlib.import_module("pyslurm")
    except Exception:  # a broken build raises anything from its C extension
        return False
    return True


LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def warnings(settings: Settings) -> list[str]:
    """What works on one machine only: a Slurm pool's workers told to reach the server on the
    loopback address, which compute nodes other than the login node do not have. A warning,
    not an error: a one-machine cluster (the lab) is the one place it works."""
    host = settings.server.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    slurm = [p.name for p in settings.pools if p.scheduler in ("slurm", "pyslurm")]
    if slurm and host.startswith(LOOPBACK):
        return [
            f"server.url: {settings.server.url} is this machine's loopback, but the workers of "
            f"Slurm pool(s) {', '.join(slurm)} run on compute nodes and reach the server there: "
            "give the login node's name on the cluster network"
        ]
    return []
