"""Fakes for middleware unit tests: a source that reads a test header, a verifier that
maps DER bytes to identities. Real certificates over real TLS are in tests/servers/."""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest

from endpointsec import CertificateError, Gatekeeper, PeerIdentity, PresentedCertificate
from endpointsec.facts import PolicyResult, Requirements
from endpointsec.identity.spiffe import SpiffeId
from endpointsec.routing import RouteTable


class HeaderSource:
    """Reads ``x-test-cert`` (ASGI) / ``HTTP_X_TEST_CERT`` (WSGI) as the leaf bytes."""

    name = "test"

    def from_asgi(self, scope: MutableMapping[str, Any]) -> PresentedCertificate | None:
        for k, v in scope.get("headers", ()):
            if k == b"x-test-cert":
                return PresentedCertificate(leaf=v, source=self.name)
        return None

    def from_wsgi(self, environ: MutableMapping[str, Any]) -> PresentedCertificate | None:
        v = environ.get("HTTP_X_TEST_CERT")
        return None if v is None else PresentedCertificate(leaf=v.encode(), source=self.name)

    def scrub_asgi(self, scope: MutableMapping[str, Any]) -> None:
        scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k != b"x-test-cert"]

    def scrub_wsgi(self, environ: MutableMapping[str, Any]) -> None:
        environ.pop("HTTP_X_TEST_CERT", None)


class FakeVerifier:
    def verify(self, presented: PresentedCertificate) -> PeerIdentity:
        if presented.leaf.startswith(b"bad"):
            raise CertificateError("certificate has expired")
        if presented.leaf == b"crash":
            raise ZeroDivisionError
        name = presented.leaf.decode()
        return PeerIdentity(subject=f"CN={name}", uri_sans=(f"spiffe://test/{name}",),
                            spiffe_id=SpiffeId("test", f"/{name}"),
                            fingerprint_sha256=hashlib.sha256(presented.leaf).hexdigest())

    identify = verify


class SubjectPolicy:
    dry_run = False

    def __init__(self, rules: Sequence[tuple[str, str, str]]) -> None:
        self.rules = set(rules)

    def normalize(self, raw_path: str) -> str:
        from endpointsec.errors import PathError

        if "%00" in raw_path:
            raise PathError("NUL in path")
        return raw_path

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        return frozenset()

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        for s in subjects:
            if (s, resource, action) in self.rules:
                return PolicyResult(allowed=True, matched_rule=(s, resource, action),
                                    subjects=tuple(subjects))
        return PolicyResult(allowed=False, subjects=tuple(subjects), reason="no rule matched")


@pytest.fixture
def gatekeeper() -> Gatekeeper:
    return Gatekeeper(
        policy=SubjectPolicy([("spiffe://test/orders", "/orders", "GET"),
                              ("spiffe://test/orders", "/ws", "GET")]),
        sources=[HeaderSource()],
        verifier=FakeVerifier(),
        routes=RouteTable([("/healthz", frozenset(), Requirements(public=True))]),
    )
