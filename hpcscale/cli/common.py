"""What every command needs: its settings, a client to the server, and printing for people or
scripts. Kept small and free of heavy imports so loading a command loads only what it uses."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hpcscale import config

if TYPE_CHECKING:
    from hpcscale.client import Client


def load_settings(args: argparse.Namespace) -> config.Settings:
    return config.load(getattr(args, "config", None))


def make_client(args: argparse.Namespace, settings: config.Settings | None = None) -> Client:
    from hpcscale.client import Client  # httpx and tenacity: only for commands that talk
    from hpcscale.tokens import token_for

    settings = settings or load_settings(args)
    token = token_for(settings.server.token_file)
    return Client(settings.server.url, token, retry_for=10.0, verify=settings.server.verify)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """JSON when the command was given --json, else the text (built only when needed)."""
    if getattr(args, "json", False):
        print(json.dumps(_plain(data), indent=2))
    else:
        print(text())


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [_plain(d) for d in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return data
