"""Route templates: each matches exactly the paths the frameworks route to it."""

from __future__ import annotations

import pytest

from endpointsec.errors import ConfigurationError
from endpointsec.facts import Requirements
from endpointsec.routing import RouteTable, compile_template

CASES = [
    # (template, path, matches)
    ("/static/*", "/static/app.css", True),
    ("/static/*", "/static/css/app.css", True),
    ("/static/*", "/static/", True),
    ("/static/*", "/static", False),  # frameworks route the bare prefix elsewhere
    ("/static/*", "/staticx/a", False),
    ("/*", "/", True),
    ("/*", "/anything/below", True),
    ("/orders/{id}", "/orders/42", True),
    ("/orders/:id", "/orders/42", True),
    ("/orders/{id}", "/orders/", False),
    ("/orders/{id}", "/orders/42/items", False),
    ("/files/*.txt", "/files/a.txt", True),
    ("/files/*.txt", "/files/a/b.txt", False),
    ("/healthz", "/healthz", True),
    ("/healthz", "/healthz/", False),
    ("/a.b", "/axb", False),  # a route template is literal, not a regex
]


@pytest.mark.parametrize(("template", "path", "matches"), CASES,
                         ids=[f"{t}~{p}" for t, p, _ in CASES])
def test_compile_template(template: str, path: str, matches: bool) -> None:
    assert bool(compile_template(template).match(path)) is matches


def test_template_must_start_with_a_slash() -> None:
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        compile_template("static/*")


def test_bare_prefix_falls_through_to_its_own_route() -> None:
    public, private = Requirements(public=True), Requirements(roles=frozenset({"admin"}))
    table = RouteTable([("/static/*", frozenset(), public), ("/static", frozenset(), private)])
    assert table.match("GET", "/static/app.css") is public
    assert table.match("GET", "/static") is private
    assert table.match("GET", "/other") is table.defaults
