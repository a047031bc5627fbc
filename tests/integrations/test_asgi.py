"""The pure ASGI middleware: pass-through, refusals, websockets, scope attachment."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from endpointsec import ASGIMiddleware, ConfigurationError, Gatekeeper


async def whoami(request: Request) -> JSONResponse:
    ctx = request.scope["endpointsec"]
    headers = [k.decode() for k, _ in request.scope["headers"]]
    peer = ctx.principal.peer
    return JSONResponse({"peer": peer.id if peer else None, "headers": headers,
                         "reason": ctx.decision.reason})


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(websocket.scope["endpointsec"].principal.peer.id)
    await websocket.close()


def make_client(gatekeeper: Gatekeeper) -> TestClient:
    app = Starlette(routes=[Route("/orders", whoami), Route("/healthz", whoami),
                            Route("/admin", whoami), WebSocketRoute("/ws", ws)])
    return TestClient(ASGIMiddleware(app, gatekeeper=gatekeeper))


def test_allowed_request_sees_identity_and_scrubbed_headers(gatekeeper: Gatekeeper) -> None:
    r = make_client(gatekeeper).get("/orders", headers={"x-test-cert": "orders"})
    assert r.status_code == 200
    assert r.json()["peer"] == "spiffe://test/orders"
    assert "x-test-cert" not in r.json()["headers"]


CASES = [
    ("no-cert", "/orders", {}, 401),
    ("bad-cert", "/orders", {"x-test-cert": "bad"}, 401),
    ("crashing-verifier", "/orders", {"x-test-cert": "crash"}, 401),
    ("not-allowed", "/admin", {"x-test-cert": "orders"}, 403),
    ("other-caller", "/orders", {"x-test-cert": "billing"}, 403),
    ("nul-in-path", "/orders%00", {"x-test-cert": "orders"}, 400),
]


@pytest.mark.parametrize(("path", "headers", "status"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refusals(gatekeeper: Gatekeeper, path: str, headers: dict[str, str],
                  status: int) -> None:
    r = make_client(gatekeeper).get(path, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and set(body) == {"type", "title", "status", "detail"}
    # never an echo of what was presented or of the reason
    assert "orders" not in r.text and "billing" not in r.text and "expired" not in r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("MutualTLS")


def test_same_body_for_every_failure_of_a_kind(gatekeeper: Gatekeeper) -> None:
    c = make_client(gatekeeper)
    a = c.get("/orders")
    b = c.get("/orders", headers={"x-test-cert": "bad"})
    assert a.content == b.content


def test_public_route_needs_nothing(gatekeeper: Gatekeeper) -> None:
    assert make_client(gatekeeper).get("/healthz").status_code == 200


def test_websocket_allowed(gatekeeper: Gatekeeper) -> None:
    with make_client(gatekeeper).websocket_connect("/ws", headers={"x-test-cert": "orders"}) as s:
        assert s.receive_text() == "spiffe://test/orders"


def test_websocket_refused_before_accept_with_http_response(gatekeeper: Gatekeeper) -> None:
    # The test client supports the websocket.http.response extension: a real 401.
    client = make_client(gatekeeper)
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/ws"):
        pass  # pragma: no cover
    assert info.value.status_code == 401
    assert info.value.headers["content-type"] == "application/problem+json"


@pytest.mark.anyio
async def test_websocket_refused_with_close_without_extension(gatekeeper: Gatekeeper) -> None:
    sent: list[dict[str, Any]] = []
    called: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(True)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "headers": []}
    await ASGIMiddleware(app, gatekeeper=gatekeeper)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert not called


@pytest.mark.anyio
async def test_lifespan_passes_through(gatekeeper: Gatekeeper) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = ASGIMiddleware(app, gatekeeper=gatekeeper)
    scope: dict[str, Any] = {"type": "lifespan"}

    async def noop() -> dict[str, Any]:
        return {}

    async def send(_: Any) -> None:
        return None

    await mw(scope, noop, send)
    assert seen == ["lifespan"]


def test_requires_exactly_one_of_config_or_gatekeeper(gatekeeper: Gatekeeper) -> None:
    with pytest.raises(ConfigurationError):
        ASGIMiddleware(lambda *a: None)  # type: ignore[arg-type,return-value]


def test_problem_body_is_json(gatekeeper: Gatekeeper) -> None:
    r = make_client(gatekeeper).get("/admin", headers={"x-test-cert": "orders"})
    assert json.loads(r.content)["title"] == "Forbidden"


@pytest.mark.anyio
async def test_lifespan_starts_and_closes_the_gatekeeper(gatekeeper: Gatekeeper) -> None:
    events: list[str] = []

    class Verifier:
        def prefetch(self) -> None:
            events.append("prefetch")

        def close(self) -> None:
            events.append("close")

    gatekeeper.token_verifier = Verifier()  # type: ignore[assignment]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        events.append("running")
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await ASGIMiddleware(app, gatekeeper=gatekeeper)({"type": "lifespan"}, receive, send)
    assert events == ["prefetch", "running", "close"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
