"""Unit tests of the uvicorn protocol add-on, and of the whole ASGI path (scope with the
TLS extension -> ASGITLSSource -> X509ChainVerifier -> ASGIMiddleware) for every bad
certificate, including those a real server's TLS layer refuses before the app."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from servers_app import gatekeeper
from servers_support import SID

from endpointsec.identity.sources import ASGITLSSource
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.servers import uvicorn as es_uvicorn
from endpointsec.servers.uvicorn import H11Protocol, HttpToolsProtocol, tls_extension
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate


class FakeSSLObject:
    def __init__(self, leaf: bytes | None, chain: list[bytes] | None = None,
                 version: str | None = "TLSv1.3",
                 cipher: tuple[str, str, int] | None = ("TLS_AES_256_GCM_SHA384", "TLSv1.3",
                                                        256)) -> None:
        self.leaf = leaf
        self.chain = chain
        self._version = version
        self._cipher = cipher

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.leaf

    def version(self) -> str | None:
        return self._version

    def cipher(self) -> tuple[str, str, int] | None:
        return self._cipher


class FakeSSLObject313(FakeSSLObject):
    def get_verified_chain(self) -> list[bytes]:
        return list(self.chain or [])


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_tls_extension_leaf_only(ca: CertificateAuthority) -> None:
    leaf = ca.issue_client(spiffe_id=SID, common_name="orders")
    ext = tls_extension(FakeSSLObject(leaf.der))  # type: ignore[arg-type]
    assert ext == {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(leaf.der)],
        "client_cert_name": "CN=orders",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1302,
    }


def test_tls_extension_uses_the_verified_chain_when_available(
        ca: CertificateAuthority) -> None:
    inter = ca.intermediate()
    leaf = inter.issue_client(spiffe_id=SID)
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = [leaf.der, inter.certificate.public_bytes(Encoding.DER),
             ca.certificate.public_bytes(Encoding.DER)]
    ext = tls_extension(FakeSSLObject313(leaf.der, chain))  # type: ignore[arg-type]
    assert ext is not None
    assert ext["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(d) for d in chain[:2]]
    # A chain that does not start with the peer's leaf is ignored.
    odd = tls_extension(FakeSSLObject313(leaf.der, chain[1:]))  # type: ignore[arg-type]
    assert odd is not None
    assert odd["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(leaf.der)]


@pytest.mark.parametrize(("obj", "expected"), [
    pytest.param(None, None, id="no-tls"),
    pytest.param(FakeSSLObject(None), {"client_cert_chain": [], "client_cert_name": None},
                 id="no-client-cert"),
    pytest.param(FakeSSLObject(None, version="SSLv3", cipher=("WEIRD", "x", 1)),
                 {"tls_version": None, "cipher_suite": None}, id="unknown-version-cipher"),
    pytest.param(FakeSSLObject(None, version=None, cipher=None),
                 {"tls_version": None, "cipher_suite": None}, id="nothing-negotiated"),
    pytest.param(FakeSSLObject(b"not der"), {"client_cert_name": None}, id="unparsable-leaf"),
])
def test_tls_extension_edge_cases(obj: Any, expected: dict[str, Any] | None) -> None:
    ext = tls_extension(obj)
    if expected is None:
        assert ext is None
    else:
        assert ext is not None
        for key, value in expected.items():
            assert ext[key] == value


def test_protocol_classes_load_from_uvicorn_import_strings() -> None:
    for cls in (HttpToolsProtocol, H11Protocol):
        config = uvicorn.Config(app=lambda *a: None,
                                http=f"endpointsec.servers.uvicorn:{cls.__name__}")
        config.load()
        assert config.http_protocol_class is cls
        assert uvicorn.Config(app=lambda *a: None, http=cls).http == cls


class FakeTransport:
    def __init__(self, ssl_object: Any) -> None:
        self.ssl_object = ssl_object

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        return default


class FakeConfig:
    def __init__(self, app: Any) -> None:
        self.loaded_app = app


class FakeWSProtocol:
    """Like uvicorn's websocket protocols: ``self.app = config.loaded_app``."""

    def __init__(self, *, config: FakeConfig, server_state: Any, app_state: Any) -> None:
        self.app: Any = config.loaded_app
        self.server_state = server_state


def test_mixin_wraps_the_app_and_the_websocket_protocol(ca: CertificateAuthority) -> None:
    leaf = ca.issue_client(spiffe_id=SID)
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    class Host(es_uvicorn._TLSMixin):
        def __init__(self) -> None:
            self.app = app
            self.ws_protocol_class = FakeWSProtocol

    host = Host()
    host._endpointsec_connection_made(FakeTransport(FakeSSLObject(leaf.der)))  # type: ignore[arg-type]

    async def run() -> None:
        await host.app({"type": "http", "extensions": {"other": {}}}, None, None)
        await host.app({"type": "http"}, None, None)
        ws = host.ws_protocol_class(config=FakeConfig(app), server_state="s", app_state={})
        assert isinstance(ws, FakeWSProtocol)
        assert ws.server_state == "s"
        await ws.app({"type": "websocket"}, None, None)

    asyncio.run(run())
    assert [s["type"] for s in seen] == ["http", "http", "websocket"]
    http1, http2 = seen[0], seen[1]
    assert "other" in http1["extensions"]
    for scope in seen:
        assert scope["extensions"]["tls"]["client_cert_chain"] == [
            ssl.DER_cert_to_PEM_cert(leaf.der)]
    # Per-request dicts and lists, shared PEM strings.
    assert http1["extensions"]["tls"] is not http2["extensions"]["tls"]
    assert http1["extensions"]["tls"]["client_cert_chain"] is not \
        http2["extensions"]["tls"]["client_cert_chain"]
    assert http1["extensions"]["tls"]["client_cert_chain"][0] is \
        http2["extensions"]["tls"]["client_cert_chain"][0]


def test_mixin_without_tls_leaves_the_app_alone() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    class Host(es_uvicorn._TLSMixin):
        def __init__(self) -> None:
            self.app = app
            self.ws_protocol_class = None

    host = Host()
    host._endpointsec_connection_made(FakeTransport(None))  # type: ignore[arg-type]
    assert host.app is app
    assert host.ws_protocol_class is None


# -- the whole ASGI path, for every bad certificate --------------------------------------

NOW = dt.datetime.now(dt.UTC)


def _cases(ca: CertificateAuthority) -> dict[str, IssuedCertificate]:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return {
        "expired": ca.issue_client(spiffe_id=SID, not_before=NOW - dt.timedelta(days=3),
                                   not_after=NOW - dt.timedelta(days=1)),
        "not-yet-valid": ca.issue_client(spiffe_id=SID,
                                         not_before=NOW + dt.timedelta(days=1),
                                         not_after=NOW + dt.timedelta(days=2)),
        "unknown-ca": CertificateAuthority.create().issue_client(spiffe_id=SID),
        "ca-flagged-leaf": ca.issue(uris=[SID], is_ca=True),
        "server-auth-only": ca.issue(
            uris=[SID], extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "two-uri-sans": ca.issue_client(spiffe_id=SID, uris=["https://x"]),
        "no-san": ca.issue_client(common_name="no-san"),
    }


def _call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def _scope(chain: list[str]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "raw_path": b"/",
            "query_string": b"", "headers": [], "client": ("127.0.0.1", 5000),
            "extensions": {"tls": {"client_cert_chain": chain, "client_cert_error": None}}}


CASE_IDS = ["expired", "not-yet-valid", "unknown-ca", "ca-flagged-leaf", "server-auth-only",
            "two-uri-sans", "no-san"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_asgi_path_answers_401_never_500(ca: CertificateAuthority, tmp_path: Path,
                                          case: str) -> None:
    bundle = ca.write_bundle(tmp_path / "ca.pem")

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    app = ASGIMiddleware(inner, gatekeeper=gatekeeper(ASGITLSSource(), bundle))
    cert = _cases(ca)[case]
    status, body = _call(app, _scope([cert.cert_pem.decode()]))
    assert status == 401
    assert b"BEGIN CERTIFICATE" not in body
    assert cert.cert_pem.split(b"\n")[1] not in body


@pytest.mark.parametrize("chain", [
    pytest.param(["garbage"], id="garbage-pem"),
    pytest.param(["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
                 id="pem-not-der"),
    pytest.param([42], id="not-a-string"),
])
def test_asgi_path_garbage_is_401(ca: CertificateAuthority, tmp_path: Path,
                                  chain: list[Any]) -> None:
    bundle = ca.write_bundle(tmp_path / "ca.pem")

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    app = ASGIMiddleware(inner, gatekeeper=gatekeeper(ASGITLSSource(), bundle))
    status, body = _call(app, _scope(chain))
    assert status == 401
    assert b"garbage" not in body
