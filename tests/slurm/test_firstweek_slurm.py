"""A user's first week on the real Slurm lab (issue 16): a task runs where it was submitted, a
task no pool can run is refused and costs no job, `submit --wait` and the Python API.

Each test has its own manager name, so its jobs are `hpcscale.<manager>.<pool>` and squeue is
filtered by that name (other tests may share the lab under xdist)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.services import ServerProcess
from tests.slurm_fixtures import require_slurm, unique, wait_for

pytestmark = pytest.mark.slurm

SCRIPT = "import os, pathlib; pathlib.Path('where.txt').write_text(os.getcwd())\n"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    require_slurm()
    root = tmp_path / "serve"
    server = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db", command="serve", manager=unique("fw"),
        poll_interval="2s", pools=[{"name": "cpu", "max_workers": 2, "max_empty_claims": 1}],
    )  # fmt: skip
    server.write_config()
    (root / "analyse.py").write_text('raise SystemExit("serve\'s analyse.py")\n')
    server.start()
    yield server
    server.stop()
    subprocess.run(["scancel", "--name", job_name(server)], check=False)


def job_name(server: ServerProcess) -> str:
    return f"hpcscale.{server.manager}.cpu"


def test_a_task_runs_where_it_was_submitted(serve: ServerProcess, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "analyse.py").write_text(SCRIPT)
    ran = serve.cli("submit", "--json", "--", sys.executable, "analyse.py", cwd=project)
    assert ran.returncode == 0, ran.stderr
    task = json.loads(ran.stdout)["ids"][0]
    shown = wait_for("the task to end", lambda: serve.ended(task, project), timeout=120)
    assert shown["state"] == "succeeded" and shown["cwd"] == str(project), shown
    assert (project / "where.txt").read_text() == str(project)


def jobs_of(server: ServerProcess) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "--name", job_name(server), "-o", "%i"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


@pytest.mark.parametrize(
    ("words", "named"),
    [(["--slots", "2"], "tasks.0.slots"), (["--queue", "nobody-serves"], "tasks.0.queue")],
)
def test_a_task_no_pool_can_run_is_refused_and_costs_no_job(
    serve: ServerProcess, tmp_path: Path, words: list[str], named: str
) -> None:
    """A 2-slot task on 1-slot workers, or a queue no pool serves: `serve` knows its pools, so
    the submit is refused naming the key, and over 5 poll intervals the manager starts nothing."""
    ran = serve.cli("submit", *words, "--", "true", cwd=tmp_path)
    assert ran.returncode == 1 and named in ran.stderr, ran
    assert "[pools.worker] slots" in ran.stderr or "served: default" in ran.stderr
    deadline = time.monotonic() + 5 * 2.0
    while time.monotonic() < deadline:
        assert jobs_of(serve) == []
        time.sleep(0.5)
    with serve.admin() as admin:
        assert admin.list_tasks() == []


def test_submit_wait_exits_with_the_tasks_outcome(serve: ServerProcess, tmp_path: Path) -> None:
    ran = serve.cli("submit", "--wait", "--", "sh", "-c", "echo fine", cwd=tmp_path)
    assert ran.returncode == 0 and "succeeded (exit code 0)" in ran.stdout, ran
    ran = serve.cli("submit", "--wait", "--max-attempts", "1", "--", "sh", "-c", "exit 3",
              cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 1 and "dead (exit code 3)" in ran.stdout, ran


def test_the_python_api_submits_and_waits_for_results(
    serve: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcscale.client import Client

    # the default cwd of a task is the caller's, as with `hpcscale submit`
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("42\n")
    with Client.from_config(serve.config_path) as client:
        handles = client.submit(["cat", "data.txt"])
        failing = client.submit(["sh", "-c", "echo oops >&2; exit 5"], max_attempts=1)
        outcome = handles[0].result(timeout=120)
        bad = failing[0].result(timeout=120)
    assert (outcome.state.value, outcome.exit_code, outcome.ok) == ("succeeded", 0, True)
    assert outcome.output_tail == "42\n"
    assert (bad.state.value, bad.exit_code, bad.ok) == ("dead", 5, False)
    assert "oops" in (bad.output_tail or "") and bad.reason == "exit code 5"


def test_dead_tasks_are_retried_once_the_cause_is_fixed(
    serve: ServerProcess, tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    ran = serve.cli("submit", "--json", "--queue", "default", "--max-attempts", "1", "--",
              "test", "-e", str(flag), cwd=tmp_path)  # fmt: skip
    task = json.loads(ran.stdout)["ids"][0]
    shown = wait_for("the task to end", lambda: serve.ended(task, tmp_path), timeout=120)
    assert shown["state"] == "dead"
    flag.touch()
    ran = serve.cli("retry", "--state", "dead", "--queue", "default", cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout.strip() == f"retried 1: {task}", ran
    shown = wait_for("the retried task to end", lambda: serve.ended(task, tmp_path), timeout=120)
    assert shown["state"] == "succeeded" and shown["attempts"] == 1, shown


def test_job_logs_and_task_outputs_go_to_the_pools_place(tmp_path: Path) -> None:
    """A pool that names no `output` nor `output_dir`: Slurm's slurm-<job>_<index>.out and the
    task outputs land under [manager] state_dir/logs/<pool>/, not in the manager's working
    directory, and no empty output file is kept."""
    require_slurm()
    root = tmp_path / "serve"
    server = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db", command="serve", manager=unique("fw"),
        poll_interval="2s", pools=[{"name": "cpu", "max_workers": 1, "max_empty_claims": 1}],
    )  # fmt: skip
    server.write_config()
    text = server.config_path.read_text()
    kept = [line for line in text.splitlines() if not line.startswith(("output =", "output_dir"))]
    server.config_path.write_text("\n".join(kept) + "\n")
    try:
        server.start()
        ran = server.cli("submit", "--wait", "--", "echo", "hello", cwd=tmp_path)
        assert ran.returncode == 0, ran
        logs = root / "manager" / "logs" / "cpu"
        outputs = wait_for("Slurm's output", lambda: list(logs.glob("slurm-*_*.out")), timeout=60)
        assert outputs and all(p.stat().st_mode & 0o077 == 0 for p in [logs, *outputs])
        assert [p.name for p in (logs / "tasks").iterdir()] == ["task-1.1.out"]
        assert "hello" in (logs / "tasks" / "task-1.1.out").read_text()
    finally:
        server.stop()
        subprocess.run(["scancel", "--name", job_name(server)], check=False)


REPO = Path(__file__).resolve().parents[2]
EDITOR = r"""#!/usr/bin/env python3
# What an admin edits in the copied example, for the lab: its partition, a free port, no
# account/QOS/memory of a real site, short jobs, a manager name of this test's own.
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r'(?m)^url = .*$', 'url = "http://127.0.0.1:{port}"', text)
text = re.sub(r'(?m)^bind = .*$', 'bind = "127.0.0.1:{port}"', text)
text = re.sub(r'(?m)^name = "uni-hpc".*$', 'name = "{manager}"', text)
text = re.sub(r'(?m)^poll_interval = .*$', 'poll_interval = "2s"', text)
text = re.sub(r'(?m)^partition = .*$', 'partition = "debug"', text)
text = re.sub(r'(?m)^(account|qos|mem) = .*\n', '', text)
text = re.sub(r'(?m)^setup = .*$', 'setup = []', text)
text = re.sub(r'(?m)^time = .*$', 'time = "00:10:00"', text)
text = re.sub(r'(?m)^task_duration_prior = .*$', 'task_duration_prior = "10s"', text)
text = re.sub(r'(?m)^claim_margin = .*$', 'claim_margin = "1m"', text)
open(path, "w").write(text)
"""


def readme_block() -> list[str]:
    """The commands of README.md's "Using it on a cluster" block, comments taken off."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it on a cluster") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("\n```", start)]
    return [re.sub(r"\s+#\s.*$", "", line) for line in block.splitlines() if line.strip()]


def as_script(lines: list[str], home: Path, clone_from: str) -> str:
    """Each line as typed, stopping at the first that fails (one that puts itself in the
    background is checked by what follows it). The lab's differences from a site: the clone
    comes from this checkout, and root must say --allow-root."""
    out = ["set -u", f"export HOME={home}", f"cd {home}"]
    for number, line in enumerate(lines, start=1):
        line = line.replace("/path/to/hpcscale.git", clone_from)
        if os.geteuid() == 0:
            line = line.replace("hpcscale serve ", "hpcscale serve --allow-root ")
        if line.rstrip().endswith("&"):
            out += [line, f"echo $! > {home}/serve.pid"]
        else:
            out.append(f"{line} || {{ echo 'README line {number} failed' >&2; exit 1; }}")
    out.append("wait")  # serve's end, after `kill %1`
    return "\n".join(out) + "\n"


def test_the_readme_cluster_section_line_by_line(tmp_path: Path) -> None:
    """README's "Using it on a cluster", every line in order, on a fresh clone of this
    repository and a fresh venv, against the lab Slurm; `$EDITOR` puts in the lab's values."""
    require_slurm()
    home, manager = tmp_path / "home", unique("fw")
    home.mkdir()
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR.replace("{port}", str(free_port())).replace("{manager}", manager))
    editor.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCSCALE_", "VIRTUAL_ENV"))}
    env["EDITOR"] = str(editor)
    script = as_script(readme_block(), home, str(REPO))
    try:
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                              timeout=280)  # fmt: skip
        assert done.returncode == 0, f"{done.stderr}\n{done.stdout}\n{readme_block()}"
        assert "README line" not in done.stderr
        logs = home / ".local/share/hpcscale/manager/logs/cpu"
        assert list(logs.glob("slurm-*_*.out")), "the pool's place holds Slurm's output"
        pid = int((home / "serve.pid").read_text())
        assert not Path(f"/proc/{pid}").exists(), "serve stopped on `kill %1`"
    finally:
        with contextlib.suppress(OSError, ValueError):  # a run cut short leaves serve up
            os.kill(int((home / "serve.pid").read_text()), signal.SIGTERM)
        subprocess.run(["scancel", "--name", f"hpcscale.{manager}.cpu"], check=False)
        subprocess.run(["scancel", "--name", f"hpcscale.{manager}.bigmem"], check=False)
