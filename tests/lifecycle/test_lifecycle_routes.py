"""Route templates as keyMatch2 objects: never wider than the template."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from endpointsec.lifecycle.routes import keymatch2_object, routes_from_app, routes_from_config


@pytest.mark.parametrize(
    ("template", "style", "expected"),
    [
        ("/orders/{order_id}", "starlette", "/orders/:order_id"),
        ("/orders/{order_id:int}", "starlette", "/orders/:order_id"),
        ("/static/{p:path}", "starlette", "/static/*"),
        ("/{p:path}", "starlette", "/*"),
        ("/files/{p:path}/meta", "starlette", None),
        ("/files/{name}.txt", "starlette", None),
        ("/a:b", "starlette", None),
        ("/a/(x)", "starlette", None),
        ("/v1.0/items", "starlette", "/v1.0/items"),
        ("/stock/<int:id>", "flask", "/stock/:id"),
        ("/stock/<id>", "flask", "/stock/:id"),
        ("/stock/<string(length=2):code>", "flask", "/stock/:code"),
        ("/static/<path:filename>", "flask", "/static/*"),
        ("/x/<path:p>/y", "flask", None),
        ("/reports/*", "config", "/reports/*"),
        ("/reports/:id", "config", "/reports/:id"),
        ("/reports/{id}", "config", "/reports/:id"),
        ("/a*b", "config", None),
        ("orders", "starlette", None),
    ],
)
def test_keymatch2_object(template: str, style: str, expected: str | None) -> None:
    assert keymatch2_object(template, style=style) == expected


def test_fastapi_routes() -> None:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    def get_order(order_id: int) -> None: ...

    @app.delete("/orders/{order_id}")
    def cancel(order_id: int) -> None: ...

    @app.websocket("/orders/feed")
    async def feed(ws: Any) -> None: ...

    @app.get("/files/{name}.txt")
    def txt(name: str) -> None: ...

    got = {(t.object, tuple(sorted(t.methods))) for t in routes_from_app(app)}
    assert ("/orders/:order_id", ("GET",)) in got
    assert ("/orders/:order_id", ("DELETE",)) in got
    assert ("/orders/feed", ()) in got
    assert not any("files" in o for o, _ in got)


def test_starlette_mounts(tmp_path: Any) -> None:
    from starlette.applications import Starlette

    async def ok(request: Any) -> None: ...

    app = Starlette(routes=[
        Mount("/api", routes=[Route("/items/{item_id}", ok)]),
        Mount("/static", app=StaticFiles(directory=str(tmp_path))),
    ])
    assert [t.object for t in routes_from_app(app)] == ["/api/items/:item_id", "/static/*"]


def test_flask_routes() -> None:
    app = Flask(__name__)

    @app.get("/stock/<int:item>")
    def stock(item: int) -> str:
        return ""

    got = {t.object: t.methods for t in routes_from_app(app)}
    assert "GET" in got["/stock/:item"]
    assert "/static/*" in got


def test_not_an_app() -> None:
    from endpointsec.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="neither 'routes'"):
        routes_from_app(object())


def test_config_routes(tmp_path: Any) -> None:
    from endpointsec import Config

    config = Config.from_mapping({
        "policy": {"allow_authenticated": True},
        "routes": [
            {"path": "/healthz", "public": True},
            {"path": "/reports/{id}", "methods": ["GET"]},
            {"path": "/admin/*", "resource": "admin-panel", "action": "use"},
        ],
    })
    got = routes_from_config(config.routes)
    assert [(t.object, t.pattern, t.action) for t in got] == [
        ("/reports/:id", None, None), ("admin-panel", "/admin/*", "use")]
    assert got[1].matches("POST", "/admin/x") and not got[0].matches("POST", "/reports/1")
    assert got[0].matches("HEAD", "/reports/1")
