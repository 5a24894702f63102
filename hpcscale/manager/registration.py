"""The manager's claim on its name: one live instance per name, a dead one replaced at once.

Two managers of one name would both submit for the same pools and break the hard max, so the
store refuses a second live instance; but a manager killed with -9 and restarted on the same
host need not wait out the stale period: its predecessor's process is looked up and, when
gone, taken over at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcscale.client import Client


def dead_predecessor(client: Client, name: str, instance: str, host: str) -> str | None:
    """The instance to replace at once: ours on this host whose process is gone."""
    for info in client.managers():
        mine = info.name == name and info.instance != instance
        if mine and info.host == host and info.pid and not _pid_alive(info.pid):
            return info.instance
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True
