"""Test-wide rules: WARNING+ log records from alluxiofuse fail a test unless it declares them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_unexpected_warnings(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="alluxiofuse")
    yield
    if request.node.get_closest_marker("allow_warnings"):
        return
    loud = [
        r for r in caplog.get_records("call")
        if r.name.startswith("alluxiofuse") and r.levelno >= logging.WARNING
    ]
    assert not loud, "unexpected log records:\n" + "\n".join(
        f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud
    )
