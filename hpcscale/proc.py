"""The one place hpcscale starts, waits on or signals a process: argv list, timeout, errors that
say everything. Keeping it to one module is what lets a test prove nothing else does (no shell,
no stray kill)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

from hpcscale.errors import CommandError, CommandTimeout

# A process started by `spawn`, for callers that keep it (poll, returncode, pid) without
# importing subprocess themselves.
Process: TypeAlias = subprocess.Popen[bytes]
# For `spawn(stderr=STDOUT)`: the process's errors go where its output goes.
STDOUT = subprocess.STDOUT


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run argv (never through a shell) and return its output.

    Raises CommandTimeout when it runs past `timeout` (the process group is killed), and
    CommandError for a non-zero exit when `check` is set.
    """
    args = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell, by design
            args,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandError(args, None, "", "", why=f"could not start: {exc.strerror}") from exc
    with proc:
        try:
            out, err = proc.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise CommandTimeout(args, None, out, err, why=f"timed out after {timeout:g}s") from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, out, err)
    return Completed(args, proc.returncode, out, err)


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    die_with_parent: bool = False,
) -> Process:
    """Start argv detached in its own process group (so it can be killed as a whole).

    For processes that outlive the call (task runs, local job elements); the caller waits.
    `die_with_parent` (Linux): the kernel SIGKILLs the process when the calling thread dies,
    even by SIGKILL, so a task cannot outlive its worker and run on beside its own retry.
    Raises CommandError when it cannot start (no such program, bad cwd).
    """
    args = [str(a) for a in argv]
    preexec = _die_with(os.getpid()) if die_with_parent and _PRCTL is not None else None
    try:
        return subprocess.Popen(  # noqa: S603 - argv list, no shell, by design
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,  # one prctl call in the child, resolved beforehand
        )
    except OSError as exc:
        raise CommandError(args, None, "", "", why=f"could not start: {exc.strerror}") from exc


def _prctl() -> Any:
    """libc's prctl, resolved once here: the child after fork only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _die_with(parent: int) -> Callable[[], None]:
    def arm() -> None:  # in the child, between fork and exec
        _PRCTL(PR_SET_PDEATHSIG, _SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above: too late to arm
            os._exit(137)

    return arm


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait(process: Process, timeout: float) -> int | None:
    """The exit code of `process` if it ends within `timeout` seconds, else None (still running)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def signal_process(pid: int, sig: int) -> None:
    """Signal one process (not its group); a process already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def is_alive(pid: int) -> bool:
    """Whether `pid` names a live process. One that exists but is not ours counts as alive; a
    zombie (ended, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:  # no /proc (macOS): existence is all we can tell
        return True
