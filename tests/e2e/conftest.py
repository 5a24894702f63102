"""`hpcscale serve` with one local pool, started from a directory of its own, for the end-to-end
tests on the local scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import ServerProcess


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerProcess]:
    """`serve` started from a directory of its own (tmp_path/serve), with one local pool."""
    root = tmp_path / "serve"
    server = ServerProcess(
        root=root, database=f"sqlite:///{root}/state.db", command="serve", poll_interval="1s",
        pools=[{"name": "loc", "scheduler": "local", "max_workers": 2, "max_empty_claims": 1}],
    )  # fmt: skip
    server.start()
    yield server
    server.stop()
