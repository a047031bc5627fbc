"""A development PKI per test session, written to a temporary directory."""

from __future__ import annotations

import sys

import pytest
from identity_support import Pki

from endpointsec.testing.pki import CertificateAuthority


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(name="test root")
    other = CertificateAuthority.create(name="other root")
    return Pki(
        ca=ca,
        intermediate=ca.intermediate(),
        other_ca=other,
        bundle=ca.write_bundle(d / "ca.pem"),
        other_bundle=other.write_bundle(d / "other.pem"),
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the x509-limbo conformance counts when those tests ran."""
    limbo = sys.modules.get("test_limbo")
    lines = limbo.summary_lines() if limbo is not None else []
    if lines:
        terminalreporter.section("x509-limbo conformance")
        for line in lines:
            terminalreporter.write_line(line)
