"""What serve's footprint work (issue 16) changed must not change behaviour: the TLS context of a
plain-HTTP client, the config's sections in any case, FastAPI without pydantic.v1."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from hpcscale import config
from hpcscale.client import _tls
from hpcscale.errors import ConfigError


def test_plain_http_loads_no_ca_bundle_and_trusts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    context = _tls("http://127.0.0.1:8765", True)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() == []
    assert _tls("https://server:8765", True) is True
    assert _tls("http://127.0.0.1:8765", False) is False
    with pytest.raises(FileNotFoundError):  # a tls_ca is read as before, whatever the URL
        _tls("http://127.0.0.1:8765", "/nonexistent/ca.pem")


def test_an_https_proxy_keeps_the_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")
    assert _tls("http://server:8765", True) is True


def test_sections_in_any_case_first_spelling_wins() -> None:
    settings = config.from_mapping(
        {"Server": {"url": "http://a:1"}, "server": {"url": "http://b:2"}}
    )
    assert settings.server.url == "http://a:1"
    with pytest.raises(ConfigError) as refused:
        config.from_mapping({"SERVER": {"bogus": 1}})
    assert refused.value.problems == ["server.bogus: unknown key"]


def test_the_app_builds_without_pydantic_v1() -> None:
    probe = (
        "import sys; from hpcscale import lean_imports; lean_imports.server_only()\n"
        "from hpcscale.server.app import create_app\n"
        "assert 'pydantic.v1' not in [m for m, v in sys.modules.items() if v is not None]"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
