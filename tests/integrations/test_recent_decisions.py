"""The ASGI recent-decisions fast path: an allowed decision is reused only for an
identical request, never past the certificate's or token's expiry or a policy reload,
and refusals are never reused."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from endpointsec import ASGIMiddleware, Gatekeeper, PeerIdentity, PresentedCertificate
from endpointsec.facts import PolicyResult, RequestPrincipal
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import ASGITLSSource
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

SPIFFE = "spiffe://test/orders"


class CountingVerifier(X509ChainVerifier):
    def __init__(self, *, config: IdentityConfig, not_after: dt.datetime | None = None) -> None:
        super().__init__(config=config)
        self.calls = 0
        self.not_after = not_after

    def verify(self, presented: PresentedCertificate) -> PeerIdentity:
        self.calls += 1
        peer = super().verify(presented)
        return replace(peer, not_after=self.not_after) if self.not_after else peer


class Policy:
    dry_run = False

    def __init__(self) -> None:
        self.generation = 0
        self.allowed = {SPIFFE}

    def normalize(self, raw_path: str) -> str:
        return raw_path

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        return frozenset()

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        ok = bool(self.allowed.intersection(subjects))
        return PolicyResult(allowed=ok, subjects=tuple(subjects))


class Tokens:
    """A token verifier that accepts any token and says it expires at ``exp``."""

    def __init__(self) -> None:
        self.exp = time.time() + 3600
        self.calls = 0

    def verify(self, token: str) -> RequestPrincipal:
        raise NotImplementedError

    async def averify(self, token: str) -> RequestPrincipal:
        self.calls += 1
        return RequestPrincipal(issuer="https://idp", subject=token, expires_at=self.exp)


class Reader:
    def read(self, headers: Sequence[tuple[bytes, bytes]], query: bytes) -> str | None:
        for name, value in headers:
            if name == b"authorization":
                return value.decode().removeprefix("Bearer ")
        return None


@pytest.fixture
def ca(tmp_path: Path) -> tuple[Path, IssuedCertificate]:
    authority = CertificateAuthority.create()
    return authority.write_bundle(tmp_path / "ca.pem"), authority.issue_client(spiffe_id=SPIFFE)


def build(ca: tuple[Path, IssuedCertificate], *, ttl: float = 1.0,
          not_after: dt.datetime | None = None) -> tuple[TestClient, CountingVerifier, Policy,
                                                           Tokens]:
    bundle, client = ca
    verifier = CountingVerifier(config=IdentityConfig(sources=("asgi-tls",),
                                                      trust_bundles=(bundle,)),
                                not_after=not_after)
    policy, tokens = Policy(), Tokens()
    gk = Gatekeeper(policy=policy, sources=[ASGITLSSource()], verifier=verifier,
                    token_verifier=tokens, token_reader=Reader(), decision_cache_ttl=ttl)

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.scope["endpointsec"].principal.peer.id)

    app = ASGIMiddleware(Starlette(routes=[Route("/orders", hello)]), gatekeeper=gk)
    pem = client.cert_pem.decode()

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("no_cert"):
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
        await app(scope, receive, send)

    return TestClient(with_tls), verifier, policy, tokens


def test_identical_requests_reuse_the_decision(ca: tuple[Path, IssuedCertificate]) -> None:
    client, verifier, _, tokens = build(ca)
    for _ in range(3):
        r = client.get("/orders", headers={"authorization": "Bearer alice"})
        assert r.status_code == 200
        assert r.text == SPIFFE
    assert (verifier.calls, tokens.calls) == (1, 1)


def test_a_different_token_or_path_is_decided_again(
        ca: tuple[Path, IssuedCertificate]) -> None:
    client, _, _, tokens = build(ca)
    client.get("/orders", headers={"authorization": "Bearer alice"})
    client.get("/orders", headers={"authorization": "Bearer bob"})
    client.get("/orders?x=1", headers={"authorization": "Bearer bob"})
    client.head("/orders", headers={"authorization": "Bearer bob"})
    assert tokens.calls == 4


def test_policy_reload_drops_remembered_decisions(ca: tuple[Path, IssuedCertificate]) -> None:
    client, _, policy, _ = build(ca)
    assert client.get("/orders").status_code == 200
    policy.allowed = set()
    policy.generation += 1
    assert client.get("/orders").status_code == 403


def test_refusals_are_never_reused(ca: tuple[Path, IssuedCertificate]) -> None:
    client, verifier, policy, _ = build(ca)
    policy.allowed = set()
    assert client.get("/orders").status_code == 403
    assert client.get("/orders").status_code == 403
    assert verifier.calls == 2


def test_never_past_the_token_expiry(ca: tuple[Path, IssuedCertificate]) -> None:
    client, _, _, tokens = build(ca, ttl=30)
    tokens.exp = time.time() + 0.3
    client.get("/orders", headers={"authorization": "Bearer alice"})
    time.sleep(0.4)
    client.get("/orders", headers={"authorization": "Bearer alice"})
    assert tokens.calls == 2


def test_never_past_the_certificate_expiry(ca: tuple[Path, IssuedCertificate]) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    client, verifier, _, _ = build(ca, ttl=30, not_after=soon)
    client.get("/orders")
    time.sleep(0.4)
    client.get("/orders")
    assert verifier.calls == 2


def test_ttl_zero_turns_it_off(ca: tuple[Path, IssuedCertificate]) -> None:
    client, verifier, _, _ = build(ca, ttl=0)
    client.get("/orders")
    client.get("/orders")
    assert verifier.calls == 2


def test_not_used_with_other_sources(gatekeeper: Gatekeeper) -> None:
    # gatekeeper (conftest) reads identity from a header source: no fast path.
    assert gatekeeper.recent_key_asgi({"type": "http", "headers": []}) is None


def test_cache_config_is_validated(tmp_path: Path) -> None:
    from endpointsec import ConfigurationError, load_config

    p = tmp_path / "e.toml"
    p.write_text("[policy]\nallow_authenticated = true\n[cache]\ndecisions_ttl = 600\n")
    with pytest.raises(ConfigurationError, match=r"cache\.decisions_ttl"):
        load_config(p)
    p.write_text("[policy]\nallow_authenticated = true\n[cache]\ndecisions_ttl = 0\n")
    assert load_config(p).cache.decisions_ttl == 0


def test_ttl_runs_on_the_monotonic_clock(ca: tuple[Path, IssuedCertificate],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import endpointsec.gatekeeper as gatekeeper_module

    client, verifier, _, _ = build(ca, ttl=0.2)
    frozen = time.time()
    # The wall clock stops (or jumps back): the TTL must still run out.
    monkeypatch.setattr(gatekeeper_module.time, "time", lambda: frozen)
    client.get("/orders")
    client.get("/orders")
    assert verifier.calls == 1
    time.sleep(0.3)
    client.get("/orders")
    assert verifier.calls == 2
