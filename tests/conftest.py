"""Shared pytest helpers."""

from pathlib import Path

import pytest

#: Read-only fixtures shared between checkouts: /work/shared/fixtures next to the repo.
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def shared_fixture(*parts: str) -> Path:
    """Return the path of a shared fixture; skip the calling test if it is absent."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture not available: {path}")
    return path


@pytest.fixture
def shared_fixtures_dir() -> Path:
    """The shared fixtures directory (test skipped if it does not exist)."""
    return shared_fixture()
