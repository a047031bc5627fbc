"""The Flask extension: before_request enforcement, @require narrowing, @public."""

from __future__ import annotations

import pytest
from flask import Flask

from endpointsec import Gatekeeper
from endpointsec.integrations.flask import EndpointSec, current_principal, public, require


def make_app(gk: Gatekeeper) -> Flask:
    app = Flask(__name__)
    sec = EndpointSec(gatekeeper=gk)
    sec.init_app(app)

    @app.get("/orders")
    def orders() -> dict[str, str]:
        return {"caller": current_principal.peer.id if current_principal.peer else ""}

    @app.get("/ws")
    @require(roles=["ops"])
    def narrowed() -> str:
        return "never"

    @app.get("/open")
    @public
    def open_route() -> str:
        return "open"

    @app.get("/admin")
    @require(resource="/orders", action="GET")
    def admin() -> str:
        return "admin"

    return app


@pytest.mark.parametrize(
    ("path", "cert", "status"),
    [
        ("/orders", "orders", 200),
        ("/orders", None, 401),
        ("/orders", "bad", 401),
        ("/orders", "billing", 403),
        ("/ws", "orders", 403),       # allowed globally, narrowed by @require(roles)
        ("/open", None, 200),         # public: nothing needed
        ("/admin", "orders", 403),    # the global check on /admin denies: never widened
        ("/missing", None, 401),      # 404s are checked too
        ("/missing", "orders", 403),
    ],
    ids=["allowed", "no-cert", "bad-cert", "forbidden", "narrowed", "public", "no-widening",
         "404-unauthenticated", "404-forbidden"],
)
def test_flask(gatekeeper: Gatekeeper, path: str, cert: str | None, status: int) -> None:
    client = make_app(gatekeeper).test_client()
    headers = {"X-Test-Cert": cert} if cert else {}
    r = client.get(path, headers=headers)
    assert r.status_code == status
    if status >= 400:
        assert r.content_type == "application/problem+json"
        assert r.get_json()["status"] == status
    if path == "/orders" and status == 200:
        assert r.get_json() == {"caller": "spiffe://test/orders"}


def test_current_principal_outside_request_context_fails_loudly() -> None:
    app = Flask(__name__)
    with app.test_request_context("/"), pytest.raises(RuntimeError, match="endpointsec"):
        _ = current_principal.peer
