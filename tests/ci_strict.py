"""A pytest plugin: under CI (``CI=true``) an end-to-end test that skips fails instead.

The e2e suite is kiln's proof that the mirror works; a CI run must never pass because a fixture
could not start a server or download a wheel. Locally the skip stays, with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def strict() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and strict() and item.get_closest_marker("e2e") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"an e2e test may not skip under CI=true: {reason}"
