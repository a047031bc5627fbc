"""endpointsec: zero-trust endpoint security inside the service process.

mTLS client identity, bearer-token verification and Casbin least-privilege
authorization, as ASGI and WSGI middleware. The documentation is the ``docs/`` folder
of the repository (a mkdocs site).

The names below are imported on first use, so that ``import endpointsec`` (and the
pytest plugin, which every pytest run of a project with endpointsec installed loads)
costs nothing measurable until something is used.
"""

from __future__ import annotations

import typing

from endpointsec._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
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

#: Where each exported name lives.
_LAZY: dict[str, str] = {
    "Config": "endpointsec.config",
    "RouteConfig": "endpointsec.config",
    "ServerConfig": "endpointsec.config",
    "load_config": "endpointsec.config",
    "config_schema": "endpointsec.config",
    "decide": "endpointsec.core",
    "AuthenticationError": "endpointsec.errors",
    "AuthorizationError": "endpointsec.errors",
    "CertificateError": "endpointsec.errors",
    "ConfigurationError": "endpointsec.errors",
    "EndpointSecError": "endpointsec.errors",
    "ForwardedCertificateError": "endpointsec.errors",
    "KeySetUnavailable": "endpointsec.errors",
    "PathError": "endpointsec.errors",
    "RequestError": "endpointsec.errors",
    "TokenError": "endpointsec.errors",
    "UpstreamError": "endpointsec.errors",
    "MTLS": "endpointsec.facts",
    "Decision": "endpointsec.facts",
    "PeerIdentity": "endpointsec.facts",
    "PolicyResult": "endpointsec.facts",
    "PresentedCertificate": "endpointsec.facts",
    "Principal": "endpointsec.facts",
    "RequestFacts": "endpointsec.facts",
    "RequestPrincipal": "endpointsec.facts",
    "Requirements": "endpointsec.facts",
    "TokenUse": "endpointsec.facts",
    "Gatekeeper": "endpointsec.gatekeeper",
    "SecurityContext": "endpointsec.gatekeeper",
    "ASGIMiddleware": "endpointsec.integrations.asgi",
    "WSGIMiddleware": "endpointsec.integrations.wsgi",
}


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY, __all__)
