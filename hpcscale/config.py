"""The TOML config of one cluster, with HPCSCALE_* environment overrides.

Lookup order: `--config FILE`, then `$HPCSCALE_CONFIG`, then `~/.config/hpcscale/config.toml`,
then built-in defaults (embedded SQLite, API on 127.0.0.1:8765). Environment variables override
the file: `HPCSCALE_SERVER__URL`, `HPCSCALE_MANAGER__NAME`, `HPCSCALE_POOLS__0__MAX_WORKERS`
(`__` between levels; config_env.py).

Every problem is reported as one line that names the key, e.g. `pools[0].max_workers: must be
≥ 0`, so an admin can fix a file without reading a traceback.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hpcscale import config_checks as check
from hpcscale import config_env
from hpcscale.config_checks import describe as describe  # (public here too: the CLI, the server)
from hpcscale.config_checks import gpus_of as gpus_of  # (and here: manager, simulator)
from hpcscale.config_checks import host_port as host_port
from hpcscale.errors import ConfigError
from hpcscale.models import MAX_OBSERVED_QUEUES
from hpcscale.policy import EFFICIENCY, PoolRules
from hpcscale.units import parse_duration as parse_duration
from hpcscale.units import worker_lifetime
from hpcscale.worker.options import check_config_keys, config_key

DEFAULT_CONFIG_PATH = Path("~/.config/hpcscale/config.toml")
DEFAULT_DATABASE = "sqlite:///~/.local/share/hpcscale/state.db"
DEFAULT_TOKEN_FILE = "~/.config/hpcscale/token"  # noqa: S105 - a path, not a secret

Duration = Annotated[float, BeforeValidator(parse_duration)]

Name = Annotated[str, Field(min_length=1, max_length=64)]
# A name that reaches job names, file names and URLs (pools, queues, the manager): checked
# where it is declared, so a bad queue is reported as `pools[0].queues[1]`.
SafeName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check.safe_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    url: str = "http://127.0.0.1:8765"
    bind: str = "127.0.0.1:8765"
    database: str = DEFAULT_DATABASE
    token_file: str = DEFAULT_TOKEN_FILE
    lease_ttl: Duration = 120.0
    reaper_interval: Duration = 5.0
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    tls_cert: str | None = None
    tls_key: str | None = None
    # The CA (PEM) that clients of this server trust instead of the system's, e.g. the server's
    # own self-signed cert: used by the CLI, the manager and (passed on) the workers.
    tls_ca: str | None = None
    # A worker host whose tasks fail this many times in a row within the window is denied
    # claims for host_deny_time (0: never).
    host_failure_limit: int = Field(default=5, ge=0)
    host_failure_window: Duration = 600.0
    host_deny_time: Duration = 900.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check.http_url(value)

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        host_port(value)
        return value

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        return check.database_url(value)

    @field_validator("token_file", "tls_cert", "tls_key", "tls_ca")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            check.one_line(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if self.tls_cert and not self.tls_key:
            raise check.keyed("tls_key", "required with tls_cert (the server needs both)")
        if self.tls_key and not self.tls_cert:
            raise check.keyed("tls_cert", "required with tls_key (the server needs both)")
        return self

    @property
    def verify(self) -> bool | str:
        """What an HTTPS client of this server trusts: tls_ca, else the system's CAs."""
        return str(Path(self.tls_ca).expanduser()) if self.tls_ca else True


class ManagerConfig(_Strict):
    name: Name = "local"
    poll_interval: Duration = 30.0
    state_dir: str = "~/.local/share/hpcscale/manager"
    start_grace: Duration = 300.0  # running this long without a registered worker: failed start
    breaker_failures: int = Field(default=3, ge=1)  # failed starts that open a pool's breaker
    breaker_window: Duration = 900.0
    breaker_cooldown: Duration = 300.0
    # A worker that registers and ends within this long without doing a task (and not because
    # it was idle, drained or told to stop) counts as a failed start: a crash loop of workers
    # that register opens the breaker too, and raises the pool's crash-loop alarm.
    crash_seconds: Duration = 60.0
    preflight_interval: Duration = 600.0  # re-run every pool's `sbatch --test-only` this often

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check.safe_name(value)


class SlurmConfig(_Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "01:00:00"
    cpus_per_task: int = Field(default=1, ge=1)
    mem: str | None = None
    gres: str | None = None
    constraint: str | None = None
    output: str | None = None
    signal_margin: Duration = 120.0
    array_throttle: int | None = Field(default=None, ge=1)  # sbatch --array=0-N%throttle
    extra_directives: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)
    python: str | None = None

    @field_validator("partition", "account", "qos", "mem", "gres", "constraint", "output")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else check.shell_safe(value)

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("must be a positive wall time")
        return value

    @field_validator("extra_directives")
    @classmethod
    def _directives(cls, values: list[str]) -> list[str]:
        for value in values:
            check.shell_safe(value)
            if not value.startswith("-"):
                raise ValueError(f"{value!r} must be an sbatch option such as --gres=gpu:1")
        return values

    @field_validator("setup")
    @classmethod
    def _setup_lines(cls, values: list[str]) -> list[str]:
        for line in values:
            if "\n" in line or "\r" in line or "\x00" in line:
                raise ValueError("must not contain a newline (give one list item per line)")
        return values

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None:
            check.one_line(value)
        return value

    @property
    def wall_seconds(self) -> float:
        return parse_duration(self.time)


class WorkerConfig(_Strict):
    """[pools.worker]: the worker options a config may set. Their defaults and bounds come from
    the one table of the worker's options (worker/options.py), which checks these keys."""

    slots: int = config_key("slots")
    max_tasks: int = config_key("max_tasks")
    max_time: Duration = config_key("max_time")
    max_empty_claims: int = config_key("max_empty_claims")
    empty_claim_sleep: Duration = config_key("empty_claim_sleep")
    heartbeat_interval: Duration = config_key("heartbeat_interval")
    claim_margin: Duration = config_key("claim_margin")
    unreachable_timeout: Duration = config_key("unreachable_timeout")
    output_dir: str | None = config_key("output_dir")


check_config_keys(WorkerConfig)


class BudgetConfig(_Strict):
    """`[pools.budget]`: what the pool's own elements may burn per rolling `window`.

    Burn is cpus_per_task (or GPUs) x the time each worker was registered, read from the
    store's worker records (so a restart forgets nothing). Before each submission the new
    elements' worst case (count x cpus x wall time), plus the worst case still to come from
    elements in flight, must fit in what is left; running workers are never cancelled."""

    core_hours: float | None = Field(default=None, ge=0)
    gpu_hours: float | None = Field(default=None, ge=0)
    window: Duration = 86400.0

    @field_validator("window")
    @classmethod
    def _window(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive duration such as 24h or 7d")
        return value


class ScheduleConfig(_Strict):
    """A scheduled window: for `duration` after each time `cron` fires, the pool keeps at least
    `min_workers` (and, if given, at most `max_workers`)."""

    cron: str
    duration: Duration
    min_workers: int = Field(default=0, ge=0)
    max_workers: int | None = Field(default=None, ge=0)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from hpcscale.schedule import parse_cron

        parse_cron(value)
        return value

    @model_validator(mode="after")
    def _sane(self) -> ScheduleConfig:
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.max_workers is not None and self.min_workers > self.max_workers:
            raise check.keyed(
                "min_workers", f"{self.min_workers} must be ≤ max_workers ({self.max_workers})"
            )
        return self


class PoolConfig(_Strict):
    name: Name
    queues: list[SafeName] = Field(default_factory=lambda: ["default"], min_length=1, max_length=64)
    scheduler: Literal["slurm", "pyslurm", "local"] = "slurm"
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=10, ge=0)
    max_pending: int = Field(default=10, ge=0)
    max_submit_per_cycle: int = Field(default=20, ge=0)
    target_drain_time: Duration | None = None  # a deadline: may ask for more workers
    efficiency: float = Field(default=EFFICIENCY, gt=0, le=1)  # policy.py: needed_workers
    task_duration_prior: Duration = 300.0
    cancel_unneeded_pending: bool = False
    # The runaway guard: at most this many workers (array elements) submitted per rolling hour,
    # counted from the store's submission records (a restart does not reset it). Default:
    # four full turnovers of the pool per hour, 4 * max_workers * ceil(1h / wall time).
    max_submit_per_hour: int | None = Field(default=None, ge=0)
    budget: BudgetConfig | None = None
    schedule: list[ScheduleConfig] = Field(default_factory=list)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check.safe_name(value)

    @property
    def submit_ceiling(self) -> int:
        """`max_submit_per_hour`, or its default (see the field)."""
        if self.max_submit_per_hour is not None:
            return self.max_submit_per_hour
        turnovers = max(1, math.ceil(3600.0 / max(1.0, self.slurm.wall_seconds)))
        return 4 * self.max_workers * turnovers

    def floor_at(self, now: float) -> int:
        """min_workers, or a scheduled window's floor while it is open (within its cap): what
        the store is told, so that a warm window's idle workers are not surplus."""
        from hpcscale.schedule import active_window, pool_windows

        window = active_window(pool_windows(self.schedule, self.max_workers), now)
        return (
            self.min_workers if window is None else min(max(self.min_workers, window[0]), window[1])
        )

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolConfig:
        if self.min_workers > self.max_workers:
            raise check.keyed(
                "min_workers", f"{self.min_workers} must be ≤ max_workers ({self.max_workers})"
            )
        return self


class Settings(BaseModel):
    """The whole config file. HPCSCALE_* overrides are merged into the file's data by load()
    (config_env.py), so this is a plain model: pydantic-settings (which it was, reading none of
    its sources) put 30 modules more into every serve, manager and worker (issue 16)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _sections_in_any_case(cls, data: Any) -> Any:
        """`[Server]` is `[server]` (as under pydantic-settings): the first spelling wins."""
        if not isinstance(data, dict):
            return data
        folded: dict[str, Any] = {}
        for key, value in data.items():
            name = key.lower() if isinstance(key, str) and key.lower() in cls.model_fields else key
            folded.setdefault(name, value)
        return folded

    server: ServerConfig = Field(default_factory=ServerConfig)
    manager: ManagerConfig = Field(default_factory=ManagerConfig)
    pools: list[PoolConfig] = Field(default_factory=list, max_length=256)  # ObserveRequest.pools

    @model_validator(mode="after")
    def _unique_pools(self) -> Settings:
        first: dict[str, int] = {}
        for index, pool in enumerate(self.pools):
            if pool.name in first:
                raise check.keyed(
                    f"pools[{index}].name",
                    f"{pool.name!r} is already the name of pools[{first[pool.name]}]",
                )
            first[pool.name] = index
        queues: set[str] = set()
        for index, pool in enumerate(self.pools):
            queues.update(pool.queues)
            if len(queues) > MAX_OBSERVED_QUEUES:  # what a manager's cycle may ask the store
                raise check.keyed(
                    f"pools[{index}].queues",
                    f"the pools serve more than {MAX_OBSERVED_QUEUES} distinct queues",
                )
        return self

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        known = ", ".join(p.name for p in self.pools) or "none configured"
        raise ConfigError([f"pools: no pool named {name!r} (known: {known})"])


def worker_token_file(settings: Settings, pool: str) -> Path:
    """Where a pool's worker token lives: next to the admin token, one file per pool."""
    return Path(settings.server.token_file).expanduser().parent / f"worker-{pool}.token"


def resolve_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The config file to read, or None for built-in defaults."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HPCSCALE_CONFIG")
    if env:
        return Path(env).expanduser()
    default = DEFAULT_CONFIG_PATH.expanduser()
    return default if default.exists() else None


def load(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the config; raise ConfigError with one line per problem."""
    path = resolve_path(explicit)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError([f"{path}: no such config file"]) from exc
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}: not UTF-8 text ({exc.reason})"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    origins = config_env.apply(data, os.environ)  # HPCSCALE_* override the file
    try:
        return from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(config_env.name_the_variables(exc.problems, origins)) from exc


def from_mapping(data: dict[str, Any]) -> Settings:
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc


def rules_from_pool(pool: PoolConfig, max_array_size: int = 1000) -> PoolRules:
    """The decision's view of a pool's config (the manager and the simulator both use it)."""
    lifetime = worker_lifetime(pool.worker.max_time, pool.slurm.wall_seconds)
    return PoolRules(
        min_workers=pool.min_workers,
        max_workers=pool.max_workers,
        max_pending=pool.max_pending,
        max_submit_per_cycle=pool.max_submit_per_cycle,
        target_drain_time=pool.target_drain_time,
        slots=pool.worker.slots,
        max_tasks=pool.worker.max_tasks,
        lifetime=lifetime,
        max_array_size=max_array_size,
        cancel_unneeded_pending=pool.cancel_unneeded_pending,
        max_submit_per_hour=pool.submit_ceiling,
        efficiency=pool.efficiency,
        # a surplus worker claims max_empty_claims times, sleeping between, before it leaves
        tail_prior=(pool.worker.max_empty_claims - 1) * pool.worker.empty_claim_sleep,
    )
