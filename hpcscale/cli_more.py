"""Commands of the worker, the job scripts and the manager, registered on the main parser."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    """Nothing yet beyond the statestore's commands."""
