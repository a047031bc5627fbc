"""Certificate identity: sources, chain verification, SPIFFE IDs.

* :mod:`endpointsec.identity.sources`: where the server puts the client certificate
  (ASGI TLS extension, WSGI ``SSL_CLIENT_CERT``, gunicorn's socket);
* :mod:`endpointsec.identity.verify`: :class:`X509ChainVerifier` (webpki, clientAuth,
  per-trust-domain bundles, a cache of verified chains);
* :mod:`endpointsec.identity.spiffe`: SPIFFE ID parsing;
* :mod:`endpointsec.identity.certs`: PEM/DER reading and :class:`PeerIdentity` building.
"""

from __future__ import annotations

from endpointsec.identity.certs import load_certificates, peer_identity
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import (
    ASGITLSSource,
    GunicornSource,
    WSGIEnvironSource,
    build_server_sources,
)
from endpointsec.identity.spiffe import SpiffeId, parse_spiffe_id
from endpointsec.identity.verify import TrustBundle, X509ChainVerifier

__all__ = [
    "ASGITLSSource",
    "GunicornSource",
    "IdentityConfig",
    "SpiffeId",
    "TrustBundle",
    "WSGIEnvironSource",
    "X509ChainVerifier",
    "build_server_sources",
    "load_certificates",
    "parse_spiffe_id",
    "peer_identity",
]
