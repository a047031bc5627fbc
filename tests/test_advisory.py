"""Attacks on endpointsec end to end, one named test per attack class (in the spirit of
pyjwt's ``tests/test_advisory.py``).

Every test goes through the real middleware or framework integration, with a
:class:`Gatekeeper` built from a real configuration: certificates from
:mod:`endpointsec.testing.pki` (delivered through the ASGI TLS extension or the WSGI
``SSL_CLIENT_CERT`` key), a Casbin policy file with the shipped model and tokens from
:class:`endpointsec.testing.tokens.TokenIssuer`. Each asserts the fail-closed result:
a refusal (400/401/403, or 503 for key-set trouble), never a 500, never an allow, and
the app never runs.

Tests named ``test_advisory_*`` are regressions for a vulnerability that was found and
fixed; ``test_attack_*`` pin behaviour that was already fail-closed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from flask import Flask, request
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket
from werkzeug.test import Client

from endpointsec.config import Config
from endpointsec.errors import ConfigurationError
from endpointsec.facts import PolicyResult, PresentedCertificate, RequestPrincipal
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.fastapi import EndpointSec as FastAPISec
from endpointsec.integrations.flask import EndpointSec as FlaskSec
from endpointsec.integrations.flask import public as flask_public
from endpointsec.integrations.flask import require as flask_require
from endpointsec.integrations.responses import _BODIES
from endpointsec.integrations.wsgi import WSGIMiddleware
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate
from endpointsec.testing.tokens import TokenIssuer

Scope = MutableMapping[str, Any]

ALICE = "spiffe://test.local/alice"
ADMIN = "spiffe://test.local/admin-console"

POLICY = f"""\
p, {ALICE}, *, /files/*, GET, allow
p, {ALICE}, *, /files/secret/*, *, deny
p, {ALICE}, *, /orders, GET, allow
p, {ALICE}, *, /orders/:id, GET, allow
p, {ALICE}, *, /admin/*, *, allow
p, {ALICE}, *, /reports/*, *, allow
p, {ALICE}, *, /reports/export, GET, deny
p, {ALICE}, *, /items/*, *, allow
p, role:admin, *, /admin/*, *, allow
p, role:admin, *, /items/*, *, allow
g, {ADMIN}, role:admin, *
"""


# -- the world: PKI, issuer, configuration ---------------------------------------------


@dataclass
class World:
    directory: Path
    ca: CertificateAuthority
    alice: IssuedCertificate
    admin: IssuedCertificate
    rogue: IssuedCertificate
    issuer: TokenIssuer
    tables: dict[str, Any] = field(default_factory=dict)

    def config(self, *, sources: list[str], **overrides: Any) -> Config:
        data: dict[str, Any] = {
            "identity": {"sources": sources, "trust_bundles": ["ca.pem"]},
            "tokens": {"issuers": [{
                "issuer": self.issuer.issuer,
                "audiences": [self.issuer.audience],
                "algorithms": [self.issuer.algorithm],
                "public_key": "issuer.pem",
            }]},
            "policy": {"policy": "policy.csv"},
            "defaults": {"mtls": "required", "token": "optional"},
            "routes": [
                {"path": "/", "public": True},
                {"path": "/healthz", "public": True},
                {"path": "/pub/{name}", "public": True},
                {"path": "/admin/*", "methods": ["GET"], "roles": ["role:admin"]},
            ],
        }
        data.update(overrides)
        return Config.from_mapping(data, base_dir=self.directory)

    def gatekeeper(self, *, sources: list[str], **overrides: Any) -> Gatekeeper:
        return Gatekeeper.from_config(self.config(sources=sources, **overrides))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("advisory")
    ca = CertificateAuthority.create()
    ca.write_bundle(d / "ca.pem")
    issuer = TokenIssuer()
    (d / "issuer.pem").write_bytes(issuer.public_key_pem)
    (d / "policy.csv").write_text(POLICY)
    (d / "tenants.csv").write_text(f"""\
p, role:admin, tenant-a, /admin/*, *, allow
g, {ALICE}, role:admin, tenant-a
""")
    rogue_ca = CertificateAuthority.create(name="rogue")
    return World(
        directory=d, ca=ca,
        alice=ca.issue_client(spiffe_id=ALICE),
        admin=ca.issue_client(spiffe_id=ADMIN),
        rogue=rogue_ca.issue_client(spiffe_id=ADMIN),
        issuer=issuer,
    )


# -- a recording app and raw drivers ----------------------------------------------------


class Recorder:
    """An ASGI and WSGI app that records that it ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def asgi(self, scope: Scope, receive: Any, send: Any) -> None:
        self.calls.append(str(scope.get("path")))
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app ran"})

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        self.calls.append(str(environ.get("PATH_INFO")))
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"app ran"]


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    body: bytes
    app_ran: bool


def http_scope(raw_path: bytes | None = b"/", *, method: str = "GET",
               cert: IssuedCertificate | None = None,
               headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    """A scope as uvicorn builds it: ``path`` is ``raw_path`` percent-decoded."""
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "https", "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"testserver")],
        "client": ("203.0.113.9", 50000), "server": ("127.0.0.1", 8443),
        "root_path": "",
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
        scope["path"] = unquote(raw_path.decode("latin-1"))
    if cert is not None:
        scope["extensions"] = {"tls": {"client_cert_chain": [cert.cert_pem.decode()],
                                       "client_cert_error": None}}
    scope.update(extra)
    return scope


def run_asgi(app: Any, scope: Scope, recorder: Recorder) -> Result:
    recorder.calls.clear()
    sent: list[MutableMapping[str, Any]] = []
    messages = [{"type": "websocket.connect"} if scope.get("type") == "websocket"
                else {"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"].endswith("response.start")
                 or m["type"] in ("websocket.close", "websocket.accept"))
    status = int(start.get("status", start.get("code", 0)))
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent if m["type"].endswith("response.body"))
    return Result(status=status, headers=headers, body=body, app_ran=bool(recorder.calls))


def assert_refused(result: Result, status: int) -> None:
    assert result.status == status, (result.status, result.body)
    assert not result.app_ran
    assert result.body == _BODIES[status]
    assert result.headers["content-type"] == "application/problem+json"


@pytest.fixture
def asgi(world: World) -> tuple[ASGIMiddleware, Recorder]:
    rec = Recorder()
    return ASGIMiddleware(rec.asgi, gatekeeper=world.gatekeeper(sources=["asgi-tls"])), rec


@pytest.fixture
def wsgi(world: World) -> tuple[Client, Recorder]:
    rec = Recorder()
    mw = WSGIMiddleware(rec.wsgi, gatekeeper=world.gatekeeper(sources=["wsgi-environ"]))
    return Client(mw), rec


def wsgi_get(client: Client, rec: Recorder, path: str, *, method: str = "GET",
             cert: IssuedCertificate | None = None, **kwargs: Any) -> Result:
    rec.calls.clear()
    overrides = kwargs.pop("environ_overrides", {})
    if cert is not None:
        overrides["SSL_CLIENT_CERT"] = cert.cert_pem.decode()
    r = client.open(path, method=method, environ_overrides=overrides, **kwargs)
    return Result(status=r.status_code, headers=dict(r.headers), body=r.get_data(),
                  app_ran=bool(rec.calls))


# -- sanity: the world works -------------------------------------------------------------


def test_baseline_allows_what_the_policy_allows(asgi: tuple[ASGIMiddleware, Recorder],
                                                wsgi: tuple[Client, Recorder],
                                                world: World) -> None:
    mw, rec = asgi
    assert run_asgi(mw, http_scope(b"/files/report", cert=world.alice), rec).status == 200
    assert_refused(run_asgi(mw, http_scope(b"/files/secret/x", cert=world.alice), rec), 403)
    assert_refused(run_asgi(mw, http_scope(b"/files/report"), rec), 401)
    client, wrec = wsgi
    assert wsgi_get(client, wrec, "/files/report", cert=world.alice).status == 200
    assert_refused(wsgi_get(client, wrec, "/files/secret/x", cert=world.alice), 403)


# -- path tricks -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    pytest.param(b"/files/secret%2Fkeys", id="deny-rule-walked-around"),
    pytest.param(b"/files/secret%2fkeys", id="lower-case-escape"),
    pytest.param(b"/pub/a%2Fadmin", id="public-template-one-segment"),
    pytest.param(b"/orders/1%2Frefund", id="allow-template-one-segment"),
])
def test_advisory_encoded_slash_confusion(asgi: tuple[ASGIMiddleware, Recorder],
                                          wsgi: tuple[Client, Recorder], world: World,
                                          raw: bytes) -> None:
    """%2F stayed one segment for routes and policy while Starlette/Flask route on the
    decoded path, where it is a separator: ``/files/secret%2Fkeys`` matched the
    ``/files/*`` allow but not the ``/files/secret/*`` deny, and ``/pub/a%2Fadmin``
    matched the public ``/pub/{name}`` while the app ran ``/pub/a/admin``. Now a 400."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(raw, cert=world.alice), rec), 400)
    client, wrec = wsgi
    assert_refused(wsgi_get(client, wrec, raw.decode(), cert=world.alice), 400)


@pytest.mark.parametrize("raw", [
    pytest.param(b"/admin/../healthz", id="dot-dot-into-public"),
    pytest.param(b"/admin/%2e%2e/healthz", id="encoded-dot-dot"),
    pytest.param(b"/admin/%2E%2e/healthz", id="mixed-case-encoded"),
    pytest.param(b"/admin/.%2e/pub/x", id="half-encoded"),
    pytest.param(b"/admin/./x", id="single-dot"),
    pytest.param(b"/files/secret/..", id="trailing-dot-dot"),
    pytest.param(b"/admin\\..\\healthz", id="backslash-dot-dot"),
    pytest.param(b"/pub\\x", id="backslash-as-separator"),
    pytest.param(b"//", id="double-slash-into-public-root"),
    pytest.param(b"//healthz", id="double-slash-into-public"),
    pytest.param(b"/pub//x", id="empty-segment"),
])
def test_advisory_normalization_confusion(asgi: tuple[ASGIMiddleware, Recorder],
                                          wsgi: tuple[Client, Recorder],
                                          raw: bytes) -> None:
    """The normalizer resolves ``..``, turns ``\\`` into ``/`` and merges ``//``; the app
    does none of these.
    ``/admin/%2e%2e/healthz`` was checked as the public ``/healthz`` while Starlette ran
    an ``/admin/{rest:path}`` handler, unauthenticated. Now a 400, no certificate
    needed to be refused."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(raw), rec), 400)
    client, wrec = wsgi
    assert_refused(wsgi_get(client, wrec, raw.decode()), 400)


def test_advisory_dot_segments_reach_a_catch_all_route_unauthenticated(
        world: World) -> None:
    """The FastAPI form of the normalization confusion: a private catch-all route."""
    sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    app = FastAPI()
    sec.install(app)
    ran: list[str] = []

    @app.get("/admin/{rest:path}")
    async def admin(rest: str) -> dict[str, str]:
        ran.append(rest)
        return {"rest": rest}

    @app.get("/healthz")
    @sec.public
    async def health() -> dict[str, bool]:
        return {"ok": True}

    rec = Recorder()
    result = run_asgi(app, http_scope(b"/admin/%2e%2e/healthz"), rec)
    assert result.status == 400
    assert ran == []


@pytest.fixture
def h11_server(world: World) -> Iterator[int]:
    """A real uvicorn (h11) server on 127.0.0.1 running a FastAPI app with a public ``/``
    and a private catch-all ``/{p:path}``; yields the port, stops the server."""
    import socket
    import threading
    import time

    import uvicorn

    sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    app = FastAPI()
    sec.install(app)

    @app.get("/{p:path}")
    async def catch_all(p: str) -> dict[str, str]:
        return {"private": p}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http="h11", log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def raw_http(port: int, target: bytes) -> tuple[int, bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("target", [b"/#/admin", b"//", b"/%2e%2e/x", b"/x/..", b"/a%2Fb"])
def test_advisory_private_catch_all_over_real_uvicorn(h11_server: int, target: bytes) -> None:
    """Over a real uvicorn with ``--http h11``: ``GET /#/admin`` was checked as the
    public ``/`` (the normalizer cut at ``#``) and ``GET //`` as ``/`` (merged), while
    the private ``/{p:path}`` ran with ``p = "#/admin"`` / ``"/"``, unauthenticated."""
    status, body = raw_http(h11_server, target)
    assert status in (400, 401), body
    assert b"private" not in body
    assert raw_http(h11_server, b"/")[0] == 200  # the configured public "/"
    assert raw_http(h11_server, b"/admin")[0] == 401


def test_advisory_fragment_in_raw_path(asgi: tuple[ASGIMiddleware, Recorder]) -> None:
    """h11 (uvicorn --http h11) passes ``#`` through in ``raw_path`` and ``path``; the
    normalizer cut the path there, so ``/#/admin`` was checked as the public ``/``
    while the app routed ``/#/admin``. Now ``#`` is part of the path."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(b"/#/admin"), rec), 401)
    assert_refused(run_asgi(mw, http_scope(b"/healthz#x"), rec), 401)
    assert run_asgi(mw, http_scope(b"/"), rec).status == 200  # "/" itself stays public


def test_advisory_missing_raw_path_double_decoding(asgi: tuple[ASGIMiddleware, Recorder]
                                                   ) -> None:
    """Without ``raw_path`` the decoded ``path`` was re-quoted keeping ``%``, so a path
    that arrived as ``/admin/%252e%252e/pub/x`` (app: ``/admin/%2e%2e/pub/x``) was
    decoded a second time and checked as the public ``/pub/x``."""
    mw, rec = asgi
    scope = http_scope(None, path="/admin/%2e%2e/pub/x")
    assert_refused(run_asgi(mw, scope, rec), 401)
    scope = http_scope(None, path="/files/secret%2Fx")  # a literal "%2F" in the name
    assert_refused(run_asgi(mw, scope, rec), 401)


@pytest.mark.parametrize(("scope_extra", "status"), [
    pytest.param({"path": "/\udcff"}, 400, id="lone-surrogate"),
    pytest.param({"path": "/caf\u00e9"}, 401, id="non-ascii-no-cert"),
    pytest.param({"path": 17}, 400, id="path-not-a-string"),
])
def test_advisory_missing_raw_path_odd_paths(asgi: tuple[ASGIMiddleware, Recorder],
                                             scope_extra: dict[str, Any], status: int) -> None:
    """A lone surrogate in ``path`` (no ``raw_path``) crashed ``quote`` (a 500)."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(None, **scope_extra), rec), status)


@pytest.mark.parametrize(("environ", "status"), [
    pytest.param({"PATH_INFO": "/\u2603", "REQUEST_URI": None, "RAW_URI": None}, 401,
                 id="above-latin-1"),
    pytest.param({"PATH_INFO": "/\xff", "REQUEST_URI": None, "RAW_URI": None}, 400,
                 id="not-utf-8"),
    pytest.param({"PATH_INFO": "/admin/%2e%2e/pub/x", "REQUEST_URI": None,
                  "RAW_URI": None}, 401, id="literal-percent-not-decoded-again"),
    pytest.param({"PATH_INFO": "/files/x", "QUERY_STRING": "\u2603"}, 401,
                 id="query-above-latin-1"),
    pytest.param({"PATH_INFO": "/files/x", "HTTP_AUTHORIZATION": "Bearer \u2603"}, 401,
                 id="header-above-latin-1"),
])
def test_advisory_wsgi_environ_without_raw_uri(world: World, environ: dict[str, Any],
                                               status: int) -> None:
    """PATH_INFO outside PEP 3333 (no RAW_URI/REQUEST_URI, as under wsgiref) crashed the
    middleware with UnicodeEncodeError; a literal ``%`` was decoded a second time."""
    rec = Recorder()
    mw = WSGIMiddleware(rec.wsgi, gatekeeper=world.gatekeeper(sources=["wsgi-environ"]))
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
                           "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    env.update(environ)
    for k in [k for k, v in env.items() if v is None]:
        del env[k]
    started: list[str] = []
    body = b"".join(mw(env, lambda s, h, *a: started.append(s)))
    assert started and started[0].startswith(str(status)), started
    assert body == _BODIES[status]
    assert rec.calls == []


@pytest.mark.parametrize(("raw", "status"), [
    pytest.param(b"/files/x%00", 400, id="encoded-nul"),
    pytest.param(b"/files/%C0%AE%C0%AE/secret", 400, id="overlong-utf8-dot"),
    pytest.param(b"/files/\xff", 400, id="non-utf8-raw-byte"),
    pytest.param(b"/files/%ff", 400, id="non-utf8-escape"),
    pytest.param(b"/files/%G1", 400, id="malformed-escape"),
    pytest.param(b"files/x", 400, id="no-leading-slash"),
    pytest.param(b"", 400, id="empty"),
    pytest.param(b"/FILES/secret/x", 403, id="case-does-not-match-allow"),
    pytest.param(b"/files/secret/x/", 403, id="trailing-slash-still-denied"),
    pytest.param(b"/files/secret/x;y", 403, id="semicolon-path-parameter"),
    pytest.param(b"/files/secret/" + b"a" * 20000, 403, id="very-long-path"),
])
def test_attack_path_tricks_are_refused(asgi: tuple[ASGIMiddleware, Recorder],
                                        world: World, raw: bytes, status: int) -> None:
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(raw, cert=world.alice), rec), status)


@pytest.mark.parametrize("raw", [
    pytest.param(b"/healthz/", id="trailing-slash"),
    pytest.param(b"/HEALTHZ", id="upper-case"),
    pytest.param(b"/healthz;x", id="semicolon"),
    pytest.param(b"/healthz%20", id="encoded-space"),
    pytest.param(b"/healthzx", id="longer-name"),
    pytest.param(b"/pub/a/b", id="two-segments-for-one-param"),
    pytest.param(b"/pub/", id="empty-param"),
])
def test_attack_public_routes_match_exactly(asgi: tuple[ASGIMiddleware, Recorder],
                                            raw: bytes) -> None:
    """A ``[[routes]] public = true`` template never matches a neighbour of its path."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(raw), rec), 401)


@pytest.mark.parametrize(("raw", "app_path"), [
    pytest.param(b"/files/%252e%252e/secret/x", "/files/%2e%2e/secret/x", id="dots"),
    pytest.param(b"/files/secret%252Fx", "/files/secret%2Fx", id="slash"),
    pytest.param(b"/files/secret;x=1/y", "/files/secret;x=1/y", id="semicolon-param"),
])
def test_attack_double_encoding_is_decoded_once(asgi: tuple[ASGIMiddleware, Recorder],
                                                world: World, raw: bytes,
                                                app_path: str) -> None:
    """``%25`` is never decoded and ``;`` starts no path parameter: the policy's path and
    the app's path have the same segments (the app sees a literal ``%2e%2e``), so the
    ``/files/*`` allow applies and the ``/files/secret/*`` deny does not."""
    mw, rec = asgi
    result = run_asgi(mw, http_scope(raw, cert=world.alice), rec)
    assert result.status == 200
    assert rec.calls == [app_path]


def test_attack_raw_path_disagrees_with_path(asgi: tuple[ASGIMiddleware, Recorder],
                                             world: World) -> None:
    """The decision is made on ``raw_path`` (what was on the wire); a forged ``path``
    or a ``root_path`` cannot make a protected request public: a server whose ``path``
    says something else than its ``raw_path`` is refused (400), since the app routes on
    ``path`` (formerly a public ``raw_path`` let the app run ``/files/secret/x``)."""
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(b"/files/secret/x", path="/healthz"), rec), 400)
    scope = http_scope(b"/api/files/secret/x", root_path="/api", cert=world.alice)
    assert_refused(run_asgi(mw, scope, rec), 403)
    scope = http_scope(b"/healthz", root_path="/healthz", path="/healthz/files/secret/x")
    assert_refused(run_asgi(mw, scope, rec), 400)
    # uvicorn --root-path: path carries the root, raw_path the wire path
    scope = http_scope(b"/files/secret/x", root_path="/api", path="/api/files/secret/x",
                       cert=world.alice)
    assert_refused(run_asgi(mw, scope, rec), 403)
    scope = http_scope(b"/healthz", root_path="/api", path="/api/healthz")
    assert run_asgi(mw, scope, rec).status == 200


# -- the authorized path is the routed path, for every [policy.paths] option --------------

#: Every valid [policy.paths] combination (decode and reject exclude each other).
PATH_OPTIONS = [
    {"merge_slashes": merge, "backslash": backslash, **encoded}
    for merge in (True, False)
    for encoded in ({}, {"decode_encoded_slashes": True}, {"reject_encoded_slashes": True})
    for backslash in ("slash", "reject", "keep")
]


def _options_id(options: dict[str, Any]) -> str:
    encoded = ("decode" if options.get("decode_encoded_slashes") else
               "reject" if options.get("reject_encoded_slashes") else "keep")
    return (f"merge-{'on' if options['merge_slashes'] else 'off'}-encoded-{encoded}-"
            f"backslash-{options['backslash']}")


#: Each would be authorized as the public /healthz if a normalizer step the application
#: does not take (decoding %2F/%5C into separators, merging, resolving dots) were trusted.
ROUTED_PATH_ATTACKS = [
    b"/admin%2F..%2Fhealthz",
    b"/admin%2f..%2fhealthz",
    b"/admin%2F%2e%2e%2Fhealthz",
    b"/admin/x%2F..%2F..%2Fhealthz",
    b"/admin/%2e%2e%2Fhealthz",
    b"/%2F/%68ealthz",
    b"/admin/%2F/..%2F..%2Fhealthz",
    b"/admin%5C..%5Chealthz",
    b"/admin/x%5C..%5C..%5Chealthz",
    b"/admin/x%5c..%5c..%5chealthz",
    b"/admin/x\\..\\..\\healthz",
    b"/admin/..\\healthz",
    b"/admin/%2e%2e/healthz",
    b"//healthz",
]


def _starlette_app(world: World, paths: dict[str, Any]) -> tuple[Any, list[str]]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    ran: list[str] = []

    async def health(request: Request) -> PlainTextResponse:
        ran.append("health")
        return PlainTextResponse("ok")

    async def admin(request: Request) -> PlainTextResponse:
        ran.append("admin")
        return PlainTextResponse("private " + request.path_params["rest"])

    app = Starlette(routes=[Route("/healthz", health), Route("/admin/{rest:path}", admin)])
    gk = world.gatekeeper(sources=["asgi-tls"],
                          policy={"policy": "policy.csv", "paths": paths})
    return ASGIMiddleware(app, gatekeeper=gk), ran


@pytest.mark.parametrize("paths", PATH_OPTIONS, ids=_options_id)
def test_advisory_decoded_encoded_slashes_carry_dot_segments(world: World,
                                                             paths: dict[str, Any]) -> None:
    """With ``decode_encoded_slashes = true`` (documented as a safe choice) the wire
    checks ran on the raw path, where ``%2F`` hides the separators: with no
    certificate, ``GET /admin%2F..%2Fhealthz`` was authorized as the public ``/healthz``
    while Starlette, routing on the decoded ``/admin/../healthz``, ran the private
    ``/admin/{rest:path}`` handler; ``/%2F/%68ealthz`` (merged into ``/healthz``) and
    the ``%5C`` forms likewise. Now the normalized path must decode back to exactly the
    path the application routes, for every ``[policy.paths]`` option, or it is a 400."""
    app, ran = _starlette_app(world, paths)
    rec = Recorder()
    for raw in ROUTED_PATH_ATTACKS:
        ran.clear()
        result = run_asgi(app, http_scope(raw), rec)
        assert result.status in (400, 401), (raw, result.status, result.body)
        assert ran == [], raw
    assert run_asgi(app, http_scope(b"/healthz"), rec).status == 200
    assert run_asgi(app, http_scope(b"/%68ealthz"), rec).status == 200  # same routed path
    assert ran == ["health", "health"]
    assert_refused(run_asgi(app, http_scope(b"/admin/x"), rec), 401)
    assert run_asgi(app, http_scope(b"/admin/x", cert=world.admin), rec).status == 200
    if paths.get("decode_encoded_slashes"):
        # what the option is for: /admin%2Fx is routed as /admin/x, and checked as such
        assert_refused(run_asgi(app, http_scope(b"/admin%2Fx"), rec), 401)
        assert run_asgi(app, http_scope(b"/admin%2Fx", cert=world.admin), rec).status == 200


@pytest.fixture(params=["h11", "httptools"])
def decoding_server(request: pytest.FixtureRequest, world: World) -> Iterator[int]:
    """A real uvicorn on 127.0.0.1 (h11 and httptools) running the Starlette app of the
    test above with ``decode_encoded_slashes = true``; yields the port."""
    import socket
    import threading
    import time

    import uvicorn

    app, _ = _starlette_app(world, {"decode_encoded_slashes": True})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=request.param, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_advisory_decoded_encoded_slashes_over_real_uvicorn(decoding_server: int) -> None:
    """The same attacks over a real uvicorn, whose own ``scope["path"]`` decides the
    Starlette route: never the private handler without a certificate."""
    for raw in ROUTED_PATH_ATTACKS:
        status, body = raw_http(decoding_server, raw)
        assert status in (400, 401), (raw, status, body)
        assert b"private" not in body, raw
    assert raw_http(decoding_server, b"/healthz")[0] == 200
    assert raw_http(decoding_server, b"/admin%2Fx")[0] == 401


@pytest.mark.parametrize("paths", PATH_OPTIONS, ids=_options_id)
def test_advisory_decoded_encoded_backslashes_on_flask(world: World,
                                                       paths: dict[str, Any]) -> None:
    """The Flask form: werkzeug decodes ``%5C`` into a backslash, an ordinary character
    in ``/admin/<path:rest>``; with ``decode_encoded_slashes`` the normalizer made it a
    separator, so ``/admin/x%5C..%5C..%5Chealthz`` was authorized as the public
    ``/healthz`` and the private handler ran with no certificate."""
    gk = world.gatekeeper(sources=["wsgi-environ"],
                          policy={"policy": "policy.csv", "paths": paths})
    app = Flask(__name__)
    FlaskSec(app, gatekeeper=gk)
    ran: list[str] = []

    @app.get("/healthz")
    def health() -> str:
        ran.append("health")
        return "ok"

    @app.get("/admin/<path:rest>")
    def admin(rest: str) -> str:
        ran.append("admin")
        return "private " + rest

    client = app.test_client()
    for raw in ROUTED_PATH_ATTACKS:
        # As gunicorn hands it over: the request target in RAW_URI, PATH_INFO decoded
        # once (latin-1). (The test client would read "//healthz" as a host name.)
        target = raw.decode("latin-1")
        env = {"RAW_URI": target, "REQUEST_URI": target,
               "PATH_INFO": unquote(target, encoding="latin-1")}
        r = client.get("/", environ_overrides=env)
        # 308: werkzeug merges "//" itself and redirects, no handler runs
        assert r.status_code in (400, 401, 308), (raw, r.status_code, r.data)
        assert b"private" not in r.data, raw
        assert "admin" not in ran, raw
    assert client.get("/healthz").status_code == 200
    assert client.get("/admin/x").status_code == 401
    admin_cert = {"SSL_CLIENT_CERT": world.admin.cert_pem.decode()}
    assert client.get("/admin/x", environ_overrides=admin_cert).status_code == 200
    assert ran == ["health", "admin"]


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_advisory_tail_route_template_matched_the_bare_prefix(world: World,
                                                              framework: str) -> None:
    """``[[routes]] path = "/static/*"`` with ``public = true`` also matched the bare
    ``/static``, which FastAPI and Flask route to a different, private handler (here a
    listing of every file). A trailing ``/*`` now matches ``/static/`` and below only."""
    routes = [{"path": "/static/*", "public": True}]
    ran: list[str] = []
    alice_env = {"SSL_CLIENT_CERT": world.alice.cert_pem.decode()}
    if framework == "fastapi":
        sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"], routes=routes))
        fapp = FastAPI()
        sec.install(fapp)

        @fapp.get("/static")
        async def listing() -> str:
            ran.append("listing")
            return "private listing"

        @fapp.get("/static/{p:path}")
        async def file(p: str) -> str:
            ran.append("file")
            return p

        client: Any = TestClient(fapp)
        get = client.get
    else:
        app = Flask(__name__, static_folder=None)
        FlaskSec(app, gatekeeper=world.gatekeeper(sources=["wsgi-environ"], routes=routes))

        @app.get("/static")
        def flisting() -> str:
            ran.append("listing")
            return "private listing"

        @app.get("/static/<path:p>")
        def ffile(p: str) -> str:
            ran.append("file")
            return p

        client = app.test_client()
        get = client.get
    r = get("/static")
    assert r.status_code == 401
    assert ran == []
    assert get("/static/app.css").status_code == 200
    assert get("/static/css/app.css").status_code == 200
    assert ran == ["file", "file"]
    if framework == "flask":  # the private handler still runs for an allowed caller
        assert get("/static", environ_overrides=alice_env).status_code == 403


# -- policy rules the engine or Casbin would silently misread -------------------------------


def test_advisory_regex_shaped_objects_answered_differently_from_casbin(
        world: World, tmp_path: Path) -> None:
    """keyMatch2 is a regular expression underneath. The indexed engine filed the deny
    rule ``/internal/x|/admin/*`` under its first segment ``internal`` and never tried
    it for ``/admin/users``, which ``casbin.Enforcer`` denies (the ``|`` is an
    alternation); ``/reports/?.*`` never matched ``/reports``, which Casbin matches.
    Objects outside the documented keyMatch2 forms are now refused at load, every one
    with its file and line."""
    import casbin

    from endpointsec.errors import ConfigurationError
    from endpointsec.policy import DEFAULT_MODEL_PATH, CasbinPolicy

    policy = tmp_path / "policy.csv"
    policy.write_text(f"""\
# admin console; the internal tools are off limits

p, {ALICE}, *, /admin/*, *, allow
p, {ALICE}, *, /internal/x|/admin/*, *, deny
p, {ALICE}, *, /reports/?.*, GET, deny
p, {ALICE}, *, /reports, GET, allow
""")
    reference = casbin.Enforcer(str(DEFAULT_MODEL_PATH), str(policy))
    assert reference.enforce(ALICE, "*", "/admin/users", "GET") is False
    assert reference.enforce(ALICE, "*", "/reports", "GET") is False
    with pytest.raises(ConfigurationError) as info:
        CasbinPolicy(policy=policy)
    message = str(info.value)
    assert f"{policy}:4: " in message and "'|'" in message
    assert f"{policy}:5: " in message and "'?'" in message
    with pytest.raises(ConfigurationError):  # the whole gatekeeper refuses to start
        world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(policy)})


def test_advisory_policy_lines_casbin_skips_or_never_matches(world: World,
                                                             tmp_path: Path) -> None:
    """Casbin's loader skips a line whose type its model does not know without a word
    (``P, ...``: the deny below was simply not there), and keyMatch2 does not read
    ``{id}`` as a parameter (the deny for ``/orders/{id}`` only matched the literal text
    ``/orders/{id}``): alice kept every permission the two deny rules took away. Both
    are now refused at start-up, with their line numbers."""
    from endpointsec.errors import ConfigurationError

    policy = tmp_path / "policy.csv"
    policy.write_text(f"""\
p, {ALICE}, *, /files/*, GET, allow
p, {ALICE}, *, /orders/:id, GET, allow
# suspended: no files, no orders
P, {ALICE}, *, /files/*, GET, deny
p, {ALICE}, *, /orders/{{id}}, GET, deny
""")
    with pytest.raises(ConfigurationError) as info:
        world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(policy)})
    message = str(info.value)
    assert "2 problems" in message
    assert f"{policy}:4: " in message and "has rule type 'P', unknown to the model" in message
    assert f"{policy}:5: " in message and "write ':id'" in message


# -- method tricks -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Get", "G\u00c9T", "", "GET ", "PROPFIND",
                                    "X" * 100])
def test_attack_non_canonical_methods(asgi: tuple[ASGIMiddleware, Recorder],
                                      wsgi: tuple[Client, Recorder], world: World,
                                      method: str) -> None:
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(b"/files/report", method=method,
                                           cert=world.alice), rec), 400)
    client, wrec = wsgi
    if method.strip() and method.isascii():
        assert_refused(wsgi_get(client, wrec, "/files/report", method=method,
                                cert=world.alice), 400)


def test_attack_method_override_header_is_not_honoured(
        asgi: tuple[ASGIMiddleware, Recorder], world: World) -> None:
    """``X-HTTP-Method-Override: GET`` on a POST is decided as a POST."""
    mw, rec = asgi
    headers = [(b"x-http-method-override", b"GET"), (b"x-method-override", b"GET")]
    scope = http_scope(b"/files/report", method="POST", cert=world.alice, headers=headers)
    assert_refused(run_asgi(mw, scope, rec), 403)


def test_advisory_head_walks_around_get_rules(asgi: tuple[ASGIMiddleware, Recorder],
                                              wsgi: tuple[Client, Recorder],
                                              world: World) -> None:
    """Starlette and Flask answer HEAD with the GET handler. A ``[[routes]]`` entry with
    ``methods = ["GET"]`` (here: ``roles = ["role:admin"]`` on ``/admin/*``) did not
    apply to HEAD, and a Casbin rule denying GET (``/reports/export``) did not deny
    HEAD when another rule allowed ``*``: both ran the GET handler."""
    mw, rec = asgi
    for path in (b"/admin/users", b"/reports/export"):
        assert_refused(run_asgi(mw, http_scope(path, cert=world.alice), rec), 403)
        assert_refused(run_asgi(mw, http_scope(path, method="HEAD", cert=world.alice),
                                rec), 403)
    # HEAD is still allowed where GET is
    assert run_asgi(mw, http_scope(b"/admin/users", method="HEAD", cert=world.admin),
                    rec).status == 200
    assert run_asgi(mw, http_scope(b"/reports/summary", method="HEAD",
                                   cert=world.alice), rec).status == 200
    client, wrec = wsgi
    assert_refused(wsgi_get(client, wrec, "/reports/export", method="HEAD",
                            cert=world.alice), 403)


def test_attack_options_is_not_a_preflight_bypass(asgi: tuple[ASGIMiddleware, Recorder],
                                                  world: World) -> None:
    """OPTIONS is an ordinary method: no certificate is a 401, no rule is a 403."""
    mw, rec = asgi
    headers = [(b"origin", b"https://evil.example"),
               (b"access-control-request-method", b"GET")]
    assert_refused(run_asgi(mw, http_scope(b"/files/report", method="OPTIONS",
                                           headers=headers), rec), 401)
    assert_refused(run_asgi(mw, http_scope(b"/files/report", method="OPTIONS",
                                           cert=world.alice, headers=headers), rec), 403)


# -- header tricks -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    pytest.param([(b"authorization", b"Bearer a.b.c"), (b"authorization", b"Bearer d.e.f")],
                 id="duplicate-authorization"),
    pytest.param([(b"authorization", b"Bearer a.b.c, Bearer d.e.f")], id="folded-two"),
    pytest.param([(b"authorization", b"Bearer a.b.c\r\n Bearer d")], id="obs-fold"),
    pytest.param([(b"authorization", b"Bearer " + b"A" * 100_000)], id="huge-token"),
    pytest.param([(b"authorization", b"Basic YWxpY2U6cGFzcw==")], id="other-scheme"),
    pytest.param([(b"authorization", b"Bearer")], id="empty-bearer"),
    pytest.param([(b"authorization", b"Bearer \xff\xfe")], id="non-ascii-token"),
    pytest.param([(b"authorization", b"Bearer not-a-jwt")], id="garbage-token"),
])
def test_attack_authorization_header_tricks(asgi: tuple[ASGIMiddleware, Recorder],
                                            world: World,
                                            headers: list[tuple[bytes, bytes]]) -> None:
    """A malformed, doubled or unverifiable credential is a 401 even with a valid
    certificate (the app would otherwise see a token nobody verified)."""
    mw, rec = asgi
    result = run_asgi(mw, http_scope(b"/files/report", cert=world.alice, headers=headers),
                      rec)
    assert_refused(result, 401)
    assert "Bearer" in result.headers["www-authenticate"]


def test_attack_wsgi_duplicate_authorization_is_folded_and_refused(
        wsgi: tuple[Client, Recorder], world: World) -> None:
    client, rec = wsgi
    token = world.issuer.issue(sub="u1")
    result = wsgi_get(client, rec, "/files/report", cert=world.alice,
                      headers=[("Authorization", f"Bearer {token}"),
                               ("Authorization", f"Bearer {token}")])
    assert_refused(result, 401)


def test_attack_token_tricks(asgi: tuple[ASGIMiddleware, Recorder], world: World) -> None:
    """Expired, wrong audience, unsigned and foreign-key tokens are 401s; a good token
    alone is not a certificate (mTLS is required)."""
    mw, rec = asgi
    good = world.issuer.issue(sub="u1")
    other = TokenIssuer(issuer=world.issuer.issuer).issue(sub="u1")
    header, payload, _ = good.split(".")
    for token in (world.issuer.issue(sub="u1", exp=-600), world.issuer.issue(sub="u1",
                  aud="other"), f"{header}.{payload}.", other):
        scope = http_scope(b"/files/report", cert=world.alice,
                           headers=[(b"authorization", f"Bearer {token}".encode())])
        assert_refused(run_asgi(mw, scope, rec), 401)
    scope = http_scope(b"/files/report", headers=[(b"authorization", f"Bearer {good}".encode())])
    assert_refused(run_asgi(mw, scope, rec), 401)
    scope = http_scope(b"/files/report", cert=world.alice,
                       headers=[(b"authorization", f"Bearer {good}".encode())])
    assert run_asgi(mw, scope, rec).status == 200


@pytest.mark.parametrize("name", [b"x-forwarded-client-cert", b"x-ssl-client-cert",
                                  b"x-ssl-client-verify", b"x-amzn-mtls-clientcert-leaf",
                                  b"x-client-cert-der", b"client-cert"])
def test_attack_forged_proxy_certificate_headers(world: World, name: bytes) -> None:
    """Certificate headers from a client are not evidence: without ``[proxy]`` nobody
    reads them, and with ``[proxy]`` only a trusted peer's count."""
    pem = world.admin.cert_pem.decode()
    value = (f'By=spiffe://x;Hash=00;Cert="{pem}"' if name == b"x-forwarded-client-cert"
             else pem.replace("\n", "")).encode()
    headers = [(name, value), (b"x-ssl-client-verify", b"SUCCESS")]
    for gk in (
        world.gatekeeper(sources=["asgi-tls"]),
        world.gatekeeper(sources=[], proxy={
            "trusted": ["127.0.0.1/32"],
            "sources": ["xfcc", "nginx", "alb", "caddy", "client-cert"]}),
    ):
        rec = Recorder()
        mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
        assert_refused(run_asgi(mw, http_scope(b"/admin/users", headers=headers), rec), 401)


def test_attack_wsgi_certificate_key_without_the_source(world: World) -> None:
    """``SSL_CLIENT_CERT`` (garbage or a real admin certificate) is ignored unless the
    ``wsgi-environ`` source is enabled: an ASGI-only configuration does not read it."""
    rec = Recorder()
    gk = world.gatekeeper(sources=["asgi-tls"])
    client = Client(WSGIMiddleware(rec.wsgi, gatekeeper=gk))
    for value in ("garbage", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
                  world.admin.cert_pem.decode()):
        result = wsgi_get(client, rec, "/admin/users",
                          environ_overrides={"SSL_CLIENT_CERT": value,
                                             "SSL_CLIENT_VERIFY": "SUCCESS"})
        assert_refused(result, 401)


@pytest.mark.parametrize("verify", ["FAILED:unable to get local issuer certificate",
                                    "GENEROUS", "", "success"])
def test_attack_wsgi_server_said_it_did_not_verify(wsgi: tuple[Client, Recorder],
                                                    world: World, verify: str) -> None:
    """A genuine certificate the server reports as not verified (``SSL_CLIENT_VERIFY``
    other than ``SUCCESS``) is refused."""
    client, rec = wsgi
    env = {"SSL_CLIENT_CERT": world.admin.cert_pem.decode(), "SSL_CLIENT_VERIFY": verify}
    assert_refused(wsgi_get(client, rec, "/admin/users", environ_overrides=env), 401)


@pytest.mark.parametrize("value", [
    pytest.param("garbage", id="garbage"),
    pytest.param("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", id="bad-der"),
    pytest.param(None, id="rogue-ca"),
])
def test_attack_wsgi_garbage_certificate_with_the_source(wsgi: tuple[Client, Recorder],
                                                         world: World,
                                                         value: str | None) -> None:
    client, rec = wsgi
    pem = value if value is not None else world.rogue.cert_pem.decode()
    result = wsgi_get(client, rec, "/admin/users", environ_overrides={"SSL_CLIENT_CERT": pem})
    assert_refused(result, 401)


@pytest.mark.parametrize("tenants", [
    pytest.param([], id="no-tenant"),
    pytest.param([b"*"], id="wildcard"),
    pytest.param([b""], id="empty"),
    pytest.param([b"tenant-b"], id="other-tenant"),
    pytest.param([b".*"], id="regex"),
    pytest.param([b"tenant-a, tenant-b"], id="folded-list"),
    pytest.param([b"tenant-b", b"tenant-a"], id="duplicate-first-wins"),
])
def test_attack_tenant_header_tricks(world: World, tenants: list[bytes]) -> None:
    """The tenant header is client-chosen: claiming another tenant, ``*`` or a pattern
    gives no role held only in ``tenant-a``."""
    gk = world.gatekeeper(sources=["asgi-tls"],
                          policy={"policy": "tenants.csv", "domain_header": "x-tenant"})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    headers = [(b"x-tenant", t) for t in tenants]
    assert_refused(run_asgi(mw, http_scope(b"/admin/x", cert=world.alice, headers=headers),
                            rec), 403)
    ok = http_scope(b"/admin/x", cert=world.alice, headers=[(b"x-tenant", b"tenant-a")])
    assert run_asgi(mw, ok, rec).status == 200


# -- the ASGI TLS extension and scopes with missing keys --------------------------------


@pytest.mark.parametrize("extensions", [
    pytest.param({"tls": "x"}, id="tls-not-a-mapping"),
    pytest.param({"tls": {"client_cert_chain": ["garbage"]}}, id="garbage-pem"),
    pytest.param({"tls": {"client_cert_chain": [1, 2]}}, id="not-strings"),
    pytest.param({"tls": {"client_cert_chain": [[]]}}, id="unhashable-entry"),
    pytest.param({"tls": {"client_cert_chain": "x" * 100_000}}, id="huge-string"),
    pytest.param({"tls": {"client_cert_chain": ["x"] * 1000}}, id="long-chain"),
    pytest.param({"tls": {"client_cert_chain": 7}}, id="chain-int"),
    pytest.param({"tls": {"client_cert": "not-bytes"}}, id="client-cert-str"),
    pytest.param({"tls": {"client_cert": b"\x30\x03\x02\x01\x00"}}, id="bad-der"),
    pytest.param({"tls": {"client_cert_chain": None, "client_cert": None}}, id="all-none"),
    pytest.param("not-a-dict", id="extensions-str"),
    pytest.param(None, id="extensions-none"),
])
def test_attack_tls_extension_garbage(asgi: tuple[ASGIMiddleware, Recorder],
                                      extensions: Any) -> None:
    mw, rec = asgi
    assert_refused(run_asgi(mw, http_scope(b"/admin/users", extensions=extensions), rec), 401)


def test_attack_tls_extension_rogue_or_unverified_certificate(
        asgi: tuple[ASGIMiddleware, Recorder], world: World) -> None:
    mw, rec = asgi
    rogue = {"tls": {"client_cert_chain": [world.rogue.cert_pem.decode()]}}
    assert_refused(run_asgi(mw, http_scope(b"/admin/users", extensions=rogue), rec), 401)
    flagged = {"tls": {"client_cert_chain": [world.admin.cert_pem.decode()],
                       "client_cert_error": "unable to verify"}}
    assert_refused(run_asgi(mw, http_scope(b"/admin/users", extensions=flagged), rec), 401)


@pytest.mark.parametrize("drop_or_set", [
    pytest.param({"method": None}, id="method-none"),
    pytest.param({"headers": None}, id="headers-none"),
    pytest.param({"headers": 5}, id="headers-int"),
    pytest.param({"headers": [(b"authorization",)]}, id="header-one-element"),
    pytest.param({"headers": [("authorization", "Bearer x")]}, id="header-str-pairs"),
    pytest.param({"query_string": None}, id="query-none"),
    pytest.param({"client": "garbage"}, id="client-garbage"),
    pytest.param({"raw_path": "/healthz"}, id="raw-path-str"),
])
def test_attack_scope_with_missing_or_odd_keys(asgi: tuple[ASGIMiddleware, Recorder],
                                               world: World,
                                               drop_or_set: dict[str, Any]) -> None:
    """A scope missing keys or carrying odd types is refused, never a 500 (some of these
    crashed the middleware with TypeError/ValueError when tokens were configured)."""
    mw, rec = asgi
    scope = http_scope(b"/admin/users", cert=world.alice)
    scope.update(drop_or_set)
    result = run_asgi(mw, scope, rec)
    assert result.status in (400, 401, 403)
    assert not result.app_ran


def test_advisory_malformed_scope_headers_crashed(asgi: tuple[ASGIMiddleware, Recorder],
                                                  world: World) -> None:
    """``scope["headers"]`` entries that are not byte pairs raised ValueError inside the
    token reader (a 500 from the server); now a 400."""
    mw, rec = asgi
    scope = http_scope(b"/files/report", cert=world.alice, headers=[(b"authorization",)])
    assert_refused(run_asgi(mw, scope, rec), 400)
    scope = http_scope(b"/files/report", cert=world.alice, headers=5)  # type: ignore[arg-type]
    assert_refused(run_asgi(mw, scope, rec), 400)


# -- websockets --------------------------------------------------------------------------


def test_attack_websocket_refused_before_accept(asgi: tuple[ASGIMiddleware, Recorder],
                                                world: World) -> None:
    mw, rec = asgi
    for scope in (
        http_scope(b"/files/report", type="websocket"),
        http_scope(b"/files/secret/x", type="websocket", cert=world.alice),
        http_scope(b"/files/%2e%2e/secret/x", type="websocket", cert=world.alice),
    ):
        scope.pop("method")
        result = run_asgi(mw, scope, rec)
        assert result.status == 1008
        assert not result.app_ran
    scope = http_scope(b"/files/report", type="websocket", cert=world.alice,
                       extensions={"websocket.http.response": {}})
    scope["extensions"]["tls"] = {"client_cert_chain": [world.rogue.cert_pem.decode()]}
    assert_refused(run_asgi(mw, scope, rec), 401)


def test_attack_websocket_through_fastapi(world: World) -> None:
    sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    app = FastAPI()
    sec.install(app)
    ran: list[bool] = []

    @app.websocket("/files/feed")
    async def feed(websocket: WebSocket) -> None:
        ran.append(True)
        await websocket.accept()

    with TestClient(app) as client, pytest.raises(WebSocketDenialResponse) as info, \
            client.websocket_connect("/files/feed"):
        pass  # pragma: no cover
    assert info.value.status_code == 401
    assert ran == []


# -- exceptions in the components -------------------------------------------------------


class Boom(RuntimeError):
    pass


class ExplodingVerifier:
    def verify(self, presented: PresentedCertificate) -> Any:
        raise Boom("verifier")

    identify = verify


class ExplodingTokens:
    def verify(self, token: str) -> RequestPrincipal:
        raise Boom("token verifier")

    async def averify(self, token: str) -> RequestPrincipal:
        raise Boom("token verifier")


class ExplodingSource:
    name = "boom"

    def from_asgi(self, scope: Scope) -> PresentedCertificate | None:
        raise Boom("source")

    def from_wsgi(self, environ: Scope) -> PresentedCertificate | None:
        raise Boom("source")

    def scrub_asgi(self, scope: Scope) -> None:
        raise AssertionError("never called on a refusal")

    scrub_wsgi = scrub_asgi


class ExplodingPolicy:
    """Delegates to the real policy, exploding in one chosen method."""

    def __init__(self, real: Any, where: str) -> None:
        self.real, self.where = real, where

    @property
    def dry_run(self) -> bool:
        return bool(self.real.dry_run)

    def normalize(self, raw_path: str) -> str:
        if self.where == "normalize":
            raise Boom("normalize")
        return str(self.real.normalize(raw_path))

    def evaluate(self, **kw: Any) -> PolicyResult:
        if self.where == "evaluate":
            raise Boom("evaluate")
        result: PolicyResult = self.real.evaluate(**kw)
        return result

    def roles_for(self, **kw: Any) -> frozenset[str]:
        if self.where == "roles_for":
            raise Boom("roles_for")
        roles: frozenset[str] = self.real.roles_for(**kw)
        return roles


@pytest.mark.parametrize(("part", "status"), [
    ("verifier", 401), ("source", 401), ("token", 401),
    ("normalize", 400), ("evaluate", 403), ("roles_for", 403),
])
def test_advisory_component_exceptions_fail_closed(world: World, part: str,
                                                   status: int) -> None:
    """An exception inside a source, the chain verifier, the token verifier or the
    policy is a refusal. ``roles_for`` and ``normalize`` raising escaped as a 500."""
    for kind in ("asgi", "wsgi"):
        gk = world.gatekeeper(sources=["asgi-tls" if kind == "asgi" else "wsgi-environ"])
        if part == "verifier":
            gk.verifier = ExplodingVerifier()
        elif part == "source":
            gk.sources = (ExplodingSource(),)
        elif part == "token":
            gk.token_verifier = ExplodingTokens()
        else:
            gk.policy = ExplodingPolicy(gk.policy, part)
        token = world.issuer.issue(sub="u1")
        headers = [(b"authorization", f"Bearer {token}".encode())]
        path = b"/admin/users"  # GET /admin/*: the route asks for role:admin
        rec = Recorder()
        if kind == "asgi":
            mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
            result = run_asgi(mw, http_scope(path, cert=world.admin, headers=headers), rec)
        else:
            client = Client(WSGIMiddleware(rec.wsgi, gatekeeper=gk))
            result = wsgi_get(client, rec, path.decode(), cert=world.admin,
                              headers=[("Authorization", f"Bearer {token}")])
        assert_refused(result, status)
        assert b"Boom" not in result.body


# -- policy files --------------------------------------------------------------------------


def test_advisory_damaged_rule_type_dropped_a_deny(world: World, tmp_path: Path) -> None:
    """Casbin skips a line whose rule type the model does not know: a deny rule damaged
    into ``q, ...`` (or ``pp, ...``) silently stopped denying, at start-up and on reload."""
    good = tmp_path / "policy.csv"
    good.write_text(POLICY)
    damaged = POLICY.replace(f"p, {ALICE}, *, /files/secret/*, *, deny",
                             f"q, {ALICE}, *, /files/secret/*, *, deny")
    assert damaged != POLICY
    bad = tmp_path / "damaged.csv"
    bad.write_text(damaged)
    with pytest.raises(ConfigurationError, match="rule type 'q'"):
        world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(bad)})

    gk = world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(good)})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    assert_refused(run_asgi(mw, http_scope(b"/files/secret/x", cert=world.alice), rec), 403)
    good.write_text(damaged.replace("q, ", "pp, ", 1))
    with pytest.raises(ConfigurationError, match="rule type 'pp'"):
        gk.policy.reload()  # type: ignore[attr-defined]
    assert_refused(run_asgi(mw, http_scope(b"/files/secret/x", cert=world.alice), rec), 403)


# -- framework integrations --------------------------------------------------------------


def fastapi_app(world: World) -> tuple[FastAPI, list[str]]:
    sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    app = FastAPI()
    sec.install(app)
    ran: list[str] = []

    @app.get("/items/{item_id:int}")
    @sec.public
    async def public_item(item_id: int) -> dict[str, int]:
        ran.append("public_item")
        return {"id": item_id}

    @app.get("/items/{name}")
    async def private_item(name: str) -> dict[str, str]:
        ran.append("private_item")
        return {"name": name}

    @app.get("/docs-files")
    async def private_list() -> list[str]:
        ran.append("private_list")
        return []

    @app.get("/docs-files/{p:path}")
    @sec.public
    async def public_file(p: str) -> dict[str, str]:
        ran.append("public_file")
        return {"p": p}

    @app.get("/a/secret")
    async def a_secret() -> str:
        ran.append("a_secret")
        return "secret"

    @app.get("/a/{p:path}/b")
    @sec.public
    async def a_b(p: str) -> str:
        ran.append("a_b")
        return p

    return app, ran


@pytest.mark.parametrize(("path", "status", "handler"), [
    pytest.param("/items/7", 200, "public_item", id="int-route-public"),
    pytest.param("/items/abc", 401, None, id="str-route-shadowed-by-int-template"),
    pytest.param("/docs-files/x/y", 200, "public_file", id="path-route-public"),
    pytest.param("/docs-files", 401, None, id="tail-template-matched-the-bare-prefix"),
    pytest.param("/a/secret", 401, None, id="mid-path-param-template-too-broad"),
    pytest.param("/a/x/y/b", 200, "a_b", id="mid-path-param-public"),
])
def test_advisory_fastapi_public_route_templates(world: World, path: str, status: int,
                                                 handler: str | None) -> None:
    """``@sec.public`` was translated into a route template broader than the FastAPI
    route: ``{id:int}`` became ``{id}`` (so ``/items/abc``, served by a *private*
    ``/items/{name}``, was public), ``/docs-files/{p:path}`` became ``/docs-files/*``
    (matching the private ``/docs-files``) and ``/a/{p:path}/b`` became ``/a/*``. A
    route is now public only when Starlette itself will run that route."""
    app, ran = fastapi_app(world)
    r = TestClient(app).get(path)
    assert r.status_code == status, r.text
    assert ran == ([handler] if handler else [])


def test_advisory_config_public_route_switched_off_require(world: World) -> None:
    """A ``[[routes]] public = true`` entry covering a view that declares ``@require``
    (Flask) or ``sec.require`` (FastAPI) made the view public too: ``RouteRule.apply``
    kept ``public`` from the configured requirements."""
    routes = [{"path": "/items/*", "public": True}]
    gk = world.gatekeeper(sources=["wsgi-environ"], routes=routes)
    app = Flask(__name__)
    FlaskSec(app, gatekeeper=gk)
    ran: list[str] = []

    @app.get("/items/<name>")
    def open_page(name: str) -> str:
        ran.append("open")
        return name

    @app.get("/items/<name>/admin")
    @flask_require(roles=["role:admin"])
    def open_admin(name: str) -> str:
        ran.append("admin")
        return name

    client = app.test_client()
    assert client.get("/items/x").status_code == 200
    assert client.get("/items/x/admin").status_code == 401
    alice = {"SSL_CLIENT_CERT": world.alice.cert_pem.decode()}
    assert client.get("/items/x/admin", environ_overrides=alice).status_code == 403
    admin = {"SSL_CLIENT_CERT": world.admin.cert_pem.decode()}
    assert client.get("/items/x/admin", environ_overrides=admin).status_code == 200
    assert ran == ["open", "admin"]

    from fastapi import Security

    from endpointsec.facts import Principal

    sec = FastAPISec(gatekeeper=world.gatekeeper(sources=["asgi-tls"], routes=routes))
    fapp = FastAPI()
    sec.install(fapp)

    @fapp.get("/items/{name}/admin")
    async def fopen_admin(name: str,
                          caller: Principal = Security(sec.require(roles=["role:admin"]))
                          ) -> str:
        ran.append("fadmin")
        return name

    assert TestClient(fapp).get("/items/x/admin").status_code == 401
    assert ran == ["open", "admin"]


def test_advisory_flask_app_code_ran_before_the_check(world: World) -> None:
    """``EndpointSec(app)`` appended its check to ``before_request``: a URL value
    preprocessor, or a ``before_request`` function registered earlier (a response cache,
    a maintenance page), ran before it, and one returning a response skipped the check
    altogether (here: a cache serving ``/reports/export`` to anyone). The check is now
    the first thing ``preprocess_request`` runs."""
    app = Flask(__name__)
    ran: list[str] = []

    @app.url_value_preprocessor
    def load(endpoint: str | None, values: dict[str, Any] | None) -> None:
        ran.append("url_value_preprocessor")

    @app.before_request
    def cached() -> Any:
        ran.append("cache")
        return "cached private report" if request.path == "/reports/export" else None

    FlaskSec(app, gatekeeper=world.gatekeeper(sources=["wsgi-environ"]))

    @app.get("/reports/export")
    def export() -> str:
        return "private report"

    client = app.test_client()
    r = client.get("/reports/export")
    assert r.status_code == 401
    assert b"report" not in r.data
    assert ran == []
    alice = {"SSL_CLIENT_CERT": world.alice.cert_pem.decode()}
    assert client.get("/reports/export", environ_overrides=alice).status_code == 403
    assert ran == []
    assert client.get("/reports/summary", environ_overrides=alice).status_code == 404
    assert ran == ["url_value_preprocessor", "cache"]


def test_attack_flask_path_tricks(world: World) -> None:
    gk = world.gatekeeper(sources=["wsgi-environ"])
    app = Flask(__name__)
    FlaskSec(app, gatekeeper=gk)
    ran: list[str] = []

    @app.get("/healthz")
    @flask_public
    def health() -> str:
        return "ok"

    @app.get("/admin/<path:rest>")
    def admin(rest: str) -> str:
        ran.append(rest)
        return rest

    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    for path in ("/admin/%2e%2e/healthz", "/admin/..%2Fhealthz", "/admin/x%2F..%2F..%2Fhealthz",
                 "/admin\\..\\healthz"):
        assert client.get(path).status_code == 400, path
    assert client.get("/admin/users").status_code == 401
    assert client.head("/admin/users",
                       environ_overrides={"SSL_CLIENT_CERT": world.alice.cert_pem.decode()}
                       ).status_code == 403
    assert ran == []


# -- the demo runs only what ships inside the package --------------------------------------


def test_advisory_demo_never_executes_code_found_above_the_package(tmp_path: Path) -> None:
    """`endpointsec demo` once looked for ``examples/fastapi_app/app.py`` in every parent
    directory of the installed package, up to ``/``, and executed the first it found: any
    user able to write such a file above site-packages (a shared /tmp, a home directory)
    ran code in the demo's process. The demo now runs the example shipped in the package."""
    import os
    import shutil
    import subprocess
    import sys

    import endpointsec

    package = Path(endpointsec.__file__).parent
    lib = tmp_path / "venv" / "lib" / "site-packages"
    shutil.copytree(package, lib / "endpointsec", ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "examples" / "fastapi_app"
    planted.mkdir(parents=True)
    for name in ("endpointsec.toml", "policy.csv"):  # what the demo needs to get that far
        shutil.copy(package / "cli" / "_demo" / name, planted / name)
    marker = tmp_path / "planted-code-ran"
    (planted / "app.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "raise SystemExit(97)\n")
    script = ("import sys, endpointsec\n"
              "assert endpointsec.__file__.startswith(sys.argv[1]), endpointsec.__file__\n"
              "from endpointsec.cli import main\n"
              "sys.exit(main(['demo']))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(lib)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(lib)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert not marker.exists(), "the demo executed an app.py found above the package"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "15 of 15 requests got the answer the policy promises." in proc.stdout


# -- responses never echo ------------------------------------------------------------------


def test_attack_responses_never_echo_input(asgi: tuple[ASGIMiddleware, Recorder],
                                           world: World) -> None:
    mw, rec = asgi
    marker = "zzMARKERzz"
    token = world.issuer.issue(sub=marker, aud=marker)
    cases = [
        http_scope(f"/files/{marker}%00".encode(), cert=world.alice),
        http_scope(f"/files/{marker}".encode(),
                   headers=[(b"authorization", f"Bearer {token}".encode())]),
        http_scope(f"/files/{marker}".encode(), cert=world.alice,
                   headers=[(b"authorization", f"Bearer {token}".encode())]),
        http_scope(f"/files/{marker}".encode(),
                   headers=[(b"authorization", f"Basic {marker}".encode())]),
        http_scope(b"/secret", cert=world.alice,
                   headers=[(b"x-tenant", marker.encode())]),
        http_scope(f"/{marker}".encode(), method=marker.upper()),
    ]
    for scope in cases:
        result = run_asgi(mw, scope, rec)
        assert result.status in (400, 401, 403)
        wire = result.body + json.dumps(result.headers).encode()
        assert marker.encode() not in wire
        assert marker.upper().encode() not in wire
        assert token.encode() not in wire


# -- policy objects that no request path can match ------------------------------------


@pytest.mark.parametrize("obj", [
    pytest.param("/reports/q4 draft/*", id="space"),
    pytest.param("/reports/café/*", id="non-ascii"),
    pytest.param("/reports/caf%c3%a9/*", id="lower-case-escape"),
    pytest.param("/reports/%7Eexport/*", id="escaped-unreserved"),
])
def test_advisory_deny_rule_written_unnormalized_denied_nothing(world: World, tmp_path: Path,
                                                                obj: str) -> None:
    """Request paths are matched in their normalized form (``%20`` for a space, UTF-8
    escapes in upper case, unreserved characters decoded). A deny rule written with a
    raw space, raw non-ASCII text, a lower-case escape or an escaped ``~`` matched no
    request at all: alice reached ``/reports/q4%20draft/x`` through her ``/reports/*``
    allow. Such objects are now refused at load, with the spelling that matches."""
    policy = tmp_path / "policy.csv"
    policy.write_text(f"p, {ALICE}, *, /reports/*, *, allow\n"
                      f"p, {ALICE}, *, {obj}, *, deny\n", encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(policy)})
    assert f"{policy}:2: " in str(info.value)
    assert "never matches a request path" in str(info.value)


def test_attack_resource_names_are_not_paths(world: World, tmp_path: Path) -> None:
    """Objects that are not paths (``resource=`` overrides) are left as written."""
    policy = tmp_path / "policy.csv"
    policy.write_text(f"p, {ALICE}, *, order reports, read, allow\n")
    gk = world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(policy)})
    assert gk.policy.evaluate(subjects=(ALICE,), resource="order reports",
                              action="read").allowed


# -- a tenant header is a client's: never remembered at any size --------------------------


def test_advisory_long_tenant_headers_are_not_remembered(world: World) -> None:
    """The policy engine remembered its answer, the roles held and the role graph walk
    per tenant, keyed on the tenant header's value: one authenticated client sending a
    new 16 KiB tenant per request grew each worker by ~17 KiB a request, up to the
    caches' 10,000 entries (~175 MiB). Long tenants are now answered without being
    remembered."""
    gk = world.gatekeeper(sources=["asgi-tls"],
                          policy={"policy": "tenants.csv", "domain_header": "x-tenant"})
    recorder = Recorder()
    app = ASGIMiddleware(recorder.asgi, gatekeeper=gk)
    for i in range(50):
        tenant = f"t{i}-".encode() + b"x" * 16_000
        scope = http_scope(b"/admin/x", cert=world.alice, headers=[(b"x-tenant", tenant)])
        assert_refused(run_asgi(app, scope, recorder), 403)
    ok = http_scope(b"/admin/x", cert=world.alice, headers=[(b"x-tenant", b"tenant-a")])
    assert run_asgi(app, ok, recorder).status == 200
    snapshot = gk.policy._snapshot  # type: ignore[attr-defined]
    held = [key for cache in (snapshot._views, snapshot._roles, snapshot._reach_cache)
            for key in cache]
    assert held, "the short tenant is remembered"
    assert max(len(str(key)) for key in held) < 1024, "a 16 KiB tenant is remembered"


# -- the verified-token cache and a key-set change during a verification --------------


def test_advisory_token_verified_with_a_removed_key_was_remembered() -> None:
    """A request looked up the issuer's key, the key set then changed (the key removed,
    the token cache emptied for that issuer), and only then did the request store its
    token in the cache: that token kept verifying from the cache with a key the issuer
    had withdrawn, until its ``exp``. A token verified with a key looked up before a
    key-set change is no longer remembered."""
    from endpointsec.errors import TokenError
    from endpointsec.tokens import build_token_verifier
    from endpointsec.tokens.config import IssuerConfig, TokensConfig
    from endpointsec.tokens.jwks import RemoteKeySource

    issuer = TokenIssuer()
    with issuer.serve():
        verifier = build_token_verifier(TokensConfig(issuers=(IssuerConfig(
            issuer=issuer.issuer, audiences=(issuer.audience,),
            algorithms=(issuer.algorithm,), jwks_url=issuer.jwks_url, allow_http=True),)))
        assert verifier is not None
        try:
            source = verifier.key_source(issuer.issuer)  # type: ignore[attr-defined]
            assert isinstance(source, RemoteKeySource)
            token = issuer.issue("alice")
            warm = issuer.issue("bob")
            verifier.verify(warm)  # the first key set is fetched
            real_resolve = source.resolve

            def resolve_then_rotation_lands(kid: str | None, alg: str) -> Any:
                key = real_resolve(kid, alg)
                # The background refresh lands between this lookup and the cache write.
                issuer.rotate(keep_old=False)
                source._bg.submit(source._fetch_shared(source._clock())).result(10)
                return key

            source.resolve = resolve_then_rotation_lands  # type: ignore[method-assign]
            assert verifier.verify(token).subject == "alice"  # verified before the change
            source.resolve = real_resolve  # type: ignore[method-assign]
            with pytest.raises(TokenError, match="no key with kid"):
                verifier.verify(token)
        finally:
            verifier.close()


def test_advisory_route_written_unnormalized_narrowed_nothing(world: World) -> None:
    """Route templates match the normalized path too: a ``[[routes]]`` entry for
    ``/reports/q4 draft/*`` asking for ``role:admin`` never applied (the request path
    is ``/reports/q4%20draft/...``), so alice, allowed ``/reports/*`` by the policy,
    needed no ``role:admin`` there. Such a template is now refused at start-up."""
    routes = [{"path": "/reports/q4 draft/*", "roles": ["role:admin"]},
              {"path": "/", "public": True}]
    with pytest.raises(ConfigurationError, match=r"routes.*never matches a request path"):
        world.config(sources=["asgi-tls"], routes=routes)
    # The spelling that matches is accepted, and narrows.
    routes[0]["path"] = "/reports/q4%20draft/{name}"
    recorder = Recorder()
    gk = Gatekeeper.from_config(world.config(sources=["asgi-tls"], routes=routes))
    app = ASGIMiddleware(recorder.asgi, gatekeeper=gk)
    assert_refused(run_asgi(app, http_scope(b"/reports/q4%20draft/x", cert=world.alice),
                            recorder), 403)
    assert run_asgi(app, http_scope(b"/reports/other", cert=world.alice), recorder).status == 200


# -- endpointsec learn: names from tokens and headers never become policy syntax ---------


def test_advisory_learn_wrote_a_token_role_as_a_policy_line(world: World, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """A token role is a claim value and may hold a line break. ``endpointsec learn``
    wrote the other roles of a request into a ``#`` comment as they were: the role
    ``zz\\np, role:reader, *, /*, *, allow`` ended the comment and added a rule granting
    ``role:reader`` everything; as the narrowest role it was the rule's subject, with
    the same effect. A role, user or domain a policy line cannot hold is no longer a
    rule's subject or domain, and names in comments are escaped."""
    import logging

    from endpointsec.audit import JSONFormatter
    from endpointsec.cli import main
    from endpointsec.policy import CasbinPolicy

    (tmp_path / "policy.csv").write_text("p, role:reader, *, /reports/*, GET, allow\n")
    gk = world.gatekeeper(sources=["asgi-tls"], policy={"policy": str(tmp_path / "policy.csv")},
                          defaults={"mtls": "none", "token": "required"},
                          audit={"allow_sample_rate": 1.0})
    recorder = Recorder()
    app = ASGIMiddleware(recorder.asgi, gatekeeper=gk)
    log_file = tmp_path / "decisions.jsonl"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(JSONFormatter())
    decision_log = logging.getLogger("endpointsec.decision")
    decision_log.addHandler(handler)
    level = decision_log.level
    decision_log.setLevel(logging.INFO)
    try:
        evil = "zz\np, role:reader, *, /*, *, allow"
        for roles in (["reader", evil],  # credited to role:reader, ``evil`` in a comment
                      ["reader", evil, "other"],  # credited to role:other
                      ["reader", "a\np, role:reader, *, /*, *, allow"]):
            token = world.issuer.issue("alice", roles=roles)
            scope = http_scope(b"/reports/q1", headers=[
                (b"authorization", b"Bearer " + token.encode())])
            r = run_asgi(app, scope, recorder)
            assert (r.status, r.app_ran) == (200, True)  # allowed as role:reader
    finally:
        decision_log.removeHandler(handler)
        decision_log.setLevel(level)
        handler.close()
    capsys.readouterr()
    learned = tmp_path / "learned.csv"
    assert main(["learn", str(log_file), "-o", str(learned)]) == 0
    text = learned.read_text()
    rules = [line for line in text.splitlines() if line.startswith("p,")]
    assert sorted(rules) == ["p, role:other, *, /reports/q1, GET, allow",
                             "p, role:reader, *, /reports/q1, GET, allow"], text
    assert "also carried role:reader, role:zz\\np, role:reader, *, /*, *, allow" in text
    assert "p, role:reader, *, /*, *, allow" not in text.splitlines()
    with CasbinPolicy(policy=learned) as learned_policy:
        assert not learned_policy.evaluate(subjects=("role:reader",), resource="/admin/x",
                                           action="DELETE").allowed


# -- one FastAPI extension installed on two apps ----------------------------------------


def test_advisory_fastapi_public_routes_of_another_app(world: World) -> None:
    """An ``EndpointSec`` installed on two apps took the ``@sec.public`` routes of the
    app that served the first request for both: the admin app's private ``/status``
    matched the site's public ``/status`` and ran without any credential. Each app's
    public routes are now its own."""
    sec = FastAPISec(config=world.config(sources=["asgi-tls"]))
    site, admin = FastAPI(), FastAPI()
    sec.install(site)
    sec.install(admin)
    ran: list[str] = []

    @site.get("/status")
    @sec.public
    async def status() -> dict[str, bool]:
        ran.append("site")
        return {"ok": True}

    @admin.get("/status")
    async def admin_status() -> dict[str, str]:
        ran.append("admin")
        return {"secret": "admin internals"}

    with TestClient(site) as client:
        assert client.get("/status").status_code == 200
    with TestClient(admin) as client:
        r = client.get("/status")
    assert r.status_code == 401, r.text
    assert r.content == _BODIES[401]
    assert ran == ["site"]
    # And the other way round: the admin app first, then the site.
    sec2 = FastAPISec(config=world.config(sources=["asgi-tls"]))
    site2, admin2 = FastAPI(), FastAPI()
    sec2.install(site2)
    sec2.install(admin2)
    site2.get("/status")(sec2.public(status))
    admin2.get("/status")(admin_status)
    with TestClient(admin2) as client:
        assert client.get("/status").status_code == 401
    with TestClient(site2) as client:
        assert client.get("/status").status_code == 200


def test_advisory_fastapi_route_added_before_a_public_one_after_start(world: World) -> None:
    """The public routes were looked up in a copy of the app's routes taken at the first
    request: a private route placed before a public catch-all afterwards (a plugin
    registering its routes late) ran as public. The routes Starlette runs are now the
    routes looked at."""
    from fastapi.routing import APIRoute

    sec = FastAPISec(config=world.config(sources=["asgi-tls"]))
    app = FastAPI()
    sec.install(app)

    @app.get("/{page:path}")
    @sec.public
    async def pages(page: str) -> dict[str, str]:
        return {"page": page}

    async def admin_keys() -> dict[str, str]:
        return {"secret": "admin keys"}

    with TestClient(app) as client:
        assert client.get("/about").status_code == 200
        app.router.routes.insert(0, APIRoute("/admin/keys", admin_keys, methods=["GET"]))
        r = client.get("/admin/keys")
        assert r.status_code == 401, r.text
        assert client.get("/about").status_code == 200


# -- files replaced with their modification time kept -------------------------------------


def _replace_keeping_mtime(path: Path, data: bytes, *, in_place: bool) -> None:
    """What ``cp -p``/``rsync -a``/``tar`` do: new content, the old file's mtime."""
    before = path.stat()
    assert len(data) == before.st_size
    if in_place:
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        new = path.with_name(path.name + ".new")
        new.write_bytes(data)
        os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(new, path)
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed", "in-place"])
def test_advisory_trust_bundle_replaced_with_its_mtime_kept(tmp_path: Path,
                                                            in_place: bool) -> None:
    """Trust bundles were re-read only when their mtime or size changed. A bundle
    replaced by one of the same size with the old mtime kept (``cp -p``, ``rsync -a``,
    ``tar``, image layers with fixed times) was never re-read: the CA it removed kept
    authenticating its clients for good. The inode and ctime are now compared too."""
    old_ca = CertificateAuthority.create(name="client ca one")
    new_ca = CertificateAuthority.create(name="client ca two")
    size = max(len(old_ca.cert_pem), len(new_ca.cert_pem))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(old_ca.cert_pem.ljust(size, b"\n"))
    alice = old_ca.issue_client(spiffe_id=ALICE)
    (tmp_path / "policy.csv").write_text(f"p, {ALICE}, *, /files/*, GET, allow\n")
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"], "trust_bundles": ["ca.pem"],
                     "reload_interval": 0.0},
        "policy": {"policy": "policy.csv"},
    }, base_dir=tmp_path)
    recorder = Recorder()
    app = ASGIMiddleware(recorder.asgi, gatekeeper=Gatekeeper.from_config(config))
    assert run_asgi(app, http_scope(b"/files/a", cert=alice), recorder).status == 200
    _replace_keeping_mtime(bundle, new_ca.cert_pem.ljust(size, b"\n"), in_place=in_place)
    assert_refused(run_asgi(app, http_scope(b"/files/a", cert=alice), recorder), 401)
    new_client = new_ca.issue_client(spiffe_id=ALICE)
    assert run_asgi(app, http_scope(b"/files/a", cert=new_client), recorder).status == 200


def test_advisory_policy_rewritten_in_place_with_its_mtime_kept(world: World,
                                                                tmp_path: Path) -> None:
    """The policy watcher compared mtime, size and inode: a policy file rewritten in
    place with its mtime kept (``cp -p new.csv policy.csv``) and the same size (a
    revoked path swapped for another) was never reloaded, and the revoked rule kept
    allowing. The ctime is now compared too."""
    from endpointsec.policy import CasbinPolicy

    policy = tmp_path / "policy.csv"
    policy.write_text(f"p, {ALICE}, *, /files/*, GET, allow\n")
    with CasbinPolicy(policy=policy) as engine:
        assert engine.evaluate(subjects=(ALICE,), resource="/files/a", action="GET").allowed
        _replace_keeping_mtime(policy, f"p, {ALICE}, *, /other/*, GET, allow\n".encode(),
                               in_place=True)
        engine.check_files()  # the change is seen...
        engine.check_files()  # ...and loaded once it held still for one step
        assert engine.generation == 1
        assert not engine.evaluate(subjects=(ALICE,), resource="/files/a",
                                   action="GET").allowed


# -- subject namespaces: a certificate never yields a token subject ----------------------


def test_advisory_certificate_uri_san_cannot_claim_a_token_role(world: World) -> None:
    """A certificate whose URI SAN is ``role:admin`` got the rules of the token role
    ``role:admin``. Certificate subjects are now ``spiffe://``, ``uri:``, ``dns:`` or
    ``sha256:``: the SAN becomes ``uri:role:admin`` and holds no token role."""
    recorder = Recorder()
    impostor = world.ca.issue_client(uris=["role:admin"])
    app = ASGIMiddleware(recorder.asgi, gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    r = run_asgi(app, http_scope(b"/items/1", cert=impostor), recorder)
    assert (r.status, r.app_ran) == (403, False)
    verifier = world.gatekeeper(sources=["asgi-tls"]).verifier
    assert verifier is not None
    der = impostor.certificate.public_bytes(Encoding.DER)
    assert verifier.verify(PresentedCertificate(leaf=der)).id == "uri:role:admin"


def test_advisory_issuer_prefix_cannot_collide_user_subjects() -> None:
    """With issuers ``https://t`` and ``https://t/t1``, ``<iss>/<sub>`` made the user
    ``t1/alice`` of the first the user ``alice`` of the second. The user subject is now
    ``<iss>#<sub>`` and a configured issuer may not contain ``#``."""
    first = RequestPrincipal(issuer="https://t", subject="t1/alice")
    second = RequestPrincipal(issuer="https://t/t1", subject="alice")
    assert first.id != second.id
    assert (first.id, second.id) == ("https://t#t1/alice", "https://t/t1#alice")


@pytest.mark.parametrize("issuer", ["https://idp#x", "role:admin", "spiffe://shop.local",
                                    "uri:https://idp", "dns:idp"])
def test_advisory_issuers_that_could_mint_other_namespaces_are_refused(
        world: World, issuer: str) -> None:
    tokens = {"issuers": [{"issuer": issuer, "audiences": ["a"], "algorithms": ["ES256"],
                           "public_key": "issuer.pem"}]}
    with pytest.raises(ConfigurationError, match=r"tokens\.issuers\.issuer"):
        world.config(sources=["asgi-tls"], tokens=tokens)


def test_advisory_wsgi_tenant_header_with_underscore(world: World) -> None:
    """A ``domain_header`` spelled with ``_`` never matched under WSGI (the environ key
    had been turned back into ``-`` form): every request was decided without a tenant."""
    recorder = Recorder()
    gk = world.gatekeeper(sources=["wsgi-environ"],
                          policy={"policy": "tenants.csv", "domain_header": "x_tenant"})
    app = WSGIMiddleware(recorder.wsgi, gatekeeper=gk)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/admin/x", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "t", "SERVER_PORT": "443",
               "wsgi.url_scheme": "https", "HTTP_X_TENANT": "tenant-a",
               "SSL_CLIENT_CERT": world.alice.cert_pem.decode()}
    statuses: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: statuses.append(s)))
    assert statuses[0].startswith("200"), body
    assert recorder.calls == ["/admin/x"]


def test_advisory_large_cookies_are_never_remembered(world: World) -> None:
    """Anonymous requests to a public route with a large ``Cookie`` each were remembered
    by a recent-decisions cache keyed on the whole request (600 requests with 256 KiB
    cookies pinned +177 MiB). Nothing is remembered per request now: after many such
    requests with distinct paths, the memory held does not grow with them."""
    import gc
    import tracemalloc

    recorder = Recorder()
    app = ASGIMiddleware(recorder.asgi, gatekeeper=world.gatekeeper(sources=["asgi-tls"]))
    cookie = b"session=" + b"x" * (64 * 1024)

    def burst(start: int) -> None:
        for i in range(start, start + 100):
            headers = [(b"host", b"t"), (b"cookie", cookie + str(i).encode())]
            r = run_asgi(app, http_scope(f"/pub/n{i}".encode(), headers=headers), recorder)
            assert r.status == 200

    burst(0)  # warm-up: imports, first-use structures
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst(100)
        burst(200)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 200 requests carried 12.8 MiB of cookies; none of it may stay.
    assert grown < 1024 * 1024, grown


# -- identity: federation, chain validity, forwarded headers -------------------------------


SHOP_ADMIN = "spiffe://shop.local/ns/shop/sa/admin"
PARTNER_APP = "spiffe://partner.local/ns/app/sa/api"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two trust domains, each with its own CA; a policy allowing one identity of each."""
    d = tmp_path_factory.mktemp("federation")
    shop, partner = CertificateAuthority.create(name="shop"), CertificateAuthority.create(
        name="partner")
    shop.write_bundle(d / "shop.pem")
    partner.write_bundle(d / "partner.pem")
    (d / "policy.csv").write_text(f"p, {SHOP_ADMIN}, *, /admin/*, *, allow\n"
                                  f"p, {PARTNER_APP}, *, /partner/*, *, allow\n")
    return {"dir": d, "shop": shop, "partner": partner}


def _nginx_headers(cert: IssuedCertificate) -> list[tuple[bytes, bytes]]:
    from urllib.parse import quote

    return [(b"x-ssl-client-cert", quote(cert.cert_pem.decode(), safe="").encode()),
            (b"x-ssl-client-verify", b"SUCCESS")]


@pytest.mark.parametrize("verify_again", [True, False])
def test_advisory_partner_ca_cannot_mint_ids_in_another_trust_domain_via_a_trusted_proxy(
        federation: dict[str, Any], verify_again: bool) -> None:
    """With per-trust-domain bundles, an identity in ``shop.local`` is anchored in the
    shop bundle on every path. With ``verify_again = false`` the proxy's verification
    (which trusts the partner CA too) was relied on, and a partner-minted
    ``spiffe://shop.local/...`` certificate got a 200."""
    d, shop, partner = federation["dir"], federation["shop"], federation["partner"]
    config = Config.from_mapping({
        "identity": {"trust_domains": {"shop.local": {"bundle": "shop.pem"},
                                       "partner.local": {"bundle": "partner.pem"}}},
        "proxy": {"trusted": ["127.0.0.1/32"], "sources": ["nginx"],
                  "verify_again": verify_again},
        "policy": {"policy": "policy.csv"},
        "defaults": {"mtls": "required"},
    }, base_dir=d)
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, config=config)
    client = Client(WSGIMiddleware(rec.wsgi, config=config))

    def both(cert: IssuedCertificate, path: str) -> list[Result]:
        scope = http_scope(path.encode(), headers=_nginx_headers(cert),
                           client=("127.0.0.1", 40000))
        env = {"REMOTE_ADDR": "127.0.0.1"}
        return [run_asgi(mw, scope, rec),
                wsgi_get(client, rec, path, environ_overrides=env,
                         headers=[(k.decode(), v.decode()) for k, v in _nginx_headers(cert)])]

    for result in both(partner.issue_client(spiffe_id=SHOP_ADMIN), "/admin/users"):
        assert_refused(result, 401)
    for result in both(shop.issue_client(spiffe_id=PARTNER_APP), "/partner/x"):
        assert_refused(result, 401)
    # Each CA still vouches for its own trust domain.
    for result in both(shop.issue_client(spiffe_id=SHOP_ADMIN), "/admin/users"):
        assert result.status == 200 and result.app_ran
    for result in both(partner.issue_client(spiffe_id=PARTNER_APP), "/partner/x"):
        assert result.status == 200 and result.app_ran


def test_advisory_peer_validity_is_the_earliest_not_after_of_the_chain(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An intermediate that expires before the leaf bounds what is remembered about the
    peer: ``PeerIdentity.not_after`` was the leaf's, and a verification cached until the
    leaf's notAfter outlived the intermediate."""
    import datetime as dt

    from endpointsec.identity import verify as verify_module

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    inter_end = now + dt.timedelta(hours=1)
    inter = world.ca.intermediate(name="short-lived intermediate", not_after=inter_end)
    leaf = inter.issue_client(spiffe_id=ALICE, not_after=now + dt.timedelta(days=30))
    seen: list[Any] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["endpointsec"].principal.peer)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gk = world.gatekeeper(sources=["asgi-tls"])
    mw = ASGIMiddleware(app, gatekeeper=gk)
    chain = [leaf.cert_pem.decode(), *(c.public_bytes(Encoding.PEM).decode()
                                       for c in leaf.intermediates)]

    def call() -> Result:
        scope = http_scope(b"/files/report",
                           extensions={"tls": {"client_cert_chain": chain,
                                               "client_cert_error": None}})
        return run_asgi(mw, scope, Recorder())

    assert call().status == 200
    assert seen[-1].not_after == inter_end
    clock = [inter_end.timestamp() - 1]
    monkeypatch.setattr(verify_module.time, "time", lambda: clock[0])
    assert call().status == 200  # cached, still inside the intermediate's validity
    clock[0] = inter_end.timestamp() + 1
    assert_refused(call(), 401)  # past it: neither the cache nor the verifier accepts


def _xfcc(cert: IssuedCertificate) -> str:
    from urllib.parse import quote

    return f'By=spiffe://proxy;Cert="{quote(cert.cert_pem.decode(), safe="")}"'


def _traefik(cert: IssuedCertificate) -> str:
    return "".join(cert.cert_pem.decode().splitlines()[1:-1])


@pytest.fixture
def proxied(world: World) -> Callable[[str], tuple[ASGIMiddleware, Client, Recorder]]:
    def build(source: str) -> tuple[ASGIMiddleware, Client, Recorder]:
        gk = world.gatekeeper(sources=[], proxy={"trusted": ["127.0.0.1/32"],
                                                 "sources": [source]})
        rec = Recorder()
        return (ASGIMiddleware(rec.asgi, gatekeeper=gk),
                Client(WSGIMiddleware(rec.wsgi, gatekeeper=gk)), rec)
    return build


@pytest.mark.parametrize(("source", "header", "encode"), [
    pytest.param("xfcc", "x-forwarded-client-cert", _xfcc, id="xfcc"),
    pytest.param("traefik", "x-forwarded-tls-client-cert", _traefik, id="traefik"),
])
def test_advisory_repeated_certificate_header_lines_are_refused(
        world: World, proxied: Callable[[str], tuple[ASGIMiddleware, Client, Recorder]],
        source: str, header: str, encode: Callable[[IssuedCertificate], str]) -> None:
    """A certificate header from a trusted proxy must be one line. Several lines were
    joined into one list: a client line left beside the proxy's could become the
    caller (the last XFCC element; Traefik's leaf), here the admin's public certificate
    without its key."""
    mw, client, rec = proxied(source)
    forged, real = encode(world.admin), encode(world.alice)
    peer = {"client": ("127.0.0.1", 40000)}
    one = http_scope(b"/admin/users", headers=[(header.encode(), real.encode())], **peer)
    assert_refused(run_asgi(mw, one, rec), 403)  # alice: authenticated, not an admin
    for lines in ([real, forged], [forged, real], [real, ""], ["", real]):
        scope = http_scope(b"/admin/users",
                           headers=[(header.encode(), v.encode()) for v in lines], **peer)
        assert_refused(run_asgi(mw, scope, rec), 401)
    # WSGI: the server joined the lines (gunicorn with ",", werkzeug with ", ").
    key = "HTTP_" + header.upper().replace("-", "_")
    for joined in (f"{forged},{real}", f"{real}, {forged}", f"{real},", f", {real}"):
        if source == "xfcc" and joined in (f"{forged},{real}", f"{real}, {forged}"):
            continue  # two whole XFCC elements read as two hops (documented limit)
        env = {"REMOTE_ADDR": "127.0.0.1", key: joined}
        assert_refused(wsgi_get(client, rec, "/admin/users", environ_overrides=env), 401)
    env = {"REMOTE_ADDR": "127.0.0.1", key: real}
    assert_refused(wsgi_get(client, rec, "/admin/users", environ_overrides=env), 403)


def test_advisory_pki_key_files_are_private_and_never_written_through_a_symlink(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``endpointsec pki`` left an existing key file's mode as it was (``--force`` over a
    0644 ``ca.key`` kept it world-readable) and followed a symlink planted at the key's
    name, overwriting (or creating) the file it pointed to."""
    import os
    import stat

    from endpointsec.cli import main

    def mode(p: Path) -> int:
        return stat.S_IMODE(os.lstat(p).st_mode)

    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.key").write_bytes(b"old")
    os.chmod(d / "ca.key", 0o644)
    assert main(["pki", "init", "--dir", str(d), "--force"]) == 0
    assert mode(d / "ca.key") == 0o600
    assert b"PRIVATE KEY" in (d / "ca.key").read_bytes()
    # A narrower mode is kept, never widened.
    (d / "server.key").write_bytes(b"old")
    os.chmod(d / "server.key", 0o400)
    assert main(["pki", "server", "--dir", str(d)]) == 0
    assert mode(d / "server.key") == 0o400
    assert b"PRIVATE KEY" in (d / "server.key").read_bytes()
    # A symlink at a key's name is refused: an existing target or a dangling one.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (d / "orders.key").symlink_to(victim)
    assert main(["pki", "client", "--dir", str(d), "--name", "orders"]) == 1
    assert victim.read_bytes() == b"precious"
    assert "symbolic link" in capsys.readouterr().err
    other = tmp_path / "pki2"
    other.mkdir()
    (other / "ca.key").symlink_to(tmp_path / "created-elsewhere")
    assert main(["pki", "init", "--dir", str(other), "--force"]) == 1
    assert not (tmp_path / "created-elsewhere").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_advisory_wsgi_domain_header_with_underscore(world: World) -> None:
    """``domain_header = "x_tenant"``: a WSGI server delivers the header as
    ``HTTP_X_TENANT``, read back as ``x-tenant``, which never matched the configured
    name, so every request ran with no tenant (tenant roles silently not applied)."""
    gk = world.gatekeeper(sources=["wsgi-environ"],
                          policy={"policy": "tenants.csv", "domain_header": "x_tenant"})
    rec = Recorder()
    client = Client(WSGIMiddleware(rec.wsgi, gatekeeper=gk))
    result = wsgi_get(client, rec, "/admin/x", cert=world.alice,
                      headers=[("X-Tenant", "tenant-a")])
    assert result.status == 200 and result.app_ran


# -- checks that no other test guarded -------------------------------------------------------


def test_attack_two_sources_presenting_different_certificates(world: World) -> None:
    """The TLS connection and a trusted proxy's header name two different leaves: which
    one is the caller is ambiguous, so neither is (401)."""
    gk = world.gatekeeper(sources=["asgi-tls"], proxy={"trusted": ["127.0.0.1/32"],
                                                        "sources": ["xfcc"]})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    peer = {"client": ("127.0.0.1", 40000)}
    for tls, xfcc in ((world.alice, world.admin), (world.admin, world.alice)):
        scope = http_scope(b"/items/1", cert=tls, headers=[
            (b"x-forwarded-client-cert", _xfcc(xfcc).encode())], **peer)
        assert_refused(run_asgi(mw, scope, rec), 401)
    same = http_scope(b"/items/1", cert=world.alice, headers=[
        (b"x-forwarded-client-cert", _xfcc(world.alice).encode())], **peer)
    assert run_asgi(mw, same, rec).status == 200


def _authenticated_world(world: World, **overrides: Any) -> Gatekeeper:
    """Every authenticated caller is allowed: a refusal can only come from
    authentication."""
    return world.gatekeeper(sources=["asgi-tls"], policy={"allow_authenticated": True},
                            **overrides)


def test_attack_certificate_does_not_authenticate_on_an_mtls_none_route(
        world: World) -> None:
    """``mtls = "none"``: a verified certificate is not a credential there; without a
    token the caller is not authenticated (401)."""
    gk = _authenticated_world(world, routes=[{"path": "/open/*", "mtls": "none",
                                              "token": "optional"}])
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    assert_refused(run_asgi(mw, http_scope(b"/open/x", cert=world.alice), rec), 401)
    token = world.issuer.issue(sub="u1")
    scope = http_scope(b"/open/x", cert=world.alice,
                       headers=[(b"authorization", f"Bearer {token}".encode())])
    assert run_asgi(mw, scope, rec).status == 200


def test_attack_rejected_certificate_on_an_mtls_optional_route_with_a_valid_token(
        world: World) -> None:
    """``mtls = "optional"``: a certificate may be absent, but one that was presented
    and rejected is a 401, even beside a valid token."""
    gk = _authenticated_world(world, defaults={"mtls": "optional", "token": "optional"})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    token = world.issuer.issue(sub="u1")
    bearer = [(b"authorization", f"Bearer {token}".encode())]
    assert run_asgi(mw, http_scope(b"/x", headers=bearer), rec).status == 200
    assert_refused(run_asgi(mw, http_scope(b"/x", cert=world.rogue, headers=bearer), rec),
                   401)


@pytest.mark.parametrize(("claims", "ok"), [
    pytest.param({"nbf": -20, "exp": 10}, True, id="nbf-before-exp"),
    pytest.param({"nbf": 20, "exp": 10}, False, id="nbf-after-exp-inside-leeway"),
])
def test_attack_token_nbf_after_exp_inside_the_leeway(world: World, claims: dict[str, int],
                                                      ok: bool) -> None:
    """``nbf`` after ``exp`` names no instant at which the token is valid; with a 60 s
    leeway both are individually acceptable, and the token must still be refused."""
    import time

    gk = _authenticated_world(world, tokens={"issuers": [{
        "issuer": world.issuer.issuer, "audiences": [world.issuer.audience],
        "algorithms": [world.issuer.algorithm], "public_key": "issuer.pem", "leeway": 60,
    }]}, defaults={"mtls": "optional", "token": "required"})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    now = int(time.time())
    token = world.issuer.issue(sub="u1", exp=now + claims["exp"], nbf=now + claims["nbf"])
    result = run_asgi(mw, http_scope(b"/x", headers=[
        (b"authorization", f"Bearer {token}".encode())]), rec)
    if ok:
        assert result.status == 200
    else:
        assert_refused(result, 401)


def _respell(token: str, part: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[part] = change(parts[part])
    return ".".join(parts)


def _bump_unused_bits(segment: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3), "needs a segment with unused bits"
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]


def test_attack_token_base64url_has_one_spelling(world: World) -> None:
    """A JWS has one spelling: ``=`` padding and non-zero unused bits in the last
    character (which decode to the same bytes) are refused, in every segment."""
    gk = _authenticated_world(world, defaults={"mtls": "optional", "token": "required"})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    # Find a token whose segments have unused bits, so both changes apply to each.
    token = next(t for t in (world.issuer.issue(sub="u" * n) for n in range(1, 40))
                 if all(len(p) % 4 in (2, 3) for p in t.split(".")))

    def call(t: str) -> Result:
        return run_asgi(mw, http_scope(b"/x", headers=[
            (b"authorization", f"Bearer {t}".encode())]), rec)

    assert call(token).status == 200
    for part in range(3):
        pad = "=" * (-len(token.split(".")[part]) % 4)
        assert_refused(call(_respell(token, part, lambda s, pad=pad: s + pad)), 401)
        assert_refused(call(_respell(token, part, _bump_unused_bits)), 401)


@pytest.mark.parametrize("thumbprint", [
    pytest.param(lambda t: t[:-1], id="42-chars"),
    pytest.param(lambda t: t + "A", id="44-chars"),
    pytest.param(lambda t: t + "=", id="padded"),
    pytest.param(lambda t: t[:-1] + "B", id="non-canonical-last-char"),
])
def test_attack_token_cnf_thumbprint_of_the_wrong_shape(
        world: World, thumbprint: Callable[[str], str]) -> None:
    """``cnf.x5t#S256`` must be the 43-character base64url SHA-256 thumbprint; anything
    else is refused, even if a prefix of it would match the certificate."""
    import base64

    gk = _authenticated_world(world, defaults={"mtls": "required", "token": "required"})
    rec = Recorder()
    mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
    good = base64.urlsafe_b64encode(bytes.fromhex(world.alice.fingerprint_sha256)) \
        .rstrip(b"=").decode()

    def call(value: str) -> Result:
        token = world.issuer.issue(sub="u1", cnf={"x5t#S256": value})
        return run_asgi(mw, http_scope(b"/x", cert=world.alice, headers=[
            (b"authorization", f"Bearer {token}".encode())]), rec)

    assert call(good).status == 200
    assert_refused(call(thumbprint(good)), 401)


def test_attack_key_set_fetch_failure_is_503_not_401(world: World) -> None:
    """A key set that cannot be fetched is our failure, not the caller's: 503 (retry
    later), never a 401 that tells a client its valid token is bad, and never an
    allow."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    gk = _authenticated_world(world, tokens={"issuers": [{
        "issuer": world.issuer.issuer, "audiences": [world.issuer.audience],
        "algorithms": [world.issuer.algorithm], "allow_http": True, "jwks_timeout": 1.0,
        "jwks_url": f"http://127.0.0.1:{port}/jwks",
    }]}, defaults={"mtls": "optional", "token": "required"})
    token = world.issuer.issue(sub="u1")
    rec = Recorder()
    try:
        mw = ASGIMiddleware(rec.asgi, gatekeeper=gk)
        result = run_asgi(mw, http_scope(b"/x", headers=[
            (b"authorization", f"Bearer {token}".encode())]), rec)
        assert_refused(result, 503)
        assert "www-authenticate" not in result.headers
        client = Client(WSGIMiddleware(rec.wsgi, gatekeeper=gk))
        result = wsgi_get(client, rec, "/x", headers=[("Authorization", f"Bearer {token}")])
        assert_refused(result, 503)
        assert "www-authenticate" not in {k.lower() for k in result.headers}
    finally:
        gk.close()
