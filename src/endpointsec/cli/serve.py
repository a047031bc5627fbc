"""``endpointsec serve APP --config endpointsec.toml``: a correct mTLS server in one command.

An ASGI app is served by uvicorn with endpointsec's certificate-passing protocol class
(so the app sees the client certificate); a WSGI app by gunicorn. Both take the server
certificate, key and client CA from ``[server]`` and *require* a client certificate in
the TLS handshake unless ``client_cert = "optional"``. The configuration path is
exported as ``ENDPOINTSEC_CONFIG`` so the app can load the same file; ``--wrap`` wraps
the app in endpointsec's middleware for apps that do not wire it themselves.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from endpointsec.config import Config, load_config
from endpointsec.errors import ConfigurationError

__all__ = ["import_app", "is_asgi", "register", "serve"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve an ASGI or WSGI app over mutual TLS",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("app", help="import string, e.g. 'app:app' or 'pkg.module:create_app()'")
    p.add_argument("--config", type=Path, default=Path("endpointsec.toml"))
    p.add_argument("--app-dir", type=Path, default=Path("."),
                   help="directory added to sys.path before importing the app")
    p.add_argument("--host", help="override [server] host")
    p.add_argument("--port", type=int, help="override [server] port")
    p.add_argument("--wrap", action="store_true",
                   help="wrap the app in endpointsec's ASGI/WSGI middleware")
    p.add_argument("--http", choices=["httptools", "h11"], default="httptools",
                   help="uvicorn HTTP implementation (ASGI apps)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=_handle)


def import_app(spec: str, *, app_dir: Path | None = None) -> Any:
    """Import ``module:attribute`` (``attribute()`` calls a factory)."""
    if app_dir is not None:
        sys.path.insert(0, str(app_dir.resolve()))
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"app must be 'module:attribute', not {spec!r}")
    module = importlib.import_module(module_name)
    factory = attr.endswith("()")
    obj = getattr(module, attr.removesuffix("()"))
    return obj() if factory else obj


def is_asgi(app: Any) -> bool:
    """ASGI apps are ``async`` callables of three arguments; WSGI apps take two."""
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    if inspect.iscoroutinefunction(call):
        return True
    try:
        params = [p for p in inspect.signature(call).parameters.values()  # type: ignore[arg-type]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) == 3


def _server_settings(config: Config) -> tuple[Path, Path, Path]:
    srv = config.server
    paths: list[Path] = []
    for key, value in (("certfile", srv.certfile), ("keyfile", srv.keyfile),
                       ("client_ca", srv.client_ca)):
        if value is None:
            raise ConfigurationError("is required to serve over mTLS", key=f"server.{key}")
        paths.append(value)
    return paths[0], paths[1], paths[2]


def serve(app_spec: str, *, config_path: Path, app_dir: Path = Path("."),
          host: str | None = None, port: int | None = None, wrap: bool = False,
          http: str = "httptools", log_level: str = "warning") -> int:
    """Serve ``app_spec`` over mTLS as configured in ``config_path``; blocks."""
    config = load_config(config_path)
    certfile, keyfile, client_ca = _server_settings(config)
    os.environ["ENDPOINTSEC_CONFIG"] = str(config_path.resolve())
    app = import_app(app_spec, app_dir=app_dir)
    host = host or config.server.host
    port = config.server.port if port is None else port
    cert_reqs = ssl.CERT_REQUIRED if config.server.client_cert == "required" else ssl.CERT_OPTIONAL
    if is_asgi(app):
        import uvicorn

        from endpointsec.integrations.asgi import ASGIMiddleware
        from endpointsec.servers.uvicorn import (
            H11Protocol,
            HttpToolsProtocol,
            RotatingSSLContextFactory,
        )

        if wrap:
            app = ASGIMiddleware(app, config=config)
        uvicorn.run(
            app, host=host, port=port, log_level=log_level,
            http=HttpToolsProtocol if http == "httptools" else H11Protocol,
            ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
            ssl_ca_certs=str(client_ca), ssl_cert_reqs=cert_reqs,
            # New handshakes follow the certificate, key and client CA files.
            ssl_context_factory=RotatingSSLContextFactory(
                reload_interval=config.server.reload_interval),
            workers=None, lifespan="auto",
            # The app terminates TLS itself: never let X-Forwarded-For rewrite the peer
            # address that [proxy] trust decisions are based on.
            proxy_headers=False,
        )
        return 0
    from endpointsec.cli._gunicorn import run_gunicorn

    if wrap:
        from endpointsec.integrations.wsgi import WSGIMiddleware

        app = WSGIMiddleware(app, config=config)
    return run_gunicorn(app, host=host, port=port, certfile=certfile, keyfile=keyfile,
                        reload_interval=config.server.reload_interval,
                        client_ca=client_ca, cert_reqs=cert_reqs,
                        workers=config.server.workers, log_level=log_level)


def _handle(args: argparse.Namespace) -> int:
    return serve(args.app, config_path=args.config, app_dir=args.app_dir, host=args.host,
                 port=args.port, wrap=args.wrap, http=args.http, log_level=args.log_level)
