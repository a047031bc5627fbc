"""``endpointsec serve APP --config endpointsec.toml``: a correct mTLS server in one command.

An ASGI app is served by uvicorn with endpointsec's certificate-passing protocol class
(so the app sees the client certificate); a WSGI app by gunicorn. Both take the server
certificate, key and client CA from ``[server]`` and *require* a client certificate in
the TLS handshake unless ``client_cert = "optional"``. The configuration is ``--config``,
else ``$ENDPOINTSEC_CONFIG``, else ``./endpointsec.toml``; its absolute path is exported
as ``ENDPOINTSEC_CONFIG`` to the app, so the app's ``load_config()`` reads the same file
the server does. ``--wrap`` wraps the app in endpointsec's middleware for apps that do
not wire it themselves.

At start it prints the URL it listens on, the configuration file, the policy size and
the trust domains, and a warning when ``[identity] sources`` cannot see the certificates
this server passes (``"asgi-tls"`` for uvicorn, ``"gunicorn"`` for gunicorn).
``--log-level`` applies to endpointsec's loggers too (and ``--log-format json`` writes
them as JSON lines): the default, ``warning``, logs no denial; at ``info`` each denial is
one line with its reason. ``--metrics-port N`` serves Prometheus metrics on
``127.0.0.1:N/metrics``, apart from the app.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from endpointsec.config import CONFIG_ENV, Config, load_config
from endpointsec.config import config_path as find_config_path
from endpointsec.errors import ConfigurationError

__all__ = ["import_app", "is_asgi", "register", "serve", "source_warning"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve an ASGI or WSGI app over mutual TLS",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("app", help="import string, e.g. 'app:app' or 'pkg.module:create_app()'")
    p.add_argument("--config", type=Path,
                   help="endpointsec.toml (default: $ENDPOINTSEC_CONFIG, else "
                        "./endpointsec.toml); exported to the app as ENDPOINTSEC_CONFIG")
    p.add_argument("--app-dir", type=Path, default=Path("."),
                   help="directory added to sys.path before importing the app")
    p.add_argument("--host", help="override [server] host")
    p.add_argument("--port", type=int, help="override [server] port")
    p.add_argument("--wrap", action="store_true",
                   help="wrap the app in endpointsec's ASGI/WSGI middleware")
    p.add_argument("--http", choices=["httptools", "h11"], default="httptools",
                   help="uvicorn HTTP implementation (ASGI apps)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="server and endpointsec log level (default warning: denials are not "
                        "logged; info: one line per denial with its reason)")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="endpointsec's log records as plain text or JSON lines")
    p.add_argument("--metrics-port", type=int, default=None, metavar="N",
                   help="serve Prometheus metrics on --metrics-host:N/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address of the metrics server (default 127.0.0.1)")
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


def setup_logging(level: str, *, fmt: str = "text") -> None:
    """Send endpointsec's loggers to stderr at ``level``, one line per record (plain
    text with control characters escaped, or JSON)."""
    from endpointsec.audit import JSONFormatter, TextFormatter

    root = logging.getLogger("endpointsec")
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_endpointsec_serve", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler._endpointsec_serve = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False


def _policy_summary(config: Config) -> str:
    pc = config.policy
    if getattr(pc, "allow_authenticated", False):
        return "every authenticated caller is allowed (allow_authenticated)"
    policy_path: Path | None = getattr(pc, "policy", None)
    if policy_path is None:
        return "from an adapter"
    from endpointsec.cli.check import _load_rules
    from endpointsec.policy.enforcer import DEFAULT_MODEL_PATH

    try:
        _, p_rules, g_rules = _load_rules(getattr(pc, "model", None) or DEFAULT_MODEL_PATH,
                                          policy_path)
    except Exception as exc:  # the app reports the real error when it loads the policy
        return f"{policy_path} (cannot be read: {type(exc).__name__})"
    mode = ", dry run" if getattr(pc, "dry_run", False) else ""
    return (f"{_count(len(p_rules), 'rule')}, {_count(len(g_rules), 'role')} "
            f"from {policy_path}{mode}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _trust_summary(config: Config) -> str:
    identity = config.identity
    domains = list(identity.trust_domains) or list(identity.allowed_trust_domains)
    if domains:
        return ", ".join(sorted(domains))
    if identity.trust_bundles:
        return "any (trust_bundles: " + ", ".join(str(p) for p in identity.trust_bundles) + ")"
    return "none (no certificate source configured)"


def source_warning(config: Config, *, asgi: bool) -> str | None:
    """The warning for an ``[identity] sources`` that cannot see the certificates of the
    server ``serve`` starts (uvicorn fills ``"asgi-tls"``, gunicorn ``"gunicorn"``), or
    ``None``. Without this source every route that needs a client certificate answers 401
    ("none was presented") although clients send one. A ``[proxy]`` is left alone: its
    certificates come from a header."""
    if config.proxy is not None:
        return None
    needed, server = ("asgi-tls", "uvicorn (ASGI apps)") if asgi else ("gunicorn",
                                                                         "gunicorn (WSGI apps)")
    sources = list(config.identity.sources)
    if needed in sources:
        return None
    return (f"[identity] sources = {sources!r} does not read the client certificates "
            f"{server} passes to the app: add {needed!r} to [identity] sources, or every "
            "route that requires mTLS answers 401 (no certificate)")


def _announce(config: Config, config_path: Path, *, host: str, port: int, server: str,
              metrics: str | None, warning: str | None = None) -> None:
    client = config.server.client_cert
    lines = [
        f"endpointsec serve: listening on https://{_url_host(host)}:{port} ({server}, "
        f"client certificate {client})",
        f"  config:        {config_path.resolve()}",
        f"  policy:        {_policy_summary(config)}",
        f"  trust domains: {_trust_summary(config)}",
    ]
    if metrics is not None:
        lines.append(f"  metrics:       {metrics}")
    if warning is not None:
        lines.append(f"  warning:       {warning}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(app_spec: str, *, config_path: Path | None = None, app_dir: Path = Path("."),
          host: str | None = None, port: int | None = None, wrap: bool = False,
          http: str = "httptools", log_level: str = "warning", log_format: str = "text",
          metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> int:
    """Serve ``app_spec`` over mTLS as configured in ``config_path``; blocks."""
    path = find_config_path(config_path)
    config = load_config(path)
    certfile, keyfile, client_ca = _server_settings(config)
    # The app's load_config() (no argument) reads exactly this file, in this process and
    # in every worker it starts.
    os.environ[CONFIG_ENV] = str(path.resolve())
    setup_logging(log_level, fmt=log_format)
    metrics_url: str | None = None
    if metrics_port is not None:
        from endpointsec import metrics

        if config.server.workers > 1:
            raise ConfigurationError("--metrics-port needs one worker process (each "
                                     "worker counts its own decisions)", key="server.workers")
        metrics.enable()  # before the app builds its gatekeeper
        metrics_url = f"http://{_url_host(metrics_host)}:{metrics_port}/metrics"
    app = import_app(app_spec, app_dir=app_dir)
    host = host or config.server.host
    port = config.server.port if port is None else port
    cert_reqs = ssl.CERT_REQUIRED if config.server.client_cert == "required" else ssl.CERT_OPTIONAL
    asgi = is_asgi(app)
    _announce(config, path, host=host, port=port,
              server="uvicorn, ASGI" if asgi else "gunicorn, WSGI", metrics=metrics_url,
              warning=source_warning(config, asgi=asgi))
    if asgi:
        import uvicorn

        if metrics_port is not None:
            from endpointsec.metrics import start_http_server

            start_http_server(metrics_port, host=metrics_host)

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
    on_worker_start = None
    if metrics_port is not None:
        from endpointsec.metrics import start_http_server

        def on_worker_start() -> None:  # the worker holds the counts: serve them there
            start_http_server(metrics_port, host=metrics_host)

    return run_gunicorn(app, host=host, port=port, certfile=certfile, keyfile=keyfile,
                        reload_interval=config.server.reload_interval,
                        client_ca=client_ca, cert_reqs=cert_reqs,
                        workers=config.server.workers, log_level=log_level,
                        on_worker_start=on_worker_start)


def _handle(args: argparse.Namespace) -> int:
    return serve(args.app, config_path=args.config, app_dir=args.app_dir, host=args.host,
                 port=args.port, wrap=args.wrap, http=args.http, log_level=args.log_level,
                 log_format=args.log_format, metrics_port=args.metrics_port,
                 metrics_host=args.metrics_host)
