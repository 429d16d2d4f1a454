"""What a test needs from the machine: missing, it skips on a workstation and fails under
CI=true, where .ci/run installs everything, so that no test silently stops running."""

from __future__ import annotations

import os

import pytest


def need(available: object, what: str) -> None:
    """Go on if ``available``; else fail under CI=true, skip elsewhere, saying ``what``."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: CI must have it")
    pytest.skip(what)
