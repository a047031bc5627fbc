"""Where tokens are read (BearerReader), as a table, plus a hypothesis property test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from endpointsec.errors import TokenError
from endpointsec.tokens import BearerReader

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"

H = list[tuple[bytes, bytes]]


def auth(value: str) -> H:
    return [(b"authorization", value.encode("latin-1"))]


# (headers, query, reader options, expected token or (error substring, oauth_error))
CASES: list[Any] = [
    pytest.param([], b"", {}, None, id="nothing"),
    pytest.param(auth(f"Bearer {TOKEN}"), b"", {}, TOKEN, id="bearer"),
    pytest.param(auth(f"bearer {TOKEN}"), b"", {}, TOKEN, id="scheme-case-insensitive"),
    pytest.param(auth(f"BEARER   {TOKEN}  "), b"", {}, TOKEN, id="extra-spaces"),
    pytest.param(auth("Bearer abc+/~-._=="), b"", {}, "abc+/~-._==", id="b64token-chars"),
    pytest.param(auth(f"Bearer {TOKEN}") * 2, b"", {},
                 ("more than one Authorization", "invalid_request"), id="two-headers"),
    pytest.param(auth(f"Bearer {TOKEN}, Bearer {TOKEN}"), b"", {},
                 ("more than one credential", "invalid_request"), id="folded-two-bearers"),
    pytest.param(auth("Basic dXNlcjpwYXNz"), b"", {}, ("other than Bearer", None),
                 id="basic-scheme"),
    pytest.param(auth("Digest username=x"), b"", {}, ("other than Bearer", None),
                 id="digest-scheme"),
    pytest.param(auth("Bearer"), b"", {}, ("empty", "invalid_token"), id="empty-token"),
    pytest.param(auth("Bearer    "), b"", {}, ("empty", "invalid_token"), id="blank-token"),
    pytest.param(auth(""), b"", {}, ("malformed", "invalid_request"), id="empty-header"),
    pytest.param(auth("Bearer a=b"), b"", {}, ("b64token", "invalid_token"),
                 id="equals-inside"),
    pytest.param(auth("Bearer a b"), b"", {}, ("b64token", "invalid_token"), id="two-words"),
    pytest.param(auth('Bearer "abc"'), b"", {}, ("b64token", "invalid_token"), id="quoted"),
    pytest.param([(b"authorization", b"Bearer ab\xffc")], b"", {},
                 ("b64token", "invalid_token"), id="non-ascii"),
    pytest.param(auth("Bearer " + "a" * 8193), b"", {}, ("longer than", "invalid_token"),
                 id="oversized"),
    pytest.param(auth("Bearer " + "a" * 20000), b"", {}, ("longer than", "invalid_token"),
                 id="oversized-header"),
    pytest.param([], f"access_token={TOKEN}".encode(), {}, None,
                 id="query-ignored-unless-configured"),
    pytest.param([], f"access_token={TOKEN}".encode(), {"query_param": "access_token"},
                 TOKEN, id="query-configured"),
    pytest.param([], f"access_token={TOKEN}&access_token=x".encode(),
                 {"query_param": "access_token"}, ("more than once", "invalid_request"),
                 id="query-twice"),
    pytest.param(auth(f"Bearer {TOKEN}"), b"access_token=x", {"query_param": "access_token"},
                 ("more than one place", "invalid_request"), id="header-and-query"),
    pytest.param([], b"access_token=", {"query_param": "access_token"},
                 ("empty", "invalid_token"), id="query-empty"),
    pytest.param([], b"access_token=a%20b", {"query_param": "access_token"},
                 ("b64token", "invalid_token"), id="query-space"),
    pytest.param([(b"cookie", f"a=1; at={TOKEN}".encode())], b"", {}, None,
                 id="cookie-ignored-unless-configured"),
    pytest.param([(b"cookie", f"a=1; at={TOKEN}".encode())], b"", {"cookie": "at"}, TOKEN,
                 id="cookie-configured"),
    pytest.param([(b"cookie", b"a=1"), (b"cookie", f"at={TOKEN}".encode())], b"",
                 {"cookie": "at"}, TOKEN, id="cookie-second-header"),
    pytest.param([(b"cookie", f"at={TOKEN}; at=x".encode())], b"", {"cookie": "at"},
                 ("more than once", "invalid_request"), id="cookie-twice"),
    pytest.param([*auth(f"Bearer {TOKEN}"), (b"cookie", f"at={TOKEN}".encode())], b"",
                 {"cookie": "at"}, ("more than one place", "invalid_request"),
                 id="header-and-cookie"),
    pytest.param([(b"cookie", b"at=")], b"", {"cookie": "at"}, ("empty", "invalid_token"),
                 id="cookie-empty"),
]


@pytest.mark.parametrize(("headers", "query", "options", "expected"), CASES)
def test_reader(headers: H, query: bytes, options: dict[str, Any], expected: Any) -> None:
    reader = BearerReader(**options)
    if expected is None or isinstance(expected, str):
        assert reader.read(headers, query) == expected
        return
    message, oauth_error = expected
    with pytest.raises(TokenError, match=message) as exc:
        reader.read(headers, query)
    assert exc.value.oauth_error == oauth_error
    assert exc.value.status_code == 401


header_names = st.sampled_from([b"authorization", b"cookie", b"x-other", b"Authorization"])
header_values = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda s, t: s + b" " + t,
              st.sampled_from([b"Bearer", b"bearer", b"Basic", b"", b"Bearer,"]),
              st.binary(max_size=100)),
)


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=4),
       query=st.binary(max_size=200))
def test_reader_property_returns_token_or_raises_token_error(headers: H, query: bytes) -> None:
    reader = BearerReader(max_token_bytes=512, cookie="at", query_param="access_token")
    try:
        token = reader.read(headers, query)
    except TokenError:
        return
    if token is not None:
        assert isinstance(token, str) and 0 < len(token) <= 512
        assert all(c.isalnum() or c in "-._~+/=" for c in token)
