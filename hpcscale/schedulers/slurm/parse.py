"""Reading Slurm's command output (squeue, sacct, sbatch --parsable, scontrol show config).

Pure functions over text: no process is started here, so every parser is tested on captured
output alone. The adapter runs the commands and hands their output to these.
"""

from __future__ import annotations

import re
import time

from hpcscale.errors import CommandError, PermanentSubmitError, SchedulerError, SubmitRefused
from hpcscale.schedulers.base import ElementState, ElementStatus
from hpcscale.schedulers.slurm.states import SLURM_STATES, refusal_reason
from hpcscale.units import parse_duration

S = ElementState

SQUEUE_FORMAT = "%i|%F|%K|%T|%j|%k|%r"  # reason last: the only free text
ACCOUNTED_FORMAT = "JobID,Start,End,Elapsed,AllocCPUS,State"
REMAINDER = -1  # array_index of an ended array's never-started elements, when not resolvable
_RANGE_RE = re.compile(r"^\[?([0-9,\-]+)(?:%\d+)?\]?$")


def slurm_message(exc: CommandError) -> str:
    """Slurm's own words from a failed command (its stderr lines), else the whole error."""
    lines = [line.strip() for line in (exc.stderr or exc.stdout or "").splitlines()]
    text = " | ".join(line for line in lines if line)
    return text[:2000] if text else str(exc)


def refusal(exc: CommandError, message: str) -> SchedulerError:
    """A refusal as its error: SubmitRefused when it passes by waiting, else permanent."""
    reason = refusal_reason(exc.stderr + exc.stdout)
    if reason is not None:
        return SubmitRefused(reason, slurm_message(exc))
    return PermanentSubmitError(message)


def parse_job_id(stdout: str) -> str:
    """`sbatch --parsable` prints `jobid` or `jobid;cluster`."""
    first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SchedulerError(f"sbatch --parsable printed no job id: {stdout.strip()!r}")
    return job_id


def expand_indices(text: str) -> list[int]:
    """Array indices from '4', '[0-3,7]', '0-9%2' (defensive: -r should give one per line)."""
    match = _RANGE_RE.match(text.strip())
    if not match:
        return []
    out: list[int] = []
    for part in match.group(1).split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def parse_squeue(text: str, prefix: str) -> list[ElementStatus]:
    """Elements from `squeue --format=SQUEUE_FORMAT` output, only jobs named `prefix`*."""
    out: list[ElementStatus] = []
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) != 7:
            continue
        job, master, task, state, name, comment, reason = (p.strip() for p in parts)
        if not name.startswith(prefix):
            continue
        code = state.split()[0] if state else ""
        mapped = SLURM_STATES.get(code, S.UNKNOWN)
        if task in ("N/A", ""):
            # The array's record of elements that never started, once it has ended (e.g.
            # cancelled while pending): Slurm no longer says which indices it held.
            indices = [REMAINDER]
            master = master if master.isdigit() else job.split("_")[0]
        else:
            indices = expand_indices(task)
        for index in indices:
            out.append(
                ElementStatus(
                    job_id=master,
                    array_index=index,
                    element_id=master if index == REMAINDER else f"{master}_{index}",
                    state=mapped,
                    tag=comment if comment != "(null)" else "",
                    name=name,
                    reason=_reason(reason) if mapped is not S.UNKNOWN else f"slurm state {state}",
                )
            )
    return out


def _reason(text: str) -> str | None:
    """squeue's %r, None when it has nothing to say (a running element prints "None")."""
    return None if text in ("", "None", "(null)") else text


def parse_sacct(text: str) -> dict[str, tuple[ElementState, int | None, str]]:
    """{element id: (state, exit code, raw state)} from `sacct -P -n -X --format=JobID,State,
    ExitCode`. States such as 'CANCELLED by 0' keep their first word."""
    out: dict[str, tuple[ElementState, int | None, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or "_" not in parts[0]:
            continue
        raw = parts[1].split()[0] if parts[1].strip() else ""
        code_text = parts[2].split(":")[0]
        out[parts[0]] = (
            SLURM_STATES.get(raw, S.UNKNOWN),
            int(code_text) if code_text.isdigit() else None,
            parts[1],
        )
    return out


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config` as {key: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _epoch(text: str) -> float | None:
    """sacct's local-time stamp (2026-12-04T19:30:00) as epoch seconds; None for Unknown/None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _duration(text: str) -> float:
    try:
        return parse_duration(text.strip())
    except ValueError:
        return 0.0


def parse_accounted(text: str, since: float, now: float) -> dict[str, float]:
    """{element id: CPU-seconds since `since`} from `sacct -n -P -X -D --format=ACCOUNTED_FORMAT`:
    AllocCPUS x the run's time after `since` (Slurm's own Elapsed when the run started after
    it), summed over an element's runs (a requeued element has one line per run). Runs that
    never started charge nothing."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5 or not parts[4].strip().isdigit():
            continue
        job_id, start_text, end_text, elapsed_text = parts[:4]
        start = _epoch(start_text)
        if start is None or "[" in job_id:
            continue
        if start >= since:
            seconds = _duration(elapsed_text)
        else:
            seconds = max(0.0, (_epoch(end_text) or now) - since)
        out[job_id] = out.get(job_id, 0.0) + seconds * int(parts[4])
    return out
