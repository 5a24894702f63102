"""Token files: created 0600 from the start, refused when others can read them.

Kept apart from the server so the worker and the manager read their tokens without importing
the web framework. Every problem is a ConfigError naming the key the path came from
(`server.token_file`, or `--token-file` when a command line gave it), so the CLI prints one
line and exits 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpcscale.errors import ConfigError

TOKEN_KEY = "server.token_file"  # noqa: S105 - the name of a config key, not a secret


def write_secret(path: Path, secret: str, key: str = TOKEN_KEY) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        path.chmod(0o600)
    except OSError as exc:
        raise ConfigError([f"{key}: cannot write {path}: {exc.strerror or exc}"]) from exc


def token_file_problem(path: Path) -> str | None:
    """Why `path` may not hold a token, or None. Group or others able to read (or write) it
    is refused: anyone on the login node could act as us with it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"{path} has mode {mode:04o}, open to group or others; run chmod 600 {path}"
    return None


def check_token_file(path: Path, key: str = TOKEN_KEY) -> None:
    """Raise ConfigError if `path` may not hold a token (see token_file_problem)."""
    problem = token_file_problem(path)
    if problem:
        raise ConfigError([f"{key}: {problem}"])


def read_token(path_text: str, key: str = TOKEN_KEY) -> str:
    """The token in `path_text`, checked first: a file others can read is never read."""
    path = Path(path_text).expanduser()
    check_token_file(path, key)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror or exc}"]) from exc
    if not token:
        raise ConfigError([f"{key}: {path} is empty"])
    return token


def token_for(path_text: str, key: str = TOKEN_KEY) -> str:
    """$HPCSCALE_TOKEN when set (a user's own session, a CI secret), else the token file's."""
    return os.environ.get("HPCSCALE_TOKEN") or read_token(path_text, key)
