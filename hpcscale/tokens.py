"""Token files: created 0600 from the start, refused when others can read them.

Kept apart from the server so the worker and the manager read their tokens without importing
the web framework.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpcscale.errors import ConfigError


def write_secret(path: Path, secret: str) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    path.chmod(0o600)


def check_token_file(path: Path) -> None:
    """A token file others can read is refused: anyone on the login node could act as us."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError([f"server.token_file: {path} has mode {mode:04o}; run chmod 600 {path}"])


def read_token(path_text: str) -> str:
    path = Path(path_text).expanduser()
    try:
        check_token_file(path)
        token = path.read_text().strip()
    except FileNotFoundError as exc:
        raise ConfigError([f"server.token_file: {path} does not exist"]) from exc
    if not token:
        raise ConfigError([f"server.token_file: {path} is empty"])
    return token
