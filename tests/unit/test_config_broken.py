"""Broken config files at the command line: one line naming the key, exit 2, nothing submitted.

Each case is a whole config file run through the real CLI, `hpcscale check-config FILE` and
`hpcscale serve --config FILE` (and `hpcscale manager --once` where the problem is one the
manager meets: its token file). Every run must print exactly one line, `error: KEY: ...`, exit 2,
and call no `sbatch`: a fake `sbatch` first on PATH appends to a file that must not exist
afterwards. The runs of all selected cases are started together (the machine has few cores and
each run is a fresh interpreter), then each case checks its own.

Where a value reaches a job script:
- `setup` lines are shell by design (`module load ...`): whoever writes the config already
  decides what the jobs run, so nothing is taken from them but newlines inside one item.
- everything on an `#SBATCH` line (partition, account, qos, mem, gres, constraint, output,
  extra_directives) is refused when it holds a newline, whitespace, a quote, `$`, a backquote,
  `;`, `<` or `>`; names (pool, queues, manager: the job name `hpcscale.<manager>.<pool>`) are
  letters, digits, `_.-` only.
- everything on the worker's command line (url, token file, output_dir, python, tls_ca) is
  accepted as given and `shlex.quote`d: `test_odd_values_reach_the_script_quoted` runs a
  rendered script and sees them arrive as literal arguments.

A missing token file is not an error for `serve` (its first start writes one); the manager, the
worker and the client commands refuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.slurm_fixtures import fake_command

# The module fixture `outcomes` runs every collected case at once; under xdist every worker
# collects all of them, so the module's tests stay on one worker (else each worker redoes them).
pytestmark = pytest.mark.xdist_group("config-broken")

HEAD = """{top}
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
token_file = "{root}/token"
{server}
[manager]
state_dir = "{root}/manager"
{manager}
"""
POOL = """
[[pools]]
name = "{name}"
scheduler = "slurm"
{pool}
[pools.slurm]
{slurm}
"""
COMMANDS = {
    "check-config": ["check-config", "{config}"],
    "serve": ["serve", "--allow-root", "--config", "{config}"],
    "manager": ["manager", "--once", "--config", "{config}"],
}
BOTH = ("check-config", "serve")
TIMEOUT = 15  # a run that accepts its file serves until killed: a failure, not a hang


def _token(mode: int) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / "token"
        path.write_text("not-a-real-token\n")
        path.chmod(mode)

    return write


@dataclass(frozen=True)
class Case:
    """A config with one thing wrong, and the key its one error line must start with."""

    id: str
    key: str
    top: str = ""
    server: str = 'database = "sqlite:///{root}/state.db"'
    manager: str = 'name = "broken"\npoll_interval = "1s"'
    pool: str = ""
    slurm: str = ""
    more_pools: str = ""
    commands: tuple[str, ...] = BOTH
    prepare: Callable[[Path], None] | None = None

    def text(self, root: Path, port: int) -> str:
        server = self.server.format(root=root)
        head = HEAD.format(top=self.top, port=port, root=root, server=server, manager=self.manager)
        if self.top.startswith("pools"):  # the case replaces the [[pools]] tables
            return head
        return head + POOL.format(name="cpu", pool=self.pool, slurm=self.slurm) + self.more_pools


MARK = "/tmp/hpcscale-injected"  # what an injection would create; never created
CASES = [
    # wrong types
    Case("int-as-text", "pools[0].max_workers", pool='max_workers = "ten"'),
    Case("bool-as-text", "pools[0].cancel_unneeded_pending",
         pool='cancel_unneeded_pending = "maybe"'),
    Case("list-as-text", "pools[0].slurm.setup", slurm='setup = "module load gcc"'),
    Case("duration-as-bool", "server.lease_ttl", server="lease_ttl = true"),
    Case("pools-as-text", "pools", top='pools = "cpu"'),
    Case("fraction-of-cpu", "pools[0].slurm.cpus_per_task", slurm="cpus_per_task = 1.5"),
    # unknown keys
    Case("unknown-top-level", "colour", top='colour = "blue"'),
    Case("unknown-in-server", "server.port", server="port = 8765"),
    Case("unknown-in-pool", "pools[0].max_worker", pool="max_worker = 3"),
    Case("unknown-in-pool-slurm", "pools[0].slurm.partitions", slurm='partitions = "x"'),
    # caps and durations
    Case("negative-max-workers", "pools[0].max_workers", pool="max_workers = -1"),
    Case("min-above-max", "pools[0].min_workers", pool="min_workers = 5\nmax_workers = 2"),
    Case("negative-max-pending", "pools[0].max_pending", pool="max_pending = -1"),
    Case("negative-budget", "pools[0].budget.core_hours",
         more_pools="[pools.budget]\ncore_hours = -3"),
    Case("duration-in-parsecs", "pools[0].target_drain_time",
         pool='target_drain_time = "5 parsecs"'),
    Case("wall-time-in-parsecs", "pools[0].slurm.time", slurm='time = "5 parsecs"'),
    Case("poll-interval-negative", "manager.poll_interval", manager='poll_interval = "-5m"'),
    # what reaches a job script
    Case("partition-command", "pools[0].slurm.partition",
         slurm=f'partition = "debug; touch {MARK}"'),
    Case("partition-second-option", "pools[0].slurm.partition",
         slurm=f'partition = "debug --wrap=touch{MARK}"'),
    Case("account-substitution", "pools[0].slurm.account", slurm=f'account = "$(touch {MARK})"'),
    # Without whitespace, so the character rules alone must catch them.
    Case("partition-semicolon", "pools[0].slurm.partition", slurm='partition = "debug;id"'),
    Case("account-dollar", "pools[0].slurm.account", slurm='account = "a$(id)"'),
    Case("qos-backquote-bare", "pools[0].slurm.qos", slurm='qos = "x`id`"'),
    Case("mem-redirect", "pools[0].slurm.mem", slurm='mem = "4G>x"'),
    Case("qos-backquote", "pools[0].slurm.qos", slurm=f'qos = "`touch {MARK}`"'),
    Case("directive-newline", "pools[0].slurm.extra_directives",
         slurm=f'extra_directives = ["--comment=x\\ntouch {MARK}"]'),
    Case("directive-not-an-option", "pools[0].slurm.extra_directives",
         slurm='extra_directives = ["exclusive"]'),
    Case("output-substitution", "pools[0].slurm.output",
         slurm=f'output = "/tmp/$(touch {MARK}).out"'),
    Case("pool-name-command", "pools[0].name", top=f'pools = [{{ name = "cpu;touch {MARK}" }}]'),
    Case("queue-name-substitution", "pools[0].queues[1]",
         top='pools = [{ name = "cpu", queues = ["ok", "q$(id)"] }]'),
    Case("manager-name-quote", "manager.name", manager=f"name = \"m'touch {MARK}'\""),
    Case("setup-newline-in-item", "pools[0].slurm.setup",
         slurm='setup = ["module load gcc\\nmodule load mpi"]'),
    # the rest of the file
    Case("database-scheme", "server.database", server='database = "mysql://u@db/hpcscale"'),
    Case("duplicate-pool-names", "pools[1].name", more_pools=POOL.format(name="cpu", pool="",
         slurm="")),
    Case("pool-without-queues", "pools[0].queues", pool="queues = []"),
    Case("pool-with-65-queues", "pools[0].queues",
         pool="queues = [" + ", ".join(f"\"q{i}\"" for i in range(65)) + "]"),
    Case("pools-with-1088-queues", "pools[16].queues",
         top="pools = [" + ", ".join(
             f'{{ name = "p{i}", queues = [' + ", ".join(f'"q{i}_{j}"' for j in range(64)) + "] }"
             for i in range(17)) + "]"),
    Case("max-tasks-over-int32", "pools[0].worker.max_tasks",
         slurm='partition = "debug"\n[pools.worker]\nmax_tasks = 3000000000'),
    Case("tls-cert-without-key", "server.tls_key", server='tls_cert = "/etc/ssl/cert.pem"'),
    Case("token-file-0644", "server.token_file", prepare=_token(0o644),
         commands=(*BOTH, "manager")),
    Case("token-file-missing", "server.token_file", commands=("manager",)),
]  # fmt: skip


@dataclass
class Outcome:
    """What one command did with one case's file."""

    code: int
    stderr: str
    sbatch_called: bool


def _run_case(case: Case, root: Path) -> dict[str, Outcome]:
    root.mkdir(parents=True)
    (root / "manager").mkdir()
    config = root / "config.toml"
    config.write_text(case.text(root, free_port()))
    if case.prepare is not None:
        case.prepare(root)
    calls = root / "sbatch-calls"
    fake_command(root / "bin", "sbatch", f'echo "$*" >> {calls}\necho "Submitted batch job 1"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    env["PATH"] = f"{root / 'bin'}:{env['PATH']}"
    outcomes = {}
    for command in case.commands:
        argv = [a.format(config=config) for a in COMMANDS[command]]
        try:
            result = subprocess.run(
                [sys.executable, "-m", "hpcscale", *argv],
                capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=root,
            )  # fmt: skip
            outcome = Outcome(result.returncode, result.stderr, calls.exists())
        except subprocess.TimeoutExpired as exc:  # it accepted the file and kept running
            output = exc.stderr.decode() if isinstance(exc.stderr, bytes) else ""
            outcome = Outcome(-1, f"still running after {TIMEOUT} s:\n{output}", calls.exists())
        outcomes[command] = outcome
    return outcomes


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Outcome]]:
    """Every selected case's runs, done at once in a few threads."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    }
    base = tmp_path_factory.mktemp("broken")
    selected = [case for case in CASES if case.id in wanted]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda case: _run_case(case, base / case.id), selected)
        return {case.id: result for case, result in zip(selected, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_broken_config_is_one_line_naming_the_key(
    case: Case, outcomes: dict[str, dict[str, Outcome]]
) -> None:
    for command, outcome in outcomes[case.id].items():
        lines = outcome.stderr.splitlines()
        assert len(lines) == 1, f"{command}: want one line, got:\n{outcome.stderr}"
        assert lines[0].startswith(f"error: {case.key}: "), f"{command}: {lines[0]}"
        assert outcome.code == 2, f"{command} exited {outcome.code}: {lines[0]}"
        assert not outcome.sbatch_called, f"{command} called sbatch"
    assert not Path(MARK).exists()


def test_case_ids_are_unique() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


def test_odd_values_reach_the_script_quoted(tmp_path: Path) -> None:
    """Values the config accepts as given (paths, the URL) are quoted on the worker's command
    line: running the rendered script evaluates none of them, while the setup lines, shell by
    design, do run. The interpreter is /bin/echo, so the script prints its worker argv."""
    odd = tmp_path / "odd $(touch injected) `touch injected`;touch injected"
    setup_ran = tmp_path / "setup-ran"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
url = "http://127.0.0.1:1/$(id>injected)`id>injected`"
database = "sqlite:///{tmp_path}/state.db"
token_file = "{odd}/token"
tls_ca = "{odd}/ca.pem"
[[pools]]
name = "cpu"
[pools.slurm]
partition = "debug"
python = "/bin/echo"
setup = ["touch {setup_ran}"]
[pools.worker]
output_dir = "{odd}/out"
""")
    rendered = subprocess.run(
        [sys.executable, "-m", "hpcscale", "render-script", "cpu", "--config", str(config)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    script = rendered.stdout.split("# submit with")[0]
    ran = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert setup_ran.exists(), "the setup lines are shell and must run"
    assert not (tmp_path / "injected").exists(), script
    printed = ran.stdout
    assert "--url http://127.0.0.1:1/$(id>injected)`id>injected` " in printed
    assert f"--token-file {odd}/worker-cpu.token " in printed
    assert f"--tls-ca {odd}/ca.pem" in printed
    assert f"--output-dir {odd}/out" in printed
