"""Slurm through its command-line tools (sbatch, squeue, sacct, scancel, scontrol).

Every call goes through `hpcscale.proc.run` (argv list, timeout, never a shell). Choices:

- Jobs are named hpcscale.<manager>.<pool> and carry the submission tag in `--comment`, so one
  `squeue -h -r --me --states=all` per cycle covers every pool of a manager. `-r` gives one line
  per element (never the collapsed 123_[0-9] form); `--states=all` keeps finished elements
  visible for MinJobAge (300 s by default), which is how final states are read when accounting
  is off.
- sacct is used only when `scontrol show config` says accounting is on (read once, with
  MaxArraySize), and only for elements seen in flight that left the queue between two looks.
  Without accounting such an element is reported COMPLETED with a reason saying the real end is
  unknown: it is certainly no longer in flight (what the hard max needs), and a manager restart
  must not turn into a burst of "failed starts" that trips the breaker.
- Submission is idempotent by tag: after a timeout, a transient error or an error we do not
  recognise, the tag is looked up in the queue before anything else; sbatch is retried only
  when the tag is absent and the error was transient. Permanent refusals (invalid
  account/qos/partition, per-job size or time limits) raise PermanentSubmitError at once;
  refusals for now (submit limits, the jobs-per-hour throttle, a DRAIN or INACTIVE partition)
  raise SubmitRefused at once, so the manager waits and asks for fewer.
- `site_limits` reads the QOS and association limits (sacctmgr), MaxJobCount and MaxArraySize
  (scontrol) and the user's whole queue (squeue -u: other jobs count too) each time it is
  called; the arithmetic is in limits.py. `accounted_seconds` reads sacct.
- sbatch runs without SBATCH_* (they would override the script's #SBATCH lines, which are the
  config's) and without SLURM_* other than SLURM_CONF (with --export=NONE Slurm still passes
  SLURM_* into the job: a manager running inside an allocation must not leak its own).
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

from hpcscale import proc
from hpcscale.errors import (
    CommandError,
    CommandTimeout,
    SchedulerError,
    TransientSchedulerError,
)
from hpcscale.schedulers.base import (
    IN_FLIGHT,
    CreatedArrays,
    ElementState,
    ElementStatus,
    Scheduler,
    SiteLimits,
    check_ids,
    check_tag,
    job_name,
    manager_prefix,
    split_count,
)
from hpcscale.schedulers.slurm import limits
from hpcscale.schedulers.slurm.limits import PoolRequest
from hpcscale.schedulers.slurm.parse import (
    ACCOUNTED_FORMAT,
    REMAINDER,
    SQUEUE_FORMAT,
    parse_accounted,
    parse_config,
    parse_job_id,
    parse_sacct,
    parse_squeue,
    refusal,
    slurm_message,
)
from hpcscale.schedulers.slurm.states import classify

log = logging.getLogger(__name__)
S = ElementState
GONE_KEPT = 3600.0  # seconds a resolved vanished element is still reported, so looks agree


def array_spec(count: int, throttle: int | None = None) -> str:
    """Slurm's --array value for `count` elements, at most `throttle` running at once."""
    return f"0-{count - 1}" + (f"%{throttle}" if throttle else "")


def sbatch_argv(name: str, tag: str, count: int, throttle: int | None = None) -> list[str]:
    """The exact sbatch command for one array (the script goes to its stdin). `--requeue`
    whatever the site's default: a preempted or NODE_FAILed element comes back under the same
    id, which the manager keeps counting, instead of being lost with its slot."""
    array = array_spec(count, throttle)
    return [
        "sbatch",
        "--parsable",
        f"--array={array}",
        f"--job-name={name}",
        f"--comment={tag}",
        "--requeue",
    ]


def command_env() -> dict[str, str]:
    """The environment for Slurm commands: ours, minus SBATCH_* and SLURM_* (but SLURM_CONF)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SBATCH_") and (not k.startswith("SLURM_") or k == "SLURM_CONF")
    }


class SlurmScheduler(Scheduler):
    """One pool on a Slurm cluster, through the command-line tools."""

    name = "slurm"

    def __init__(
        self,
        manager: str,
        pool: str,
        *,
        throttle: int | None = None,
        command_timeout: float = 30.0,
        submit_retries: int = 2,
        retry_delay: float = 2.0,
        settle: float = 2.0,
        max_array_size: int | None = None,
        request: PoolRequest | None = None,
    ) -> None:
        self.manager = manager
        self.pool = pool
        self.request = request or PoolRequest()
        self.job_name = job_name(manager, pool)
        self.prefix = manager_prefix(manager)
        self.throttle = throttle
        self.command_timeout = command_timeout
        self.submit_retries = submit_retries
        self.retry_delay = retry_delay
        self.settle = settle
        self._max_array_override = max_array_size
        self._config: dict[str, str] | None = None
        self._lock = threading.Lock()
        # Elements seen in flight, so one that leaves the queue between two looks is still
        # reported (once resolved, kept for an hour so repeated looks agree).
        self._seen: dict[str, ElementStatus] = {}
        self._gone: dict[str, tuple[ElementStatus, float]] = {}

    # -- limits ------------------------------------------------------------------------------

    def _cluster_config(self) -> dict[str, str]:
        if self._config is None:
            result = self._run(["scontrol", "show", "config"])
            self._config = parse_config(result.stdout)
        return self._config

    @property
    def max_array_size(self) -> int:
        """Elements per array: Slurm's MaxArraySize (indices 0..MaxArraySize-1), read once."""
        try:
            value = self._cluster_config().get("MaxArraySize", "1001")
            cluster = int(value) if value.isdigit() else 1001
        except SchedulerError as exc:
            log.warning("cannot read MaxArraySize (%s); assuming 1001", exc)
            cluster = 1001
        if self._max_array_override is not None:
            return max(1, min(cluster, self._max_array_override))
        return max(1, cluster)

    @property
    def accounting(self) -> bool:
        """Whether sacct can answer (detected once from AccountingStorageType)."""
        try:
            kind = self._cluster_config().get("AccountingStorageType", "accounting_storage/none")
        except SchedulerError:
            return False
        return not kind.endswith("/none")

    # -- commands ----------------------------------------------------------------------------

    def _run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> proc.Completed:
        """proc.run with our timeout and environment; failures as SchedulerErrors."""
        try:
            return proc.run(
                argv,
                timeout=self.command_timeout,
                input_text=input_text,
                env=command_env(),
                check=check,
            )
        except CommandTimeout as exc:
            raise TransientSchedulerError(str(exc)) from exc
        except CommandError as exc:
            if classify(exc.stderr + exc.stdout) == "transient" or exc.returncode is None:
                raise TransientSchedulerError(str(exc)) from exc
            raise SchedulerError(str(exc)) from exc

    def _squeue(self) -> list[ElementStatus]:
        argv = ["squeue", "-h", "-r", "--me", "--states=all", f"--format={SQUEUE_FORMAT}"]
        return parse_squeue(self._run(argv).stdout, self.prefix)

    def _sbatch(self, script: str, count: int, tag: str) -> str:
        """One sbatch call; errors as raised by proc.run (classified by the caller)."""
        argv = sbatch_argv(self.job_name, tag, count, self.throttle)
        result = proc.run(argv, timeout=self.command_timeout, input_text=script, env=command_env())
        return parse_job_id(result.stdout)

    def _test_only(self, script: str, count: int, tag: str) -> None:
        """`sbatch --test-only` with the argv of a real submit (the script on its stdin)."""
        argv = ["sbatch", "--test-only", *sbatch_argv(self.job_name, tag, count, self.throttle)[1:]]
        proc.run(argv, timeout=self.command_timeout, input_text=script, env=command_env())

    # -- interface ---------------------------------------------------------------------------

    def test_submit(self, script: str, count: int, tag: str) -> None:
        """Pre-flight: Slurm validates partition, account, QOS, time, resources and the
        script's #SBATCH lines exactly as for a real submission, and creates no job.
        The first (largest) array chunk is tested: the others differ only in size."""
        check_tag(tag)
        size = split_count(count, self.max_array_size)[0]
        try:
            self._test_only(script, size, tag)
        except CommandTimeout as exc:
            raise TransientSchedulerError(f"sbatch --test-only timed out: {exc}") from exc
        except CommandError as exc:
            message = slurm_message(exc)
            kind = classify(exc.stderr + exc.stdout)
            if kind == "transient" or exc.returncode is None:
                raise TransientSchedulerError(f"sbatch --test-only: {message}") from exc
            if kind in ("refused", "permanent"):
                raise refusal(exc, message) from exc
            raise SchedulerError(message) from exc

    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        check_tag(tag)
        chunks = split_count(count, self.max_array_size)
        job_ids: list[str] = []
        submitted = 0
        for size in chunks:
            try:
                job_id = self._submit_chunk(script, size, tag, known=job_ids)
            except SchedulerError:
                if not job_ids:
                    raise
                # Part went in: report what exists; the caller sees count < asked.
                log.exception("submission %s: chunk after %s failed", tag, job_ids)
                break
            job_ids.append(job_id)
            submitted += size
            self._remember_submitted(job_id, size, tag)
        return CreatedArrays(tag=tag, job_ids=job_ids, count=submitted)

    def _submit_chunk(self, script: str, size: int, tag: str, known: Sequence[str]) -> str:
        last: CommandError | None = None
        for attempt in range(self.submit_retries + 1):
            try:
                return self._sbatch(script, size, tag)
            except CommandTimeout as exc:
                last, kind = exc, "transient"
            except CommandError as exc:
                last, kind = exc, classify(exc.stderr + exc.stdout)
                if kind in ("refused", "permanent"):
                    raise refusal(exc, f"sbatch refused ({tag}): {exc}") from exc
            # The job may exist although sbatch said otherwise: look before trying again.
            found = self._lookup_new(tag, known)
            if found:
                log.warning("sbatch for %s failed (%s) but created job %s", tag, last, found)
                return found
            if kind != "transient":
                raise SchedulerError(f"sbatch failed ({tag}), no job was created: {last}")
            if attempt < self.submit_retries:
                time.sleep(self.retry_delay * (attempt + 1))
        raise TransientSchedulerError(
            f"sbatch failed {self.submit_retries + 1} times ({tag}), no job found: {last}"
        )

    def _lookup_new(self, tag: str, known: Sequence[str]) -> str | None:
        """A master id carrying `tag` that is not in `known`; looks twice, `settle` apart, since
        a controller that was too slow to answer may register the job a moment later."""
        for look in range(2):
            ids = sorted(
                {e.job_id for e in self._squeue() if e.tag == tag and e.job_id not in known},
                key=int,
            )
            if ids:
                return ids[0]
            if look == 0 and self.settle > 0:
                time.sleep(self.settle)
        return None

    def _remember_submitted(self, job_id: str, count: int, tag: str) -> None:
        with self._lock:
            for index in range(count):
                eid = f"{job_id}_{index}"
                self._seen.setdefault(
                    eid,
                    ElementStatus(job_id, index, eid, S.PENDING, tag, self.job_name, "submitted"),
                )

    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        current = self._expand_remainders(self._squeue())
        elements = current + self._vanished(current)
        if tags is not None:
            wanted = set(tags)
            elements = [e for e in elements if e.tag in wanted]
        return sorted(elements, key=lambda e: (int(e.job_id), e.array_index))

    def _expand_remainders(self, elements: list[ElementStatus]) -> list[ElementStatus]:
        """Give an ended array's never-started record back its indices: the ones we know of
        (submitted or seen in flight) that have no line of their own. Unknown ones (a new
        object that never saw them) stay one record with array_index REMAINDER."""
        listed: dict[str, set[int]] = {}
        for e in elements:
            listed.setdefault(e.job_id, set()).add(e.array_index)
        out: list[ElementStatus] = []
        with self._lock:
            known: dict[str, set[int]] = {}
            for e in self._seen.values():
                known.setdefault(e.job_id, set()).add(e.array_index)
        for e in elements:
            if e.array_index != REMAINDER:
                out.append(e)
                continue
            missing = sorted(known.get(e.job_id, set()) - listed[e.job_id])
            if not missing:
                out.append(e)
            for index in missing:
                out.append(replace(e, array_index=index, element_id=f"{e.job_id}_{index}"))
        return out

    def _vanished(self, current: Iterable[ElementStatus]) -> list[ElementStatus]:
        """Elements seen in flight earlier and absent now, resolved through sacct when it
        answers; the rest are reported COMPLETED (see the module docstring)."""
        now = time.monotonic()
        by_id = {e.element_id: e for e in current}
        missing = self._left_the_queue(by_id)
        if missing:
            final = self._sacct([e.element_id for e in missing]) if self.accounting else {}
            with self._lock:
                for element in missing:
                    self._gone[element.element_id] = (_resolved(element, final), now)
        with self._lock:
            for eid in [k for k, (_, t) in self._gone.items() if now - t > GONE_KEPT or k in by_id]:
                del self._gone[eid]
            return [s for s, _ in self._gone.values()]

    def _left_the_queue(self, by_id: dict[str, ElementStatus]) -> list[ElementStatus]:
        """Remember what is in flight now; forget and return what was in flight and is gone."""
        with self._lock:
            for eid, element in by_id.items():
                if element.state in IN_FLIGHT:
                    self._seen[eid] = element
                else:
                    self._seen.pop(eid, None)
            missing = [s for eid, s in self._seen.items() if eid not in by_id]
            for element in missing:
                del self._seen[element.element_id]
        return missing

    def _sacct(self, element_ids: Sequence[str]) -> dict[str, tuple[ElementState, int | None, str]]:
        argv = [
            "sacct",
            "-P",
            "-n",
            "-X",
            "--format=JobID,State,ExitCode",
            f"--jobs={','.join(element_ids)}",
        ]
        try:
            return parse_sacct(self._run(argv).stdout)
        except SchedulerError as exc:
            log.warning("sacct failed (%s); reporting vanished elements as completed", exc)
            return {}

    def site_limits(self) -> SiteLimits:
        """What the site accepts now for this pool (see limits.py). MaxJobCount and
        MaxArraySize only, when accounting is off, limits are not enforced or sacctmgr fails."""
        self._config = None  # re-read: a site may change MaxJobCount or MaxArraySize
        config = self._cluster_config()
        user = pwd.getpwuid(os.getuid()).pw_name
        argv = ["squeue", "-h", "-r", "-u", user, "-t", limits.USER_JOBS_STATES]
        jobs = limits.parse_user_jobs(self._run([*argv, "-o", limits.USER_JOBS_FORMAT]).stdout)
        now = time.time()
        if not limits.limits_enforced(config):
            return limits.site_limits(user=user, config=config, jobs=jobs, read_at=now)
        try:
            sacctmgr = ["sacctmgr", "-nP", "show"]
            rows = self._run(
                [
                    *sacctmgr,
                    "user",
                    "withassoc",
                    "where",
                    f"user={user}",
                    f"format={limits.ASSOC_FORMAT}",
                ]
            ).stdout
            assoc = limits.pick_assoc(limits.parse_assocs(rows), self.request)
            qos_name = limits.pool_qos(self.request, assoc)
            table = self._run(
                [*sacctmgr, "qos", "where", f"name={qos_name}", f"format={limits.QOS_FORMAT}"]
            ).stdout
            qos = limits.parse_qos(table).get(qos_name)
        except SchedulerError as exc:
            log.warning("cannot read QOS/association limits (%s): MaxJobCount only", exc)
            return limits.site_limits(user=user, config=config, jobs=jobs, read_at=now)
        return limits.site_limits(
            user=user, config=config, jobs=jobs, read_at=now, qos=qos, assoc=assoc
        )

    def accounted_seconds(self, since: float) -> dict[str, float] | None:
        """CPU-seconds per element of this pool's jobs since `since`, every run of a requeued
        element included (sacct -D); None without accounting."""
        if not self.accounting:
            return None
        if since >= time.time():
            return {}  # sacct refuses a start after its end
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
        argv = ["sacct", "-n", "-P", "-X", "-D", f"--name={self.job_name}"]
        argv += ["-S", start, "-E", "now", f"--format={ACCOUNTED_FORMAT}"]
        return parse_accounted(self._run(argv).stdout, since, time.time())

    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        targets = check_ids(ids)
        if not targets:
            return
        argv = ["scancel", *(["--state=PENDING"] if pending_only else []), *targets]
        result = self._run(argv, check=False)
        problems = [
            line
            for line in (result.stderr + result.stdout).splitlines()
            if line.strip()
            and "already completing or completed" not in line
            and "invalid job id" not in line.lower()
        ]
        if result.returncode != 0 and problems:
            raise SchedulerError(f"scancel {' '.join(targets)}: {' | '.join(problems[-3:])}")


def _resolved(
    element: ElementStatus, final: dict[str, tuple[ElementState, int | None, str]]
) -> ElementStatus:
    """A vanished element with its end from sacct, else COMPLETED with a reason saying the real
    end is unknown (see the module docstring)."""
    state, code, raw = final.get(element.element_id, (S.COMPLETED, None, ""))
    reason = (
        f"from sacct: {raw}"
        if raw
        else "left the queue unseen; final state unknown (no accounting)"
    )
    return replace(element, state=state, reason=reason, exit_code=code)
