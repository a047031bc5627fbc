"""The applications the contrast benchmark serves (see ``bench/README.md``).

Every configuration serves the same tiny endpoint, ``GET /orders/{id}`` answering a
small JSON body, so that the differences measured are the security layers alone.

- :func:`bare` -- a pure ASGI app, no checks, 200 to every request (configurations B,
  N, HN, the upstream of H and X);
- :func:`make_inproc` -- ``bare`` wrapped in :class:`endpointsec.ASGIMiddleware`, the
  configuration read from ``$ENDPOINTSEC_BENCH_CONFIG`` (configurations E, NE*, HE* and
  the ext-authz service of X);
- :func:`make_flask` / :func:`make_flask_inproc` -- the same endpoint in Flask, bare or
  wrapped in :class:`endpointsec.WSGIMiddleware` (configurations WB and WE).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

BODY = b'{"id":"42","status":"shipped"}'
_HEADERS = [(b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode())]

Scope = MutableMapping[str, Any]


async def bare(scope: Scope, receive: Callable[[], Awaitable[Any]],
               send: Callable[[Any], Awaitable[None]]) -> None:
    """A minimal ASGI app: 200 with a small JSON body for any HTTP request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def _config() -> Any:
    import endpointsec

    path = os.environ.get("ENDPOINTSEC_BENCH_CONFIG")
    if not path:
        raise RuntimeError("set ENDPOINTSEC_BENCH_CONFIG to the endpointsec.toml to use")
    return endpointsec.load_config(path)


def make_inproc() -> Any:
    """``bare`` behind the endpointsec ASGI middleware (a uvicorn ``--factory``).

    With ``ENDPOINTSEC_BENCH_PROFILE=FILE`` the server process runs under cProfile and
    writes its statistics to FILE when it exits (where does the time go in a loaded
    server)."""
    import endpointsec

    _profile_if_asked()
    app = endpointsec.ASGIMiddleware(bare, config=_config())
    _gc_if_asked()
    return app


def _gc_if_asked() -> None:
    """``ENDPOINTSEC_BENCH_GC=freeze`` (``gc.freeze()`` once the app is built) or ``off``
    (``gc.disable()``): what the garbage collector costs in a loaded server."""
    import gc
    import os

    mode = os.environ.get("ENDPOINTSEC_BENCH_GC", "")
    if mode == "freeze":
        gc.collect()
        gc.freeze()
    elif mode == "off":
        gc.disable()


def _profile_if_asked() -> None:
    import atexit
    import cProfile
    import os

    target = os.environ.get("ENDPOINTSEC_BENCH_PROFILE")
    if not target:
        return
    import threading
    import time

    profiler = cProfile.Profile()
    profiler.enable()

    def dump() -> None:  # every second too: the harness may stop the server abruptly
        while True:
            time.sleep(1.0)
            profiler.dump_stats(target)

    threading.Thread(target=dump, daemon=True).start()
    atexit.register(lambda: (profiler.disable(), profiler.dump_stats(target)))


def make_flask() -> Any:
    """The same endpoint in Flask, no checks (a gunicorn ``apps:make_flask()``)."""
    from flask import Flask

    app = Flask("bench")

    # DELETE too: the mix's denied requests reach the bare app, which answers them 200.
    @app.route("/orders/<order_id>", methods=["GET", "DELETE"])
    def order(order_id: str) -> tuple[bytes, int, dict[str, str]]:
        return BODY, 200, {"content-type": "application/json"}

    return app


def make_flask_inproc() -> Any:
    """Flask behind the endpointsec WSGI middleware."""
    import endpointsec

    app = make_flask()
    app.wsgi_app = endpointsec.WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config=_config())
    return app


def bare_wsgi(environ: MutableMapping[str, Any],
              start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A minimal WSGI app (the micro-benchmark's reference)."""
    start_response("200 OK", [("content-type", "application/json"),
                              ("content-length", str(len(BODY)))])
    return [BODY]
