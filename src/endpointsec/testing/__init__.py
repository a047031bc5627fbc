"""Testing helpers: a development PKI, a token issuer, identity-aware test clients,
assertions on decisions and table-driven policy suites.

Everything here works without pytest; the pytest plugin
(:mod:`endpointsec.testing.plugin`, registered through the ``pytest11`` entry point)
wraps these helpers in fixtures. See ``docs/testing.md``.

The names below are imported on first use: the pytest plugin lives in this package, and
loading it must not import the helpers until a fixture needs them.
"""

from __future__ import annotations

import typing

from endpointsec._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from endpointsec.testing.assertions import (
        POLICY_ONLY,
        assert_allowed,
        assert_denied,
        evaluate,
        facts_for,
    )
    from endpointsec.testing.clients import (
        TLSExtensionShim,
        asgi_client,
        asgi_transport,
        auth_headers,
        tls_extension,
        wsgi_client,
        wsgi_environ,
    )
    from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate, generate_key
    from endpointsec.testing.principals import cnf_thumbprint, peer_identity, request_principal
    from endpointsec.testing.suites import (
        CaseResult,
        PolicyCase,
        Suite,
        SuitePrincipal,
        SuiteResult,
        load_cases,
        load_suite,
    )
    from endpointsec.testing.tokens import TokenIssuer

__all__ = [
    "POLICY_ONLY",
    "CaseResult",
    "CertificateAuthority",
    "IssuedCertificate",
    "PolicyCase",
    "Suite",
    "SuitePrincipal",
    "SuiteResult",
    "TLSExtensionShim",
    "TokenIssuer",
    "asgi_client",
    "asgi_transport",
    "assert_allowed",
    "assert_denied",
    "auth_headers",
    "cnf_thumbprint",
    "evaluate",
    "facts_for",
    "generate_key",
    "load_cases",
    "load_suite",
    "peer_identity",
    "request_principal",
    "tls_extension",
    "wsgi_client",
    "wsgi_environ",
]

#: Where each exported name lives.
_LAZY: dict[str, str] = {
    "POLICY_ONLY": "endpointsec.testing.assertions",
    "assert_allowed": "endpointsec.testing.assertions",
    "assert_denied": "endpointsec.testing.assertions",
    "evaluate": "endpointsec.testing.assertions",
    "facts_for": "endpointsec.testing.assertions",
    "TLSExtensionShim": "endpointsec.testing.clients",
    "asgi_client": "endpointsec.testing.clients",
    "asgi_transport": "endpointsec.testing.clients",
    "auth_headers": "endpointsec.testing.clients",
    "tls_extension": "endpointsec.testing.clients",
    "wsgi_client": "endpointsec.testing.clients",
    "wsgi_environ": "endpointsec.testing.clients",
    "CertificateAuthority": "endpointsec.testing.pki",
    "IssuedCertificate": "endpointsec.testing.pki",
    "generate_key": "endpointsec.testing.pki",
    "cnf_thumbprint": "endpointsec.testing.principals",
    "peer_identity": "endpointsec.testing.principals",
    "request_principal": "endpointsec.testing.principals",
    "CaseResult": "endpointsec.testing.suites",
    "PolicyCase": "endpointsec.testing.suites",
    "Suite": "endpointsec.testing.suites",
    "SuitePrincipal": "endpointsec.testing.suites",
    "SuiteResult": "endpointsec.testing.suites",
    "load_cases": "endpointsec.testing.suites",
    "load_suite": "endpointsec.testing.suites",
    "TokenIssuer": "endpointsec.testing.tokens",
}


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY, __all__)
