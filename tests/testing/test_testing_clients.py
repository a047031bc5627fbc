"""Identity-aware test clients against the real middleware, certificate sources,
chain verifier, token verifier and policy."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from endpointsec import ASGIMiddleware, Config, WSGIMiddleware
from endpointsec.testing import (
    CertificateAuthority,
    IssuedCertificate,
    TokenIssuer,
    asgi_client,
    asgi_transport,
    auth_headers,
    tls_extension,
    wsgi_client,
    wsgi_environ,
)

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
BILLING = "spiffe://example.org/ns/shop/sa/billing"


def _config(*, source: str, bundle: Path, policy: Path,
            issuer: TokenIssuer | None = None) -> Config:
    data: dict[str, Any] = {
        "identity": {"sources": [source], "trust_bundles": [str(bundle)]},
        "policy": {"policy": str(policy)},
        "defaults": {"mtls": "required"},
    }
    if issuer is not None:
        data["tokens"] = {"issuers": [issuer.issuer_table()]}
        data["defaults"] = {"mtls": "optional"}
    return Config.from_mapping(data)


@pytest.fixture
def rules(tmp_path: Path) -> Callable[[str], Path]:
    def make(text: str) -> Path:
        path = tmp_path / "policy.csv"
        path.write_text(text, encoding="utf-8")
        return path

    return make


async def whoami(request: Request) -> JSONResponse:
    ctx = request.scope["endpointsec"]
    p = ctx.principal
    return JSONResponse({"peer": p.peer.id if p.peer else None,
                         "request": p.request.id if p.request else None,
                         "scheme": request.url.scheme})


def starlette_app(config: Config) -> ASGIMiddleware:
    app = Starlette(routes=[Route("/orders/{id}", whoami), Route("/admin", whoami)])
    return ASGIMiddleware(app, config=config)


def test_tls_extension_carries_the_pem_chain() -> None:
    ca = CertificateAuthority.create()
    cert = ca.intermediate().issue_client(spiffe_id=ORDERS)
    ext = tls_extension(cert)
    assert len(ext["client_cert_chain"]) == 2
    assert ext["client_cert_chain"][0] == cert.cert_pem.decode()
    assert ext["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
    assert ext["client_cert_error"] is None
    assert tls_extension(None)["client_cert_chain"] == []
    assert auth_headers(None) == {}
    assert auth_headers("t") == {"authorization": "Bearer t"}


def test_asgi_client_presents_the_certificate(
    endpointsec_ca_bundle: Path,
    endpointsec_client_cert: Callable[..., IssuedCertificate],
    rules: Callable[[str], Path],
) -> None:
    policy = rules(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    app = starlette_app(_config(source="asgi-tls", bundle=endpointsec_ca_bundle, policy=policy))
    with asgi_client(app, cert=endpointsec_client_cert(ORDERS)) as client:
        r = client.get("/orders/1")
    assert r.status_code == 200, r.text
    assert r.json() == {"peer": ORDERS, "request": None, "scheme": "https"}
    assert asgi_client(app, cert=endpointsec_client_cert(BILLING)).get(
        "/orders/1").status_code == 403
    assert asgi_client(app).get("/orders/1").status_code == 401


@pytest.mark.parametrize(
    "cert_kwargs",
    [
        pytest.param({"valid_for": __import__("datetime").timedelta(hours=-1)}, id="expired"),
        pytest.param({"eku": ["server"]}, id="server-auth-only"),
    ],
)
def test_asgi_client_bad_certificates_are_refused(
    endpointsec_ca_bundle: Path,
    endpointsec_client_cert: Callable[..., IssuedCertificate],
    rules: Callable[[str], Path],
    cert_kwargs: dict[str, Any],
) -> None:
    policy = rules(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    app = starlette_app(_config(source="asgi-tls", bundle=endpointsec_ca_bundle, policy=policy))
    r = asgi_client(app, cert=endpointsec_client_cert(ORDERS, **cert_kwargs)).get("/orders/1")
    assert r.status_code == 401


def test_certificate_from_another_ca_is_refused(
    endpointsec_ca_bundle: Path, rules: Callable[[str], Path]
) -> None:
    policy = rules(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    app = starlette_app(_config(source="asgi-tls", bundle=endpointsec_ca_bundle, policy=policy))
    stranger = CertificateAuthority.create().issue_client(spiffe_id=ORDERS)
    assert asgi_client(app, cert=stranger).get("/orders/1").status_code == 401


def test_asgi_client_sends_the_token(
    endpointsec_ca_bundle: Path,
    endpointsec_issuer: TokenIssuer,
    rules: Callable[[str], Path],
) -> None:
    policy = rules("p, role:admin, *, /admin, GET, allow\n")
    app = starlette_app(_config(source="asgi-tls", bundle=endpointsec_ca_bundle,
                                policy=policy, issuer=endpointsec_issuer))
    admin = endpointsec_issuer.issue(sub="alice", roles=["admin"])
    r = asgi_client(app, token=admin).get("/admin")
    assert r.status_code == 200, r.text
    assert r.json()["request"] == f"{endpointsec_issuer.issuer}#alice"
    reader = endpointsec_issuer.issue(sub="bob", roles=["reader"])
    assert asgi_client(app, token=reader).get("/admin").status_code == 403


@pytest.mark.anyio
async def test_asgi_transport_with_httpx_async_client(
    endpointsec_ca_bundle: Path,
    endpointsec_client_cert: Callable[..., IssuedCertificate],
    rules: Callable[[str], Path],
) -> None:
    policy = rules(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    app = starlette_app(_config(source="asgi-tls", bundle=endpointsec_ca_bundle, policy=policy))
    transport = asgi_transport(app, cert=endpointsec_client_cert(ORDERS))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        r = await client.get("/orders/9")
    assert r.status_code == 200
    assert r.json()["peer"] == ORDERS


def flask_app(config: Config) -> Flask:
    app = Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        p = request.environ["endpointsec"].principal
        return {"peer": p.peer.id if p.peer else None, "order": order_id}

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign, arg-type]
    return app


def test_flask_client_presents_the_certificate(
    endpointsec_ca: CertificateAuthority,
    endpointsec_ca_bundle: Path,
    rules: Callable[[str], Path],
) -> None:
    policy = rules(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    app = flask_app(_config(source="wsgi-environ", bundle=endpointsec_ca_bundle, policy=policy))
    # An intermediate CA: the chain travels in SSL_CLIENT_CERT_CHAIN_0.
    cert = endpointsec_ca.intermediate().issue_client(spiffe_id=ORDERS)
    r = wsgi_client(app, cert=cert).get("/orders/3")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"peer": ORDERS, "order": 3}
    assert wsgi_client(app).get("/orders/3").status_code == 401
    other = endpointsec_ca.issue_client(spiffe_id=BILLING)
    assert wsgi_client(app, cert=other).get("/orders/3").status_code == 403


def test_plain_wsgi_app_gets_a_werkzeug_client(
    endpointsec_ca_bundle: Path,
    endpointsec_client_cert: Callable[..., IssuedCertificate],
    rules: Callable[[str], Path],
) -> None:
    seen: dict[str, Any] = {}

    def app(environ: MutableMapping[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.update(environ)
        if environ["PATH_INFO"] == "/old":
            start_response("302 Found", [("Location", "/x")])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["endpointsec"].principal.peer.id.encode()]

    policy = rules(f"p, {ORDERS}, *, /x, GET, allow\np, {ORDERS}, *, /old, GET, allow\n")
    config = _config(source="wsgi-environ", bundle=endpointsec_ca_bundle, policy=policy)
    client = wsgi_client(WSGIMiddleware(app, config=config), cert=endpointsec_client_cert(ORDERS),
                         token="abc")
    r = client.get("/x")
    assert r.status_code == 200
    assert r.get_data(as_text=True) == ORDERS
    assert seen["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert seen["wsgi.url_scheme"] == "https"
    seen.clear()
    redirected = client.get("/old", follow_redirects=True)  # identity kept across it
    assert (redirected.status_code, redirected.get_data(as_text=True)) == (200, ORDERS)
    assert seen["PATH_INFO"] == "/x"


def test_wsgi_environ_keys() -> None:
    ca = CertificateAuthority.create()
    cert = ca.intermediate().issue_client(spiffe_id=ORDERS)
    env = wsgi_environ(cert=cert, token="tok")
    assert env["SSL_CLIENT_CERT"] == cert.cert_pem.decode()
    assert "SSL_CLIENT_CERT_CHAIN_0" in env and "SSL_CLIENT_CERT_CHAIN_1" not in env
    assert env["HTTP_AUTHORIZATION"] == "Bearer tok"
    assert "SSL_CLIENT_CERT" not in wsgi_environ()


def test_gatekeeper_sources_are_what_the_clients_feed() -> None:
    from endpointsec.identity.sources import ASGITLSSource, WSGIEnvironSource

    cert = CertificateAuthority.create().issue_client(spiffe_id=ORDERS)
    asgi = ASGITLSSource().from_asgi({"type": "http", "extensions": {"tls": tls_extension(cert)}})
    wsgi = WSGIEnvironSource().from_wsgi(wsgi_environ(cert=cert))
    assert asgi is not None and wsgi is not None
    assert asgi.leaf == wsgi.leaf == cert.der
