"""Certificates forwarded by a trusted TLS-terminating proxy. (Owned by the proxy work.)"""

from __future__ import annotations

from dataclasses import dataclass

from endpointsec._config import Table
from endpointsec.protocols import CertificateSource

__all__ = ["ProxyConfig"]


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """``[proxy]``: trusted proxies and the forwarded-certificate sources they use."""

    @classmethod
    def from_table(cls, t: Table) -> ProxyConfig:
        t.finish()
        return cls()


def build_proxy_sources(config: ProxyConfig) -> list[CertificateSource]:
    return []
