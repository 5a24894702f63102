"""A real scheduler on this machine, for laptops, demos and tests.

Each array element is a detached supervisor process (`local.supervisor`) in its own session
that waits for one of `slots` slots, runs the job script with bash in a process group of its own
with Slurm-like variables (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_JOB_ID, SLURM_JOB_ID="<job>_<index>",
HPCSCALE_LOCAL_JOB_ID), enforces the time limit and records the end in the state directory.
Everything is in files (see `local.records`), so a new LocalScheduler on the same directory, in
another process, reports the same states after the submitter is gone.

The script's environment is a short allow-list (PATH, HOME, USER, LANG, ...) plus those
variables, like Slurm's --export=NONE: nothing else of the submitter leaks into a worker.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hpcscale
from hpcscale import proc
from hpcscale.errors import CommandError, PermanentSubmitError, SchedulerError
from hpcscale.schedulers.base import (
    CreatedArrays,
    ElementState,
    ElementStatus,
    Scheduler,
    check_ids,
    check_tag,
    job_name,
    manager_prefix,
    split_count,
)
from hpcscale.schedulers.local.records import (
    alive,
    cancel_mode,
    cancel_path,
    element_path,
    pid_of,
    proc_identity,
    read_json,
    write_json,
)

S = ElementState

# The supervisor's record words -> ours (they are ours already; the table keeps the rule that
# each adapter translates its own codes next to itself).
LOCAL_STATES: dict[str, ElementState] = {s.value: s for s in ElementState}

ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SHELL",
)
BOOT_GRACE = 30.0  # seconds a supervisor may take to write its first record


def launch_argv(job_dir: Path, index: int) -> list[str]:
    """How one element is started (what `render-script` shows for a local pool)."""
    return [sys.executable, "-m", "hpcscale.schedulers.local.supervisor", str(job_dir), str(index)]


def _supervisor_env() -> dict[str, str]:
    """Ours, with PYTHONPATH leading to this hpcscale: the supervisor must import it even when
    it is not installed (a source tree)."""
    env = dict(os.environ)
    source_root = str(Path(hpcscale.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (source_root, os.environ.get("PYTHONPATH", "")) if p
    )
    return env


# A job folder (script, records, the elements' output) whose elements have all ended is removed
# this long after the job was created: as Slurm forgets ended jobs (MinJobAge), and so a
# long-lived manager does not fill its state_dir with one folder per worker ever started.
KEEP_ENDED = 86400.0


class LocalScheduler(Scheduler):
    """One pool on this machine; `status` covers every pool of the manager in `state_dir`."""

    name = "local"

    def __init__(
        self,
        manager: str,
        pool: str,
        state_dir: Path,
        *,
        time_limit: float,
        signal_margin: float = 0.0,
        kill_wait: float = 5.0,
        slots: int | None = None,
        keep_ended: float = KEEP_ENDED,
    ) -> None:
        self.manager = manager
        self.keep_ended = keep_ended
        self.pool = pool
        self.job_name = job_name(manager, pool)
        self.prefix = manager_prefix(manager)
        self.root = Path(state_dir)
        self.time_limit = time_limit
        self.signal_margin = signal_margin
        self.kill_wait = kill_wait
        self.slots = slots or max(4, os.cpu_count() or 1)
        self._children: list[proc.Process] = []
        self._lock = threading.Lock()

    @property
    def max_array_size(self) -> int:
        return 100_000

    # -- submit ------------------------------------------------------------------------------

    def _next_id(self) -> str:
        """A job id unique in the state dir (a counter under a file lock)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # job env and argv: private
        with (self.root / "next_id").open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read().strip()
            value = int(text) if text.isdigit() else 1
            handle.seek(0)
            handle.truncate()
            handle.write(str(value + 1))
        return str(value)

    def submit(self, script: str, count: int, tag: str) -> CreatedArrays:
        check_tag(tag)
        split_count(count, self.max_array_size)  # validates count
        job_id = self._next_id()
        job_dir = self.root / "jobs" / job_id
        job_dir.mkdir(mode=0o700, parents=True)
        (job_dir / "script.sh").write_text(script)
        job: dict[str, Any] = {
            "job_id": job_id,
            "name": self.job_name,
            "tag": tag,
            "count": count,
            "created": time.time(),
            "time_limit": self.time_limit,
            "signal_margin": self.signal_margin,
            "kill_wait": self.kill_wait,
            "slots": self.slots,
            "slots_dir": str(self.root / "slots"),
            "cwd": str(Path.cwd()),
            "env": {k: os.environ[k] for k in ENV_ALLOW if k in os.environ},
            "supervisors": {},
        }
        write_json(job_dir / "job.json", job)
        supervisor_env = _supervisor_env()
        for index in range(count):
            try:
                with (job_dir / f"{index}.supervisor.log").open("ab") as errors:
                    child = proc.spawn(
                        launch_argv(job_dir, index), stderr=errors, env=supervisor_env
                    )
            except CommandError as exc:
                raise SchedulerError(f"cannot start a local supervisor: {exc}") from exc
            with self._lock:
                self._children.append(child)
            job["supervisors"][str(index)] = proc_identity(child.pid)
        write_json(job_dir / "job.json", job)
        return CreatedArrays(tag=tag, job_ids=[job_id], count=count)

    def test_submit(self, script: str, count: int, tag: str) -> None:
        """Pre-flight: the script can be written to the state directory, made executable and
        parsed by bash (`bash -n`), as `submit` would run it; nothing is started."""
        check_tag(tag)
        split_count(count, self.max_array_size)
        path = self.root / "preflight" / f"{tag}.sh"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
            path.chmod(0o700)
        except OSError as exc:
            raise PermanentSubmitError(f"cannot write the job script {path}: {exc}") from exc
        try:
            proc.run(["bash", "-n", str(path)], timeout=30.0)
        except CommandError as exc:
            detail = exc.stderr.strip() or str(exc)
            raise PermanentSubmitError(f"bash -n refused the job script: {detail}") from exc
        finally:
            path.unlink(missing_ok=True)

    def _reap(self) -> None:
        """Collect our own finished supervisors so they do not linger as zombies."""
        with self._lock:
            self._children = [c for c in self._children if c.poll() is None]

    # -- status ------------------------------------------------------------------------------

    def _jobs(self) -> list[tuple[Path, dict[str, Any]]]:
        jobs_dir = self.root / "jobs"
        if not jobs_dir.is_dir():
            return []
        out = []
        for job_dir in jobs_dir.iterdir():
            job = read_json(job_dir / "job.json")
            if job and str(job.get("name", "")).startswith(self.prefix):
                out.append((job_dir, job))
        return out

    def _element(self, job_dir: Path, job: dict[str, Any], index: int) -> ElementStatus:
        record = read_json(element_path(job_dir, index)) or {}
        state = LOCAL_STATES.get(str(record.get("state", "")), S.PENDING)
        reason = str(record.get("reason") or "")
        code = record.get("exit_code")
        if state in (S.PENDING, S.RUNNING):  # a recorded end is final; these need a witness
            state, reason = self._unless_supervisor_gone(job_dir, job, index, record, state, reason)
        return ElementStatus(
            job_id=str(job["job_id"]),
            array_index=index,
            element_id=f"{job['job_id']}_{index}",
            state=state,
            tag=str(job["tag"]),
            name=str(job["name"]),
            reason=reason,
            exit_code=code if isinstance(code, int) else None,
        )

    def _unless_supervisor_gone(
        self,
        job_dir: Path,
        job: dict[str, Any],
        index: int,
        record: dict[str, Any],
        state: ElementState,
        reason: str,
    ) -> tuple[ElementState, str]:
        """A pending or running record is only as true as its supervisor is alive: without
        it, say what became of the element (still booting, orphaned script, cancelled, dead)."""
        supervisor = record.get("supervisor") or job.get("supervisors", {}).get(str(index))
        if alive(supervisor):
            return state, reason
        if not record and time.time() - float(job["created"]) < BOOT_GRACE:
            return state, "starting"
        if alive(record.get("child")):
            return self._orphan(job, record)
        if cancel_mode(job_dir, index) is not None:
            return S.CANCELLED, "cancelled (supervisor stopped)"
        if not record:
            return S.BOOT_FAIL, "the element's supervisor never started"
        return S.FAILED, "the element's supervisor died"

    def _orphan(self, job: dict[str, Any], record: dict[str, Any]) -> tuple[ElementState, str]:
        """The supervisor died but the script runs on: it still holds its slot (RUNNING, so it
        counts against the hard max and `cancel` can end it) until its time limit, when
        whoever looks ends it instead of the supervisor."""
        started = float(record.get("started_at") or job["created"])
        pid = pid_of(record.get("child"))
        if pid and time.time() > started + float(job["time_limit"]) + float(job["kill_wait"]):
            proc.kill_group(pid)
            return S.FAILED, "the element's supervisor died; killed at the time limit"
        return S.RUNNING, "the element's supervisor died; the script still runs"

    def status(self, tags: Sequence[str] | None = None) -> list[ElementStatus]:
        self._reap()
        wanted = set(tags) if tags is not None else None
        out: list[ElementStatus] = []
        for job_dir, job in self._jobs():
            if wanted is not None and job.get("tag") not in wanted:
                continue
            elements = [self._element(job_dir, job, i) for i in range(int(job["count"]))]
            if self._expired(job_dir, elements):
                shutil.rmtree(job_dir, ignore_errors=True)
                continue
            out.extend(elements)
        return sorted(out, key=lambda e: (int(e.job_id), e.array_index))

    def stop_all(self) -> list[str]:
        """Cancel every element of this manager still pending or running here (its supervisors
        SIGTERM their workers, which release what they hold): a `serve` that stops takes its
        local workers along instead of leaving them to PID 1. The ids it cancelled."""
        live = [e.element_id for e in self.status() if not e.terminal]
        if live:
            self.cancel(live)
        return live

    def _expired(self, job_dir: Path, elements: list[ElementStatus]) -> bool:
        """Past the retention rule (KEEP_ENDED): every element ended, and nothing written in
        the folder (the last element's end record, its output) for that long."""
        if not all(e.terminal for e in elements):
            return False
        try:
            last = max(p.stat().st_mtime for p in [job_dir, *job_dir.iterdir()])
        except OSError:
            return False
        return time.time() - last >= self.keep_ended

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self, ids: Sequence[str], pending_only: bool = False) -> None:
        targets = check_ids(ids)
        jobs = {str(job["job_id"]): (job_dir, job) for job_dir, job in self._jobs()}
        for target in targets:
            master, _, index_text = target.partition("_")
            if master not in jobs:
                continue  # gone or never ours: like scancel of a purged id
            job_dir, job = jobs[master]
            indices = [int(index_text)] if index_text else list(range(int(job["count"])))
            for index in indices:
                if 0 <= index < int(job["count"]):
                    self._cancel_element(job_dir, job, index, pending_only)
        self._reap()

    def _cancel_element(
        self, job_dir: Path, job: dict[str, Any], index: int, pending_only: bool
    ) -> None:
        element = self._element(job_dir, job, index)
        if element.terminal or (pending_only and element.state is not S.PENDING):
            return
        # The marker first: it tells a supervisor that has not installed its handler yet, and
        # 'pending' makes one that started the script meanwhile ignore the cancel (no race).
        cancel_path(job_dir, index).write_text("pending" if pending_only else "all")
        record = read_json(element_path(job_dir, index)) or {}
        supervisor = record.get("supervisor") or job.get("supervisors", {}).get(str(index))
        supervisor_pid, child_pid = pid_of(supervisor), pid_of(record.get("child"))
        if supervisor_pid and alive(supervisor):
            proc.signal_process(supervisor_pid, signal.SIGTERM)
        elif child_pid and alive(record.get("child")):  # supervisor gone, script running
            proc.kill_group(child_pid)
