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
