"""Job scripts: what render() writes, what the config refuses, and where the token never goes.

The `slurm` tests run the rendered script on the lab: sbatch --test-only accepts it, and a job
whose "python" is a stand-in that records its argv and environment proves the token is absent
from the running job (/proc/PID/environ, scontrol, Slurm's saved copy of the job).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import hpcscale
from hpcscale import config, jobscript
from hpcscale.cli import worker as worker_command
from hpcscale.errors import ConfigError
from hpcscale.jobscript import pool_log_dir, render
from hpcscale.schedulers.base import ElementState, Scheduler
from hpcscale.schedulers.local.adapter import LocalScheduler
from hpcscale.schedulers.slurm.adapter import SlurmScheduler
from hpcscale.worker import options
from tests.slurm_fixtures import require_slurm, unique, wait_for

SECRET = "tok-" + "s3cr3t-do-not-leak-0123456789"


def settings(slurm: dict[str, Any] | None = None, **pool: Any) -> config.Settings:
    data: dict[str, Any] = {
        "server": {"url": "http://127.0.0.1:9"},
        "manager": {"name": "lab"},
        "pools": [{"name": "cpu", "queues": ["default", "big"], "slurm": slurm or {}, **pool}],
    }
    return config.from_mapping(data)


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def test_render_slurm_script_and_argv(tmp_path: Path) -> None:
    cfg = settings(
        {
            "partition": "debug",
            "account": "proj1",
            "qos": "normal",
            "time": "00:30:00",
            "cpus_per_task": 2,
            "mem": "4G",
            "gres": "gpu:a100:1",
            "constraint": "skylake&ib",
            "output": "/scratch/logs/%x-%A_%a.out",
            "signal_margin": "90s",
            "extra_directives": ["--exclusive"],
            "setup": ["module load python/3.11", "echo ready"],
            "array_throttle": 4,
        },
        worker={"slots": 2, "max_tasks": 5, "max_time": "2h", "empty_claim_sleep": "5s"},
    )
    token = token_file(tmp_path)
    job = render(cfg.pools[0], cfg, "sub-1", 3, token)
    lines = job.script.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    assert sbatch == [
        "--partition=debug",
        "--account=proj1",
        "--qos=normal",
        "--time=00:30:00",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=4G",
        "--gres=gpu:a100:1",
        "--constraint=skylake&ib",
        "--output=/scratch/logs/%x-%A_%a.out",
        "--signal=B:USR1@90",
        "--export=NONE",
        "--exclusive",
    ]
    # #SBATCH lines must come before any command, setup before the worker, exec last.
    first_command = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert all(i < first_command for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))
    assert lines.index("module load python/3.11") < lines.index("echo ready")
    exec_line = lines[-1]
    assert exec_line.startswith("exec ") and lines.index("echo ready") < len(lines) - 1
    argv = shlex.split(exec_line)[1:]
    assert argv[:4] == [sys.executable, "-m", "hpcscale", "worker"]
    flags = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert flags == {
        "--pool": "cpu",
        "--url": "http://127.0.0.1:9",
        "--token-file": str(token),
        "--submission": "sub-1",
        "--slots": "2",
        "--max-tasks": "5",
        "--max-time": "1800",  # max_time 2h capped at the 30 min wall time
        "--max-empty-claims": "1",
        "--empty-claim-sleep": "5",
        "--heartbeat-interval": "30",
        "--claim-margin": "30",
        "--task-duration-prior": "300",
        "--unreachable-timeout": "600",
        "--queues": "default,big",
        "--output-dir": str(pool_log_dir(cfg, cfg.pools[0]) / "tasks"),  # the pool's place
    }
    assert job.sbatch_argv == [
        "sbatch",
        "--parsable",
        "--array=0-2%4",
        "--job-name=hpcscale.lab.cpu",
        "--comment=sub-1",
        "--requeue",
    ]
    assert "${" not in job.script


def test_values_that_reach_the_shell_are_quoted(tmp_path: Path) -> None:
    weird = tmp_path / "dir with space;$(touch pwned)"
    weird.mkdir()
    cfg = settings({"python": str(weird / "python")})
    job = render(cfg.pools[0], cfg, "t1", 1, weird / "token")
    argv = shlex.split(job.script.splitlines()[-1])
    assert argv[1] == str(weird / "python") and str(weird / "token") in argv
    result = subprocess.run(
        ["bash", "-n"], input=job.script, text=True, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_local_script_has_no_sbatch_lines(tmp_path: Path) -> None:
    cfg = settings({"setup": ["export A=1"]}, scheduler="local")
    job = render(cfg.pools[0], cfg, "t1", 2, token_file(tmp_path))
    assert "#SBATCH" not in job.script and "export A=1" in job.script
    assert job.sbatch_argv[1:3] == ["-m", "hpcscale.schedulers.local.supervisor"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", "debug\n#SBATCH --uid=0"),
        ("partition", "debug;reboot"),
        ("account", "a;b"),
        ("qos", "q`id`"),
        ("mem", "4G$(id)"),
        ("gres", "gpu:1\n"),
        ("constraint", "a;b"),
        ("output", "/tmp/x;rm"),
        ("extra_directives", ["--exclusive;id"]),
        ("extra_directives", ["--x=1\n--y"]),
        ("setup", ["module load a\nmodule load b"]),
        ("python", "/usr/bin/python3\nid"),
    ],
)
def test_config_refuses_newlines_and_separators_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        settings({key: value})
    assert any(p.startswith(f"pools[0].slurm.{key}") for p in caught.value.problems), (
        caught.value.problems
    )


def test_whitespace_in_directives_is_refused_before_any_render() -> None:
    with pytest.raises(ConfigError, match=r"pools\[0\]\.slurm\.partition"):
        settings({"partition": "a b"})


def test_strict_substitution_and_template_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings()
    # The wheel's copy (hpcscale/_data/jobscripts) wins over the source tree's.
    package = tmp_path / "site" / "hpcscale"
    (package / "_data" / "jobscripts").mkdir(parents=True)
    (package / "_data" / "jobscripts" / "slurm-worker.sh").write_text(
        "#!/bin/bash\n# wheel copy\n${directives}\nexec ${command}\n"
    )
    monkeypatch.setattr(hpcscale, "__file__", str(package / "__init__.py"))
    job = render(cfg.pools[0], cfg, "t1", 1, tmp_path / "token")
    assert "# wheel copy" in job.script
    # A placeholder the renderer does not know is an error, not an empty string.
    (package / "_data" / "jobscripts" / "slurm-worker.sh").write_text("${directives}\n${nope}\n")
    with pytest.raises(ConfigError, match="nope"):
        render(cfg.pools[0], cfg, "t1", 1, tmp_path / "token")
    monkeypatch.undo()
    # Without a wheel copy, the source tree's jobscripts/ is used.
    dirs = jobscript.template_dirs()
    assert dirs[0].parts[-2:] == ("_data", "jobscripts") and (dirs[1] / "slurm-worker.sh").exists()


def test_token_absent_from_script_and_argv(tmp_path: Path) -> None:
    cfg = settings({"partition": "debug"})
    job = render(cfg.pools[0], cfg, "t1", 3, token_file(tmp_path))
    assert SECRET not in job.script
    assert not any(SECRET in a for a in job.sbatch_argv)


# -- on a real scheduler ----------------------------------------------------------------------


@pytest.mark.slurm
def test_sbatch_test_only_accepts_rendered_script(tmp_path: Path) -> None:
    require_slurm()
    cfg = settings({"partition": "debug", "time": "00:10:00", "output": f"{tmp_path}/%A_%a.out"})
    job = render(cfg.pools[0], cfg, "t1", 3, token_file(tmp_path))
    result = subprocess.run(
        [*job.sbatch_argv, "--test-only"],
        input=job.script,
        text=True,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr


def stand_in_python(tmp_path: Path) -> tuple[Path, Path]:
    """A 'python' that records its pid, argv and environment, then waits to be looked at."""
    record = tmp_path / "record"
    record.mkdir()
    path = tmp_path / "fake-python"
    path.write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$@" > "{record}/argv.$SLURM_ARRAY_TASK_ID"\n'
        f'env > "{record}/env.$SLURM_ARRAY_TASK_ID"\n'
        f'echo $$ > "{record}/pid.$SLURM_ARRAY_TASK_ID"\n'
        "exec sleep 30\n"
    )
    path.chmod(0o755)
    return path, record


def check_running_job_has_no_token(
    scheduler: Scheduler, tmp_path: Path, pool_extra: dict[str, Any]
) -> tuple[str, Path]:
    fake, record = stand_in_python(tmp_path)
    token = token_file(tmp_path)
    cfg = settings({"python": str(fake), "time": "00:05:00", **pool_extra})
    tag = unique("tok")
    job = render(cfg.pools[0], cfg, tag, 1, token)
    sub = scheduler.submit(job.script, 1, tag)
    pid_file = record / "pid.0"
    # The pid is written last: once it is whole, argv and env are too (a file that exists
    # may still be empty, as a CI run once read it).
    wait_for("the stand-in worker to start", lambda: pid_file.read_text().endswith("\n")
             if pid_file.exists() else False, timeout=30)  # fmt: skip
    pid = pid_file.read_text().strip()
    argv = (record / "argv.0").read_text().splitlines()
    assert argv[:3] == ["-m", "hpcscale", "worker"]
    assert argv[argv.index("--token-file") + 1] == str(token)
    assert argv[argv.index("--submission") + 1] == tag
    assert SECRET not in "\n".join(argv)
    assert SECRET not in (record / "env.0").read_text()
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert "sleep" in cmdline and SECRET not in environ and SECRET not in cmdline
    assert "SLURM_ARRAY_TASK_ID=0" in environ
    return sub.job_ids[0], record


@pytest.mark.slurm
def test_token_absent_from_running_slurm_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_slurm()
    # Even if the manager's own environment held the token, --export=NONE keeps it out.
    monkeypatch.setenv("HPCSCALE_TOKEN_LEAK_PROBE", SECRET)
    scheduler = SlurmScheduler(unique("m"), "cpu")
    job_id, record = check_running_job_has_no_token(
        scheduler, tmp_path, {"output": f"{tmp_path}/%A_%a.out"}
    )
    try:
        assert "HPCSCALE_TOKEN_LEAK_PROBE" not in (record / "env.0").read_text()
        shown = subprocess.run(
            ["scontrol", "show", "job", "-dd", job_id], capture_output=True, text=True, check=True
        ).stdout
        assert "hpcscale" in shown and SECRET not in shown
        held = subprocess.run(
            ["scontrol", "write", "batch_script", job_id, "-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "--token-file" in held and SECRET not in held
        # Slurm's own saved copy of the job's environment (the lab keeps state on local disk).
        state_dir = next(
            line.split("=", 1)[1].strip()
            for line in subprocess.run(
                ["scontrol", "show", "config"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            if line.startswith("StateSaveLocation")
        )
        saved = Path(state_dir) / f"hash.{int(job_id) % 10}" / f"job.{job_id}" / "environment"
        assert saved.exists(), saved
        assert SECRET.encode() not in saved.read_bytes()
    finally:
        scheduler.cancel([job_id])


def test_token_absent_from_running_local_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCSCALE_TOKEN_LEAK_PROBE", SECRET)
    scheduler = LocalScheduler(unique("m"), "cpu", tmp_path / "state", time_limit=60)
    job_id, record = check_running_job_has_no_token(scheduler, tmp_path, {})
    try:
        assert "HPCSCALE_TOKEN_LEAK_PROBE" not in (record / "env.0").read_text()
        assert scheduler.find(scheduler.status()[0].tag)[0].state is ElementState.RUNNING
    finally:
        scheduler.cancel([job_id])


def test_denied_nodes_are_excluded_by_plain_name_only(tmp_path: Path) -> None:
    """Node names come from workers' registrations: nothing but a plain name reaches #SBATCH."""
    cfg = settings()
    job = render(cfg.pools[0], cfg, "t1", 1, tmp_path / "token", ["n2", "n1", "n3;id", "$(id)"])
    assert [line for line in job.script.splitlines() if "--exclude" in line] == [
        "#SBATCH --exclude=n1,n2"
    ]
    own = settings({"extra_directives": ["--exclude=n9"]})
    job = render(own.pools[0], own, "t1", 1, tmp_path / "token", ["n2"])
    assert "--exclude=n2" not in job.script and "#SBATCH --exclude=n9" in job.script


def test_the_worker_reads_back_exactly_the_options_its_job_script_gives(tmp_path: Path) -> None:
    """The job script's argv and the worker's flags come from one table: parsing the argv
    with `hpcscale worker`'s own parser gives the options the script meant."""
    cfg = settings(
        {"time": "00:30:00"},
        worker={"slots": 3, "max_time": "2h", "claim_margin": "1m", "output_dir": "/scratch/o"},
        task_duration_prior="90s",
    )
    pool = cfg.pools[0]
    argv = jobscript.worker_argv(pool, cfg, "sub-9", token_file(tmp_path))
    parser = argparse.ArgumentParser()
    worker_command.add_parsers(
        parser.add_subparsers(), argparse.ArgumentParser(add_help=False), parser
    )
    read = options.from_command_line(parser.parse_args(["worker", *argv[4:]]), cfg)
    assert read == options.WorkerOptions(
        pool="cpu", url="http://127.0.0.1:9", token_file=str(token_file(tmp_path)),
        submission="sub-9", slots=3, max_time=1800.0, claim_margin=60.0,
        task_duration_prior=90.0, queues=("default", "big"), output_dir="/scratch/o",
    )  # fmt: skip


def test_a_bad_duration_flag_names_the_flag() -> None:
    parser = argparse.ArgumentParser()
    options.add_flags(parser)
    with pytest.raises(ConfigError) as caught:
        options.from_command_line(parser.parse_args(["--max-time", "soon"]), settings())
    assert caught.value.problems == [
        "--max-time: 'soon' is not a duration such as 30s, 5m, 2h or 01:00:00"
    ]
