"""Worker job scripts from the templates in jobscripts/, and the exact command that submits them.

Why it is built this way:
- `string.Template.substitute` (strict): a placeholder left unfilled is an error, not a silent
  empty string in a script that thousands of jobs will run.
- `#SBATCH` lines are built as data from [pools.slurm]; config.py already refuses newlines,
  whitespace (sbatch would split it) and shell metacharacters in those values. Nodes denied
  claims are excluded (`--exclude`) when their names are plain node names.
- Every value on the worker's command line is `shlex.quote`d; only the admin's `setup` lines
  are shell by design.
- `--export=NONE`: nothing of the manager's environment reaches the job. So the script names
  python by absolute path: `[pools.slurm].python`, else the interpreter that renders it (the
  manager's own, e.g. its venv's, which is how a login-node install reaches the compute nodes
  over a shared filesystem).
- The token never appears: the worker gets the path of a 0600 token file.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import hpcscale
from hpcscale.config import PoolConfig, Settings
from hpcscale.config_checks import shell_safe
from hpcscale.errors import ConfigError
from hpcscale.schedulers.base import check_tag, job_name
from hpcscale.schedulers.local.adapter import launch_argv
from hpcscale.schedulers.slurm.adapter import sbatch_argv
from hpcscale.units import format_seconds, format_slurm_time, worker_lifetime
from hpcscale.worker.options import command_line, resolve

TEMPLATES = {"slurm": "slurm-worker.sh", "pyslurm": "slurm-worker.sh", "local": "local-worker.sh"}

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # a Slurm node name


@dataclass(frozen=True)
class RenderedJob:
    """The script and the argv that would submit it (the script goes to sbatch's stdin)."""

    script: str
    sbatch_argv: list[str]


def template_dirs() -> list[Path]:
    """Where templates live: inside the wheel first, then the source tree (editable installs)."""
    package = Path(hpcscale.__file__).resolve().parent
    return [package / "_data" / "jobscripts", package.parent / "jobscripts"]


def load_template(name: str) -> Template:
    for directory in template_dirs():
        path = directory / name
        if path.is_file():
            return Template(path.read_text())
    searched = ", ".join(str(d) for d in template_dirs())
    raise ConfigError([f"job script template {name!r} not found (looked in {searched})"])


def directives(
    pool: PoolConfig, exclude: Sequence[str] = (), log_dir: Path | None = None
) -> list[str]:
    """The sbatch options of a pool, as data (each becomes one `#SBATCH` line); config.py has
    already refused values with whitespace or shell characters. `exclude`: nodes denied claims
    (names a worker reported: only plain node names get through), unless the pool sets its
    own --exclude. `log_dir`: where Slurm's own output goes when the pool names no `output`
    (else sbatch writes slurm-<job>_<index>.out into the manager's working directory)."""
    slurm = pool.slurm
    if slurm.output is None and log_dir is not None:
        slurm = slurm.model_copy(update={"output": str(log_dir / "slurm-%A_%a.out")})
    options: list[tuple[str, str | None]] = [
        ("partition", slurm.partition),
        ("account", slurm.account),
        ("qos", slurm.qos),
        ("mem", slurm.mem),
        ("gres", slurm.gres),
        ("constraint", slurm.constraint),
        ("output", slurm.output),
    ]
    lines = [f"--{name}={value}" for name, value in options[:3] if value]
    lines += [
        f"--time={format_slurm_time(slurm.wall_seconds)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={slurm.cpus_per_task}",
    ]
    lines += [f"--{name}={value}" for name, value in options[3:] if value]
    lines += [f"--signal=B:USR1@{math.ceil(slurm.signal_margin)}", "--export=NONE"]
    lines += list(slurm.extra_directives)
    nodes = sorted({n for n in exclude if _NODE_RE.match(n)})
    own = any(d.startswith(("--exclude", "-x")) for d in slurm.extra_directives)
    if nodes and not own:
        lines.append(f"--exclude={','.join(nodes)}")
    return lines


def _absolute(path: str | Path) -> Path:
    """The job may start in another directory: paths handed to the worker are absolute."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


def pool_log_dir(settings: Settings, pool: PoolConfig) -> Path:
    """A pool's own place for what its jobs write: Slurm's output of each element, and (under
    tasks/) the workers' task outputs unless [pools.worker] output_dir says otherwise. Under
    [manager] state_dir, which must be on a filesystem the compute nodes see (the default,
    under $HOME, is on most clusters)."""
    return _absolute(settings.manager.state_dir) / "logs" / pool.name


def _made_log_dir(settings: Settings, pool: PoolConfig) -> Path:
    """The pool's log directory, made 0700 (Slurm opens the output file; it does not make
    the directory) and fit for an #SBATCH line."""
    path = pool_log_dir(settings, pool)
    try:
        shell_safe(str(path))
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [f"manager.state_dir: cannot hold the jobs' logs at {path} ({exc}); "
             f"set pools.{pool.name}.slurm.output"]
        ) from exc  # fmt: skip
    return path


def worker_argv(
    pool: PoolConfig, settings: Settings, tag: str, token_file: str | Path
) -> list[str]:
    """`<python> -m hpcscale worker ...`, unquoted (the caller quotes for the shell): every
    option of the worker's table, as the pool's config sets it.

    --max-time is the worker's lifetime (its max_time capped at the wall time), so a worker
    never plans past the end of its job.
    """
    tls_ca = settings.server.tls_ca
    given: dict[str, object] = {
        "pool": pool.name,
        "token_file": str(_absolute(token_file)),
        "submission": tag,
        "max_time": worker_lifetime(pool.worker.max_time, pool.slurm.wall_seconds),
        "tls_ca": str(_absolute(tls_ca)) if tls_ca else None,
    }
    if pool.worker.output_dir is None:  # the pool's place, not the job's working directory
        given["output_dir"] = str(pool_log_dir(settings, pool) / "tasks")
    python = pool.slurm.python or sys.executable
    options = resolve(settings, pool, given)
    return [python, "-m", "hpcscale", "worker", *command_line(options)]


def render(
    pool: PoolConfig,
    settings: Settings,
    tag: str,
    count: int,
    token_file: str | Path,
    exclude: Sequence[str] = (),
) -> RenderedJob:
    """The job script for `count` workers of `pool` under submission `tag`, and its argv.

    For Slurm pools the argv is exactly what SlurmScheduler.submit runs for one array (larger
    counts than MaxArraySize are split there); for local pools it is the per-element launcher.
    """
    check_tag(tag)
    if count < 1:
        raise ConfigError([f"count: must be ≥ 1, got {count}"])
    for path in (str(token_file), pool.slurm.python or ""):
        if any(c in path for c in "\n\r\x00"):
            raise ConfigError([f"pools.{pool.name}: paths must not contain a newline"])
    command = " ".join(shlex.quote(a) for a in worker_argv(pool, settings, tag, token_file))
    kind = pool.scheduler
    log_dir = None
    if kind != "local" and pool.slurm.output is None:
        log_dir = _made_log_dir(settings, pool)
    values = {
        "directives": "\n".join(f"#SBATCH {d}" for d in directives(pool, exclude, log_dir))
        if kind != "local"
        else "",
        "pool": pool.name,
        "manager": settings.manager.name,
        "tag": tag,
        "version": hpcscale.__version__,
        "margin": format_seconds(math.ceil(pool.slurm.signal_margin)),
        "setup": "\n".join(pool.slurm.setup),
        "command": command,
    }
    try:
        script = load_template(TEMPLATES[kind]).substitute(values)
    except (KeyError, ValueError) as exc:
        raise ConfigError([f"job script template {TEMPLATES[kind]}: {exc}"]) from exc
    if kind == "local":
        argv = launch_argv(Path("<state_dir>/local/jobs/<job id>"), 0)
    else:
        name = job_name(settings.manager.name, pool.name)
        argv = sbatch_argv(name, tag, count, pool.slurm.array_throttle)
    return RenderedJob(script=script, sbatch_argv=argv)
