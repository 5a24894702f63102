"""The site's limits, refusals and accounting as Slurm prints them: tables, no cluster."""

from __future__ import annotations

import time

import pytest

from hpcscale.config import PoolConfig
from hpcscale.schedulers import request
from hpcscale.schedulers.slurm.limits import (
    PoolRequest,
    parse_assocs,
    parse_qos,
    parse_user_jobs,
    pick_assoc,
    pool_qos,
    site_limits,
)
from hpcscale.schedulers.slurm.parse import parse_accounted, parse_squeue
from hpcscale.schedulers.slurm.states import classify, refusal_reason

POLICY = (
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)"
)
# What Slurm 22.05's sbatch printed on the accounting lab (stderr, both lines).
REFUSALS = [
    (f"sbatch: error: QOSMaxSubmitJobPerUserLimit\n{POLICY}", "QOSMaxSubmitJobPerUserLimit"),
    (f"sbatch: error: AssocMaxSubmitJobLimit\n{POLICY}", "AssocMaxSubmitJobLimit"),
    (f"sbatch: error: AssocGrpSubmitJobsLimit\n{POLICY}", "AssocGrpSubmitJobsLimit"),
    (f"sbatch: error: QOSGrpSubmitJobsLimit\n{POLICY}", "QOSGrpSubmitJobsLimit"),
    (f"sbatch: error: Reached jobs per hour limit\n{POLICY}", "jobs per hour"),
    (POLICY, "accounting policy"),
    (
        "allocation failure: Job violates accounting/QOS policy (job submit limit, user's size "
        "and/or time limits)\nsbatch: error: QOSMaxSubmitJobPerUserLimit",
        "QOSMaxSubmitJobPerUserLimit",
    ),
    (
        "sbatch: error: Batch job submission failed: Required partition not available "
        "(inactive or drain)",
        "partition unavailable",
    ),
    (
        "allocation failure: Required partition not available (inactive or drain)",
        "partition unavailable",
    ),
    ("sbatch: error: Batch job submission failed: MaxJobCount limit reached", "MaxJobCount"),
]
PERMANENT = [
    f"sbatch: error: QOSMaxWallDurationPerJobLimit\n{POLICY}",
    f"sbatch: error: AssocMaxCpuPerJobLimit\n{POLICY}",
    "sbatch: error: Batch job submission failed: Invalid account or account/partition "
    "combination specified",
    "allocation failure: Invalid qos specification",
    "sbatch: error: invalid partition specified: nosuch\n"
    "sbatch: error: Batch job submission failed: Invalid partition name specified",
]


@pytest.mark.parametrize(("text", "reason"), REFUSALS)
def test_refusals_for_now_name_their_limit(text: str, reason: str) -> None:
    assert refusal_reason(text) == reason and classify(text) == "refused"


@pytest.mark.parametrize("text", PERMANENT)
def test_refusals_no_wait_lifts_are_permanent(text: str) -> None:
    assert refusal_reason(text) is None and classify(text) == "permanent"


QOS = "normal|4|2|||\nhigh|||10|5|\n"
ASSOCS = "lab|lab||high,normal|normal|7|||\nlab|other|||||||\nlab|lab|gpu|gpu||1|1|||\n"
JOBS = "\n".join(
    [
        "11_0 normal lab RUNNING",
        "11_1 normal lab PENDING",
        "12 normal other PENDING",
        "13 high lab RUNNING",
    ]
)


def test_parsers_read_sacctmgr_and_squeue() -> None:
    qos = parse_qos(QOS)
    assert qos["normal"].max_submit_per_user == 4 and qos["normal"].max_jobs_per_user == 2
    assert qos["normal"].grp_submit is None and qos["high"].grp_jobs == 5
    assocs = parse_assocs(ASSOCS)
    assert [a.account for a in assocs] == ["lab", "other", "lab"]
    assert assocs[0].qos == ("high", "normal") and assocs[0].max_submit == 7
    jobs = parse_user_jobs(JOBS + "\ngarbage\n")
    assert len(jobs) == 4 and jobs[0].holding and not jobs[1].holding


@pytest.mark.parametrize(
    ("pool", "account", "partition", "qos"),
    [
        (PoolRequest(), "lab", "", "normal"),  # the default account's row for all partitions
        (PoolRequest(partition="gpu"), "lab", "gpu", "gpu"),  # the partition's own row
        (PoolRequest(partition="debug,gpu"), "lab", "gpu", "gpu"),
        (PoolRequest(account="other", qos="high"), "other", "", "high"),
    ],
)
def test_the_pools_association_and_qos(
    pool: PoolRequest, account: str, partition: str, qos: str
) -> None:
    assoc = pick_assoc(parse_assocs(ASSOCS), pool)
    assert assoc is not None and (assoc.account, assoc.partition) == (account, partition)
    assert pool_qos(pool, assoc) == qos
    assert pick_assoc([], pool) is None and pool_qos(PoolRequest(), None) == "normal"


def test_allowance_counts_the_users_other_jobs() -> None:
    config = {"MaxJobCount": "10000", "MaxArraySize": "1001"}
    qos = parse_qos(QOS)["normal"]
    assoc = pick_assoc(parse_assocs(ASSOCS), PoolRequest())
    jobs = parse_user_jobs(JOBS)
    # normal: MaxSubmitJobsPerUser=4 with 3 of the user's jobs in QOS normal (any account).
    limits = site_limits(user="u", config=config, jobs=jobs, read_at=1.0, qos=qos, assoc=assoc)
    assert limits.allowance == 1 and limits.max_array_size == 1001 and limits.read_at == 1.0
    assert "QOS normal MaxSubmitJobsPerUser=4 with 3 of u's jobs queued" in limits.binding
    # MaxJobsPerUser=2 with 1 running in normal (13 runs in high).
    assert limits.running_allowance == 1
    assert "QOS normal MaxJobsPerUser=2 with 1 of u's jobs running" in limits.binding
    # Over the limit: nothing more, never negative.
    many = parse_user_jobs("\n".join(f"20_{i} normal lab PENDING" for i in range(6)))
    assert site_limits(user="u", config=config, jobs=many, read_at=0, qos=qos).allowance == 0


def test_association_limits_bind_when_tighter() -> None:
    assoc = pick_assoc(parse_assocs(ASSOCS), PoolRequest())
    jobs = parse_user_jobs(JOBS)  # 3 of them in account lab
    limits = site_limits(user="u", config={}, jobs=jobs, read_at=0, assoc=assoc)
    assert limits.allowance == 4 and "association lab/u MaxSubmitJobs=7" in limits.binding
    assert limits.running_allowance is None and limits.max_array_size is None


def test_without_accounting_only_max_job_count() -> None:
    config = {"MaxJobCount": "5", "MaxArraySize": "8"}
    limits = site_limits(user="u", config=config, jobs=parse_user_jobs(JOBS), read_at=0)
    assert (limits.allowance, limits.running_allowance, limits.max_array_size) == (1, None, 8)
    assert "MaxJobCount=5" in limits.binding
    assert site_limits(user="u", config={}, jobs=[], read_at=0).binding == "no limit known"


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def test_accounted_seconds_per_element() -> None:
    since = 1_800_000_000.0
    lines = [
        f"5_0|{_stamp(since + 10)}|{_stamp(since + 70)}|00:01:00|2|COMPLETED",
        f"5_1|{_stamp(since - 100)}|{_stamp(since + 30)}|00:02:10|1|COMPLETED",  # clipped
        f"5_2|{_stamp(since + 5)}|{_stamp(since + 15)}|00:00:10|4|REQUEUED",  # two runs
        f"5_2|{_stamp(since + 20)}|Unknown|00:00:40|4|RUNNING",
        "5_[3-7]|Unknown|Unknown|00:00:00|1|PENDING",
        "5_8|None|Unknown|00:00:00|1|PENDING",
    ]
    out = parse_accounted("\n".join(lines), since, since + 60)
    assert out == {"5_0": 120.0, "5_1": 30.0, "5_2": 40.0 + 160.0}


def test_squeue_reason_is_none_for_running() -> None:
    text = (
        "7_0|7|0|RUNNING|hpcscale.m.p|t|None\n"
        "7_1|7|1|PENDING|hpcscale.m.p|t|QOSMaxJobsPerUserLimit\n"
        "7_2|7|2|PENDING|hpcscale.m.p|t|ReqNodeNotAvail, UnavailableNodes:n[1-2]\n"
    )
    reasons = [e.reason for e in parse_squeue(text, "hpcscale.m.")]
    assert reasons == [None, "QOSMaxJobsPerUserLimit", "ReqNodeNotAvail, UnavailableNodes:n[1-2]"]


def test_the_pools_request_from_its_config() -> None:
    plain = PoolConfig.model_validate({"name": "p", "slurm": {"account": "a", "partition": "x"}})
    assert request(plain) == PoolRequest(account="a", partition="x", qos=None)
    extra = PoolConfig.model_validate(
        {"name": "p", "slurm": {"qos": "high", "extra_directives": ["-Ab", "--partition=y,z"]}}
    )
    assert request(extra) == PoolRequest(account="b", partition="y,z", qos="high")
    both = PoolConfig.model_validate(
        {"name": "p", "slurm": {"extra_directives": ["--qos=low", "-qhigh"]}}
    )
    assert request(both).qos == "low"
