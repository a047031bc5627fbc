"""Flask integration: ``EndpointSec(app)``, ``@require(...)``, ``current_principal``.

::

    from endpointsec.integrations.flask import EndpointSec, current_principal, require

    app = Flask(__name__)
    sec = EndpointSec(app, config=load_config("endpointsec.toml"))

    @app.get("/orders")
    @require(resource="orders", action="read")
    def orders():
        return {"caller": current_principal.peer.id}

Every request (404s included) is checked in ``before_request`` with the configured
requirements; a route's ``@require`` narrows them, ``@public`` skips them. Refusals are
the same problem+json responses as the middleware's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from time import perf_counter_ns
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

from endpointsec.config import Config
from endpointsec.facts import MTLS, Principal, TokenUse
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations._routes import RouteRule
from endpointsec.integrations.responses import error_response

__all__ = ["EndpointSec", "current_principal", "public", "require"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__endpointsec_rule__"
_EXT = "endpointsec"


def require(
    *,
    resource: str | None = None,
    action: str | None = None,
    roles: Iterable[str] = (),
    mtls: str | MTLS | None = None,
    token: str | TokenUse | None = None,
    bound_token: bool | None = None,
) -> Callable[[F], F]:
    """Narrow what a view requires: policy object/action, roles (any of), mTLS, token."""
    rule = RouteRule.make(resource=resource, action=action, roles=roles, mtls=mtls,
                          token=token, bound_token=bound_token)

    def mark(view: F) -> F:
        setattr(view, _ATTR, rule)
        return view

    return mark


def public(view: F) -> F:
    """Declare a view public: no authentication, no policy (use sparingly)."""
    setattr(view, _ATTR, RouteRule(public=True))
    return view


def _get_principal() -> Principal:
    ctx: SecurityContext | None = g.get("_endpointsec")
    if ctx is None:
        raise RuntimeError("no endpointsec context: is EndpointSec initialised on this app?")
    return ctx.principal


#: The caller of the current request (``Principal``), like ``flask.g``.
current_principal: Principal = cast(Principal, LocalProxy(_get_principal))


_CONVERTER = re.compile(r"<(?:[A-Za-z_][A-Za-z0-9_]*(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")


def _route_template(environ: Any) -> str | None:
    """The matched Flask rule as a route template (``<int:id>`` becomes ``{id}``)."""
    rule = request.url_rule
    return None if rule is None else _CONVERTER.sub(r"{\1}", rule.rule)


class _Refused(HTTPException):
    def __init__(self, response: Response) -> None:
        super().__init__(response=response)
        self.code = response.status_code


class EndpointSec:
    """The Flask extension. Supports the application-factory pattern (``init_app``)."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: Config | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self.gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        self._bearer = self.gatekeeper.token_verifier is not None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions[_EXT] = self
        # First in preprocess_request: before every URL value preprocessor and every
        # before_request function, whenever they were registered (one returning a
        # response would otherwise skip the check).
        app.url_value_preprocessors.setdefault(None, []).insert(0, self._preprocess)

    def _preprocess(self, endpoint: str | None, values: dict[str, Any] | None) -> None:
        self._check()

    def _check(self) -> None:
        gk = self.gatekeeper
        environ = request.environ
        started = perf_counter_ns() if gk.observer is not None else 0
        facts = gk.gather_wsgi(environ)
        rule: RouteRule | None = None
        if request.url_rule is not None and request.url_rule.endpoint is not None:
            view = current_app.view_functions.get(request.url_rule.endpoint)
            rule = getattr(view, _ATTR, None)
        route = rule.apply(facts.requirements) if rule is not None else None
        decision = gk.decide_route(facts, route, carrier=environ, started_ns=started,
                                   route_of=_route_template)
        if not decision.allowed:
            resp = error_response(decision, bearer=self._bearer)
            raise _Refused(Response(resp.body, status=resp.status, headers=list(resp.headers)))
        gk.scrub_wsgi(environ)
        ctx = SecurityContext(principal=decision.principal, decision=decision, facts=facts)
        environ["endpointsec"] = ctx
        g._endpointsec = ctx
