"""Route templates as Casbin keyMatch2 objects, from an app or from ``[[routes]]``.

A learned rule's object is never wider than a route template of the application:

* FastAPI/Starlette ``{order_id}`` and ``{order_id:int}`` become ``:order_id``, Flask
  ``<id>`` and ``<int:id>`` become ``:id`` (one whole path segment each);
* a path parameter (``{p:path}``, ``<path:p>``) becomes ``/*`` only when it is the
  template's whole last segment (``/static/{p:path}`` -> ``/static/*``);
* a template that keyMatch2 cannot express exactly (a parameter inside a segment,
  a path parameter before the end, a literal ``:``, ``*`` or regular-expression
  character other than ``.``) is left out: paths under it stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RouteTemplate",
    "key_match2",
    "keymatch2_object",
    "routes_from_app",
    "routes_from_config",
]

_STARLETTE_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}$")
_FLASK_PARAM = re.compile(
    r"^<(?:([A-Za-z_][A-Za-z0-9_]*)(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>$")
_COLON_PARAM = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")
# keyMatch2 turns an object into a regular expression: these would widen or break it.
_UNSAFE = frozenset(":*+?$^()[]{}|\\<>")


def key_match2(path: str, template: str) -> bool:
    """Casbin's own keyMatch2 (what the policy will decide with)."""
    from casbin.util import key_match2 as km2

    return bool(km2(path, template))


def literal_ok(segment: str) -> bool:
    """A literal path segment keyMatch2 matches only as itself (``.`` aside, see
    ``docs/policy.md``)."""
    return not any(c in _UNSAFE for c in segment)


def keymatch2_object(template: str, *, style: str = "starlette") -> str | None:
    """The keyMatch2 object for a route template, or ``None`` if keyMatch2 cannot
    express it without widening it. ``style``: ``"starlette"`` (``{name:conv}``),
    ``"flask"`` (``<conv:name>``) or ``"config"`` (``{name}``, ``:name``, final ``/*``)."""
    if not template.startswith("/"):
        return None
    segments = template.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if style == "config" and last and seg == "*":
            out.append("*")
            continue
        name: str | None = None
        conv: str | None = None
        m = (_STARLETTE_PARAM.match(seg) if style in ("starlette", "config") else
             _FLASK_PARAM.match(seg))
        if m is not None:
            if style == "flask":
                conv, name = m.group(1), m.group(2)
            else:
                name, conv = m.group(1), m.group(2)
        elif style == "config":
            cm = _COLON_PARAM.match(seg)
            if cm is not None:
                name = cm.group(1)
        if name is not None:
            if conv == "path":
                if not last:
                    return None
                out.append("*")
            else:
                out.append(":" + name)
            continue
        if not literal_ok(seg):
            return None
        out.append(seg)
    return "/" + "/".join(out)


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """One route: its keyMatch2 object and the methods it serves (empty: any)."""

    #: The template as the application wrote it.
    source: str
    #: The keyMatch2 object a rule for it uses.
    object: str
    methods: frozenset[str] = frozenset()
    #: The policy action, when a ``[[routes]]`` entry overrides it.
    action: str | None = None
    #: The keyMatch2 pattern a path must match, when it is not ``object`` itself (a
    #: ``[[routes]]`` entry with a ``resource``: the policy checks the resource).
    pattern: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether a request to ``path`` with ``method`` is this route's."""
        if self.methods and method not in self.methods and not (
            method == "HEAD" and "GET" in self.methods
        ):
            return False
        return key_match2(path, self.pattern or self.object)

    @property
    def specificity(self) -> tuple[int, int, int]:
        """More literal segments first, then fewer parameters, a trailing ``*`` last."""
        segs = self.object.split("/")
        params = sum(1 for s in segs if s.startswith(":"))
        star = 1 if self.object.endswith("*") else 0
        return (-star, len(segs) - params - star, -params)


def _unwrap(app: Any) -> Any:
    for _ in range(10):
        if hasattr(app, "routes") or hasattr(app, "url_map"):
            return app
        inner = getattr(app, "app", None)
        if inner is None:
            return app
        app = inner
    return app


def _starlette_routes(routes: Iterable[Any], prefix: str, out: list[RouteTemplate]) -> None:
    for route in routes:
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue  # Host routes and other matchers: not a path template
        sub = getattr(route, "routes", None)
        if sub is not None and hasattr(route, "app") and not hasattr(route, "endpoint"):
            # A Mount: its own routes, else everything below it.
            if sub:
                _starlette_routes(sub, prefix + path, out)
            else:
                obj = keymatch2_object(prefix + path.rstrip("/") + "/{path:path}")
                if obj is not None:
                    out.append(RouteTemplate(source=prefix + path + "/...", object=obj))
            continue
        full = prefix + path
        obj = keymatch2_object(full, style="starlette")
        if obj is None:
            continue
        methods = getattr(route, "methods", None)
        out.append(RouteTemplate(source=full, object=obj,
                                 methods=frozenset(methods) if methods else frozenset()))


def routes_from_app(app: Any) -> list[RouteTemplate]:
    """The route templates of a FastAPI/Starlette app (``app.routes``) or a Flask app
    (``app.url_map``), in the app's order."""
    app = _unwrap(app)
    out: list[RouteTemplate] = []
    url_map = getattr(app, "url_map", None)
    if url_map is not None and hasattr(url_map, "iter_rules"):
        for rule in url_map.iter_rules():
            obj = keymatch2_object(rule.rule, style="flask")
            if obj is not None:
                out.append(RouteTemplate(source=rule.rule, object=obj,
                                         methods=frozenset(rule.methods or ())))
        return out
    routes = getattr(app, "routes", None)
    if routes is None:
        from endpointsec.errors import ConfigurationError

        raise ConfigurationError(
            f"{type(app).__name__} has neither 'routes' (Starlette/FastAPI) nor 'url_map' "
            "(Flask): cannot read its route templates", key="--routes-from")
    _starlette_routes(routes, "", out)
    return out


def routes_from_config(routes: Sequence[Any]) -> list[RouteTemplate]:
    """The templates of ``[[routes]]`` entries (``Config.routes``); a route with a
    ``resource`` stands for that policy object."""
    out: list[RouteTemplate] = []
    for r in routes:
        req = r.requirements
        if req.public:
            continue
        obj = keymatch2_object(r.path, style="config")
        if obj is not None and req.resource:
            out.append(RouteTemplate(source=r.path, object=req.resource, pattern=obj,
                                     methods=frozenset(r.methods), action=req.action))
        elif obj is not None:
            out.append(RouteTemplate(source=r.path, object=obj, methods=frozenset(r.methods),
                                     action=req.action))
    return out
