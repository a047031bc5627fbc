"""What the gatekeeper remembers never changes an answer.

A long-lived gatekeeper (warm: chains, tokens and policy views remembered) must decide
every request exactly as a gatekeeper built from scratch for that request (cold), while
time passes (tokens expire, an intermediate CA expires before its leaf), the policy is
reloaded and the trust bundle is replaced. Hypothesis draws the sequences; the clock is
a fake one shared by both gatekeepers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from endpointsec.facts import MTLS, Decision, Requirements, TokenUse
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.identity import verify as verify_module
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import ASGITLSSource
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.policy import CasbinPolicy
from endpointsec.routing import RouteTable
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate
from endpointsec.testing.tokens import TokenIssuer
from endpointsec.tokens.config import IssuerConfig, TokensConfig
from endpointsec.tokens.extract import BearerReader
from endpointsec.tokens.verifier import JWTVerifier

START = dt.datetime.now(dt.UTC).timestamp()

POLICIES = [
    "p, role:reader, *, /orders/:id, GET, allow\n"
    "p, spiffe://shop.test/web, *, /admin/*, *, allow\n",
    "p, role:reader, *, /orders/:id, GET, deny\n"
    "p, role:reader, *, /orders/*, *, allow\n"
    "p, spiffe://shop.test/batch, *, /orders/:id, DELETE, allow\n",
    "p, https://idp.test#user-1, *, /orders/:id, *, allow\n"
    "g, spiffe://shop.test/web, role:reader, *\n",
]


class FakeClock:
    """``time.time`` and ``time.monotonic`` for the verifier module and the tokens."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return START + self.offset

    def monotonic(self) -> float:
        return 1_000_000.0 + self.offset


@dataclass
class World:
    directory: Path
    roots: list[CertificateAuthority]
    leaves: list[tuple[IssuedCertificate, CertificateAuthority]]
    issuer: TokenIssuer
    tokens: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("caches")
    roots = [CertificateAuthority.create(name=f"root {i}") for i in range(2)]
    # An intermediate valid 180 days; leaves valid 400 days (the intermediate expires
    # first), and leaves issued by a root directly.
    inter = roots[0].intermediate()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    leaves = [
        (inter.issue_client(spiffe_id="spiffe://shop.test/web", not_after=later), inter),
        (roots[0].issue_client(spiffe_id="spiffe://shop.test/batch"), roots[0]),
        (roots[1].issue_client(spiffe_id="spiffe://shop.test/web"), roots[1]),
    ]
    issuer = TokenIssuer(issuer="https://idp.test")
    (d / "issuer.pem").write_bytes(issuer.public_key_pem)
    tokens = [
        issuer.issue(sub="user-1", roles=["reader"], exp=dt.timedelta(seconds=60)),
        issuer.issue(sub="user-2", roles=["reader"], exp=dt.timedelta(hours=2)),
        issuer.issue(sub="user-3", roles=["writer"], exp=dt.timedelta(hours=20)),
    ]
    return World(directory=d, roots=roots, leaves=leaves, issuer=issuer, tokens=tokens)


def _gatekeeper(world: World, clock: FakeClock) -> Gatekeeper:
    d = world.directory
    tokens = TokensConfig(issuers=(IssuerConfig(
        issuer=world.issuer.issuer, audiences=(world.issuer.audience,),
        algorithms=(world.issuer.algorithm,), public_key=d / "issuer.pem"),))
    return Gatekeeper(
        policy=CasbinPolicy(policy=d / "policy.csv"),
        sources=[ASGITLSSource()],
        verifier=X509ChainVerifier(config=IdentityConfig(
            sources=("asgi-tls",), trust_bundles=(d / "bundle.pem",), reload_interval=1.0)),
        token_verifier=JWTVerifier(config=tokens, clock=clock.time,
                                   monotonic=clock.monotonic),
        token_reader=BearerReader(),
        routes=RouteTable([("/public/*", frozenset(), Requirements(public=True))],
                          defaults=Requirements(mtls=MTLS.OPTIONAL, token=TokenUse.OPTIONAL)),
    )


def _scope(world: World, leaf: int | None, token: int | None, path: str,
           method: str) -> dict[str, Any]:
    headers = [(b"host", b"t")]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + world.tokens[token].encode()))
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path,
                             "raw_path": path.encode(), "query_string": b"",
                             "headers": headers}
    if leaf is not None:
        cert, _ = world.leaves[leaf]
        chain = [cert.cert_pem.decode(),
                 *(c.public_bytes(Encoding.PEM).decode() for c in cert.intermediates)]
        scope["extensions"] = {"tls": {"client_cert_chain": chain,
                                       "client_cert_error": None}}
    return scope


def _decide(gk: Gatekeeper, scope: dict[str, Any]) -> Decision:
    return gk.decide(asyncio.run(gk.gather_asgi(scope)))


def _write_bundle(world: World, which: tuple[int, ...]) -> None:
    path = world.directory / "bundle.pem"
    path.write_bytes(b"".join(world.roots[i].cert_pem for i in which))


op = st.one_of(
    st.tuples(st.just("request"), st.sampled_from([None, 0, 1, 2]),
              st.sampled_from([None, 0, 1, 2]),
              st.sampled_from(["/orders/1", "/orders/2", "/orders/9/x", "/admin/a",
                               "/public/x"]),
              st.sampled_from(["GET", "DELETE", "POST"])),
    st.tuples(st.just("advance"),
              st.sampled_from([5.0, 90.0, 3 * 3600.0, 21 * 3600.0, 181 * 86400.0])),
    st.tuples(st.just("policy"), st.integers(0, len(POLICIES) - 1)),
    st.tuples(st.just("bundle"), st.sampled_from([(0,), (1,), (0, 1)])),
)


# Each remembered thing against the event that must end it, always tried.
TOKEN_EXPIRES = [("request", 1, 0, "/orders/1", "GET"), ("advance", 90.0),
                 ("request", 1, 0, "/orders/1", "GET")]
INTERMEDIATE_EXPIRES = [("request", 0, None, "/admin/a", "GET"), ("advance", 181 * 86400.0),
                        ("request", 0, None, "/admin/a", "GET")]
BUNDLE_DROPS_A_ROOT = [("request", 1, None, "/orders/1", "DELETE"), ("policy", 1),
                       ("request", 1, None, "/orders/1", "DELETE"), ("bundle", (1,)),
                       ("request", 1, None, "/orders/1", "DELETE")]
POLICY_RELOADS = [("request", 1, 1, "/orders/2", "GET"), ("policy", 1),
                  ("request", 1, 1, "/orders/2", "GET"), ("policy", 2),
                  ("request", 0, 0, "/orders/2", "GET")]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=3, max_size=14))
@example(ops=TOKEN_EXPIRES)
@example(ops=INTERMEDIATE_EXPIRES)
@example(ops=BUNDLE_DROPS_A_ROOT)
@example(ops=POLICY_RELOADS)
def test_warm_gatekeeper_decides_as_a_cold_one(world: World, ops: list[Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(verify_module, "time", clock)
    (world.directory / "policy.csv").write_text(POLICIES[0])
    _write_bundle(world, (0, 1))
    warm = _gatekeeper(world, clock)
    for item in ops:
        kind = item[0]
        if kind == "advance":
            clock.offset += item[1]
        elif kind == "policy":
            (world.directory / "policy.csv").write_text(POLICIES[item[1]])
            warm.policy.reload()  # type: ignore[attr-defined]
        elif kind == "bundle":
            _write_bundle(world, item[1])
            clock.offset += 1.5  # past reload_interval: the next check sees the change
        else:
            _, leaf, token, path, method = item
            scope = _scope(world, leaf, token, path, method)
            cold = _gatekeeper(world, clock)
            want, got = _decide(cold, scope), _decide(warm, dict(scope))
            assert (got.status, got.allowed, got.matched_rule, got.subjects) == (
                want.status, want.allowed, want.matched_rule, want.subjects), (
                item, clock.offset, got.explain(), want.explain())
            assert (got.principal.peer is None) == (want.principal.peer is None)


def test_token_cache_is_bounded_in_bytes_and_reclaims_expired_entries() -> None:
    from endpointsec.facts import RequestPrincipal
    from endpointsec.tokens.cache import VerifiedTokenCache

    now = [1000.0]
    cache = VerifiedTokenCache(max_size=1000, max_bytes=64 * 1024, clock=lambda: now[0])
    principal = RequestPrincipal(issuer="https://i", subject="s")
    for i in range(200):  # 200 tokens of 1 KiB: 400 KiB counted, more than the budget
        cache.put(f"{i:04d}" + "x" * 1020, principal, expires_at=now[0] + 60)
        assert cache.bytes <= 64 * 1024
    assert 0 < len(cache) <= 32
    now[0] += 120  # every entry has expired: the next insertion reclaims them all
    cache.put("fresh", principal, expires_at=now[0] + 60)
    assert len(cache) == 1 and cache.bytes == 10


def test_policy_views_are_bounded_in_bytes(tmp_path: Path) -> None:
    policy_file = tmp_path / "p.csv"
    policy_file.write_text("p, role:reader, *, /orders/:id, GET, allow\n")
    policy = CasbinPolicy(policy=policy_file)
    views = policy._snapshot._views  # type: ignore[attr-defined]
    for i in range(300):  # callers with 64 KiB user subjects: 19 MiB in all
        subjects = (f"https://idp#{i}" + "u" * 64 * 1024, "role:reader")
        assert policy.evaluate(subjects=subjects, resource="/orders/1", action="GET").allowed
        assert views.bytes <= views.max_bytes
    assert len(views) < 300


def test_chain_cache_is_bounded_in_bytes(world: World, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(verify_module, "_CACHE_BYTES", 3 * 1024)
    _write_bundle(world, (0, 1))
    verifier = X509ChainVerifier(config=IdentityConfig(
        sources=("asgi-tls",), trust_bundles=(world.directory / "bundle.pem",)))
    from endpointsec.facts import PresentedCertificate

    for cert, _ in world.leaves * 3:
        verifier.verify(PresentedCertificate(
            leaf=cert.der, intermediates=tuple(c.public_bytes(Encoding.DER)
                                               for c in cert.intermediates)))
        assert verifier._cache.bytes <= 3 * 1024  # type: ignore[attr-defined]
    assert 0 < verifier.cache_len <= 3
