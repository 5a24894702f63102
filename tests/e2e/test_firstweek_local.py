"""A user's first week on the local scheduler, end to end through `hpcscale serve` and the CLI
as a user types it: a task runs in the directory it was submitted from (issue 16)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.services import ServerProcess
from tests.slurm_fixtures import wait_for

SCRIPT = "import os, pathlib; pathlib.Path('where.txt').write_text(os.getcwd())\n"


def test_a_task_runs_where_it_was_submitted(serve: ServerProcess, tmp_path: Path) -> None:
    (serve.root / "analyse.py").write_text("raise SystemExit('the wrong analyse.py: serve\\'s')\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "analyse.py").write_text(SCRIPT)
    ran = serve.cli("submit", "--json", "--", sys.executable, "analyse.py", cwd=project)
    assert ran.returncode == 0, ran.stderr
    task = json.loads(ran.stdout)["ids"][0]
    shown = wait_for("the task to end", lambda: serve.ended(task, project), timeout=60)
    assert shown["state"] == "succeeded", shown
    assert (project / "where.txt").read_text() == str(project)
    text = serve.cli("tasks", "show", str(task), cwd=project).stdout
    assert f"cwd: {project}" in " ".join(text.split()).replace("cwd ", "cwd: ")


def test_file_tasks_take_a_cwd_relative_to_the_submit_directory(
    serve: ServerProcess, tmp_path: Path
) -> None:
    here, sub = tmp_path / "here", tmp_path / "here" / "sub"
    sub.mkdir(parents=True)
    for where in (here, sub):
        (where / "analyse.py").write_text(SCRIPT)
    tasks = tmp_path / "elsewhere" / "tasks.jsonl"
    tasks.parent.mkdir()
    argv = [sys.executable, "analyse.py"]
    tasks.write_text(json.dumps({"command": argv, "cwd": "sub"}) + "\n")
    ran = serve.cli("submit", "--json", "--file", str(tasks), cwd=here)
    assert ran.returncode == 0, ran.stderr
    task = json.loads(ran.stdout)["ids"][0]
    shown = wait_for("the task to end", lambda: serve.ended(task, here), timeout=60)
    assert shown["state"] == "succeeded" and shown["cwd"] == str(sub), shown
    assert (sub / "where.txt").read_text() == str(sub)
    assert not (here / "where.txt").exists()


def test_what_serve_creates_is_private_under_umask_022(tmp_path: Path) -> None:
    """state.db and its -wal/-shm, the local jobs' folders, the task outputs: 0600/0700, though
    serve was started from a shell whose umask (022) would make them readable by all."""
    root = tmp_path / "serve"
    server = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db", command="serve", poll_interval="1s",
        pools=[{"name": "loc", "scheduler": "local", "max_workers": 1, "max_empty_claims": 1}],
    )  # fmt: skip
    server.write_config()
    made_by_test = {root / "config.toml", root / "server.log"}
    before = os.umask(0o022)
    try:
        server.start()
    finally:
        os.umask(before)
    try:
        ran = server.cli("submit", "--json", "--", "sh", "-c", "echo out; echo err >&2", cwd=root)
        task = json.loads(ran.stdout)["ids"][0]
        wait_for("the task to end", lambda: server.ended(task, root), timeout=60)
        outputs = wait_for("task outputs", lambda: list((root / "task-output").glob("task-*")))
        assert {p.suffix for p in outputs} == {".out", ".err"}
        assert {root / "state.db-wal", root / "state.db-shm"} <= set(root.iterdir())
        created = [p for p in root.rglob("*") if p not in made_by_test]
        assert any(p.is_dir() for p in (root / "manager").rglob("*"))  # the local jobs' folders
        open_to_others = {
            str(p.relative_to(root)): oct(p.stat().st_mode & 0o777)
            for p in created
            if not p.is_symlink() and p.stat().st_mode & 0o077
        }
        assert open_to_others == {}
    finally:
        server.stop()


def test_no_empty_output_files_are_kept(serve: ServerProcess, tmp_path: Path) -> None:
    ran = serve.cli("submit", "--json", "--", "sh", "-c", "echo only-stdout", cwd=tmp_path)
    task = json.loads(ran.stdout)["ids"][0]
    wait_for("the task to end", lambda: serve.ended(task, tmp_path), timeout=60)
    kept = sorted(p.name for p in (serve.root / "task-output").glob(f"task-{task}.*"))
    assert kept == [f"task-{task}.1.out"]


def processes_under(root: Path) -> list[str]:
    """Processes whose command line names `root` (the local pool's supervisors and workers)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = status.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in argv and "hpcscale serve" not in argv and " serve " not in argv:
            found.append(f"{status.parent.name}: {argv}")
    return found


def test_stopping_serve_leaves_no_local_worker_behind(tmp_path: Path) -> None:
    root = tmp_path / "serve"
    server = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db", command="serve", poll_interval="1s",
        pools=[{"name": "loc", "scheduler": "local", "max_workers": 2, "min_workers": 1}],
    )  # fmt: skip
    server.start()
    try:
        ran = server.cli("submit", "--json", "--", "sleep", "120", cwd=tmp_path)
        task = json.loads(ran.stdout)["ids"][0]

        def running() -> bool:
            shown = json.loads(
                server.cli("tasks", "show", str(task), "--json", cwd=tmp_path).stdout
            )
            return bool(shown["state"] == "running")

        wait_for("the task to run", running, timeout=60)
        assert any("supervisor" in p for p in processes_under(root))
    finally:
        server.stop()
    wait_for("no local worker or supervisor left", lambda: not processes_under(root), timeout=30)
