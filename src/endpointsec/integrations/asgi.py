"""Pure ASGI middleware (never ``BaseHTTPMiddleware``)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter_ns
from typing import Any

from endpointsec.config import Config
from endpointsec.facts import RequestFacts
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations.responses import error_response

__all__ = ["ASGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIMiddleware:
    """Authenticate and authorize every HTTP and websocket request before ``app`` runs.

    ::

        app = ASGIMiddleware(app, config=endpointsec.load_config("endpointsec.toml"))

    The request's :class:`SecurityContext` is at ``scope["endpointsec"]``. Refusals are
    problem+json responses (401 with ``WWW-Authenticate``, 403, 400, 503); a websocket
    is refused before it is accepted. Lifespan and other scopes pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Config | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self.app = app
        self.gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        self._bearer = self.gatekeeper.token_verifier is not None
        #: The app's route template for the decision log (framework adapters set it).
        self._route_of: Callable[[Scope], str | None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        gk = self.gatekeeper
        started = perf_counter_ns() if gk.observer is not None else 0
        facts = self._route_facts(scope, await gk.gather_asgi(scope))
        decision = gk.decide(facts, carrier=scope, started_ns=started, route_of=self._route_of)
        if not decision.allowed:
            if scope["type"] == "websocket":
                await self._refuse_websocket(scope, receive, send, decision)
            else:
                await self._refuse_http(send, decision)
            return
        gk.scrub_asgi(scope)
        scope["endpointsec"] = SecurityContext(
            principal=decision.principal, decision=decision, facts=facts
        )
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        """Start fetching key sets once the app has started; release the gatekeeper's
        background work (key fetching, file watching) when it has shut down."""
        gk = self.gatekeeper

        async def lifespan_send(message: Message) -> None:
            if message.get("type") == "lifespan.startup.complete":
                gk.start()
            elif message.get("type") == "lifespan.shutdown.complete":
                gk.close()
            await send(message)

        return lifespan_send

    def _route_facts(self, scope: Scope, facts: RequestFacts) -> RequestFacts:
        """Hook for framework adapters that know the app's own route (FastAPI)."""
        return facts

    async def _refuse_http(self, send: Send, decision: Any) -> None:
        resp = error_response(decision, bearer=self._bearer)
        await send({
            "type": "http.response.start",
            "status": resp.status,
            "headers": list(_encoded(resp.headers)),
        })
        await send({"type": "http.response.body", "body": resp.body})

    async def _refuse_websocket(self, scope: Scope, receive: Receive, send: Send,
                                decision: Any) -> None:
        # Wait for the client's connect, then refuse before accepting.
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        extensions = scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            resp = error_response(decision, bearer=self._bearer)
            await send({
                "type": "websocket.http.response.start",
                "status": resp.status,
                "headers": list(_encoded(resp.headers)),
            })
            await send({"type": "websocket.http.response.body", "body": resp.body})
        else:
            await send({"type": "websocket.close", "code": 1008})


@functools.lru_cache(maxsize=128)
def _encoded(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """A refusal's headers as ASGI byte pairs (one per kind of refusal, built once)."""
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
