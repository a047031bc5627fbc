"""WSGI middleware: the same gather and decide as ASGI, in the calling thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from time import perf_counter_ns
from typing import Any

from endpointsec.config import Config
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations.responses import error_response

__all__ = ["WSGIMiddleware"]

Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGIMiddleware:
    """Authenticate and authorize every request before the WSGI ``app`` runs.

    ::

        app.wsgi_app = WSGIMiddleware(app.wsgi_app, config=load_config("endpointsec.toml"))

    The request's :class:`SecurityContext` is at ``environ["endpointsec"]``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        config: Config | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self.app = app
        self.gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        self._bearer = self.gatekeeper.token_verifier is not None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        gk = self.gatekeeper
        started = perf_counter_ns() if gk.observer is not None else 0
        facts = gk.gather_wsgi(environ)
        decision = gk.decide(facts, carrier=environ, started_ns=started)
        if not decision.allowed:
            resp = error_response(decision, bearer=self._bearer)
            start_response(f"{resp.status} {_REASONS.get(resp.status, 'Forbidden')}",
                           list(resp.headers))
            return [resp.body]
        gk.scrub_wsgi(environ)
        environ["endpointsec"] = SecurityContext(
            principal=decision.principal, decision=decision, facts=facts
        )
        return self.app(environ, start_response)


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            503: "Service Unavailable"}
