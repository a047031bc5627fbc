"""Route templates: which :class:`Requirements` apply to a normalized path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from endpointsec.errors import ConfigurationError
from endpointsec.facts import Requirements

__all__ = ["RouteTable", "compile_template"]

_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|:[A-Za-z_][A-Za-z0-9_]*")


def compile_template(template: str) -> re.Pattern[str]:
    """Compile a keyMatch2-style template.

    ``{name}`` and ``:name`` match exactly one non-empty segment; a trailing ``/*``
    matches everything below the prefix, ``/static/`` included, but **not** the bare
    prefix ``/static``: FastAPI, Starlette and Flask route ``/static`` to another
    handler than ``/static/{p:path}`` / ``/static/<path:p>`` (as Casbin's keyMatch2
    does not match it either). A ``*`` elsewhere matches within one segment. Everything
    else is literal.
    """
    if not template.startswith("/"):
        raise ConfigurationError(f"route template must start with '/': {template!r}")
    tail = ""
    body = template
    if body.endswith("/*"):
        body = body[:-2]
        tail = "/.*"
    out: list[str] = []
    pos = 0
    for m in _PARAM.finditer(body):
        out.append(_literal(body[pos : m.start()]))
        out.append("[^/]+")
        pos = m.end()
    out.append(_literal(body[pos:]))
    return re.compile("^" + "".join(out) + tail + "$")


def _literal(text: str) -> str:
    return re.escape(text).replace(r"\*", "[^/]*")


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: re.Pattern[str]
    methods: frozenset[str]
    requirements: Requirements
    template: str = ""


class RouteTable:
    """Ordered routes; the first match wins, no match gives the defaults."""

    def __init__(
        self,
        routes: Sequence[tuple[str, frozenset[str], Requirements]] = (),
        *,
        defaults: Requirements | None = None,
    ) -> None:
        self.defaults = defaults or Requirements()
        self._routes = tuple(
            _Route(compile_template(path), methods, req, path)
            for path, methods, req in routes
        )

    def match(self, method: str, path: str) -> Requirements:
        for route in self._routes:
            if route.methods and method not in route.methods and not (
                # HEAD is served by the GET handler: a GET route's rules apply to it.
                method == "HEAD" and "GET" in route.methods
            ):
                continue
            if route.pattern.match(path):
                return route.requirements
        return self.defaults

    def template_for(self, method: str, path: str) -> str | None:
        """The template of the route :meth:`match` picks (``None``: the defaults)."""
        for route in self._routes:
            if route.methods and method not in route.methods and not (
                method == "HEAD" and "GET" in route.methods
            ):
                continue
            if route.pattern.match(path):
                return route.template
        return None

    def with_routes(
        self, routes: Sequence[tuple[str, frozenset[str], Requirements]]
    ) -> RouteTable:
        """A new table with ``routes`` matched before this table's own routes."""
        table = RouteTable(routes, defaults=self.defaults)
        table._routes = table._routes + self._routes
        return table

    @property
    def any_requires_mtls(self) -> bool:
        from endpointsec.facts import MTLS

        reqs = [r.requirements for r in self._routes] + [self.defaults]
        return any(r.mtls is MTLS.REQUIRED and not r.public for r in reqs)
