"""The on-disk state the local scheduler and its per-element supervisors share.

One directory per array (`<root>/jobs/<job id>/`): `job.json` written once by the submitter;
`<index>.json` written only by that element's supervisor (one writer per file, atomic
replace); `<index>.cancel` written by `cancel` (its content: "all" or "pending"). A process is
identified by pid AND its start time from /proc, so a reused pid never passes for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hpcscale import proc


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def proc_identity(pid: int) -> str | None:
    """'<pid>:<start time in ticks>' for a live (non-zombie) process, else None.

    Without /proc (macOS laptops) it falls back to a liveness check alone: pid reuse is then
    not detected, a documented limit of the local backend there.
    """
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except OSError:
            return None
        fields = text[text.rfind(")") + 2 :].split()
        if not fields or fields[0] in ("Z", "X"):
            return None
        return f"{pid}:{fields[19]}"
    return f"{pid}:?" if proc.is_alive(pid) else None


def alive(identity: str | None) -> bool:
    """Is the process recorded as `identity` still the same live process?"""
    if not identity:
        return False
    pid_text = identity.split(":", 1)[0]
    return pid_text.isdigit() and proc_identity(int(pid_text)) == identity


def pid_of(identity: str | None) -> int | None:
    """The pid part of an identity, to signal it once `alive` has vouched for it."""
    if not identity:
        return None
    pid_text = identity.split(":", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def element_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"{index}.json"


def cancel_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"{index}.cancel"


def cancel_mode(job_dir: Path, index: int) -> str | None:
    """'all', 'pending' or None (no cancel asked)."""
    with contextlib.suppress(FileNotFoundError):
        return cancel_path(job_dir, index).read_text().strip() or "all"
    return None
