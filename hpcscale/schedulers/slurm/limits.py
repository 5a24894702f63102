"""What a Slurm site allows now, from its QOS and association limits and the user's queue.

A real site caps jobs per user (MaxSubmitJobsPerUser, MaxSubmitJobs, GrpSubmitJobs, MaxJobCount;
an array element counts one job) and counts the user's other jobs too, not only ours. These
pure functions turn `sacctmgr -nP`, `scontrol show config` and `squeue` output into a
SiteLimits, so the arithmetic is table-tested without a cluster; the adapter runs the commands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpcscale.schedulers.base import SiteLimits

QOS_FORMAT = "Name,MaxSubmitJobsPerUser,MaxJobsPerUser,GrpSubmitJobs,GrpJobs"
ASSOC_FORMAT = (
    "DefaultAccount,Account,Partition,QOS,DefaultQOS,MaxSubmitJobs,MaxJobs,GrpSubmitJobs,GrpJobs"
)
USER_JOBS_STATES = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"
USER_JOBS_FORMAT = "%i %q %a %T"
# States that hold a running slot (MaxJobsPerUser, GrpJobs count them); the rest wait.
_HOLDING = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING"})


@dataclass(frozen=True)
class Qos:
    name: str
    max_submit_per_user: int | None
    max_jobs_per_user: int | None
    grp_submit: int | None
    grp_jobs: int | None


@dataclass(frozen=True)
class Assoc:
    """One of the user's associations (`sacctmgr show user withassoc`: limits inherited from
    the parent accounts are filled in, Grp limits only where set on the user's own row)."""

    default_account: str
    account: str
    partition: str
    qos: tuple[str, ...]
    default_qos: str
    max_submit: int | None
    max_jobs: int | None
    grp_submit: int | None
    grp_jobs: int | None


@dataclass(frozen=True)
class UserJob:
    """One job (or array element) of the user's, from `squeue -r -o USER_JOBS_FORMAT`."""

    job_id: str
    qos: str
    account: str
    state: str

    @property
    def holding(self) -> bool:
        return self.state in _HOLDING


@dataclass(frozen=True)
class PoolRequest:
    """The account, partition and QOS a pool's jobs ask for (None: the site's default)."""

    account: str | None = None
    partition: str | None = None
    qos: str | None = None


def _limit(text: str) -> int | None:
    """sacctmgr prints an unset limit as an empty field."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_qos(text: str) -> dict[str, Qos]:
    """{name: Qos} from `sacctmgr -nP show qos format=QOS_FORMAT`."""
    out: dict[str, Qos] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0].strip():
            continue
        name = parts[0].strip()
        out[name] = Qos(name, *(_limit(p) for p in parts[1:5]))
    return out


def parse_assocs(text: str) -> list[Assoc]:
    """Associations from `sacctmgr -nP show user withassoc format=ASSOC_FORMAT`."""
    out: list[Assoc] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 9 or not parts[1]:
            continue
        default_account, account, partition, qos, default_qos = parts[:5]
        out.append(
            Assoc(
                default_account,
                account,
                partition,
                tuple(q for q in qos.split(",") if q),
                default_qos,
                *(_limit(p) for p in parts[5:9]),
            )
        )
    return out


def parse_user_jobs(text: str) -> list[UserJob]:
    """The user's queued jobs from `squeue -h -r -o USER_JOBS_FORMAT` (one line per element)."""
    out: list[UserJob] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append(UserJob(parts[0], parts[1], parts[2], parts[3].split("+")[0]))
    return out


def pick_assoc(assocs: Iterable[Assoc], request: PoolRequest) -> Assoc | None:
    """The association a job of `request` runs under: its account (else the user's default
    account), the row for its partition if there is one, else the account's row for all."""
    rows = list(assocs)
    if not rows:
        return None
    account = request.account or rows[0].default_account
    mine = [a for a in rows if a.account == account]
    partitions = set((request.partition or "").split(",")) - {""}
    for assoc in mine:
        if assoc.partition and assoc.partition in partitions:
            return assoc
    return next((a for a in mine if not a.partition), None)


def pool_qos(request: PoolRequest, assoc: Assoc | None) -> str:
    """The QOS the pool's jobs get: its own --qos, else the association's default (or its only
    QOS), else Slurm's "normal"."""
    if request.qos:
        return request.qos
    if assoc is not None and assoc.default_qos:
        return assoc.default_qos
    if assoc is not None and len(assoc.qos) == 1:
        return assoc.qos[0]
    return "normal"


@dataclass(frozen=True)
class _Cap:
    limit: int
    used: int
    text: str

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


def _tightest(caps: list[_Cap]) -> _Cap | None:
    return min(caps, key=lambda c: c.left) if caps else None


def submit_caps(
    user: str, qos: Qos | None, assoc: Assoc | None, jobs: list[UserJob], max_job_count: int | None
) -> list[_Cap]:
    """Each submit limit with the user's jobs that count against it."""
    caps: list[_Cap] = []
    queued = f"of {user}'s jobs queued"
    if qos is not None:
        in_qos = sum(1 for j in jobs if j.qos == qos.name)
        if qos.max_submit_per_user is not None:
            text = f"QOS {qos.name} MaxSubmitJobsPerUser={qos.max_submit_per_user}"
            caps.append(_Cap(qos.max_submit_per_user, in_qos, f"{text} with {in_qos} {queued}"))
        if qos.grp_submit is not None:
            text = f"QOS {qos.name} GrpSubmitJobs={qos.grp_submit} with {in_qos} {queued}"
            caps.append(_Cap(qos.grp_submit, in_qos, f"{text} (other users' not counted)"))
    if assoc is not None:
        in_assoc = sum(1 for j in jobs if j.account == assoc.account)
        where = f"association {assoc.account}/{user}" + (
            f"/{assoc.partition}" if assoc.partition else ""
        )
        for name, value in (
            ("MaxSubmitJobs", assoc.max_submit),
            ("GrpSubmitJobs", assoc.grp_submit),
        ):
            if value is not None:
                caps.append(
                    _Cap(value, in_assoc, f"{where} {name}={value} with {in_assoc} {queued}")
                )
    if max_job_count is not None:
        text = f"MaxJobCount={max_job_count} with {len(jobs)} {queued} (other users' not counted)"
        caps.append(_Cap(max_job_count, len(jobs), text))
    return caps


def running_caps(
    user: str, qos: Qos | None, assoc: Assoc | None, jobs: list[UserJob]
) -> list[_Cap]:
    """Each limit on running jobs with the user's running jobs that count against it."""
    caps: list[_Cap] = []
    running = f"of {user}'s jobs running"
    if qos is not None:
        in_qos = sum(1 for j in jobs if j.holding and j.qos == qos.name)
        for name, value in (("MaxJobsPerUser", qos.max_jobs_per_user), ("GrpJobs", qos.grp_jobs)):
            if value is not None:
                caps.append(
                    _Cap(value, in_qos, f"QOS {qos.name} {name}={value} with {in_qos} {running}")
                )
    if assoc is not None:
        in_assoc = sum(1 for j in jobs if j.holding and j.account == assoc.account)
        for name, value in (("MaxJobs", assoc.max_jobs), ("GrpJobs", assoc.grp_jobs)):
            if value is not None:
                text = (
                    f"association {assoc.account}/{user} {name}={value} with {in_assoc} {running}"
                )
                caps.append(_Cap(value, in_assoc, text))
    return caps


def config_int(config: dict[str, str], key: str) -> int | None:
    value = config.get(key, "").strip()
    return int(value) if value.isdigit() else None


def limits_enforced(config: dict[str, str]) -> bool:
    """Whether slurmctld enforces QOS and association limits (AccountingStorageEnforce has
    `limits` or `safe`, and accounting is on at all)."""
    if config.get("AccountingStorageType", "accounting_storage/none").endswith("/none"):
        return False
    enforce = {e.strip() for e in config.get("AccountingStorageEnforce", "").split(",")}
    return bool(enforce & {"limits", "safe"})


def site_limits(
    *,
    user: str,
    config: dict[str, str],
    jobs: list[UserJob],
    read_at: float,
    qos: Qos | None = None,
    assoc: Assoc | None = None,
) -> SiteLimits:
    """The tightest submit and running limits (qos/assoc None: accounting is off or does not
    enforce limits, so only MaxJobCount and MaxArraySize apply)."""
    submit = _tightest(submit_caps(user, qos, assoc, jobs, config_int(config, "MaxJobCount")))
    run = _tightest(running_caps(user, qos, assoc, jobs))
    binding = "; ".join(c.text for c in (submit, run) if c is not None) or "no limit known"
    return SiteLimits(
        allowance=None if submit is None else submit.left,
        running_allowance=None if run is None else run.left,
        max_array_size=config_int(config, "MaxArraySize"),
        binding=binding,
        read_at=read_at,
    )
