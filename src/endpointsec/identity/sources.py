"""Certificate sources provided by the server itself. (Stub: owned by the identity work.)"""

from __future__ import annotations

from endpointsec.identity.config import IdentityConfig
from endpointsec.protocols import CertificateSource

__all__ = ["build_server_sources"]


def build_server_sources(config: IdentityConfig) -> list[CertificateSource]:
    return []
