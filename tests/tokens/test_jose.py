"""The JWS parser: strict base64url and header rules, and a hypothesis property test."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokens_helpers import Signer, b64, default_claims

from endpointsec.errors import TokenError
from endpointsec.tokens import JWTVerifier
from endpointsec.tokens.jose import decode_b64url, parse_jws


@pytest.mark.parametrize(("segment", "ok"), [
    ("", True), ("Zm9v", True), ("Zm8", True), ("Zg", True),
    ("Zh", False),  # unused bits set: not canonical
    ("Zm9v=", False), ("Zm 9v", False), ("Zm+v", False), ("Zm/v", False), ("Z", False),
    ("Zm9v\n", False), ("Zm9vé", False),
])
def test_decode_b64url(segment: str, ok: bool) -> None:
    if ok:
        assert isinstance(decode_b64url(segment, "x"), bytes)
    else:
        with pytest.raises(TokenError):
            decode_b64url(segment, "x")


def _tok(header: Any, payload: bytes = b"{}", sig: bytes = b"s") -> str:
    h = header if isinstance(header, str) else json.dumps(header)
    return f"{b64(h.encode())}.{b64(payload)}.{b64(sig)}"


@pytest.mark.parametrize(("token", "error"), [
    pytest.param("a.b", "three segments", id="two-segments"),
    pytest.param("a.b.c.d", "three segments", id="four-segments"),
    pytest.param("a.b.c.d.e", "JWE", id="five-segments-jwe"),
    pytest.param(".e30.cw", "no header", id="empty-header"),
    pytest.param(_tok("[]"), "not a JSON object", id="header-array"),
    pytest.param(_tok("{"), "not JSON", id="header-broken-json"),
    pytest.param(_tok({"typ": "JWT"}), "no 'alg'", id="header-no-alg"),
    pytest.param(_tok({"alg": 1}), "no 'alg'", id="header-alg-number"),
    pytest.param(_tok({"alg": "RS256"}, sig=b""), "no signature", id="no-signature"),
    pytest.param(_tok({"alg": "RS256", "kid": 1}), "kid", id="kid-number"),
    pytest.param(_tok({"alg": "RS256", "cty": 5}), "nested", id="cty-number"),
    pytest.param("é" * 10, "non-ASCII", id="non-ascii"),
    pytest.param(b64(b"\xff\xfe") + ".e30.cw", "not JSON", id="header-not-utf8"),
])
def test_parse_jws_rejects(token: str, error: str) -> None:
    with pytest.raises(TokenError, match=error):
        parse_jws(token, max_bytes=8192)


def test_parse_jws_accepts_and_exposes_parts() -> None:
    parsed = parse_jws(_tok({"alg": "ES256", "kid": "k"}, b'{"a":1}'), max_bytes=8192)
    assert parsed.alg == "ES256" and parsed.kid == "k" and parsed.payload == b'{"a":1}'


def test_deeply_nested_json_header() -> None:
    with pytest.raises(TokenError):
        parse_jws(_tok("[" * 5000 + "]" * 5000), max_bytes=100000)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_parse_jws_property_text(token: str) -> None:
    with contextlib.suppress(TokenError):
        parse_jws(token, max_bytes=8192)


segments = st.one_of(st.binary(max_size=60).map(b64), st.text(max_size=20))
headers = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "b64", "cty", "jku", "enc", "x"]),
    st.one_of(st.sampled_from(["RS256", "none", "ES256", "JWT", "HS256", ""]), st.integers(),
              st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
    max_size=5,
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers, payload=st.one_of(st.binary(max_size=80), st.dictionaries(
    st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "cnf", "roles", "scope"]),
    st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.booleans(), st.none(),
              st.lists(st.text(max_size=5), max_size=3)), max_size=8)),
    sig=segments)
def test_verifier_property_structured(verifier: JWTVerifier, header: dict[str, Any],
                                      payload: Any, sig: str) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    token = f"{b64(json.dumps(header).encode())}.{b64(raw)}.{sig}"
    try:
        verifier.verify(token)
    except TokenError:
        return
    raise AssertionError("an unsigned random token verified")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=st.dictionaries(
    st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "cnf", "roles", "scope"]),
    st.one_of(st.text(max_size=10), st.integers(), st.floats(allow_nan=False),
              st.booleans(), st.none(), st.lists(st.text(max_size=5), max_size=3),
              st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2)),
    max_size=9))
def test_verifier_property_signed_claims(verifier: JWTVerifier, rsa_key: Signer,
                                         claims: dict[str, Any]) -> None:
    """Correctly signed tokens with arbitrary claims: verify, or raise only TokenError."""
    body = {**default_claims(), **claims}
    try:
        p = verifier.verify(rsa_key.sign(body))
    except TokenError:
        return
    assert p.subject == body["sub"] and p.issuer == body["iss"]
