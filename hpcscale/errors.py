"""One exception tree for hpcscale, so callers catch what they can handle and nothing else.

HpcscaleError
├── ConfigError              bad config file or value; CLI exit 2
├── StoreError               the statestore refused or failed
│   ├── NotFound             no such task / worker / token
│   ├── StaleLease           the fencing token is not the live lease's (HTTP 409)
│   ├── InvalidTransition    the task is not in a state that allows this (HTTP 409)
│   └── SchemaMismatch       the database was written by another schema version
├── AuthError                missing or wrong token (HTTP 401), wrong role (HTTP 403)
├── ClientError              the server answered with an error or could not be reached
│   └── ServerUnavailable    connection refused / 5xx after all retries
├── CommandError             a subprocess failed or timed out (argv, exit code, stdout, stderr)
│   └── CommandTimeout
└── SchedulerError           a scheduler refused or failed
    ├── PermanentSubmitError the scheduler will refuse this again (bad account, QOS or partition)
    ├── SubmitRefused        the site refuses it for now (a submit limit, a closed partition)
    ├── TransientSchedulerError  worth a retry after reconciling by tag
    └── PreflightUnsupported this scheduler cannot test a job script without submitting it
"""

from __future__ import annotations

from collections.abc import Sequence


class HpcscaleError(Exception):
    """Root of every error hpcscale raises on purpose."""


class ConfigError(HpcscaleError):
    """A config file or value is wrong; `problems` holds one line per problem, naming the key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(HpcscaleError):
    """The statestore could not do what was asked."""


class NotFound(StoreError):
    pass


class StaleLease(StoreError):
    """A result, heartbeat or release carried a fencing token that is no longer the live one."""


class InvalidTransition(StoreError):
    pass


class SchemaMismatch(StoreError):
    pass


class AuthError(HpcscaleError):
    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class ClientError(HpcscaleError):
    """The server answered with an error status; `status` is the HTTP code (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class ServerUnavailable(ClientError):
    pass


class CommandError(HpcscaleError):
    """A subprocess ended badly; carries everything needed to tell the user why."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = why or f"exit code {returncode}"
        tail = (stderr or stdout).strip().splitlines()[-3:]
        super().__init__(
            f"{' '.join(self.argv)}: {detail}" + (f": {' | '.join(tail)}" if tail else "")
        )


class CommandTimeout(CommandError):
    pass


class SchedulerError(HpcscaleError):
    pass


class PermanentSubmitError(SchedulerError):
    """The scheduler refused the submission for a reason a retry will not fix."""


class SubmitRefused(SchedulerError):
    """The site refused this submission for now: a submit limit (QOSMaxSubmitJobPerUserLimit,
    AssocMaxSubmitJobLimit, the jobs-per-hour throttle, MaxJobCount) or a DRAIN/INACTIVE
    partition. It passes by waiting or by asking for fewer: not a failed start, not a broken
    pool. `reason` is a short key ("QOSMaxSubmitJobPerUserLimit", "partition unavailable"),
    `message` Slurm's own text."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class TransientSchedulerError(SchedulerError):
    """The scheduler failed in a way that may pass; reconcile by tag before retrying."""


class PreflightUnsupported(SchedulerError):
    """The scheduler has no way to test a submission without making it (the pre-flight check
    is then skipped, and says so, rather than blocking the pool)."""
