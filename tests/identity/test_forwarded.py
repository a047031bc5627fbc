"""Forwarded-certificate sources: configuration, the trusted-peer rule, scrubbing, each
proxy's header, and the whole gatekeeper (ASGI and WSGI middleware in process, with
the real X509ChainVerifier). Real nginx and HAProxy are in tests/proxies/."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from endpointsec import (
    ASGIMiddleware,
    Config,
    ConfigurationError,
    ForwardedCertificateError,
    Gatekeeper,
    PresentedCertificate,
    Requirements,
    WSGIMiddleware,
    load_config,
)
from endpointsec._config import Table
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.forwarded import (
    PROXY_SOURCES,
    ProxyConfig,
    TrustedPeers,
    build_proxy_sources,
)
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.policy import AllowAuthenticated
from endpointsec.routing import RouteTable
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

SPIFFE = "spiffe://example.org/ns/shop/sa/orders"


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    #: Issued by the intermediate: sources that forward the chain.
    leaf: IssuedCertificate
    #: Issued by the root: sources that forward only the leaf (nginx, HAProxy, ALB
    #: verify mode, Caddy) need the issuer in the trust bundle.
    direct: IssuedCertificate
    inter_der: bytes
    stranger: IssuedCertificate
    bundle: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority.create(name="forwarded root")
    inter = ca.intermediate()
    other = CertificateAuthority.create(name="stranger root")
    d = tmp_path_factory.mktemp("fwd-pki")
    return Pki(
        ca=ca,
        leaf=inter.issue_client(spiffe_id=SPIFFE),
        direct=ca.issue_client(spiffe_id=SPIFFE),
        inter_der=inter.certificate.public_bytes(Encoding.DER),
        stranger=other.issue_client(spiffe_id=SPIFFE),
        bundle=ca.write_bundle(d / "ca.pem"),
    )


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def pem(der: bytes) -> str:
    body = b64(der)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def config(**kw: Any) -> ProxyConfig:
    kw.setdefault("trusted", ("127.0.0.1/32",))
    return ProxyConfig(**kw)


def scope(headers: Iterable[tuple[str, str]], client: Any = ("127.0.0.1", 5000)) -> dict[str, Any]:
    return {
        "type": "http", "method": "GET", "path": "/orders", "raw_path": b"/orders",
        "query_string": b"", "client": client,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }


def environ(headers: Iterable[tuple[str, str]], remote: str | None = "127.0.0.1"
            ) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/orders",
                           "QUERY_STRING": "", "SERVER_NAME": "t", "SERVER_PORT": "80",
                           "wsgi.url_scheme": "http"}
    if remote is not None:
        env["REMOTE_ADDR"] = remote
    for k, v in headers:
        env["HTTP_" + k.upper().replace("-", "_")] = v
    return env


def only_source(cfg: ProxyConfig) -> Any:
    sources = build_proxy_sources(cfg)
    assert len(sources) == 1
    return sources[0]


# -- configuration ---------------------------------------------------------------------


def read(data: dict[str, Any]) -> ProxyConfig:
    return ProxyConfig.from_table(Table(data, key="proxy"))


def test_config_defaults_and_overrides() -> None:
    cfg = read({"trusted": ["10.0.0.0/8", "unix"], "sources": ["xfcc", "nginx"],
                "headers": {"nginx": "X-Client-Cert"}})
    assert cfg.trusted == ("10.0.0.0/8", "unix")
    assert cfg.hops == 1
    assert cfg.verify_again is True
    assert cfg.header("nginx") == "x-client-cert"
    assert cfg.header("nginx-verify") == "x-ssl-client-verify"
    assert cfg.header("xfcc") == "x-forwarded-client-cert"


def test_config_through_the_whole_file() -> None:
    cfg = Config.from_mapping({"proxy": {"trusted": "127.0.0.1", "sources": "haproxy"}})
    assert cfg.proxy is not None
    assert cfg.proxy.sources == ("haproxy",)


CONFIG_ERRORS = [
    pytest.param({"sources": ["xfcc"]}, "proxy.trusted", id="trusted-required"),
    pytest.param({"trusted": [], "sources": ["xfcc"]}, "proxy.trusted", id="trusted-empty"),
    pytest.param({"trusted": ["localhost"], "sources": ["xfcc"]}, "proxy.trusted",
                 id="trusted-hostname"),
    pytest.param({"trusted": ["127.0.0.1/8"], "sources": ["xfcc"]}, "proxy.trusted",
                 id="trusted-host-bits-set"),
    pytest.param({"trusted": ["0.0.0.0/0"], "sources": ["xfcc"]}, "every address",
                 id="trusted-everyone-v4"),
    pytest.param({"trusted": ["::/0"], "sources": ["xfcc"]}, "every address",
                 id="trusted-everyone-v6"),
    pytest.param({"trusted": ["unix"]}, "proxy.sources", id="sources-required"),
    pytest.param({"trusted": ["unix"], "sources": []}, "proxy.sources", id="sources-empty"),
    pytest.param({"trusted": ["unix"], "sources": ["apache"]}, "unknown source",
                 id="unknown-source"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc", "xfcc"]}, "twice",
                 id="duplicate-source"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "hops": 0}, "proxy.hops",
                 id="hops-zero"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "hops": True}, "proxy.hops",
                 id="hops-boolean"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "headers": {"envoy": "x"}},
                 "proxy.headers.envoy", id="unknown-header-role"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "headers": {"xfcc": "a b"}},
                 "proxy.headers.xfcc", id="bad-header-name"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "headers": {"xfcc": "x_client"}},
                 "instead of '_'", id="underscore-header-name"),
    pytest.param({"trusted": ["unix"], "sources": ["nginx", "haproxy"]}, "both read",
                 id="two-sources-one-header"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc", "traefik"],
                  "headers": {"traefik": "X-Forwarded-Client-Cert"}}, "both read",
                 id="override-collides"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc", "caddy"], "verify_again": False},
                 "proxy.verify_again", id="verify-again-false-without-status-source"),
    pytest.param({"trusted": ["unix"], "sources": ["xfcc"], "typo": 1}, "proxy.typo",
                 id="unknown-key"),
]


@pytest.mark.parametrize(("data", "message"), CONFIG_ERRORS)
def test_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        read(data)


# -- the trusted peer --------------------------------------------------------------------

ASGI_PEERS = [
    pytest.param(("127.0.0.1", 1), True, id="v4-in-range"),
    pytest.param(["127.0.0.1", 1], True, id="list-form"),
    pytest.param(("127.0.0.2", 1), False, id="v4-outside"),
    pytest.param(("::ffff:127.0.0.1", 1), True, id="v4-mapped-v6"),
    pytest.param(("fd00::1", 1), True, id="v6-in-range"),
    pytest.param(("fd01::1", 1), False, id="v6-outside"),
    pytest.param(("testclient", 50000), False, id="not-an-address"),
    pytest.param(None, True, id="unix-socket"),
    pytest.param(("", 0), False, id="empty-host"),
    pytest.param((None, 0), False, id="host-none"),
]


@pytest.mark.parametrize(("client", "trusted"), ASGI_PEERS)
def test_trusted_peer_asgi(client: Any, trusted: bool) -> None:
    peers = TrustedPeers(trusted=("127.0.0.1/32", "fd00::/16", "unix"))
    assert peers.asgi({"client": client}) is trusted


def test_unix_peer_needs_unix_in_trusted() -> None:
    assert TrustedPeers(trusted=("127.0.0.1/32",)).asgi({"client": None}) is False
    assert TrustedPeers(trusted=("127.0.0.1/32",)).wsgi({}) is False


WSGI_PEERS = [
    pytest.param("127.0.0.1", True, id="v4-in-range"),
    pytest.param("10.0.0.1", False, id="v4-outside"),
    pytest.param("fd00::1", True, id="v6"),
    pytest.param("", True, id="gunicorn-unix-socket"),
    pytest.param("<local>", True, id="werkzeug-unix-socket"),
    pytest.param(None, True, id="missing"),
    pytest.param("127.0.0.1, 10.0.0.1", False, id="list-is-not-an-address"),
]


@pytest.mark.parametrize(("remote", "trusted"), WSGI_PEERS)
def test_trusted_peer_wsgi(remote: str | None, trusted: bool) -> None:
    peers = TrustedPeers(trusted=("127.0.0.1/32", "fd00::/16", "unix"))
    env = {} if remote is None else {"REMOTE_ADDR": remote}
    assert peers.wsgi(env) is trusted


# -- each source reads its proxy's header -------------------------------------------


LEAF_ONLY = frozenset({"nginx", "haproxy", "alb", "caddy"})


def _leaf(kind: str, p: Pki) -> bytes:
    return (p.direct if kind in LEAF_ONLY else p.leaf).der


def _headers_for(kind: str, p: Pki) -> list[tuple[str, str]]:
    leaf, inter = _leaf(kind, p), p.inter_der
    h = hashlib.sha256(leaf).hexdigest()
    return {
        "xfcc": [("x-forwarded-client-cert",
                  f'By=spiffe://example.org/ns/shop/sa/api;Hash={h};'
                  f'Chain="{quote(pem(leaf) + pem(inter), safe="")}";URI={SPIFFE}')],
        "client-cert": [("client-cert", f":{b64(leaf)}:"),
                        ("client-cert-chain", f":{b64(inter)}:")],
        "nginx": [("x-ssl-client-cert", quote(pem(leaf), safe="")),
                  ("x-ssl-client-verify", "SUCCESS")],
        "traefik": [("x-forwarded-tls-client-cert", quote(f"{b64(leaf)},{b64(inter)}", safe=""))],
        "haproxy": [("x-ssl-client-der", b64(leaf)), ("x-ssl-client-verify", "0")],
        "alb": [("x-amzn-mtls-clientcert-leaf", quote(pem(leaf), safe="+=/"))],
        "alb-passthrough": [("x-amzn-mtls-clientcert", quote(pem(leaf) + pem(inter),
                                                               safe="+=/"))],
        "caddy": [("x-client-cert-der", b64(leaf))],
    }[kind]


# kind, carries intermediates, upstream_verified
SOURCES = [
    pytest.param("xfcc", True, None, id="xfcc"),
    pytest.param("client-cert", True, None, id="rfc9440"),
    pytest.param("nginx", False, True, id="nginx"),
    pytest.param("traefik", True, None, id="traefik"),
    pytest.param("haproxy", False, True, id="haproxy"),
    pytest.param("alb", False, True, id="alb-verify"),
    pytest.param("alb-passthrough", True, None, id="alb-passthrough"),
    pytest.param("caddy", False, None, id="caddy"),
]


@pytest.mark.parametrize(("kind", "chain", "verified"), SOURCES)
def test_source_reads_trusted_peer(pki: Pki, kind: str, chain: bool,
                                   verified: bool | None) -> None:
    src = only_source(config(sources=(kind,)))
    headers = _headers_for(kind, pki)
    for presented in (src.from_asgi(scope(headers)), src.from_wsgi(environ(headers))):
        assert isinstance(presented, PresentedCertificate)
        assert presented.leaf == _leaf(kind, pki)
        assert presented.intermediates == ((pki.inter_der,) if chain else ())
        assert presented.source == kind
        assert presented.upstream_verified is verified
        assert presented.trusted_upstream is False
    # Nothing is read, and nothing is an error, when the header is absent.
    assert src.from_asgi(scope([("x-other", "1")])) is None
    assert src.from_wsgi(environ([("x-other", "1")])) is None


@pytest.mark.parametrize(("kind", "chain", "verified"), SOURCES)
def test_source_ignores_and_scrubs_untrusted_peer(pki: Pki, kind: str, chain: bool,
                                                  verified: bool | None) -> None:
    src = only_source(config(sources=(kind,)))
    headers = [*_headers_for(kind, pki), ("x-other", "kept")]
    s = scope(headers, client=("203.0.113.9", 4000))
    assert src.from_asgi(s) is None
    src.scrub_asgi(s)
    assert s["headers"] == [(b"x-other", b"kept")]
    e = environ(headers, remote="203.0.113.9")
    assert src.from_wsgi(e) is None
    src.scrub_wsgi(e)
    assert [k for k in e if k.startswith("HTTP_")] == ["HTTP_X_OTHER"]


@pytest.mark.parametrize(("kind", "chain", "verified"), SOURCES)
def test_trusted_peer_headers_stay_visible(pki: Pki, kind: str, chain: bool,
                                           verified: bool | None) -> None:
    src = only_source(config(sources=(kind,)))
    headers = _headers_for(kind, pki)
    s = scope(headers)
    before = list(s["headers"])
    src.scrub_asgi(s)
    assert s["headers"] == before
    e = environ(headers)
    before_env = dict(e)
    src.scrub_wsgi(e)
    assert e == before_env


def test_underscore_spelling_is_never_read_and_always_scrubbed_asgi(pki: Pki) -> None:
    # A client's X-Forwarded_Client-Cert passing through a proxy that only replaced
    # X-Forwarded-Client-Cert: a WSGI/Django bridge would fold both into one key.
    src = only_source(config(sources=("caddy",)))
    forged = ("x-client_cert-der", b64(pki.stranger.der))
    s = scope([forged])
    assert src.from_asgi(s) is None
    s = scope([("x-client-cert-der", b64(pki.leaf.der)), forged])
    presented = src.from_asgi(s)
    assert presented is not None and presented.leaf == pki.leaf.der
    src.scrub_asgi(s)
    assert s["headers"] == [(b"x-client-cert-der", b64(pki.leaf.der).encode())]


def test_underscore_spelling_is_scrubbed_wsgi_untrusted(pki: Pki) -> None:
    src = only_source(config(sources=("xfcc",)))
    # X-Forwarded_Client-Cert and X-Forwarded-Client-Cert share one environ key.
    e = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_CLIENT_CERT": "By=a;URI=b"}
    src.scrub_wsgi(e)
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in e


def test_empty_header_means_no_certificate(pki: Pki) -> None:
    # nginx/HAProxy/Cloudflare send an empty value when the client sent no certificate.
    for kind, headers in [("haproxy", [("x-ssl-client-der", ""),
                                       ("x-ssl-client-verify", "0")]),
                          ("nginx", [("x-ssl-client-cert", ""),
                                     ("x-ssl-client-verify", "NONE")]),
                          ("client-cert", [("client-cert", "")]),
                          ("xfcc", [("x-forwarded-client-cert", "")])]:
        src = only_source(config(sources=(kind,)))
        assert src.from_asgi(scope(headers)) is None, kind


# -- refusals from a trusted peer ----------------------------------------------------------


def _refusals(p: Pki) -> list[Any]:
    leaf = p.leaf.der
    h = hashlib.sha256(leaf).hexdigest()
    cert = f'Cert="{quote(pem(leaf), safe="")}"'
    other = f'Cert="{quote(pem(p.stranger.der), safe="")}"'
    return [
        pytest.param("nginx", [("x-ssl-client-cert", quote(pem(leaf), safe=""))],
                     "without its verification status", id="nginx-status-missing"),
        pytest.param("nginx", [("x-ssl-client-cert", quote(pem(leaf), safe="")),
                               ("x-ssl-client-verify", "FAILED:unable to get issuer")],
                     "did not verify", id="nginx-failed-optional-no-ca"),
        pytest.param("nginx", [("x-ssl-client-cert", quote(pem(leaf), safe="")),
                               ("x-ssl-client-verify", "NONE")],
                     "did not verify", id="nginx-none-with-a-certificate"),
        pytest.param("nginx", [("x-ssl-client-cert", quote(pem(leaf), safe="")),
                               ("x-ssl-client-verify", "success")],
                     "did not verify", id="nginx-status-case-matters"),
        pytest.param("haproxy", [("x-ssl-client-der", b64(leaf)),
                                 ("x-ssl-client-verify", "20")],
                     "did not verify", id="haproxy-verify-error"),
        pytest.param("haproxy", [("x-ssl-client-der", b64(leaf)),
                                 ("x-ssl-client-verify", "0"), ("x-ssl-client-verify", "0")],
                     "2 times", id="haproxy-status-twice"),
        pytest.param("caddy", [("x-client-cert-der", b64(leaf)),
                               ("x-client-cert-der", b64(p.stranger.der))],
                     "2 times", id="caddy-header-twice"),
        pytest.param("xfcc", [("x-forwarded-client-cert", f"Hash={h};URI={SPIFFE}")],
                     "no Cert or Chain", id="xfcc-without-cert"),
        pytest.param("xfcc", [("x-forwarded-client-cert", f"Hash={'0' * 64};{cert}")],
                     "Hash does not match", id="xfcc-hash-mismatch"),
        pytest.param("xfcc", [("x-forwarded-client-cert",
                               f'{cert};Chain="{quote(pem(p.stranger.der), safe="")}"')],
                     "differ", id="xfcc-cert-chain-disagree"),
        pytest.param("xfcc", [("x-forwarded-client-cert", f"{cert};{other}")],
                     "repeats", id="xfcc-two-certs-in-one-element"),
        pytest.param("xfcc", [("x-forwarded-client-cert", _element(p.stranger.der, "c")),
                              ("x-forwarded-client-cert", _element(leaf, "proxy"))],
                     "2 times", id="xfcc-two-lines"),
        pytest.param("xfcc", [("x-forwarded-client-cert", _element(leaf, "proxy")),
                              ("x-forwarded-client-cert", "")],
                     "2 times", id="xfcc-two-lines-second-empty"),
        pytest.param("xfcc", [("x-forwarded-client-cert", ""),
                              ("x-forwarded-client-cert", _element(leaf, "proxy"))],
                     "2 times", id="xfcc-two-lines-first-empty"),
        pytest.param("traefik", [("x-forwarded-tls-client-cert", b64(p.stranger.der)),
                                 ("x-forwarded-tls-client-cert", b64(leaf))],
                     "2 times", id="traefik-two-lines"),
        pytest.param("traefik", [("x-forwarded-tls-client-cert", b64(leaf)),
                                 ("x-forwarded-tls-client-cert", "")],
                     "2 times", id="traefik-two-lines-one-empty"),
        pytest.param("traefik", [("x-forwarded-tls-client-cert",
                                  f"{b64(p.stranger.der)},{b64(leaf)}")],
                     "second end-entity", id="traefik-two-leaves"),
        pytest.param("traefik", [("x-forwarded-tls-client-cert",
                                  f"{b64(leaf)},{b64(p.inter_der)},{b64(p.direct.der)}")],
                     "second end-entity", id="traefik-leaf-after-the-intermediate"),
        pytest.param("client-cert", [("client-cert-chain", f":{b64(p.inter_der)}:")],
                     "without Client-Cert", id="rfc9440-chain-alone"),
        pytest.param("client-cert", [("client-cert", f":{b64(leaf)}:"),
                                     ("client-cert", f":{b64(leaf)}:")],
                     "2 times", id="rfc9440-twice"),
        pytest.param("alb", [("x-amzn-mtls-clientcert-leaf",
                              quote(pem(leaf) + pem(p.inter_der), safe="+=/"))],
                     "more than one", id="alb-leaf-with-chain"),
    ]


def test_refusals_from_trusted_peer(pki: Pki) -> None:
    for param in _refusals(pki):
        kind, headers, message = param.values
        src = only_source(config(sources=(kind,)))
        with pytest.raises(ForwardedCertificateError, match=message):
            src.from_asgi(scope(headers))
        if param.id == "xfcc-two-lines":
            continue  # joined by a WSGI server: a valid two-hop XFCC (a documented limit)
        # WSGI sees each header once (a server joins repeats with ','): still refused.
        joined: dict[str, str] = {}
        for k, v in headers:
            joined[k] = f"{joined[k]},{v}" if k in joined else v
        with pytest.raises(ForwardedCertificateError):
            src.from_wsgi(environ(joined.items()))


# -- XFCC hops ------------------------------------------------------------------------------


def _element(der: bytes, by: str) -> str:
    return f'By={by};Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(pem(der), safe="")}"'


def test_xfcc_caller_is_the_element_of_the_trusted_hop(pki: Pki) -> None:
    forged = _element(pki.stranger.der, "spiffe://evil")
    real = _element(pki.leaf.der, "spiffe://example.org/sidecar")
    one = only_source(config(sources=("xfcc",)))
    # A client-sent element survives an APPEND_FORWARD proxy first: the last one counts.
    got = one.from_asgi(scope([("x-forwarded-client-cert", f"{forged},{real}")]))
    assert got is not None and got.leaf == pki.leaf.der
    # Several header lines are refused, never joined into one list.
    with pytest.raises(ForwardedCertificateError, match="2 times"):
        one.from_asgi(scope([("x-forwarded-client-cert", forged),
                             ("x-forwarded-client-cert", real)]))
    two = only_source(config(sources=("xfcc",), hops=2))
    got = two.from_asgi(scope([("x-forwarded-client-cert",
                                f"{real},{_element(pki.stranger.der, 'edge')}")]))
    assert got is not None and got.leaf == pki.leaf.der
    assert got.claimed_sha256 == hashlib.sha256(pki.leaf.der).hexdigest()


def test_xfcc_fewer_elements_than_hops_is_refused(pki: Pki) -> None:
    src = only_source(config(sources=("xfcc",), hops=2))
    with pytest.raises(ForwardedCertificateError, match="1 element"):
        src.from_asgi(scope([("x-forwarded-client-cert", _element(pki.leaf.der, "a"))]))


# -- verify_again = false ------------------------------------------------------------------


def test_trusting_the_proxy_only_where_it_said_it_verified(pki: Pki) -> None:
    cfg = config(sources=("nginx", "xfcc", "alb-passthrough"), verify_again=False)
    nginx, xfcc, passthrough = build_proxy_sources(cfg)
    got = nginx.from_asgi(scope(_headers_for("nginx", pki)))
    assert got is not None and got.trusted_upstream is True
    got = xfcc.from_asgi(scope(_headers_for("xfcc", pki)))
    assert got is not None and got.trusted_upstream is False
    got = passthrough.from_asgi(scope(_headers_for("alb-passthrough", pki)))
    assert got is not None and got.trusted_upstream is False
    assert got.upstream_verified is None


# -- the whole gatekeeper, in process --------------------------------------------------------


def gatekeeper(pki: Pki, cfg: ProxyConfig) -> Gatekeeper:
    return Gatekeeper(
        policy=AllowAuthenticated(),
        sources=build_proxy_sources(cfg),
        verifier=X509ChainVerifier(config=IdentityConfig(trust_bundles=(pki.bundle,))),
        routes=RouteTable([("/public", frozenset(), Requirements(public=True))]),
    )


def call_asgi(gk: Gatekeeper, s: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    seen: dict[str, Any] = {}

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        ctx = scope["endpointsec"]
        peer = ctx.principal.peer
        seen["peer"] = peer.id if peer else None
        seen["headers"] = list(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    status: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(ASGIMiddleware(app, gatekeeper=gk)(s, receive, send))
    return status[0], seen


def call_wsgi(gk: Gatekeeper, e: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    seen: dict[str, Any] = {}

    def app(environ: MutableMapping[str, Any], start_response: Any) -> list[bytes]:
        peer = environ["endpointsec"].principal.peer
        seen["peer"] = peer.id if peer else None
        seen["environ"] = dict(environ)
        start_response("200 OK", [])
        return [b"ok"]

    status: list[int] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> None:
        status.append(int(s.split()[0]))

    b"".join(WSGIMiddleware(app, gatekeeper=gk)(e, start_response))
    return status[0], seen


@pytest.mark.parametrize(("kind", "chain", "verified"), SOURCES)
def test_gatekeeper_identifies_caller(pki: Pki, kind: str, chain: bool,
                                      verified: bool | None) -> None:
    gk = gatekeeper(pki, config(sources=(kind,)))
    headers = _headers_for(kind, pki)
    status, seen = call_asgi(gk, scope(headers))
    assert (status, seen["peer"]) == (200, SPIFFE)
    # The trusted proxy's header stays visible to the app.
    assert any(k == headers[0][0].encode() for k, _ in seen["headers"])
    status, seen = call_wsgi(gk, environ(headers))
    assert (status, seen["peer"]) == (200, SPIFFE)


@pytest.mark.parametrize("verify_again", [True, False], ids=["verify-again", "trust-proxy"])
def test_gatekeeper_refuses_a_certificate_outside_the_bundle(pki: Pki,
                                                             verify_again: bool) -> None:
    gk = gatekeeper(pki, config(sources=("haproxy",), verify_again=verify_again))
    headers = [("x-ssl-client-der", b64(pki.stranger.der)), ("x-ssl-client-verify", "0")]
    status, _seen = call_asgi(gk, scope(headers))
    # Trusting the proxy's verification is exactly that: a proxy that says "0" for a
    # certificate of another CA is believed (the documented trade-off).
    assert status == (401 if verify_again else 200)


def test_gatekeeper_spoofed_header_from_untrusted_peer(pki: Pki) -> None:
    gk = gatekeeper(pki, config(sources=("xfcc",)))
    headers = _headers_for("xfcc", pki)
    status, seen = call_asgi(gk, scope(headers, client=("203.0.113.9", 1)))
    assert status == 401 and seen == {}
    status, seen = call_wsgi(gk, environ(headers, remote="203.0.113.9"))
    assert status == 401 and seen == {}
    # On a public route the request proceeds, without the forged header.
    s = scope(headers, client=("203.0.113.9", 1))
    s["path"], s["raw_path"] = "/public", b"/public"
    status, seen = call_asgi(gk, s)
    assert status == 200 and seen["peer"] is None
    assert all(k != b"x-forwarded-client-cert" for k, _ in seen["headers"])
    e = environ(headers, remote="203.0.113.9")
    e["PATH_INFO"] = "/public"
    status, seen = call_wsgi(gk, e)
    assert status == 200 and "HTTP_X_FORWARDED_CLIENT_CERT" not in seen["environ"]


def test_gatekeeper_refusals_are_401(pki: Pki) -> None:
    for param in _refusals(pki):
        kind, headers, _ = param.values
        gk = gatekeeper(pki, config(sources=(kind,)))
        status, seen = call_asgi(gk, scope(headers))
        assert status == 401 and seen == {}, param.id


def test_two_sources_disagreeing_is_ambiguous(pki: Pki) -> None:
    gk = gatekeeper(pki, config(sources=("caddy", "xfcc")))
    headers = [("x-client-cert-der", b64(pki.leaf.der)),
               ("x-forwarded-client-cert", _element(pki.stranger.der, "x"))]
    status, _ = call_asgi(gk, scope(headers))
    assert status == 401


# -- from the configuration file -----------------------------------------------------------


def test_gatekeeper_from_config(pki: Pki, tmp_path: Path) -> None:
    toml = tmp_path / "endpointsec.toml"
    toml.write_text(f"""
[identity]
trust_bundles = ["{pki.bundle}"]

[proxy]
trusted = ["127.0.0.1/32"]
sources = ["xfcc", "nginx"]

[proxy.headers]
nginx = "X-Client-Cert"

[policy]
allow_authenticated = true
""")
    gk = Gatekeeper.from_config(load_config(toml))
    status, seen = call_asgi(gk, scope(_headers_for("xfcc", pki)))
    assert (status, seen["peer"]) == (200, SPIFFE)
    renamed = [("x-client-cert", quote(pem(pki.direct.der), safe="")),
               ("x-ssl-client-verify", "SUCCESS")]
    status, seen = call_asgi(gk, scope(renamed))
    assert (status, seen["peer"]) == (200, SPIFFE)
    # The default name is no longer read.
    status, _ = call_asgi(gk, scope(_headers_for("nginx", pki)))
    assert status == 401


# -- property: a source returns None, a PresentedCertificate, or raises our error --------

_HEADER_VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80),
    st.sampled_from(["", "0", "SUCCESS", "NONE", ":AA==:", "By=a;Cert=b", "%2C,", "MA=="]),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(PROXY_SOURCES),
       values=st.lists(st.tuples(st.integers(0, 1), _HEADER_VALUE), max_size=4),
       trusted=st.booleans())
def test_property_sources(kind: str, values: list[tuple[int, str]], trusted: bool) -> None:
    src = only_source(config(sources=(kind,)))
    names = src.header_names
    headers = [(names[i % len(names)], v) for i, v in values]
    client = ("127.0.0.1", 1) if trusted else ("203.0.113.9", 1)
    for call in (lambda: src.from_asgi(scope(headers, client=client)),
                 lambda: src.from_wsgi(environ(dict(headers).items(),
                                               remote=client[0]))):
        try:
            got = call()
        except ForwardedCertificateError:
            assert trusted
            continue
        assert got is None or isinstance(got, PresentedCertificate)
        if not trusted:
            assert got is None
