"""The FastAPI integration: middleware, Security dependencies, public routes, OpenAPI."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Security, WebSocket
from starlette.testclient import TestClient, WebSocketDenialResponse

from endpointsec import Gatekeeper, Principal
from endpointsec.integrations.fastapi import EndpointSec


def make_app(gk: Gatekeeper) -> FastAPI:
    sec = EndpointSec(gatekeeper=gk)
    app = FastAPI()
    sec.install(app)

    @app.get("/orders")
    async def orders(caller: Principal = Security(sec.principal)) -> dict[str, str]:
        return {"caller": caller.peer.id if caller.peer else ""}

    @app.get("/ws")
    async def narrowed(caller: Principal = Security(sec.require(roles=["ops"]))) -> str:
        return "never"

    @app.get("/open/{name}")
    @sec.public
    async def open_route(name: str) -> dict[str, str]:
        return {"name": name}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, caller: Principal = Security(sec.principal)) -> None:
        await websocket.accept()
        await websocket.send_text(caller.peer.id if caller.peer else "")
        await websocket.close()

    return app


@pytest.mark.parametrize(
    ("path", "cert", "status"),
    [
        ("/orders", "orders", 200),
        ("/orders", None, 401),
        ("/orders", "billing", 403),
        ("/ws", "orders", 403),
        ("/open/x", None, 200),
        ("/open/x/../../orders", None, 401),
        ("/missing", None, 401),
    ],
    ids=["allowed", "no-cert", "forbidden", "narrowed", "public", "public-path-trick",
         "404-unauthenticated"],
)
def test_fastapi(gatekeeper: Gatekeeper, path: str, cert: str | None, status: int) -> None:
    client = TestClient(make_app(gatekeeper))
    r = client.get(path, headers={"x-test-cert": cert} if cert else {})
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == status


def test_websocket_dependency(gatekeeper: Gatekeeper) -> None:
    client = TestClient(make_app(gatekeeper))
    with client.websocket_connect("/ws", headers={"x-test-cert": "orders"}) as s:
        assert s.receive_text() == "spiffe://test/orders"
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/ws"):
        pass  # pragma: no cover
    assert info.value.status_code == 401


def test_openapi_has_mutual_tls(gatekeeper: Gatekeeper) -> None:
    schema = TestClient(make_app(gatekeeper)).app.openapi()  # type: ignore[attr-defined]
    assert schema["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert {"mutualTLS": []} in schema["paths"]["/orders"]["get"]["security"]
    assert schema["paths"]["/open/{name}"]["get"]["security"] == []



def test_dependency_refusal_keeps_every_challenge(gatekeeper: Gatekeeper) -> None:
    """A refusal raised in a route keeps both the MutualTLS and the Bearer challenge."""
    from endpointsec import Decision
    from endpointsec.integrations.fastapi import Refused

    sec = EndpointSec(gatekeeper=gatekeeper)
    app = FastAPI()
    sec.install(app)

    @app.get("/orders")
    async def orders() -> None:
        raise Refused(Decision(allowed=False, status=401, reason="r", challenge="mTLS"),
                      bearer=True)

    r = TestClient(app).get("/orders", headers={"x-test-cert": "orders"})
    assert r.status_code == 401
    assert r.headers.get_list("www-authenticate") == [
        'MutualTLS realm="endpointsec"', 'Bearer realm="endpointsec"']
    assert r.headers["content-type"] == "application/problem+json"


# -- configuration given late -----------------------------------------------------------

def _late_app(sec: EndpointSec, **install: object) -> FastAPI:
    app = FastAPI()
    sec.install(app, **install)  # type: ignore[arg-type]

    @app.get("/orders")
    async def orders(caller: Principal = Security(sec.principal)) -> dict[str, str]:
        return {"caller": caller.peer.id if caller.peer else ""}

    return app


def test_configure_in_lifespan(gatekeeper: Gatekeeper) -> None:
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    sec = EndpointSec()   # nothing known yet: routes are declared before the config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sec.configure(gatekeeper=gatekeeper)
        yield

    app = FastAPI(lifespan=lifespan)
    sec.install(app)

    @app.get("/orders")
    async def orders(caller: Principal = Security(sec.principal)) -> dict[str, str]:
        return {"caller": caller.peer.id if caller.peer else ""}

    assert not sec.configured
    with TestClient(app) as client:
        assert sec.gatekeeper is gatekeeper
        assert client.get("/orders", headers={"x-test-cert": "orders"}).json() == {
            "caller": "spiffe://test/orders"}
        assert client.get("/orders").status_code == 401
        assert client.get("/orders", headers={"x-test-cert": "billing"}).status_code == 403


def test_configure_at_install(gatekeeper: Gatekeeper) -> None:
    sec = EndpointSec()
    client = TestClient(_late_app(sec, gatekeeper=gatekeeper))
    assert client.get("/orders", headers={"x-test-cert": "orders"}).status_code == 200
    assert client.get("/orders").status_code == 401


def test_configure_only_once(gatekeeper: Gatekeeper) -> None:
    from endpointsec import ConfigurationError

    sec = EndpointSec(gatekeeper=gatekeeper)
    with pytest.raises(ConfigurationError, match="already configured"):
        sec.install(FastAPI(), gatekeeper=gatekeeper)
    with pytest.raises(ConfigurationError, match="already configured"):
        sec.configure(gatekeeper=gatekeeper)


def test_no_configuration_falls_back_to_load_config(
        tmp_path, monkeypatch, endpointsec_ca_bundle, endpointsec_client_cert,
        endpointsec_asgi_client) -> None:
    toml = tmp_path / "service.toml"
    toml.write_text(f'[identity]\nsources = ["asgi-tls"]\n'
                    f'trust_bundles = ["{endpointsec_ca_bundle}"]\n'
                    "[policy]\nallow_authenticated = true\n")
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(toml))
    app = _late_app(EndpointSec())
    cert = endpointsec_client_cert("spiffe://example.org/ns/shop/sa/orders")
    with endpointsec_asgi_client(app, cert=cert) as client:   # runs the lifespan
        assert client.get("/orders").json() == {"caller": "spiffe://example.org/ns/shop/sa/orders"}
    assert endpointsec_asgi_client(app).get("/orders").status_code == 401


def test_no_configuration_at_all_fails_startup(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    from endpointsec import ConfigurationError

    with pytest.raises(ConfigurationError, match="no configuration file"), \
            TestClient(_late_app(EndpointSec())):
        pass  # pragma: no cover


def test_no_configuration_without_lifespan_refuses(tmp_path, monkeypatch) -> None:
    # a server without lifespan support: the request is refused (503), never served
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    r = TestClient(_late_app(EndpointSec())).get("/orders")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert "configuration" not in r.text


# -- dependencies are stable objects -------------------------------------------------

def test_dependencies_are_stable_objects(gatekeeper: Gatekeeper) -> None:
    sec = EndpointSec(gatekeeper=gatekeeper)
    assert sec.principal is sec.principal
    assert sec.require(roles=["a"], scopes=["s"]) is sec.require(roles=["a"], scopes=["s"])
    assert sec.require(roles=["a"]) is not sec.require(roles=["b"])


def test_principal_runs_once_per_request(gatekeeper: Gatekeeper,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sec = EndpointSec(gatekeeper=gatekeeper)
    app = FastAPI()
    sec.install(app)

    async def caller_id(caller: Principal = Security(sec.principal)) -> str:
        return caller.peer.id if caller.peer else ""

    @app.get("/orders")
    async def orders(a: Principal = Security(sec.principal),
                     b: str = Security(caller_id)) -> dict[str, str]:
        return {"a": a.peer.id if a.peer else "", "b": b}

    calls = []
    real = gatekeeper.decide_route

    def counting(facts, route, **kw):  # type: ignore[no-untyped-def]
        calls.append(route)
        return real(facts, route, **kw)

    monkeypatch.setattr(gatekeeper, "decide_route", counting)
    r = TestClient(app).get("/orders", headers={"x-test-cert": "orders"})
    assert r.json() == {"a": "spiffe://test/orders", "b": "spiffe://test/orders"}
    assert len(calls) == 1


# -- scopes: SecurityScopes and the OpenAPI security requirement ------------------------

@pytest.fixture
def scoped(endpointsec_issuer, endpointsec_ca_bundle, tmp_path):  # type: ignore[no-untyped-def]
    from fastapi import Depends

    from endpointsec import Config

    (tmp_path / "policy.csv").write_text(
        "p, https://issuer/alice, *, /orders, GET, allow\n"
        "p, role:clerk, *, /*, *, allow\n")
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(endpointsec_ca_bundle)]},
        "tokens": {"issuers": [endpointsec_issuer.issuer_table()]},
        "policy": {"policy": str(tmp_path / "policy.csv")},
        "defaults": {"mtls": "optional", "token": "optional"},
        "routes": [{"path": "/admin", "mtls": "required", "token": "required"}],
    })
    sec = EndpointSec()
    app = FastAPI()
    sec.install(app, config=config)

    @app.get("/orders")
    async def orders(caller: Principal = Security(sec.require(scopes=["orders:read"]))
                     ) -> str:
        return caller.request.subject if caller.request else ""

    @app.post("/orders")
    async def create(caller: Principal = Security(sec.require(scopes=["orders:read"]),
                                                  scopes=["orders:write"])) -> str:
        return "created"

    @app.get("/stock")
    async def stock(caller: Principal = Depends(sec.principal)) -> str:
        return "stock"

    @app.get("/admin")
    async def admin(caller: Principal = Security(sec.require(scopes=["admin"]))) -> str:
        return "admin"

    @app.get("/cert-only")
    async def cert_only(caller: Principal = Security(sec.require(mtls="required",
                                                                 token="none"))) -> str:
        return "cert"

    @app.get("/healthz")
    @sec.public
    async def health() -> str:
        return "ok"

    return app, endpointsec_issuer


def test_scopes_are_all_required(scoped, endpointsec_asgi_client) -> None:  # type: ignore[no-untyped-def]
    app, issuer = scoped

    def get(method: str, path: str, scopes: list[str]) -> int:
        token = issuer.issue(sub="alice", roles=["clerk"], scopes=scopes)
        r = endpointsec_asgi_client(app, token=token).request(method, path)
        return r.status_code

    assert get("GET", "/orders", ["orders:read"]) == 200
    assert get("GET", "/orders", ["orders:write"]) == 403
    assert get("GET", "/orders", []) == 403
    # require(scopes=...) and Security(..., scopes=...) (SecurityScopes) add up
    assert get("POST", "/orders", ["orders:read", "orders:write"]) == 200
    assert get("POST", "/orders", ["orders:read"]) == 403
    assert get("POST", "/orders", ["orders:write"]) == 403
    assert get("GET", "/stock", []) == 200


def test_openapi_security_requirements(scoped) -> None:  # type: ignore[no-untyped-def]
    app, _ = scoped
    schema = app.openapi()
    assert schema["openapi"].startswith("3.1")
    assert schema["components"]["securitySchemes"] == {
        "mutualTLS": {"type": "mutualTLS", "description": "A client certificate verified by "
                      "endpointsec (SPIFFE ID or SAN)."},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "A JWT verified by endpointsec."},
    }
    paths = schema["paths"]
    # a scope makes the token required; the certificate stays optional: one alternative
    assert paths["/orders"]["get"]["security"] == [{"bearer": ["orders:read"]}]
    assert paths["/orders"]["post"]["security"] == [
        {"bearer": ["orders:write", "orders:read"]}]
    # either credential is enough
    assert paths["/stock"]["get"]["security"] == [{"mutualTLS": []}, {"bearer": []}]
    # [[routes]] require both: one requirement naming both schemes
    assert paths["/admin"]["get"]["security"] == [{"mutualTLS": [], "bearer": ["admin"]}]
    assert paths["/cert-only"]["get"]["security"] == [{"mutualTLS": []}]
    assert paths["/healthz"]["get"]["security"] == []


def test_openapi_without_token_issuers_has_no_bearer_scheme(gatekeeper: Gatekeeper) -> None:
    schema = make_app(gatekeeper).openapi()
    assert set(schema["components"]["securitySchemes"]) == {"mutualTLS"}
    assert schema["paths"]["/orders"]["get"]["security"] == [{"mutualTLS": []}]
