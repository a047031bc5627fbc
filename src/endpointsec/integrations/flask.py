"""Flask integration: ``EndpointSec(app)``, ``@require(...)``, ``current_principal``.

::

    from endpointsec.integrations.flask import EndpointSec, current_principal, require

    app = Flask(__name__)
    sec = EndpointSec(app)   # reads $ENDPOINTSEC_CONFIG, else ./endpointsec.toml

or with an application factory::

    sec = EndpointSec()

    def create_app():
        app = Flask(__name__)
        app.config["ENDPOINTSEC_CONFIG"] = "endpointsec.toml"   # or a mapping
        sec.init_app(app)
        return app

    @app.get("/orders")
    @require(resource="orders", action="read")
    def orders():
        return {"caller": current_principal.peer.id}

Every request (404s included) is checked in ``before_request`` with the configured
requirements; a route's ``@require`` narrows them, ``@public`` skips them. Refusals are
the same problem+json responses as the middleware's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, has_app_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

from endpointsec.config import CONFIG_ENV, Config, load_config
from endpointsec.errors import ConfigurationError
from endpointsec.facts import MTLS, Principal, TokenUse
from endpointsec.gatekeeper import Gatekeeper, SecurityContext
from endpointsec.integrations._routes import RouteRule, narrowed
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
    scopes: Iterable[str] = (),
    mtls: str | MTLS | None = None,
    token: str | TokenUse | None = None,
    bound_token: bool | None = None,
) -> Callable[[F], F]:
    """Narrow what a view requires: policy object/action, roles (any of), token scopes
    (all of), mTLS, token."""
    rule = RouteRule.make(resource=resource, action=action, roles=roles, scopes=scopes,
                          mtls=mtls, token=token, bound_token=bound_token)

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


class _AppState:
    """What one application uses: its gatekeeper (several apps may share an extension)."""

    __slots__ = ("bearer", "gatekeeper")

    def __init__(self, gatekeeper: Gatekeeper) -> None:
        self.gatekeeper = gatekeeper
        self.bearer = gatekeeper.token_verifier is not None


def _config_for(app: Flask) -> Config:
    """``app.config["ENDPOINTSEC_CONFIG"]`` (a path, a mapping or a :class:`Config`),
    else :func:`load_config` (``$ENDPOINTSEC_CONFIG``, then ``./endpointsec.toml``)."""
    value = app.config.get(CONFIG_ENV)
    if value is None:
        return load_config()
    if isinstance(value, Config):
        return value
    if isinstance(value, str | os.PathLike):
        return load_config(Path(value))
    if isinstance(value, Mapping):
        return Config.from_mapping(dict(value))
    raise ConfigurationError(
        f"must be a path, a mapping or an endpointsec Config, not {type(value).__name__}",
        key=f"app.config[{CONFIG_ENV!r}]")


class EndpointSec:
    """The Flask extension. Supports the application-factory pattern (``init_app``).

    With neither ``config`` nor ``gatekeeper``, each application given to
    :meth:`init_app` is configured by ``app.config["ENDPOINTSEC_CONFIG"]`` (a path to an
    ``endpointsec.toml``, a mapping of the same tables, or a :class:`Config`), else by
    :func:`endpointsec.load_config` (``$ENDPOINTSEC_CONFIG``, then ``./endpointsec.toml``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: Config | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self._gatekeeper: Gatekeeper | None = None
        if config is not None or gatekeeper is not None:
            self._gatekeeper = Gatekeeper.resolve(config=config, gatekeeper=gatekeeper)
        if app is not None:
            self.init_app(app)

    @property
    def gatekeeper(self) -> Gatekeeper:
        """The gatekeeper given at construction, else the current application's."""
        if self._gatekeeper is not None:
            return self._gatekeeper
        if has_app_context():
            state = current_app.extensions.get(_EXT)
            if isinstance(state, _AppState):
                return state.gatekeeper
        raise RuntimeError("no endpointsec configuration yet: call init_app(app) and use "
                           "the gatekeeper inside an application context")

    def init_app(self, app: Flask) -> None:
        """Configure ``app`` (read its configuration now: errors show at start-up)."""
        if self._gatekeeper is not None:
            if app.config.get(CONFIG_ENV) is not None:
                raise ConfigurationError(
                    "EndpointSec(config=... or gatekeeper=...) and app.config"
                    f"[{CONFIG_ENV!r}] are both set: give one", key=f"app.config[{CONFIG_ENV!r}]")
            gatekeeper = self._gatekeeper
        else:
            gatekeeper = Gatekeeper.from_config(_config_for(app))
        app.extensions[_EXT] = _AppState(gatekeeper)
        # First in preprocess_request: before every URL value preprocessor and every
        # before_request function, whenever they were registered (one returning a
        # response would otherwise skip the check).
        app.url_value_preprocessors.setdefault(None, []).insert(0, self._preprocess)

    def _preprocess(self, endpoint: str | None, values: dict[str, Any] | None) -> None:
        self._check()

    def _check(self) -> None:
        state: _AppState = current_app.extensions[_EXT]
        gk = state.gatekeeper
        environ = request.environ
        started = perf_counter_ns() if gk.observer is not None else 0
        facts = gk.gather_wsgi(environ)
        rule: RouteRule | None = None
        if request.url_rule is not None and request.url_rule.endpoint is not None:
            view = current_app.view_functions.get(request.url_rule.endpoint)
            rule = getattr(view, _ATTR, None)
        if rule is None or not rule.scopes:
            decision = gk.decide_route(
                facts, rule.apply(facts.requirements) if rule is not None else None,
                carrier=environ, started_ns=started, route_of=_route_template)
        else:
            routes = narrowed(rule, facts.requirements)
            decision = gk.decide_route(facts, next(routes), carrier=environ,
                                       started_ns=started, route_of=_route_template)
            for route in routes:
                if not decision.allowed:
                    break
                decision = gk.decide_route(facts, route, carrier=environ,
                                           started_ns=started, route_of=_route_template)
        if not decision.allowed:
            resp = error_response(decision, bearer=state.bearer)
            raise _Refused(Response(resp.body, status=resp.status, headers=list(resp.headers)))
        gk.scrub_wsgi(environ)
        ctx = SecurityContext(principal=decision.principal, decision=decision, facts=facts)
        environ["endpointsec"] = ctx
        g._endpointsec = ctx
