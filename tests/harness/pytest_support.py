"""What the fixtures do when a prerequisite of a test is missing."""

from __future__ import annotations

import os

import pytest


def unavailable(what: str, reason: str) -> None:
    """Skip with the reason, except under CI, where the prerequisite is part of the contract: fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")
