"""The docs/testing.md end-to-end examples, for FastAPI and for Flask, kept working."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Security
from flask import Flask

from endpointsec import Config
from endpointsec.integrations.fastapi import EndpointSec as FastAPISec
from endpointsec.integrations.flask import EndpointSec as FlaskSec
from endpointsec.integrations.flask import current_principal, require
from endpointsec.testing import IssuedCertificate, TokenIssuer

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


def make_fastapi_app(config: Config) -> FastAPI:
    sec = FastAPISec(config=config)
    app = FastAPI()
    sec.install(app)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int, caller: Any = Security(sec.require())) -> Any:
        return {"caller": caller.peer.id}

    @app.get("/admin")
    async def admin() -> Any:
        return {"ok": True}

    return app


def test_fastapi_example(endpointsec_ca_bundle: Path,
                         endpointsec_client_cert: Callable[..., IssuedCertificate],
                         endpointsec_issuer: TokenIssuer,
                         endpointsec_asgi_client: Callable[..., Any],
                         tmp_path: Path) -> None:
    (tmp_path / "policy.csv").write_text(
        f"p, {ORDERS}, *, /orders/:id, GET, allow\n"
        "p, role:admin, *, /admin, GET, allow\n")
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"],
                     "trust_bundles": [str(endpointsec_ca_bundle)]},
        "tokens": {"issuers": [endpointsec_issuer.issuer_table()]},
        "policy": {"policy": str(tmp_path / "policy.csv")},
        "defaults": {"mtls": "optional"},
    })
    app = make_fastapi_app(config)

    orders = endpointsec_asgi_client(app, cert=endpointsec_client_cert(ORDERS))
    assert orders.get("/orders/1").json() == {"caller": ORDERS}
    assert orders.get("/admin").status_code == 403

    admin = endpointsec_issuer.issue(sub="alice", roles=["admin"])
    assert endpointsec_asgi_client(app, token=admin).get("/admin").status_code == 200
    assert endpointsec_asgi_client(app).get("/orders/1").status_code == 401


def make_flask_app(config: Config) -> Flask:
    app = Flask(__name__)
    FlaskSec(app, config=config)

    @app.get("/orders/<int:order_id>")
    @require()
    def get_order(order_id: int) -> Any:
        return {"caller": current_principal.peer.id}

    return app


def test_flask_example(endpointsec_ca_bundle: Path,
                       endpointsec_client_cert: Callable[..., IssuedCertificate],
                       endpointsec_wsgi_client: Callable[..., Any],
                       tmp_path: Path) -> None:
    (tmp_path / "policy.csv").write_text(f"p, {ORDERS}, *, /orders/:id, GET, allow\n")
    config = Config.from_mapping({
        "identity": {"sources": ["wsgi-environ"],
                     "trust_bundles": [str(endpointsec_ca_bundle)]},
        "policy": {"policy": str(tmp_path / "policy.csv")},
    })
    app = make_flask_app(config)

    client = endpointsec_wsgi_client(app, cert=endpointsec_client_cert(ORDERS))
    assert client.get("/orders/1").json == {"caller": ORDERS}
    assert endpointsec_wsgi_client(app).get("/orders/1").status_code == 401
