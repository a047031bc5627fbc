"""Chain verification. (Stub: owned by the identity work.)"""

from __future__ import annotations

from endpointsec.errors import CertificateError
from endpointsec.facts import PeerIdentity, PresentedCertificate
from endpointsec.identity.config import IdentityConfig

__all__ = ["X509ChainVerifier"]


class X509ChainVerifier:
    def __init__(self, *, config: IdentityConfig) -> None:
        self.config = config

    def verify(self, presented: PresentedCertificate) -> PeerIdentity:
        raise CertificateError("not implemented")

    def identify(self, presented: PresentedCertificate) -> PeerIdentity:
        raise CertificateError("not implemented")
