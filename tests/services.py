"""A real `hpcscale server` process for end-to-end tests, with its config and tokens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcscale import config
from hpcscale.cli.demo import wait_healthy
from hpcscale.client import Client
from hpcscale.errors import HpcscaleError
from hpcscale.models import Role
from hpcscale.tokens import write_secret
from tests.conftest import free_port

POOL_TOML = """
[[pools]]
name = "{name}"
queues = ["{queue}"]
scheduler = "{scheduler}"
min_workers = {min_workers}
max_workers = {max_workers}
max_pending = {max_pending}
task_duration_prior = "{prior}"
target_drain_time = "{drain}"
{pool_extra}
[pools.slurm]
partition = "{partition}"
cpus_per_task = {cpus_per_task}
time = "{time}"
signal_margin = "{signal_margin}"
output = "{output}"

[pools.worker]
slots = {slots}
max_tasks = {max_tasks}
max_empty_claims = {max_empty_claims}
empty_claim_sleep = "{empty_claim_sleep}"
heartbeat_interval = "{heartbeat_interval}"
claim_margin = "{claim_margin}"
output_dir = "{task_output}"
{pool_tables}
"""

POOL_DEFAULTS: dict[str, object] = {
    "queue": "default",
    "scheduler": "slurm",
    "min_workers": 0,
    "max_workers": 4,
    "max_pending": 10,
    "prior": "5s",
    "drain": "10s",
    "time": "00:05:00",
    "signal_margin": "10s",
    "slots": 1,
    "max_tasks": 0,
    "max_empty_claims": 2,
    "empty_claim_sleep": "1s",
    "heartbeat_interval": "2s",
    "claim_margin": "2s",
    "partition": "debug",
    "pool_extra": "",  # more top-level pool keys, e.g. "max_submit_per_hour = 6"
    "pool_tables": "",  # more pool tables, e.g. '[pools.budget]\ncore_hours = 0.05'
}


@dataclass
class ServerProcess:
    """`hpcscale server` as its own process, stoppable and restartable on the same port."""

    root: Path
    database: str
    manager: str = "test"
    lease_ttl: str = "10s"
    pools: list[dict[str, object]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    command: str = "server"  # or "serve": the API and the manager loops in one process
    env: dict[str, str] | None = None
    poll_interval: str = "2s"
    extra_manager: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = f"""
[server]
url = "{self.url}"
bind = "127.0.0.1:{self.port}"
database = "{self.database}"
token_file = "{self.root}/token"
lease_ttl = "{self.lease_ttl}"
reaper_interval = "1s"

[manager]
name = "{self.manager}"
poll_interval = "{self.poll_interval}"
state_dir = "{self.root}/manager"
{self.extra_manager}
"""
        for pool in self.pools:
            values = {**POOL_DEFAULTS, **pool}
            values.setdefault("cpus_per_task", values["slots"])  # a CPU a slot (check-config)
            values.setdefault("output", f"{self.root}/slurm-%A_%a.out")
            values.setdefault("task_output", f"{self.root}/task-output")
            text += POOL_TOML.format(**values)
        self.config_path.write_text(text)

    @property
    def settings(self) -> config.Settings:
        return config.load(self.config_path)

    def start(self, timeout: float = 30.0) -> None:
        if not self.config_path.exists():
            self.write_config()
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hpcscale", self.command, "--allow-root",
             "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
        )  # fmt: skip
        try:
            wait_healthy(self.url, self.process, timeout)
        except HpcscaleError as exc:
            raise RuntimeError(f"{exc}: {(self.root / 'server.log').read_text()}") from exc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def cli(
        self, *argv: str, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`hpcscale ARGV` as a user types it, from `cwd`, --config given before any `--`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
        words = list(argv)
        at = words.index("--") if "--" in words else len(words)
        words[at:at] = ["--config", str(self.config_path)]
        return subprocess.run(
            [sys.executable, "-m", "hpcscale", *words],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
        )  # fmt: skip

    def ended(self, task: int, cwd: Path | None = None) -> dict[str, Any] | None:
        """`tasks show TASK` once the task has ended, else None (for wait_for)."""
        shown = json.loads(self.cli("tasks", "show", str(task), "--json", cwd=cwd).stdout)
        return shown if shown["state"] in ("succeeded", "failed", "dead") else None

    def admin(self) -> Client:
        token = (self.root / "token").read_text().strip()
        return Client(self.url, token, retry_for=5.0)

    def worker_token_file(self, pool: str, queues: list[str] | None = None) -> Path:
        """A worker token for `pool`, in the 0600 file the job script names."""
        path = config.worker_token_file(self.settings, pool)
        if not path.exists():
            with self.admin() as admin:
                token = admin.create_token(Role.WORKER, queues, f"workers of {pool}").token
            write_secret(path, token)
        return path
