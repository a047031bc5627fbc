"""Property tests: arbitrary requests through the ASGI and WSGI middleware.

For any method, raw path, headers, query string and client certificate, the middleware
never raises, never answers a 5xx other than 503, and runs the app exactly when a fresh
gather-and-decide of the same request allows it (the app also checks the decision it
was handed). The gatekeeper is built from a real configuration (development PKI,
Casbin policy file, a token issuer's public key).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from endpointsec.config import Config
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.wsgi import WSGIMiddleware
from endpointsec.testing.pki import CertificateAuthority
from endpointsec.testing.tokens import TokenIssuer
from endpointsec.wirepath import quote_path as _quote_path

ALICE = "spiffe://test.local/alice"
POLICY = f"""\
p, {ALICE}, *, /files/*, GET, allow
p, {ALICE}, *, /files/secret/*, *, deny
p, {ALICE}, *, /admin/*, *, allow
p, role:admin, *, /admin/*, *, allow
g, spiffe://test.local/admin, role:admin, *
"""

SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass
class World:
    asgi_gk: Gatekeeper
    wsgi_gk: Gatekeeper
    certs: list[str | None]
    tokens: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d: Path = tmp_path_factory.mktemp("fuzz")
    ca = CertificateAuthority.create()
    ca.write_bundle(d / "ca.pem")
    issuer = TokenIssuer()
    (d / "issuer.pem").write_bytes(issuer.public_key_pem)
    (d / "policy.csv").write_text(POLICY)
    rogue = CertificateAuthority.create(name="rogue").issue_client(spiffe_id=ALICE)

    def gk(source: str) -> Gatekeeper:
        return Gatekeeper.from_config(Config.from_mapping({
            "identity": {"sources": [source], "trust_bundles": ["ca.pem"]},
            "tokens": {"issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience],
                                    "algorithms": [issuer.algorithm],
                                    "public_key": "issuer.pem"}]},
            "policy": {"policy": "policy.csv", "domain_header": "x-tenant"},
            "routes": [{"path": "/healthz", "public": True},
                       {"path": "/pub/{name}", "public": True},
                       {"path": "/admin/*", "methods": ["GET"], "roles": ["role:admin"]}],
        }, base_dir=d))

    return World(
        asgi_gk=gk("asgi-tls"), wsgi_gk=gk("wsgi-environ"),
        certs=[None, ca.issue_client(spiffe_id=ALICE).cert_pem.decode(),
               ca.issue_client(spiffe_id="spiffe://test.local/admin").cert_pem.decode(),
               rogue.cert_pem.decode(), "garbage"],
        tokens=[issuer.issue(sub="u"), issuer.issue(sub="u", exp=-600), "a.b.c"],
    )


# -- strategies --------------------------------------------------------------------------

PIECES = [b"/", b"//", b".", b"..", b"%2e", b"%2E%2e", b"%2F", b"%2f", b"%25", b"%252F",
          b"\\", b"%5C", b"#", b";", b"?", b"%00", b"%ff", b"%C0%AE", b"\xff", b"\xc3\xa9",
          b"healthz", b"pub", b"files", b"secret", b"admin", b"x", b"%41", b"~", b" ",
          b"%", b"%G1", b"\r", b"\n", b"\t"]

raw_paths = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=12).map(lambda parts: b"/" + b"".join(parts)),
    st.binary(max_size=40),
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                     "CONNECT", "get", "PROPFIND", ""]),
    st.text(max_size=10),
)
header_names = st.one_of(
    st.sampled_from([b"authorization", b"x-tenant", b"cookie", b"x-forwarded-client-cert",
                     b"x-ssl-client-cert", b"x-http-method-override", b"host"]),
    st.binary(min_size=1, max_size=12),
)
header_values = st.one_of(st.binary(max_size=60), st.sampled_from([
    b"Bearer a.b.c", b"Bearer ", b"Basic eA==", b"GET", b"Bearer a, Bearer b"]))


@st.composite
def requests(draw: st.DrawFn, world_certs: int = 5, world_tokens: int = 3) -> dict[str, Any]:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    token = draw(st.one_of(st.none(), st.integers(0, world_tokens - 1)))
    return {
        "method": draw(methods),
        "raw_path": draw(raw_paths),
        "headers": headers,
        "token": token,
        "query": draw(st.binary(max_size=30)),
        "cert": draw(st.integers(0, world_certs - 1)),
        "websocket": draw(st.booleans()),
        "raw_path_missing": draw(st.integers(0, 9)) == 0,
    }


def assert_same_path(ctx: SecurityContext, app_path: str) -> None:
    """What was authorized is what the app routes on: the app's (decoded) path, quoted
    again, is the normalized path. Only for ASCII wire paths: servers refuse others."""
    if not ctx.facts.raw_path.isascii():
        return
    assert ctx.facts.path == _quote_path(app_path), (ctx.facts.path, app_path)


def _req(raw: bytes, *, cert: int = 0, method: str = "GET") -> dict[str, Any]:
    return {"method": method, "raw_path": raw, "headers": [], "token": None, "query": b"",
            "cert": cert, "websocket": False, "raw_path_missing": False}


#: Known attacks, always tried (each was an allow of a path the app saw differently).
ATTACKS = [_req(b"/pub/a%2Fb"), _req(b"/files/secret%2Fx", cert=1),
           _req(b"/admin/%2e%2e/healthz"), _req(b"/admin/../pub/x"), _req(b"/healthz#/x"),
           _req(b"/pub\\x"), _req(b"//healthz"), _req(b"/admin/x", cert=1, method="HEAD")]


def with_attacks(test: Any) -> Any:
    for req in ATTACKS:
        test = example(req=req)(test)
    return test


# -- ASGI --------------------------------------------------------------------------------


def asgi_scope(world: World, req: dict[str, Any]) -> MutableMapping[str, Any]:
    headers = list(req["headers"])
    if req["token"] is not None:
        headers.append((b"authorization", b"Bearer " + world.tokens[req["token"]].encode()))
    raw: bytes = req["raw_path"]
    scope: MutableMapping[str, Any] = {
        "type": "websocket" if req["websocket"] else "http",
        "method": req["method"], "headers": headers, "query_string": req["query"],
        "path": unquote(raw.decode("latin-1")), "client": ("198.51.100.7", 1234),
        "root_path": "",
    }
    if not req["raw_path_missing"]:
        scope["raw_path"] = raw
    cert = world.certs[req["cert"]]
    if cert is not None:
        scope["extensions"] = {"tls": {"client_cert_chain": [cert]}}
    return scope


@SETTINGS
@with_attacks
@given(req=requests())
def test_asgi_middleware_never_crashes_and_only_runs_allowed(world: World,
                                                             req: dict[str, Any]) -> None:
    gk = world.asgi_gk
    ran: list[bool] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        ctx = scope["endpointsec"]
        assert isinstance(ctx, SecurityContext) and ctx.decision.allowed
        assert_same_path(ctx, str(scope["path"]))
        ran.append(True)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = asgi_scope(world, req)
    fresh = copy.deepcopy(scope)
    sent: list[MutableMapping[str, Any]] = []
    inbox = [{"type": "websocket.connect"} if req["websocket"] else {"type": "http.request"}]

    async def receive() -> MutableMapping[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def both() -> bool:
        await ASGIMiddleware(app, gatekeeper=gk)(scope, receive, send)
        return gk.decide(await gk.gather_asgi(fresh)).allowed

    allowed = asyncio.run(both())
    assert bool(ran) == allowed
    first = sent[0]
    if first["type"] == "http.response.start":
        status = int(first["status"])
        assert status < 500 or status == 503
        assert (status == 200) == allowed
    elif first["type"] == "websocket.close":
        assert not allowed and first["code"] == 1008
    else:
        assert first["type"] == "websocket.accept" and allowed


# -- WSGI --------------------------------------------------------------------------------


def wsgi_environ(world: World, req: dict[str, Any]) -> dict[str, Any]:
    raw: bytes = req["raw_path"]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req["method"].encode("utf-8", "surrogatepass").decode("latin-1"),
        "SCRIPT_NAME": "",
        # as gunicorn and werkzeug's server: the query and a fragment are not in PATH_INFO
        "PATH_INFO": unquote_to_bytes(raw.split(b"?", 1)[0].split(b"#", 1)[0]
                                      ).decode("latin-1"),
        "QUERY_STRING": req["query"].decode("latin-1"),
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8443", "REMOTE_ADDR": "198.51.100.7",
        "wsgi.url_scheme": "https",
    }
    if not req["raw_path_missing"]:
        environ["RAW_URI"] = raw.decode("latin-1")
    for name, value in req["headers"]:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        environ[key] = value.decode("latin-1")
    if req["token"] is not None:
        environ["HTTP_AUTHORIZATION"] = "Bearer " + world.tokens[req["token"]]
    cert = world.certs[req["cert"]]
    if cert is not None:
        environ["SSL_CLIENT_CERT"] = cert
    return environ


@SETTINGS
@with_attacks
@given(req=requests())
def test_wsgi_middleware_never_crashes_and_only_runs_allowed(world: World,
                                                             req: dict[str, Any]) -> None:
    gk = world.wsgi_gk
    ran: list[bool] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ctx = environ["endpointsec"]
        assert isinstance(ctx, SecurityContext) and ctx.decision.allowed
        path_info = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "surrogatepass")
        assert_same_path(ctx, path_info)
        ran.append(True)
        start_response("200 OK", [])
        return [b""]

    environ = wsgi_environ(world, req)
    fresh = copy.deepcopy(environ)
    statuses: list[str] = []
    b"".join(WSGIMiddleware(app, gatekeeper=gk)(environ, lambda s, h, *a: statuses.append(s)))
    allowed = gk.decide(gk.gather_wsgi(fresh)).allowed
    assert bool(ran) == allowed
    status = int(statuses[0].split(" ", 1)[0])
    assert status < 500 or status == 503
    assert (status == 200) == allowed
