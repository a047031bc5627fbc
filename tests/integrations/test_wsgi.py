"""The WSGI middleware: same decisions as ASGI, in the calling thread."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Response

from endpointsec import Gatekeeper, WSGIMiddleware


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    ctx = environ["endpointsec"]
    body = f"{ctx.principal.peer.id}|{'HTTP_X_TEST_CERT' in environ}".encode()
    start_response("200 OK", [("content-type", "text/plain")])
    return [body]


def client(gk: Gatekeeper) -> Client:
    return Client(WSGIMiddleware(app, gatekeeper=gk), Response)


def test_allowed(gatekeeper: Gatekeeper) -> None:
    r = client(gatekeeper).get("/orders", headers={"X-Test-Cert": "orders"})
    assert r.status_code == 200
    assert r.get_data(as_text=True) == "spiffe://test/orders|False"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [("/orders", {}, 401), ("/orders", {"X-Test-Cert": "bad"}, 401),
     ("/admin", {"X-Test-Cert": "orders"}, 403), ("/orders%00", {"X-Test-Cert": "orders"}, 400)],
    ids=["no-cert", "bad-cert", "forbidden", "nul"],
)
def test_refusals(gatekeeper: Gatekeeper, path: str, headers: dict[str, str],
                  status: int) -> None:
    r = client(gatekeeper).get(path, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert "orders" not in r.get_data(as_text=True)


def test_raw_uri_is_used_for_matching(gatekeeper: Gatekeeper) -> None:
    # PATH_INFO is decoded by the server; the policy must see the request target.
    r = client(gatekeeper).get("/orders", headers={"X-Test-Cert": "orders"},
                               environ_overrides={"RAW_URI": "/orders%00"})
    assert r.status_code == 400
