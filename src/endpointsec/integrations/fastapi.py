"""FastAPI and Starlette integration: middleware, ``Security`` dependencies, OpenAPI.

::

    from fastapi import FastAPI, Security
    from endpointsec.integrations.fastapi import EndpointSec

    sec = EndpointSec(config=load_config("endpointsec.toml"))
    app = FastAPI()
    sec.install(app)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int,
                        caller=Security(sec.require(resource="orders", action="read"))):
        return {"caller": caller.peer.id}

    @app.get("/healthz")
    @sec.public
    async def health(): ...

``install`` adds the pure ASGI middleware (every request, 404s and websockets included,
is checked against the configured requirements), a problem+json handler, and the
``mutualTLS`` / HTTP bearer security schemes to the OpenAPI document. ``require`` narrows
per route; ``public`` routes skip authentication and policy.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import Response

from endpointsec.config import Config
from endpointsec.facts import MTLS, Decision, Principal, RequestFacts, TokenUse
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations._routes import RouteRule
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.responses import error_response

__all__ = ["EndpointSec", "Refused"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__endpointsec_rule__"
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


class Refused(HTTPException):
    """Raised by endpointsec dependencies; rendered as problem+json by ``install``."""

    def __init__(self, decision: Decision, *, bearer: bool) -> None:
        resp = error_response(decision, bearer=bearer)
        super().__init__(status_code=resp.status, detail=resp.body.decode(),
                         headers={k: v for k, v in resp.headers if k != "content-length"})
        self.decision = decision
        self.response = resp


def _template(path: str) -> str:
    """FastAPI path -> endpointsec route template (``{p:path}`` becomes a tail ``/*``)."""
    m = _PATH_PARAM.search(path)
    out = []
    pos = 0
    for m in _PATH_PARAM.finditer(path):
        out.append(path[pos:m.start()])
        if m.group(2) == "path":
            return "".join(out).rstrip("/") + "/*"
        out.append("{" + m.group(1) + "}")
        pos = m.end()
    out.append(path[pos:])
    return "".join(out)


class _Middleware(ASGIMiddleware):
    """The ASGI middleware, plus the public routes declared with ``@sec.public``.

    A route is public only when it is the route Starlette itself will run for the
    request (its first full match), not when a template translated from its path
    matches: ``{id:int}``, ``{p:path}`` and route order have no exact template form,
    and an over-broad template made private routes public (advisory: FastAPI public
    route templates).
    """

    def __init__(self, app: Any, *, gatekeeper: Gatekeeper, owner: EndpointSec) -> None:
        super().__init__(app, gatekeeper=gatekeeper)
        self._owner = owner
        self._route_of = owner._route_template

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._owner._routes_resolved and scope["type"] in ("http", "websocket"):
            self._owner._resolve_public_routes(scope.get("app"))
        await super().__call__(scope, receive, send)

    def _route_facts(self, scope: Any, facts: RequestFacts) -> RequestFacts:
        rule = self._owner._public_rule(scope) if self._owner._has_public else None
        if rule is None:
            return facts
        return replace(facts, requirements=rule.apply(facts.requirements))


class EndpointSec:
    """endpointsec for a FastAPI (or Starlette) application."""

    def __init__(self, *, config: Config | None = None,
                 gatekeeper: Gatekeeper | None = None) -> None:
        self.gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        self._bearer = self.gatekeeper.token_verifier is not None
        self._bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer")
        self._routes_resolved = False
        self._has_public = False
        self._app_routes: tuple[Any, ...] = ()

    # -- installation -----------------------------------------------------------------

    def install(self, app: FastAPI) -> None:
        """Add the middleware, the problem+json handler and the OpenAPI schemes."""
        app.add_middleware(_Middleware, gatekeeper=self.gatekeeper, owner=self)

        async def handler(request: Request, exc: Exception) -> Response:
            resp = cast(Refused, exc).response
            response = Response(resp.body, status_code=resp.status)
            # Set raw headers: a 401 may carry several WWW-Authenticate challenges.
            response.raw_headers = [(k.encode(), v.encode()) for k, v in resp.headers]
            return response

        app.add_exception_handler(Refused, handler)
        original = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema:
                return app.openapi_schema
            schema = original()
            self._add_mtls_scheme(app, schema)
            return schema

        app.openapi = openapi  # type: ignore[method-assign]

    def _resolve_public_routes(self, app: Any) -> None:
        self._routes_resolved = True
        self._app_routes = tuple(getattr(app, "routes", ()))
        self._has_public = any(
            getattr(getattr(r, "endpoint", None), _ATTR, RouteRule()).public
            for r in self._app_routes
        )

    def _public_rule(self, scope: Any) -> RouteRule | None:
        """The ``@sec.public`` rule of the route Starlette will run, if it is public."""
        from starlette.routing import Match

        try:
            for route in self._app_routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    rule = getattr(getattr(route, "endpoint", None), _ATTR, None)
                    return rule if isinstance(rule, RouteRule) and rule.public else None
        except Exception:  # an odd scope: not public (fail closed)
            return None
        return None

    def _route_template(self, scope: Any) -> str | None:
        """The template of the route Starlette runs (or ran) for the request, for the
        decision log; computed only when a record is written."""
        from starlette.routing import Match

        route = scope.get("route")
        if route is None:
            for candidate in self._app_routes:
                match, _ = candidate.matches(scope)
                if match is Match.FULL:
                    route = candidate
                    break
        path_format = getattr(route, "path_format", None)
        return path_format if isinstance(path_format, str) else None

    def _add_mtls_scheme(self, app: FastAPI, schema: dict[str, Any]) -> None:
        components = schema.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})
        schemes["mutualTLS"] = {
            "type": "mutualTLS",
            "description": "A client certificate verified by endpointsec (SPIFFE ID or SAN).",
        }
        public_paths = {_template(getattr(r, "path", "")) for r in app.routes
                        if getattr(getattr(r, "endpoint", None), _ATTR, RouteRule()).public}
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                if not isinstance(op, dict):
                    continue
                if _template(path) in public_paths:
                    op["security"] = []
                    continue
                security = op.setdefault("security", [])
                if {"mutualTLS": []} not in security:
                    security.append({"mutualTLS": []})

    # -- route declarations -----------------------------------------------------------

    def public(self, endpoint: F) -> F:
        """Declare an endpoint public: no authentication and no policy for its route."""
        setattr(endpoint, _ATTR, RouteRule(public=True))
        return endpoint

    def require(
        self,
        *,
        resource: str | None = None,
        action: str | None = None,
        roles: Iterable[str] = (),
        mtls: str | MTLS | None = None,
        token: str | TokenUse | None = None,
        bound_token: bool | None = None,
    ) -> Callable[..., Awaitable[Principal]]:
        """A dependency (use with ``Security(...)``/``Depends(...)``) that narrows the
        route's requirements and returns the caller's :class:`Principal`."""
        rule = RouteRule.make(resource=resource, action=action, roles=roles, mtls=mtls,
                              token=token, bound_token=bound_token)
        return self._dependency(rule)

    @property
    def principal(self) -> Callable[..., Awaitable[Principal]]:
        """A dependency returning the caller's :class:`Principal` (no extra narrowing)."""
        return self._dependency(None)

    def _dependency(self, rule: RouteRule | None) -> Callable[..., Awaitable[Principal]]:
        gk = self.gatekeeper
        bearer = self._bearer
        route_of = self._route_template

        async def check(conn: HTTPConnection) -> Principal:
            ctx: SecurityContext | None = conn.scope.get("endpointsec")
            facts = ctx.facts if ctx is not None else await gk.gather_asgi(conn.scope)
            route = rule.apply(facts.requirements) if rule is not None else None
            decision = gk.decide_route(facts, route, carrier=conn.scope, route_of=route_of)
            if not decision.allowed:
                if conn.scope["type"] == "websocket":
                    raise WebSocketException(code=1008)
                raise Refused(decision, bearer=bearer)
            return decision.principal

        if not bearer:
            return check

        async def check_with_bearer(
            conn: HTTPConnection,
            _credentials: HTTPAuthorizationCredentials | None = Security(self._bearer_scheme),
        ) -> Principal:
            return await check(conn)

        return check_with_bearer
