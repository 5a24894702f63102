"""Shared test settings.

With HPCSCALE_NO_SKIP=1 (set by scripts/test.sh in CI and on the project's machines) a skipped
test fails instead: every part the suite needs is brought up there, so a skip means a hole.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("HPCSCALE_NO_SKIP") == "1" and not hasattr(
        report, "wasxfail"
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but HPCSCALE_NO_SKIP=1 forbids skips: {report.longrepr}"
