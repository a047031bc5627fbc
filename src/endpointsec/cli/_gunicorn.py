"""Run a WSGI app under gunicorn over mTLS, programmatically (``endpointsec serve``)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_gunicorn"]


def run_gunicorn(app: Any, *, host: str, port: int, certfile: Path, keyfile: Path,
                 reload_interval: float = 5.0,
                 client_ca: Path, cert_reqs: int = ssl.CERT_REQUIRED, workers: int = 1,
                 threads: int = 4, log_level: str = "warning",
                 on_worker_start: Callable[[], None] | None = None) -> int:
    """Serve ``app`` with gunicorn's gthread worker; blocks until stopped."""
    from gunicorn.app.base import BaseApplication

    from endpointsec.servers.gunicorn import SSLContextHook

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "ca_certs": str(client_ca),
        "cert_reqs": cert_reqs,
        "loglevel": log_level,
        # New handshakes follow the certificate, key and client CA files.
        "ssl_context": SSLContextHook(reload_interval=reload_interval),
    }
    if on_worker_start is not None:
        options["post_worker_init"] = lambda _worker: on_worker_start()

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _App().run()
    return 0
