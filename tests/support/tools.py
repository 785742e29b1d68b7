"""External tools the tests drive (dcmtk, Orthanc, PostgreSQL, Chromium).

On a newcomer's machine a missing tool skips the test with a one-line reason;
in CI (``CI=true``) a missing tool fails it, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip (locally) or fail (in CI) for a missing prerequisite."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of an executable, or skip/fail with the reason."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not installed (apt-get install dcmtk orthanc orthanc-dicomweb)")
    assert path is not None
    return path
