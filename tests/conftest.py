"""Shared pytest helpers."""

from pathlib import Path

import pytest

#: Test data that ships with the repository (see tests/fixtures/README.md for what made each file).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(*parts: str) -> Path:
    """Return the path of a file or folder under tests/fixtures/.

    The fixtures are part of the repository, so a missing one is a broken checkout: the calling
    test FAILS with the path it wanted (it is never skipped)."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test fixture missing from the checkout: {path} (it ships in tests/fixtures/)", pytrace=False)
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    """The tests/fixtures/ directory."""
    return fixture()


@pytest.fixture
def dynamo_limit():
    """torch._dynamo.config, its recompile limit restored and dynamo's caches reset after the test
    (building or warming a compiled recipe changes them for the whole process)."""
    import torch._dynamo
    import torch._dynamo.config as dcfg

    saved = {k: getattr(dcfg, k) for k in ("recompile_limit", "cache_size_limit") if hasattr(dcfg, k)}
    yield dcfg
    for k, v in saved.items():
        setattr(dcfg, k, v)
    torch._dynamo.reset()

