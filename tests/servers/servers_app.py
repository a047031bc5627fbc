"""Apps served by the real-server tests (imported by uvicorn/gunicorn subprocesses too).

Configured from the environment so that a subprocess server can import them:
``ENDPOINTSEC_TEST_BUNDLE`` is the trust bundle endpointsec verifies against (the
server's own TLS layer may trust more, so that endpointsec's verifier is the one that
decides).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the annotation by name

from endpointsec.gatekeeper import Gatekeeper
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import ASGITLSSource, GunicornSource, WSGIEnvironSource
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.wsgi import WSGIMiddleware
from endpointsec.policy import AllowAuthenticated
from endpointsec.protocols import CertificateSource
from endpointsec.routing import RouteTable


def gatekeeper(source: CertificateSource, bundle: Path | None = None) -> Gatekeeper:
    path = bundle or Path(os.environ["ENDPOINTSEC_TEST_BUNDLE"])
    config = IdentityConfig(sources=(source.name,), trust_bundles=(path,),
                            require_spiffe=True)
    return Gatekeeper(policy=AllowAuthenticated(), sources=[source],
                      verifier=X509ChainVerifier(config=config), routes=RouteTable())


# -- ASGI -----------------------------------------------------------------------------


async def _asgi_inner(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    ctx = scope["endpointsec"]
    tls = scope.get("extensions", {}).get("tls", {})
    chain = tls.get("client_cert_chain") or []
    body = json.dumps({
        "peer": ctx.principal.peer.id,
        "source": ctx.principal.peer.source,
        "client_port": scope["client"][1],
        # Object identity of the PEM string: equal across requests iff the TLS facts
        # were computed once for the connection.
        "chain_id": id(chain[0]) if chain else None,
        "tls_version": tls.get("tls_version"),
        "client_cert_name": tls.get("client_cert_name"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _websocket(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    tls = scope.get("extensions", {}).get("tls", {})
    await send({"type": "websocket.send", "text": json.dumps({
        "peer": scope["endpointsec"].principal.peer.id,
        "tls_chain_length": len(tls.get("client_cert_chain") or []),
    })})
    await send({"type": "websocket.close", "code": 1000})


def make_asgi_app() -> Any:
    return ASGIMiddleware(_asgi_inner, gatekeeper=gatekeeper(ASGITLSSource()))


def make_fastapi_app() -> Any:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        ctx = request.scope["endpointsec"]
        return {"peer": ctx.principal.peer.id, "source": ctx.principal.peer.source,
                "client_port": request.scope["client"][1], "chain_id": None}

    return ASGIMiddleware(api, gatekeeper=gatekeeper(ASGITLSSource()))


# -- WSGI -----------------------------------------------------------------------------


def make_flask_app(source: CertificateSource, bundle: Path | None = None) -> Any:
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.get("/whoami")
    def whoami() -> Any:
        ctx = request.environ["endpointsec"]
        return jsonify(peer=ctx.principal.peer.id, source=ctx.principal.peer.source,
                       client_port=int(request.environ.get("REMOTE_PORT") or 0),
                       chain_id=None)

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, gatekeeper=gatekeeper(source, bundle))
    return app


def make_gunicorn_app() -> Callable[[Any, Any], Iterable[bytes]]:
    app: Callable[[Any, Any], Iterable[bytes]] = make_flask_app(GunicornSource())
    return app


def make_werkzeug_app(bundle: Path) -> Any:
    return make_flask_app(WSGIEnvironSource(), bundle)
