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
per route (``scopes=`` and ``Security(..., scopes=...)`` require token scopes, all of
them); ``public`` routes skip authentication and policy.

The configuration may also be given later: ``sec.install(app, config=...)``, or
``sec.configure(config=...)`` in the app's lifespan; with none, ``load_config()`` is
read when the app starts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import Response

from endpointsec.config import Config, load_config
from endpointsec.errors import ConfigurationError
from endpointsec.facts import MTLS, Decision, Principal, RequestFacts, TokenUse
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations._routes import RouteRule, narrowed
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.integrations.responses import error_response

__all__ = ["EndpointSec", "Refused"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__endpointsec_rule__"
_log = logging.getLogger("endpointsec.fastapi")
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

    The gatekeeper is the owner's, taken when the app has started (after its lifespan
    startup, where the configuration may be given) or at the first request.
    """

    gatekeeper: Gatekeeper

    def __init__(self, app: Any, *, owner: EndpointSec) -> None:
        self.app = app
        self._owner = owner
        self._route_of = owner._route_template
        self._bound = False
        #: This app's routes and whether one is public, taken at its first request
        #: (per app: one EndpointSec may be installed on several apps).
        self._routes: tuple[Any, ...] | None = None
        self._has_public = False

    def _bind(self) -> None:
        gk = self._owner.gatekeeper
        self._bearer = gk.token_verifier is not None
        self.gatekeeper = gk
        self._bound = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._bound and scope["type"] in ("http", "websocket"):
            try:
                self._bind()
            except ConfigurationError as exc:
                # Never serve unchecked: refuse until there is a configuration.
                _log.error("endpointsec is not configured: %s", exc)
                decision = Decision(allowed=False, status=503,
                                    reason="endpointsec is not configured")
                if scope["type"] == "http":
                    self._bearer = False
                    await self._refuse_http(send, decision)
                else:
                    await send({"type": "websocket.close", "code": 1011})
                return
        if self._routes is None and scope["type"] in ("http", "websocket"):
            self._routes, self._has_public = _public_routes(scope.get("app"))
        await super().__call__(scope, receive, send)

    def _lifespan_send(self, send: Any) -> Any:
        """Take the configuration once the app's own lifespan startup has run (it may
        call :meth:`EndpointSec.configure`); a missing or invalid one fails startup."""

        async def lifespan_send(message: Any) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                if not self._bound:
                    # A ConfigurationError here fails the startup (the framework's
                    # lifespan handler reports lifespan.startup.failed).
                    self._bind()
                self.gatekeeper.start()
            elif kind == "lifespan.shutdown.complete" and self._bound:
                self.gatekeeper.close()
            await send(message)

        return lifespan_send

    def _route_facts(self, scope: Any, facts: RequestFacts) -> RequestFacts:
        # The app's routes as they are now (a route added since the first request
        # may come before a public one), read only when the app has a public route.
        rule = _public_rule(scope, getattr(scope.get("app"), "routes", None) or ()) \
            if self._has_public else None
        if rule is None:
            return facts
        return replace(facts, requirements=rule.apply(facts.requirements))


class _BearerScheme(SecurityBase):
    """The HTTP bearer scheme in the OpenAPI document. It reads nothing (the middleware
    verifies the token) and, unlike ``HTTPBearer``, also works in websocket routes."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT",
                                     description="A JWT verified by endpointsec.")
        self.scheme_name = "bearer"

    async def __call__(self, conn: HTTPConnection) -> None:
        return None


class EndpointSec:
    """endpointsec for a FastAPI (or Starlette) application.

    The configuration may be given at construction, to :meth:`install`, or later with
    :meth:`configure` (for example in the app's lifespan, before it yields); with none
    of them, :func:`endpointsec.load_config` is used when the app starts.
    """

    def __init__(self, *, config: Config | None = None,
                 gatekeeper: Gatekeeper | None = None) -> None:
        self._gatekeeper: Gatekeeper | None = None
        if config is not None or gatekeeper is not None:
            self.configure(config=config, gatekeeper=gatekeeper)
        self._bearer_scheme = _BearerScheme()
        self._dependencies: dict[RouteRule | None, Callable[..., Awaitable[Principal]]] = {}
        #: The dependency returning the caller (see :attr:`principal`).
        self._principal = self._dependency(None)

    # -- configuration ----------------------------------------------------------------

    def configure(self, *, config: Config | None = None,
                  gatekeeper: Gatekeeper | None = None) -> Gatekeeper:
        """Give the configuration (exactly one of ``config`` / ``gatekeeper``), once,
        before the first request: at construction, in :meth:`install` or in a lifespan.
        """
        if self._gatekeeper is not None:
            raise ConfigurationError("endpointsec is already configured for this app")
        self._gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        return self._gatekeeper

    @property
    def configured(self) -> bool:
        return self._gatekeeper is not None

    @property
    def gatekeeper(self) -> Gatekeeper:
        """The gatekeeper; without a configuration yet, the one of
        :func:`endpointsec.load_config` (``$ENDPOINTSEC_CONFIG``, ``./endpointsec.toml``)."""
        if self._gatekeeper is None:
            return self.configure(config=load_config())
        return self._gatekeeper

    # -- installation -----------------------------------------------------------------

    def install(self, app: FastAPI, *, config: Config | None = None,
                gatekeeper: Gatekeeper | None = None) -> None:
        """Add the middleware, the problem+json handler and the OpenAPI schemes
        (and take the configuration, if given here)."""
        if config is not None or gatekeeper is not None:
            self.configure(config=config, gatekeeper=gatekeeper)
        app.add_middleware(_Middleware, owner=self)

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
            self._add_security(app, schema)
            return schema

        app.openapi = openapi  # type: ignore[method-assign]

    def _route_template(self, scope: Any) -> str | None:
        """The template of the route Starlette runs (or ran) for the request, for the
        decision log; computed only when a record is written."""
        from starlette.routing import Match

        route = scope.get("route")
        if route is None:
            for candidate in getattr(scope.get("app"), "routes", None) or ():
                match, _ = candidate.matches(scope)
                if match is Match.FULL:
                    route = candidate
                    break
        path_format = getattr(route, "path_format", None)
        return path_format if isinstance(path_format, str) else None

    def _add_security(self, app: FastAPI, schema: dict[str, Any]) -> None:
        """The security schemes and each operation's security requirement (OpenAPI
        3.1): ``mutualTLS`` and, with token issuers, HTTP ``bearer`` with the scopes
        the route requires; both in one requirement when both are required, as
        alternatives when either is enough; none for public routes."""
        gk = self.gatekeeper
        bearer = gk.token_verifier is not None
        components = schema.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})
        schemes["mutualTLS"] = {
            "type": "mutualTLS",
            "description": "A client certificate verified by endpointsec (SPIFFE ID or SAN).",
        }
        if bearer:
            schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                 "description": "A JWT verified by endpointsec."}
        else:
            schemes.pop("bearer", None)
        routes: dict[tuple[str, str], Any] = {}
        for r in app.routes:
            for method in getattr(r, "methods", None) or ():
                routes[(getattr(r, "path", ""), method.lower())] = r
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                if not isinstance(op, dict):
                    continue
                route = routes.get((path, method))
                scopes = [s for entry in op.get("security", ()) for s in entry.get("bearer", ())]
                op["security"] = self._requirement(gk, route, path, method.upper(),
                                                   scopes=scopes, bearer=bearer)

    def _requirement(self, gk: Gatekeeper, route: Any, path: str, method: str, *,
                     scopes: list[str], bearer: bool) -> list[dict[str, list[str]]]:
        if route is not None and getattr(getattr(route, "endpoint", None), _ATTR,
                                         RouteRule()).public:
            return []
        req = gk.routes.match(method, _template(path))
        for rule in _route_rules(getattr(route, "dependant", None)):
            req = rule.apply(req)
        if req.public:
            return []
        m = req.mtls
        t = req.token if bearer else TokenUse.NONE
        if bearer and scopes:
            t = TokenUse.REQUIRED
        cert: dict[str, list[str]] = {"mutualTLS": []}
        token: dict[str, list[str]] = {"bearer": list(scopes)}
        if m is MTLS.REQUIRED and t is TokenUse.REQUIRED:
            return [{**cert, **token}]
        if m is MTLS.REQUIRED:
            return [cert]
        if t is TokenUse.REQUIRED:
            return [token]
        # Either credential is enough (or none is read at all).
        return [x for x, unused in ((cert, m is MTLS.NONE), (token, t is TokenUse.NONE))
                if not unused]

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
        scopes: Iterable[str] = (),
        mtls: str | MTLS | None = None,
        token: str | TokenUse | None = None,
        bound_token: bool | None = None,
    ) -> Callable[..., Awaitable[Principal]]:
        """A dependency (use with ``Security(...)``/``Depends(...)``) that narrows the
        route's requirements and returns the caller's :class:`Principal`.

        ``roles``: the caller holds one of them. ``scopes``: the token carries every one
        of them, together with the scopes of ``Security(..., scopes=[...])`` (FastAPI's
        ``SecurityScopes``); they appear in the operation's OpenAPI security requirement.
        The same arguments give the same dependency object (FastAPI caches by identity).
        """
        rule = RouteRule.make(resource=resource, action=action, roles=roles, mtls=mtls,
                              token=token, bound_token=bound_token, scopes=scopes)
        return self._dependency(rule)

    @property
    def principal(self) -> Callable[..., Awaitable[Principal]]:
        """A dependency returning the caller's :class:`Principal` (no extra narrowing);
        always the same object, so FastAPI runs it once per request."""
        return self._principal

    def _dependency(self, rule: RouteRule | None) -> Callable[..., Awaitable[Principal]]:
        known = self._dependencies.get(rule)
        if known is not None:
            return known
        owner = self
        rule_scopes = sorted(rule.scopes) if rule is not None else []

        async def check(
            conn: HTTPConnection,
            security_scopes: SecurityScopes,
            _bearer: None = Security(self._bearer_scheme, scopes=rule_scopes),
        ) -> Principal:
            gk = owner.gatekeeper
            ctx: SecurityContext | None = conn.scope.get("endpointsec")
            facts = ctx.facts if ctx is not None else await gk.gather_asgi(conn.scope)
            if not security_scopes.scopes and not rule_scopes:
                decision = gk.decide_route(
                    facts, rule.apply(facts.requirements) if rule is not None else None,
                    carrier=conn.scope, route_of=owner._route_template)
            else:
                routes = narrowed(rule, facts.requirements, security_scopes.scopes)
                decision = gk.decide_route(facts, next(routes), carrier=conn.scope,
                                           route_of=owner._route_template)
                for route in routes:
                    if not decision.allowed:
                        break
                    decision = gk.decide_route(facts, route, carrier=conn.scope,
                                               route_of=owner._route_template)
            if not decision.allowed:
                if conn.scope["type"] == "websocket":
                    raise WebSocketException(code=1008)
                raise Refused(decision, bearer=gk.token_verifier is not None)
            return decision.principal

        setattr(check, _ATTR, rule)
        self._dependencies[rule] = check
        return check


def _public_routes(app: Any) -> tuple[tuple[Any, ...], bool]:
    """``app``'s routes, and whether one of them is declared ``@sec.public``."""
    routes = tuple(getattr(app, "routes", None) or ())
    return routes, any(getattr(getattr(r, "endpoint", None), _ATTR, RouteRule()).public
                       for r in routes)


def _public_rule(scope: Any, routes: Iterable[Any]) -> RouteRule | None:
    """The ``@sec.public`` rule of the route Starlette will run, if it is public."""
    from starlette.routing import Match

    try:
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                rule = getattr(getattr(route, "endpoint", None), _ATTR, None)
                return rule if isinstance(rule, RouteRule) and rule.public else None
    except Exception:  # an odd scope: not public (fail closed)
        return None
    return None


def _route_rules(dependant: Any) -> Iterator[RouteRule]:
    """The endpointsec rules of a route's dependencies (for its OpenAPI requirement)."""
    stack = [dependant] if dependant is not None else []
    while stack:
        d = stack.pop()
        rule = getattr(getattr(d, "call", None), _ATTR, None)
        if isinstance(rule, RouteRule):
            yield rule
        stack.extend(getattr(d, "dependencies", ()) or ())
