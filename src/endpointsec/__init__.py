"""endpointsec: zero-trust endpoint security inside the service process.

mTLS client identity, bearer-token verification and Casbin least-privilege
authorization, as ASGI and WSGI middleware. See https://endpointsec.readthedocs.io
(the ``docs/`` folder of the repository).
"""

from __future__ import annotations

from endpointsec.config import Config, RouteConfig, ServerConfig, config_schema, load_config
from endpointsec.core import decide
from endpointsec.errors import (
    AuthenticationError,
    AuthorizationError,
    CertificateError,
    ConfigurationError,
    EndpointSecError,
    ForwardedCertificateError,
    KeySetUnavailable,
    PathError,
    RequestError,
    TokenError,
    UpstreamError,
)
from endpointsec.facts import (
    MTLS,
    Decision,
    PeerIdentity,
    PolicyResult,
    PresentedCertificate,
    Principal,
    RequestFacts,
    RequestPrincipal,
    Requirements,
    TokenUse,
)
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.wsgi import WSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "MTLS",
    "ASGIMiddleware",
    "AuthenticationError",
    "AuthorizationError",
    "CertificateError",
    "Config",
    "ConfigurationError",
    "Decision",
    "EndpointSecError",
    "ForwardedCertificateError",
    "Gatekeeper",
    "KeySetUnavailable",
    "PathError",
    "PeerIdentity",
    "PolicyResult",
    "PresentedCertificate",
    "Principal",
    "RequestError",
    "RequestFacts",
    "RequestPrincipal",
    "Requirements",
    "RouteConfig",
    "SecurityContext",
    "ServerConfig",
    "TokenError",
    "TokenUse",
    "UpstreamError",
    "WSGIMiddleware",
    "__version__",
    "config_schema",
    "decide",
    "load_config",
]
