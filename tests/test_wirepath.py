"""Wire paths: the path that is authorized is the path the application routes.

For random wire paths made of the pieces that confuse path handling (dot segments,
empty segments, encoded and raw slashes and backslashes, encoded dots, double
encoding) and for every ``[policy.paths]`` option, the gatekeeper either refuses the
request (400) or authorizes a normalized path that decodes, segment for segment, to
the path Starlette routes on (uvicorn's ``scope["path"]``: the target percent-decoded
once) and that a real Starlette router and the route table resolve to the same route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from starlette.routing import Match, Route

from endpointsec.errors import PathError
from endpointsec.facts import Requirements
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.policy import CasbinPolicy, PathNormalizer, PathOptions
from endpointsec.routing import RouteTable
from endpointsec.wirepath import check_routed_path, quote_path, routed_path

#: Every valid [policy.paths] combination (decode and reject exclude each other).
OPTIONS = [
    PathOptions(merge_slashes=merge, backslash=backslash, **encoded)
    for merge in (True, False)
    for encoded in ({}, {"decode_encoded_slashes": True}, {"reject_encoded_slashes": True})
    for backslash in ("slash", "reject", "keep")
]

PIECES = ["/", "/", ".", "..", "%2F", "%2f", "%5C", "%5c", "\\", "%2e", "%2E", "%252F",
          "%252e", "a", "admin", "healthz", "%68", "pub", "x", "%20", ";"]

#: (Starlette route, route-table template): the same routes, in the same order.
ROUTES = [
    ("/healthz", "/healthz"),
    ("/admin/{rest:path}", "/admin/*"),
    ("/pub/{name}", "/pub/{name}"),
    ("/{anything:path}", "/*"),
]


async def _endpoint(request: Any) -> None:  # pragma: no cover - never called
    return None


STARLETTE = [Route(path, _endpoint, name=path) for path, _ in ROUTES]


@pytest.fixture(scope="module")
def gatekeepers(tmp_path_factory: pytest.TempPathFactory) -> dict[PathOptions, Gatekeeper]:
    policy_file: Path = tmp_path_factory.mktemp("wirepath") / "policy.csv"
    policy_file.write_text("p, role:x, *, /*, GET, allow\n", encoding="utf-8")
    table = RouteTable([(template, frozenset(), Requirements(resource=path))
                        for path, template in ROUTES])
    return {opts: Gatekeeper(policy=CasbinPolicy(policy=policy_file, paths=opts), routes=table)
            for opts in OPTIONS}


def _starlette_route(path: str) -> str | None:
    """The route a real Starlette router runs for ``scope["path"] == path``."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    for route in STARLETTE:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.name
    return None


@settings(max_examples=1500, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=8),
       options=st.sampled_from(OPTIONS))
@example(pieces=["admin", "%2F", "..", "%2F", "healthz"],
         options=PathOptions(decode_encoded_slashes=True))
@example(pieces=["%2F", "/", "%68", "ealthz"], options=PathOptions(decode_encoded_slashes=True))
@example(pieces=["admin", "/", "x", "%5C", "..", "%5C", "..", "%5C", "healthz"],
         options=PathOptions(decode_encoded_slashes=True))
@example(pieces=["admin", "\\", "x"], options=PathOptions(backslash="keep"))
def test_authorized_path_is_the_routed_path(gatekeepers: dict[PathOptions, Gatekeeper],
                                            pieces: list[str], options: PathOptions) -> None:
    raw = "/" + "".join(pieces)
    gk = gatekeepers[options]
    path, error, requirements = gk.route("GET", raw, wire=True)
    if error is not None:
        assert isinstance(error, PathError)  # a 400
        assert path is None
        event("refused (400)")
        return
    assert path is not None
    event("authorized")
    # What uvicorn puts in scope["path"] and Starlette routes on: decoded once.
    app_path = unquote(raw, errors="strict")
    assert [unquote(s) for s in path.split("/")] == app_path.split("/"), (raw, path)
    # The decoded path, handed over without raw_path (re-quoted, as the gatekeeper does),
    # normalizes to the same path, or is refused (a "\\" re-quoted as %5C meets
    # reject_encoded_slashes).
    normalizer = PathNormalizer(options=options)
    try:
        assert normalizer.normalize(quote_path(app_path)) == path, (raw, path)
    except PathError:
        assert options.reject_encoded_slashes and "\\" in app_path
    # The route table and a real Starlette router pick the same route.
    assert requirements.resource == _starlette_route(app_path), (raw, path, app_path)


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param("/a%2Fb?x=%2F", b"/a/b", id="query-cut"),
    pytest.param("/a%252Fb", b"/a%2Fb", id="decoded-once"),
    pytest.param("/caf\xc3\xa9", b"/caf\xc3\xa9", id="latin-1-wire-string"),
    pytest.param("/\u4e2d", "/\u4e2d".encode(), id="above-latin-1-as-utf-8"),
    pytest.param("/a%5Cb%2e", b"/a\\b.", id="backslash-and-dot"),
])
def test_routed_path(raw: str, expected: bytes) -> None:
    assert routed_path(raw) == expected


@pytest.mark.parametrize(("raw", "options", "reason"), [
    pytest.param("/admin%2F..%2Fhealthz", PathOptions(decode_encoded_slashes=True),
                 "dot segment", id="decoded-dot-segment"),
    pytest.param("/%2F/healthz", PathOptions(decode_encoded_slashes=True),
                 "empty segment", id="decoded-empty-segment"),
    pytest.param("/a%5Cb", PathOptions(decode_encoded_slashes=True),
                 "backslash", id="decoded-backslash-as-separator"),
    pytest.param("/a\\b", PathOptions(), "backslash", id="raw-backslash-as-separator"),
    pytest.param("/a%2Fb", PathOptions(), "encoded slash", id="kept-encoded-slash"),
])
def test_check_routed_path_reasons(raw: str, options: PathOptions, reason: str) -> None:
    error = check_routed_path(raw, PathNormalizer(options=options).normalize(raw))
    assert error is not None and reason in str(error)


@pytest.mark.parametrize(("raw", "options"), [
    pytest.param("/a%2Fb", PathOptions(decode_encoded_slashes=True), id="decoded-slash"),
    pytest.param("/a\\b", PathOptions(backslash="keep"), id="kept-backslash"),
    pytest.param("/a%5Cb", PathOptions(), id="kept-encoded-backslash"),
    pytest.param("//a", PathOptions(merge_slashes=False), id="unmerged-slashes"),
    pytest.param("/%41%3b", PathOptions(), id="escapes-rewritten"),
])
def test_check_routed_path_accepts_what_the_app_routes(raw: str, options: PathOptions) -> None:
    assert check_routed_path(raw, PathNormalizer(options=options).normalize(raw)) is None
