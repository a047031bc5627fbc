"""Fixtures of the fault tests: a PKI per module, a policy file, a failing JWKS endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_support import POLICY, FaultsPki, JWKSEndpoint, RotatingIssuer, build_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FaultsPki:
    return build_pki(tmp_path_factory.mktemp("faults-pki"))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text(POLICY)
    return path


@pytest.fixture
def issuer() -> RotatingIssuer:
    return RotatingIssuer("https://issuer.faults.test")


@pytest.fixture
def endpoint(issuer: RotatingIssuer) -> Iterator[JWKSEndpoint]:
    ep = JWKSEndpoint(issuer=issuer).start()
    try:
        yield ep
    finally:
        ep.stop()
