"""Tokens through the gatekeeper and the ASGI / WSGI middleware: the 401 challenge
(RFC 6750), generic bodies that never echo the token, certificate-bound tokens."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterable
from typing import Any

import pytest
from tokens_helpers import Signer, b64, issuer_config

from endpointsec import ASGIMiddleware, Gatekeeper
from endpointsec.facts import MTLS, PeerIdentity, Requirements, TokenUse
from endpointsec.integrations.wsgi import WSGIMiddleware
from endpointsec.policy import AllowAuthenticated
from endpointsec.routing import RouteTable
from endpointsec.tokens import BearerReader, JWTVerifier


@pytest.fixture
def gatekeeper(verifier: JWTVerifier) -> Gatekeeper:
    return Gatekeeper(
        policy=AllowAuthenticated(),
        token_verifier=verifier,
        token_reader=BearerReader(),
        routes=RouteTable(defaults=Requirements(mtls=MTLS.NONE, token=TokenUse.REQUIRED)),
    )


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    principal = scope["endpointsec"].principal
    body = principal.request.id.encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(gk: Gatekeeper, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str],
                                                                       bytes]:
    mw = ASGIMiddleware(_app, gatekeeper=gk)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/orders", "raw_path": b"/orders",
             "query_string": b"", "headers": headers}
    asyncio.run(mw(scope, receive, send))
    hdrs = {k.decode().lower(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def test_asgi_valid_token(gatekeeper: Gatekeeper, rsa_key: Signer) -> None:
    status, _, body = _call(gatekeeper, [(b"authorization",
                                          f"Bearer {rsa_key.sign()}".encode())])
    assert status == 200 and body == b"https://issuer.example#user-1"


@pytest.mark.parametrize(("value", "challenge_error"), [
    pytest.param(None, None, id="no-token"),
    pytest.param("Basic dXNlcjpwYXNz", None, id="basic-scheme"),
    pytest.param("Bearer ", "invalid_token", id="empty"),
    pytest.param("Bearer a, Bearer b", "invalid_request", id="two-credentials"),
    pytest.param("Bearer not.a.jwt", "invalid_token", id="garbage-token"),
])
def test_asgi_refusals_challenge(gatekeeper: Gatekeeper, value: str | None,
                                 challenge_error: str | None) -> None:
    headers = [] if value is None else [(b"authorization", value.encode())]
    status, hdrs, body = _call(gatekeeper, headers)
    assert status == 401
    challenge = hdrs["www-authenticate"]
    assert challenge.startswith("Bearer")
    if challenge_error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{challenge_error}"' in challenge
    if value:
        assert value.encode() not in body and b"Bearer" not in body


def test_asgi_bad_token_not_echoed(gatekeeper: Gatekeeper, rsa_key: Signer) -> None:
    token = rsa_key.sign(aud="api://other")
    status, hdrs, body = _call(gatekeeper, [(b"authorization", f"Bearer {token}".encode())])
    assert status == 401 and 'error="invalid_token"' in hdrs["www-authenticate"]
    assert token.encode() not in body and b"audience" not in body


def test_asgi_key_set_unavailable_is_503(make_verifier: Any, rsa_key: Signer) -> None:
    # A JWKS URL on a closed port: nothing listens there.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = make_verifier(issuer_config(jwks_url=f"http://127.0.0.1:{port}/jwks",
                                    allow_http=True, jwks_timeout=1.0))
    gk = Gatekeeper(policy=AllowAuthenticated(), token_verifier=v, token_reader=BearerReader(),
                    routes=RouteTable(defaults=Requirements(mtls=MTLS.NONE,
                                                            token=TokenUse.REQUIRED)))
    status, _, _ = _call(gk, [(b"authorization", f"Bearer {rsa_key.sign()}".encode())])
    assert status == 503


def test_wsgi_valid_and_folded_headers(gatekeeper: Gatekeeper, rsa_key: Signer) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [environ["endpointsec"].principal.request.subject.encode()]

    mw = WSGIMiddleware(app, gatekeeper=gatekeeper)

    def call(auth: str) -> tuple[str, bytes]:
        status: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/orders", "QUERY_STRING": "",
                   "HTTP_AUTHORIZATION": auth, "wsgi.input": io.BytesIO(b""),
                   "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
        body = b"".join(mw(environ, lambda s, h, e=None: status.append(s)))
        return status[0], body

    token = rsa_key.sign()
    assert call(f"Bearer {token}") == ("200 OK", b"user-1")
    assert call(f"Bearer {token}, Bearer {token}")[0].startswith("401")


def _peer(der: bytes) -> PeerIdentity:
    return PeerIdentity(subject="CN=c", fingerprint_sha256=hashlib.sha256(der).hexdigest())


@pytest.mark.parametrize(("bound_to", "peer_der", "allowed"), [
    pytest.param(b"cert-A", b"cert-A", True, id="bound-matching-cert"),
    pytest.param(b"cert-A", b"cert-B", False, id="bound-other-cert"),
    pytest.param(b"cert-A", None, False, id="bound-no-cert"),
])
def test_certificate_bound_token(gatekeeper: Gatekeeper, verifier: JWTVerifier,
                                 rsa_key: Signer, bound_to: bytes, peer_der: bytes | None,
                                 allowed: bool) -> None:
    """RFC 8705: the verifier extracts cnf.x5t#S256, decide() matches it to the peer."""
    thumb = b64(hashlib.sha256(bound_to).digest())
    principal = verifier.verify(rsa_key.sign(cnf={"x5t#S256": thumb}))
    assert principal.cnf_x5t_s256 == thumb
    facts = gatekeeper.facts_for(
        method="GET", path="/orders", token=principal,
        peer=_peer(peer_der) if peer_der is not None else None,
        requirements=Requirements(mtls=MTLS.OPTIONAL, token=TokenUse.REQUIRED))
    assert gatekeeper.decide(facts).allowed is allowed
