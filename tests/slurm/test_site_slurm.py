"""The Slurm adapter on a lab with accounting and limits like a real site's.

Needs `SLURM_LAB_ACCOUNTING=1 scripts/slurm-lab.sh up` (its env.sh exports
HPCSCALE_TEST_SLURM_ACCOUNTING_CONF). Every QOS limit and partition state a test changes is
put back in a `finally`, and every job it made is cancelled.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.errors import PermanentSubmitError, SubmitRefused
from hpcscale.schedulers.base import ElementState
from hpcscale.schedulers.slurm.adapter import SlurmScheduler
from tests.slurm_fixtures import (
    AccountingLab,
    cancel_and_wait,
    partition,
    script,
    set_qos,
    slurm,
    unique,
    wait_for,
)

pytestmark = pytest.mark.slurm
S = ElementState


@pytest.fixture
def lab(accounting_slurm: AccountingLab) -> str:
    """The accounting lab's slurm.conf (tests/slurm_fixtures.py: its tests run one at a time)."""
    return accounting_slurm.conf


def job(seconds: float = 60) -> str:
    return script(f"sleep {seconds}", "--output=/dev/null", "--time=00:05:00")


@pytest.fixture
def sched() -> Iterator[SlurmScheduler]:
    scheduler = SlurmScheduler(unique("site"), "cpu", settle=0.2, retry_delay=0.1)
    try:
        yield scheduler
    finally:
        cancel_and_wait(scheduler.job_name, "other-work")


def test_submit_limit_is_a_refusal_for_now_and_its_allowance(
    lab: str, sched: SlurmScheduler
) -> None:
    try:
        set_qos(MaxSubmitJobsPerUser=4)
        limits = sched.site_limits()
        assert limits.allowance == 4, limits
        assert "QOS normal MaxSubmitJobsPerUser=4 with 0 of" in limits.binding
        for attempt in (sched.test_submit, sched.submit):
            with pytest.raises(SubmitRefused) as info:
                attempt(job(), 8, unique("tag"))
            assert info.value.reason == "QOSMaxSubmitJobPerUserLimit"
            assert "accounting/QOS policy" in info.value.message
        assert sched.status() == []
        # The same user's other jobs count: 3 of another name leave room for 1.
        for _ in range(3):
            subprocess.run(
                ["sbatch", "--job-name=other-work", "--output=/dev/null", "--hold"],
                input=job(),
                text=True,
                timeout=30,
                check=True,
                capture_output=True,
            )
        limits = sched.site_limits()
        assert limits.allowance == 1 and "with 3 of" in limits.binding, limits
        assert sched.submit(job(), 1, unique("tag")).count == 1
        assert sched.site_limits().allowance == 0
    finally:
        set_qos(MaxSubmitJobsPerUser=-1)


def test_max_jobs_per_user_makes_elements_pend_with_slurms_reason(
    lab: str, sched: SlurmScheduler
) -> None:
    try:
        set_qos(MaxJobsPerUser=2)
        sched.submit(job(), 4, unique("tag"))

        def waiting() -> list[str | None] | None:
            pend = [e.reason for e in sched.status() if e.state is S.PENDING]
            running = [e for e in sched.status() if e.state is S.RUNNING]
            return pend if len(running) == 2 and len(pend) == 2 else None

        reasons = wait_for("2 running, 2 pending", waiting, timeout=30)
        assert reasons == ["QOSMaxJobsPerUserLimit"] * 2
        assert all(e.reason is None for e in sched.status() if e.state is S.RUNNING)
        limits = sched.site_limits()
        assert limits.running_allowance == 0 and "MaxJobsPerUser=2" in limits.binding
    finally:
        set_qos(MaxJobsPerUser=-1)


def test_drained_partition_refuses_for_now_and_a_down_one_makes_elements_pend(
    lab: str, sched: SlurmScheduler
) -> None:
    try:
        partition("DRAIN")
        with pytest.raises(SubmitRefused) as info:
            sched.submit(job(), 2, unique("tag"))
        assert info.value.reason == "partition unavailable"
        with pytest.raises(SubmitRefused):
            sched.test_submit(job(), 2, unique("tag"))
        partition("DOWN")
        sched.submit(job(), 2, unique("tag"))
        found = wait_for(
            "PartitionDown",
            lambda: [e.reason for e in sched.status() if e.reason == "PartitionDown"],
            timeout=20,
        )
        assert len(found) == 2
    finally:
        partition("UP")


def test_an_account_that_does_not_exist_is_permanent(lab: str, sched: SlurmScheduler) -> None:
    bad = script("true", "--account=no-such-account", "--output=/dev/null")
    with pytest.raises(PermanentSubmitError, match="Invalid account"):
        sched.submit(bad, 1, unique("tag"))
    with pytest.raises(PermanentSubmitError, match="Invalid account"):
        sched.test_submit(bad, 1, unique("tag"))


def test_accounted_seconds_match_the_real_run(
    lab: str, sched: SlurmScheduler, tmp_path: Path
) -> None:
    since = time.time() - 1
    stamps = tmp_path / "stamps"
    body = f"date +%s.%N >> {stamps}; sleep 4; date +%s.%N >> {stamps}"
    sub = sched.submit(script(body, "--output=/dev/null", "--cpus-per-task=2"), 1, unique("t"))
    element = f"{sub.job_ids[0]}_0"
    wait_for(
        "the element's end in sacct",
        lambda: (
            (sched.accounted_seconds(since) or {}).get(element, 0) > 0
            and "COMPLETED" in slurm("sacct", "-n", "-X", "-P", "-j", element, "-o", "State")
        ),
        timeout=60,
        every=0.5,
    )
    burn = sched.accounted_seconds(since) or {}
    start, end = (float(x) for x in stamps.read_text().split())
    cpus = int(slurm("sacct", "-n", "-X", "-P", "-j", element, "-o", "AllocCPUS").strip())
    assert cpus == 2
    assert abs(burn[element] / cpus - (end - start)) <= 2.0, (burn, end - start)
    # Slurm's own CPU-time agrees exactly (AllocCPUS x Elapsed).
    raw = slurm("sacct", "-n", "-X", "-P", "-j", element, "-o", "CPUTimeRAW").strip()
    assert burn[element] == float(raw)
    assert sched.accounted_seconds(time.time() + 3600) == {}
