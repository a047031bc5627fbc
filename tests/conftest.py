from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"shared conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
