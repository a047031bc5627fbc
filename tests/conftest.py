from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_support import Postgres, Redis, postgres_bin, postgres_server, redis_server

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


# -- throwaway PostgreSQL and Redis servers (tests/storage_support.py) ---------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of its own (initdb into a temporary directory)."""
    pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg)")
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install "
                    "postgresql")
    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Redis]:
    """A Redis server of its own on a free port."""
    pytest.importorskip("redis", reason="needs the redis extra")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    with redis_server() as server:
        yield server


@pytest.fixture
def pg_table(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """A fresh table name per test (tests share the server, never a table)."""
    name = "rules_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    name = name.lower()
    postgres.execute(f'DROP TABLE IF EXISTS "{name}"')
    return name
