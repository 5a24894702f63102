"""What every command needs: its settings, a client to the server, and printing for people or
scripts. Kept small and free of heavy imports so loading a command loads only what it uses."""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hpcscale import config
from hpcscale.errors import ClientError, ConfigError

if TYPE_CHECKING:
    from hpcscale.client import Client


def load_settings(args: argparse.Namespace) -> config.Settings:
    return config.load(getattr(args, "config", None))


def make_client(args: argparse.Namespace, settings: config.Settings | None = None) -> Client:
    """A client that fails at once when nothing listens at [server] url (a person is waiting:
    no 16 s of retries to learn the server is down), and retries a busy server briefly."""
    from hpcscale import lean_imports  # noqa: F401 - first: httpx without its CLI

    # isort: split
    import httpx  # only for commands that talk

    from hpcscale.client import Client
    from hpcscale.tokens import token_for

    settings = settings or load_settings(args)
    server = settings.server
    try:
        token = token_for(server.token_file)
    except ConfigError as exc:
        if Path(server.token_file).expanduser().exists():
            raise
        raise ConfigError([f"{exc.problems[0]}: {FIRST_START_HINT}", *exc.problems[1:]]) from exc
    verify = server.verify
    context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    url = server.url

    class FailFast(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            try:
                return super().handle_request(request)
            except httpx.ConnectError as exc:
                if _tls_failure(exc):  # the client says what to trust instead
                    raise
                raise ServerDown(url, exc) from exc

    return Client(url, token, retry_for=10.0, transport=FailFast(verify=context))


FIRST_START_HINT = (
    "`hpcscale serve` (or `server`) writes it on its first start; on another machine, ask "
    "the admin for one (`hpcscale token create --role submitter --output FILE`)"
)


def _tls_failure(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class ServerDown(ClientError):
    """Nothing answers at [server] url: say so, and how to start it, at once."""

    def __init__(self, url: str, cause: Exception) -> None:
        refused = "refused" in str(cause).lower()
        said = (
            f"the server is not running at {url} (connection refused): start it with "
            "`hpcscale serve` (or its systemd unit), or set [server] url to where it runs"
            if refused
            else f"cannot reach the server at {url}: {cause}"
        )
        super().__init__(said)


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
