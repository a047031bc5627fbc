"""OpenTelemetry span attributes (``[audit] otel = true``), recorded by the SDK's
in-memory span exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from endpointsec import ASGIMiddleware, WSGIMiddleware
from endpointsec.testing.clients import wsgi_environ
from obs_support import ISSUER, SID, Material, asgi_scope, make_material, ok_app

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("otel"))


@pytest.fixture
def tracing() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("endpointsec-tests"), exporter
    provider.shutdown()


def _asgi_in_span(tracer: Any, app: Any, scope: dict[str, Any]) -> int:
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def run() -> None:
        with tracer.start_as_current_span("GET /orders"):  # the server span
            await app(scope, receive, send)

    asyncio.run(run())
    return status[0]


def _only(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


def test_allowed_request_attributes(material: Material,
                                    tracing: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = tracing
    app = ASGIMiddleware(ok_app, config=material.config(audit={"otel": True}))
    token = material.issuer.issue(sub="alice", roles=["reader"])
    assert _asgi_in_span(tracer, app, asgi_scope("/orders/1", cert=material.client,
                                                 token=token)) == 200
    attrs = dict(_only(exporter).attributes or {})
    assert attrs == {
        "endpointsec.decision": "allow",
        "endpointsec.status": 200,
        "endpointsec.principal.peer": SID,
        "endpointsec.principal.subject": f"{ISSUER}#alice",
        "endpointsec.rule": "p, role:reader, *, /orders/:id, GET, allow",
    }


def test_denied_request_attributes(material: Material,
                                   tracing: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = tracing
    app = ASGIMiddleware(ok_app, config=material.config(audit={"otel": True}))
    assert _asgi_in_span(tracer, app, asgi_scope("/orders/1", cert=None)) == 401
    attrs = dict(_only(exporter).attributes or {})
    assert attrs == {"endpointsec.decision": "deny", "endpointsec.status": 401}


def test_wsgi_attributes(material: Material,
                         tracing: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = tracing
    app = WSGIMiddleware(lambda environ, start: [b""],
                         config=material.config(sources="wsgi-environ", audit={"otel": True}))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/admin", "QUERY_STRING": "",
               **wsgi_environ(cert=material.client)}
    with tracer.start_as_current_span("GET /admin"):
        app(environ, lambda status, headers, exc_info=None: None)
    attrs = dict(_only(exporter).attributes or {})
    assert attrs["endpointsec.decision"] == "deny"
    assert attrs["endpointsec.status"] == 403
    assert attrs["endpointsec.principal.peer"] == SID


def test_no_attributes_unless_enabled(material: Material,
                                      tracing: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = tracing
    app = ASGIMiddleware(ok_app, config=material.config())
    assert _asgi_in_span(tracer, app, asgi_scope("/orders/1", cert=None)) == 401
    assert not dict(_only(exporter).attributes or {})


def test_no_span_is_fine(material: Material) -> None:
    from obs_support import call_asgi

    app = ASGIMiddleware(ok_app, config=material.config(audit={"otel": True}))
    assert call_asgi(app, asgi_scope("/orders/1", cert=None)) == 401
