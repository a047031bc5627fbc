"""gunicorn server hook: certificate rotation without restart.

In a gunicorn configuration file::

    # gunicorn.conf.py
    from endpointsec.servers.gunicorn import ssl_context   # 5-second polling
    # or: ssl_context = endpointsec.servers.gunicorn.SSLContextHook(reload_interval=30)

gunicorn (21+) calls the ``ssl_context(config, default_ssl_context_factory)`` hook for
the context of its listening sockets; its sync and gthread workers call it for every
connection. The hook builds gunicorn's own context once per worker process
(``--certfile``, ``--keyfile``, ``--ca-certs``, ``--cert-reqs``, ciphers, ALPN) and
returns a :class:`endpointsec.servers.tls.RotatingServerContext`, so new handshakes use
the files as they are now, a bad new file keeps the last good context, and the
certificate is no longer parsed again on every connection.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

from endpointsec.servers.tls import RotatingServerContext

__all__ = ["SSLContextHook", "ssl_context"]


class SSLContextHook:
    """The gunicorn ``ssl_context`` server hook (one rotating context per process)."""

    def __init__(self, *, reload_interval: float = 5.0) -> None:
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._rotating: RotatingServerContext | None = None

    @property
    def rotating(self) -> RotatingServerContext | None:
        """This process's rotating context, once the hook has been called."""
        rotating = self._rotating
        return rotating if rotating is not None and rotating.pid == os.getpid() else None

    def __call__(self, config: Any,
                 default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        rotating = self._rotating
        pid = os.getpid()
        if rotating is not None and rotating.pid == pid:
            return rotating.context
        with self._lock:
            rotating = self._rotating
            if rotating is None or rotating.pid != pid:  # first call, or a forked worker
                rotating = RotatingServerContext(
                    certfile=config.certfile, keyfile=config.keyfile,
                    client_ca=config.ca_certs, cert_reqs=config.cert_reqs,
                    reload_interval=self.reload_interval,
                    build=default_ssl_context_factory,
                ).start()
                self._rotating = rotating
        return rotating.context


#: The hook with the default 5-second polling interval.
ssl_context = SSLContextHook()
