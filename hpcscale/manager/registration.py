"""The manager's claim on its name: one live instance per name, a dead one replaced at once.

Two managers of one name would both submit for the same pools and break the hard max, so the
store refuses a second live instance; but a manager killed with -9 and restarted on the same
host need not wait out the stale period: its predecessor's process is looked up and, when
gone, taken over at once.
"""

from __future__ import annotations

from hpcscale.client import Client
from hpcscale.proc import is_alive


def dead_predecessor(client: Client, name: str, instance: str, host: str) -> str | None:
    """The instance to replace at once: ours on this host whose process is gone."""
    for info in client.managers():
        mine = info.name == name and info.instance != instance
        if mine and info.host == host and info.pid and not is_alive(info.pid):
            return info.instance
    return None
