"""Shared fixtures: where the public test data is, and (in tests/integration) the real broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_data_dir() -> Path:
    """`GDX_SHARED_DATA`, default ../shared/data beside the repository."""
    return Path(os.environ.get("GDX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public test data. Skips where absent (a user's clone); under CI its absence fails."""
    path = shared_data_dir()
    if not (path / "MANIFEST.tsv").is_file():
        message = f"public test data not found at {path} (set GDX_SHARED_DATA)"
        if IN_CI:
            pytest.fail(message + ": CI must run these tests")
        pytest.skip(message)
    return path
