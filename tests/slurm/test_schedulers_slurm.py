"""Slurm adapter: parsing, idempotent submission and fault injection, on the real lab.

The fault tests put a fake `sbatch`/`squeue` first on PATH; each sits next to the real-Slurm
test of the same path (the fake sbatch calls the real one when it must create the job).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpcscale.errors import (
    PermanentSubmitError,
    SchedulerError,
    SubmitRefused,
    TransientSchedulerError,
)
from hpcscale.schedulers.base import ElementState, split_count
from hpcscale.schedulers.slurm.adapter import SlurmScheduler, command_env, sbatch_argv
from hpcscale.schedulers.slurm.parse import (
    REMAINDER,
    expand_indices,
    parse_config,
    parse_job_id,
    parse_sacct,
    parse_squeue,
)
from hpcscale.schedulers.slurm.states import classify
from tests.slurm_fixtures import fake_command, require_slurm, script, unique, wait_for

S = ElementState

# -- pure parsing (no cluster) ----------------------------------------------------------------


def test_parse_squeue_lines_and_ranges() -> None:
    text = "\n".join(
        [
            "7_0|7|0|RUNNING|hpcscale.m.cpu|tagA|None",
            "7_[1-3%2]|7|1-3%2|PENDING|hpcscale.m.cpu|tagA|JobArrayTaskLimit",
            "8|8|N/A|CANCELLED|hpcscale.m.gpu|tagB|Resources",
            "9_0|9|0|WEIRD_NEW_STATE|hpcscale.m.cpu|tagC|None",
            "10_0|10|0|RUNNING|other.job|x|None",
            "11_0|11|0|RUNNING|hpcscale.other.cpu|y|None",
        ]
    )
    elements = parse_squeue(text, "hpcscale.m.")
    assert [(e.element_id, e.state, e.tag) for e in elements] == [
        ("7_0", S.RUNNING, "tagA"),
        ("7_1", S.PENDING, "tagA"),
        ("7_2", S.PENDING, "tagA"),
        ("7_3", S.PENDING, "tagA"),
        ("8", S.CANCELLED, "tagB"),
        ("9_0", S.UNKNOWN, "tagC"),
    ]
    assert elements[0].reason is None and elements[1].reason == "JobArrayTaskLimit"
    assert elements[4].array_index == REMAINDER and elements[4].pool == "gpu"
    assert "WEIRD_NEW_STATE" in (elements[5].reason or "")
    assert expand_indices("[0-2,5]") == [0, 1, 2, 5] and expand_indices("junk") == []


def test_parse_sacct_config_and_job_id() -> None:
    sacct = "5_0|COMPLETED|0:0\n5_1|CANCELLED by 0|0:15\n5_2|OUT_OF_MEMORY|0:125\n5|FAILED|1:0\n"
    parsed = parse_sacct(sacct)
    assert parsed["5_0"][:2] == (S.COMPLETED, 0)
    assert parsed["5_1"][0] is S.CANCELLED and parsed["5_2"][0] is S.OUT_OF_MEMORY
    assert "5" not in parsed
    config = parse_config("MaxArraySize            = 1001\nAccountingStorageType   = x/none\n")
    assert config == {"MaxArraySize": "1001", "AccountingStorageType": "x/none"}
    assert parse_job_id("123\n") == "123" and parse_job_id("124;cluster\n") == "124"
    with pytest.raises(SchedulerError):
        parse_job_id("sbatch: something else")


def test_classify_and_argv() -> None:
    assert classify("sbatch: error: Socket timed out on send/recv operation") == "transient"
    assert classify("Unable to contact slurm controller (connect failure)") == "transient"
    qos = "Batch job submission failed: Job violates accounting/QOS policy (job submit limit"
    assert classify(qos) == "refused"
    assert classify("error: QOSMaxSubmitJobPerUserLimit") == "refused"
    assert classify(f"error: QOSMaxWallDurationPerJobLimit\n{qos}") == "permanent"
    assert classify("Batch job submission failed: Invalid partition name specified") == "permanent"
    assert classify("something new") == "unknown"
    assert sbatch_argv("hpcscale.m.p", "t1", 3, 2) == [
        "sbatch", "--parsable", "--array=0-2%2", "--job-name=hpcscale.m.p", "--comment=t1",
        "--requeue",
    ]  # fmt: skip
    assert split_count(7, 3) == [3, 3, 1] and split_count(3, 1001) == [3]


def test_command_env_drops_sbatch_and_job_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBATCH_PARTITION", "elsewhere")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_CONF", "/x/slurm.conf")
    env = command_env()
    assert "SBATCH_PARTITION" not in env and "SLURM_JOB_ID" not in env
    assert env["SLURM_CONF"] == "/x/slurm.conf"


# -- the real cluster -------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> tuple[str, str]:
    """(real sbatch path, SLURM_CONF); skips without a lab."""
    conf = require_slurm()
    real = shutil.which("sbatch")
    assert real is not None
    return real, conf


def job_script(tmp_path: Path, body: str = "sleep 1") -> str:
    return script(body, f"--output={tmp_path}/%A_%a.out", "--time=2")


def tag_count(scheduler: SlurmScheduler, tag: str) -> set[str]:
    return {e.job_id for e in scheduler.find(tag)}


def calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


@pytest.mark.slurm
def test_cluster_limits_are_read_once(lab: tuple[str, str]) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu")
    assert scheduler.max_array_size == 1001  # the lab's (Slurm's default) MaxArraySize
    assert scheduler.accounting is False  # the lab runs without slurmdbd
    assert SlurmScheduler(unique("m"), "cpu", max_array_size=3).max_array_size == 3


@pytest.mark.slurm
def test_submit_splits_arrays_over_max_array_size(lab: tuple[str, str], tmp_path: Path) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu", max_array_size=3)
    tag = unique("tag")
    sub = scheduler.submit(job_script(tmp_path, "true"), 7, tag)
    assert sub.count == 7 and len(sub.job_ids) == 3
    elements = scheduler.find(tag)
    assert sorted((e.job_id, e.array_index) for e in elements) == sorted(
        [(sub.job_ids[0], i) for i in range(3)]
        + [(sub.job_ids[1], i) for i in range(3)]
        + [(sub.job_ids[2], 0)]
    )


@pytest.mark.slurm
def test_socket_timeout_after_job_created_returns_that_job(
    lab: tuple[str, str], tmp_path: Path, fake_bin: Path
) -> None:
    real, _ = lab
    counter = tmp_path / "calls"
    fake_command(
        fake_bin,
        "sbatch",
        f'echo call >> "{counter}"\n'
        f'"{real}" "$@" > /dev/null || exit 2\n'
        'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv '
        'operation" >&2\n'
        "exit 1\n",
    )
    scheduler = SlurmScheduler(unique("m"), "cpu", settle=0.5, retry_delay=0.1)
    tag = unique("tag")
    sub = scheduler.submit(job_script(tmp_path), 2, tag)
    assert calls(counter) == 1  # looked the tag up and found the job: no second sbatch
    assert tag_count(scheduler, tag) == set(sub.job_ids) and len(sub.job_ids) == 1
    assert {e.element_id for e in scheduler.find(tag)} == {f"{sub.job_ids[0]}_{i}" for i in (0, 1)}


@pytest.mark.slurm
def test_transient_failure_without_a_job_is_retried_once(
    lab: tuple[str, str], tmp_path: Path, fake_bin: Path
) -> None:
    real, _ = lab
    counter = tmp_path / "calls"
    fake_command(
        fake_bin,
        "sbatch",
        f'echo call >> "{counter}"\n'
        f'if [ "$(wc -l < "{counter}")" -eq 1 ]; then\n'
        '  echo "sbatch: error: Unable to contact slurm controller (connect failure)" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec "{real}" "$@"\n',
    )
    scheduler = SlurmScheduler(unique("m"), "cpu", settle=0.2, retry_delay=0.1)
    tag = unique("tag")
    sub = scheduler.submit(job_script(tmp_path), 1, tag)
    assert calls(counter) == 2
    assert tag_count(scheduler, tag) == set(sub.job_ids) and len(sub.job_ids) == 1


@pytest.mark.slurm
def test_real_permanent_refusal_is_not_retried(lab: tuple[str, str], tmp_path: Path) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu", settle=0.2, retry_delay=0.1)
    tag = unique("tag")
    bad = script("true", "--partition=no_such_partition", f"--output={tmp_path}/o")
    with pytest.raises(PermanentSubmitError, match="Invalid partition"):
        scheduler.submit(bad, 1, tag)
    assert scheduler.find(tag) == []


@pytest.mark.slurm
def test_fake_qos_refusal_is_refused_for_now_and_called_once(
    lab: tuple[str, str], tmp_path: Path, fake_bin: Path
) -> None:
    counter = tmp_path / "calls"
    fake_command(
        fake_bin,
        "sbatch",
        f'echo call >> "{counter}"\n'
        'echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2\n'
        'echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy '
        "(job submit limit, user's size and/or time limits)\" >&2\n"
        "exit 1\n",
    )
    scheduler = SlurmScheduler(unique("m"), "cpu", settle=0.2, retry_delay=0.1)
    with pytest.raises(SubmitRefused, match="QOS") as info:
        scheduler.submit(job_script(tmp_path), 1, unique("tag"))
    assert info.value.reason == "QOSMaxSubmitJobPerUserLimit"
    assert "Batch job submission failed" in info.value.message
    assert calls(counter) == 1


@pytest.mark.slurm
def test_hanging_sbatch_times_out_quickly_and_leaves_nothing(
    lab: tuple[str, str], tmp_path: Path, fake_bin: Path
) -> None:
    counter = tmp_path / "calls"
    pids = tmp_path / "pids"
    fake_command(
        fake_bin,
        "sbatch",
        f'echo call >> "{counter}"\necho $$ >> "{pids}"\nexec sleep 300\n',
    )
    scheduler = SlurmScheduler(
        unique("m"), "cpu", command_timeout=1.0, submit_retries=1, settle=0.2, retry_delay=0.1
    )
    tag = unique("tag")
    started = time.monotonic()
    with pytest.raises(TransientSchedulerError, match="timed out"):
        scheduler.submit(job_script(tmp_path), 1, tag)
    assert time.monotonic() - started < 10
    assert calls(counter) == 2  # tried, looked the tag up (absent), retried once, gave up
    for pid in pids.read_text().split():
        assert not Path(f"/proc/{pid}").exists() or "sleep" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace"), f"hung sbatch {pid} still alive"
    assert scheduler.find(tag) == []


@pytest.mark.slurm
def test_hanging_squeue_is_a_transient_error(lab: tuple[str, str], fake_bin: Path) -> None:
    fake_command(fake_bin, "squeue", "exec sleep 300\n")
    scheduler = SlurmScheduler(unique("m"), "cpu", command_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransientSchedulerError):
        scheduler.status()
    assert time.monotonic() - started < 5


@pytest.mark.slurm
def test_element_that_leaves_the_queue_unseen_is_reported_ended(
    lab: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real submit and status, then a squeue that no longer lists the job (purged after
    MinJobAge while the manager was not looking): it is reported as ended, not lost."""
    scheduler = SlurmScheduler(unique("m"), "cpu")
    tag = unique("tag")
    sub = scheduler.submit(job_script(tmp_path, "sleep 30"), 2, tag)
    assert len(scheduler.find(tag)) == 2
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "squeue", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    gone = scheduler.find(tag)
    assert [(e.element_id, e.state) for e in gone] == [
        (f"{sub.job_ids[0]}_{i}", S.COMPLETED) for i in (0, 1)
    ]
    assert all("no accounting" in (e.reason or "") for e in gone)
    assert scheduler.find(tag) == gone  # stable across looks
    monkeypatch.undo()
    scheduler.cancel(sub.job_ids)


@pytest.mark.slurm
def test_new_object_sees_cancelled_pending_remainder(lab: tuple[str, str], tmp_path: Path) -> None:
    """Slurm keeps an array's never-started elements as one record once cancelled; an object
    that submitted resolves their indices, a fresh one reports one REMAINDER record."""
    manager = unique("m")
    scheduler = SlurmScheduler(manager, "cpu")
    tag = unique("tag")
    # 4-CPU elements on 4 nodes of 4 CPUs: at most four run; the rest stay pending.
    body = script("sleep 60", f"--output={tmp_path}/%A_%a.out", "--time=2", "--cpus-per-task=4")
    sub = scheduler.submit(body, 8, tag)
    wait_for(
        "four running",
        lambda: sum(e.state is S.RUNNING for e in scheduler.find(tag)) >= 1,
        timeout=20,
    )
    scheduler.cancel(sub.job_ids, pending_only=True)

    def settled() -> list[str] | None:
        found = scheduler.find(tag)
        cancelled = [e.element_id for e in found if e.state is S.CANCELLED]
        return cancelled if cancelled and len(found) == 8 else None

    cancelled = wait_for("pending elements cancelled", settled, timeout=20)
    assert all("_" in e for e in cancelled)
    fresh = SlurmScheduler(manager, "cpu").find(tag)
    remainder = [e for e in fresh if e.array_index == REMAINDER]
    assert len(remainder) == 1 and remainder[0].state is S.CANCELLED
    assert remainder[0].element_id == sub.job_ids[0]
    scheduler.cancel(sub.job_ids)


@pytest.mark.slurm
def test_scancel_of_unknown_ids_is_not_an_error(lab: tuple[str, str]) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu")
    scheduler.cancel(["999999", "999998_3"])
    with pytest.raises(SchedulerError):
        scheduler.cancel(["1;rm -rf /"])
    subprocess.run(["squeue", "-h"], check=True, capture_output=True)  # the lab is still fine


@pytest.mark.slurm
def test_test_submit_passes_a_valid_script_and_creates_nothing(
    lab: tuple[str, str], tmp_path: Path
) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu")
    tag = unique("tag")
    scheduler.test_submit(job_script(tmp_path), 3, tag)
    time.sleep(0.5)
    assert scheduler.find(tag) == [] and scheduler.status() == []


@pytest.mark.slurm
def test_test_submit_refuses_an_invalid_partition_with_slurms_message(
    lab: tuple[str, str], tmp_path: Path
) -> None:
    scheduler = SlurmScheduler(unique("m"), "cpu")
    bad = script("true", "--partition=no_such_partition", f"--output={tmp_path}/o")
    with pytest.raises(PermanentSubmitError, match="invalid partition specified: no_such_part"):
        scheduler.test_submit(bad, 2, unique("tag"))


@pytest.mark.slurm
def test_test_submit_uses_a_real_submits_argv(lab: tuple[str, str], fake_bin: Path) -> None:
    seen = fake_bin.parent / "argv"
    fake_command(fake_bin, "sbatch", f'echo "$@" > "{seen}"\ncat >/dev/null\n')
    scheduler = SlurmScheduler(unique("m"), "cpu", throttle=2)
    scheduler.test_submit("#!/bin/bash\ntrue\n", 5, "t1")
    real = sbatch_argv(scheduler.job_name, "t1", 5, 2)
    assert seen.read_text().split() == ["--test-only", *real[1:]]
    fake_command(fake_bin, "sbatch", 'echo "sbatch: error: Socket timed out" >&2\nexit 1\n')
    with pytest.raises(TransientSchedulerError):
        scheduler.test_submit("#!/bin/bash\ntrue\n", 1, "t2")
    fake_command(fake_bin, "sbatch", 'echo "sbatch: error: something new" >&2\nexit 1\n')
    with pytest.raises(SchedulerError, match="something new") as info:
        scheduler.test_submit("#!/bin/bash\ntrue\n", 1, "t3")
    assert not isinstance(info.value, TransientSchedulerError | PermanentSubmitError)
