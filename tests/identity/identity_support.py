"""Shared helpers for the identity tests (imported by conftest and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from endpointsec.facts import PresentedCertificate
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    intermediate: CertificateAuthority
    other_ca: CertificateAuthority
    bundle: Path
    other_bundle: Path


def presented(cert: IssuedCertificate, *, source: str = "test",
              **kwargs: object) -> PresentedCertificate:
    """The chain as a server would hand it over (leaf + intermediates, DER)."""
    return PresentedCertificate(
        leaf=cert.der,
        intermediates=tuple(c.public_bytes(serialization.Encoding.DER)
                            for c in cert.intermediates),
        source=source,
        **kwargs,  # type: ignore[arg-type]
    )


