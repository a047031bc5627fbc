"""Testing helpers: a development PKI, a token issuer, identity-aware test clients,
assertions on decisions and table-driven policy suites.

Everything here works without pytest; the pytest plugin
(:mod:`endpointsec.testing.plugin`, registered through the ``pytest11`` entry point)
wraps these helpers in fixtures. See ``docs/testing.md``.
"""

from __future__ import annotations

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
