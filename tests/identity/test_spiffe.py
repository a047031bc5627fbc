"""SPIFFE ID parsing: a table of valid/invalid IDs and a property test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpointsec.errors import CertificateError
from endpointsec.identity.spiffe import SpiffeId, parse_spiffe_id, validate_trust_domain

VALID = [
    ("td-only", "spiffe://example.org", "example.org", ""),
    ("one-segment", "spiffe://example.org/workload", "example.org", "/workload"),
    ("k8s-style", "spiffe://example.org/ns/shop/sa/orders", "example.org", "/ns/shop/sa/orders"),
    ("td-chars", "spiffe://a-b_c.9/x", "a-b_c.9", "/x"),
    ("path-uppercase", "spiffe://example.org/Foo/BAR", "example.org", "/Foo/BAR"),
    ("path-dots-inside", "spiffe://example.org/a.b/...", "example.org", "/a.b/..."),
    ("path-dash-underscore", "spiffe://example.org/-_-", "example.org", "/-_-"),
    ("max-length", "spiffe://example.org/" + "a" * (2048 - 21), "example.org",
     "/" + "a" * (2048 - 21)),
]

INVALID = [
    ("empty", "", "empty"),
    ("no-scheme", "example.org/workload", "scheme"),
    ("http-scheme", "https://example.org/workload", "scheme"),
    ("uppercase-scheme", "SPIFFE://example.org/workload", "lowercase 'spiffe'"),
    ("mixed-scheme", "Spiffe://example.org", "lowercase 'spiffe'"),
    ("single-slash", "spiffe:/example.org", "scheme"),
    ("empty-td", "spiffe:///workload", "trust domain is missing"),
    ("empty-all", "spiffe://", "trust domain is missing"),
    ("uppercase-td", "spiffe://Example.org/w", "lowercase"),
    ("port", "spiffe://example.org:8080/w", "port"),
    ("userinfo", "spiffe://user@example.org/w", "userinfo"),
    ("userinfo-pass", "spiffe://user:pass@example.org/w", "port"),
    ("query", "spiffe://example.org/w?x=1", "query"),
    ("fragment", "spiffe://example.org/w#frag", "fragment"),
    ("td-percent", "spiffe://exa%6Dple.org/w", "percent"),
    ("path-percent", "spiffe://example.org/w%2Fx", "percent"),
    ("td-bad-char", "spiffe://exa mple.org", "trust domain characters"),
    ("td-unicode", "spiffe://exämple.org", "trust domain characters"),
    ("trailing-slash", "spiffe://example.org/", "trailing slash"),
    ("trailing-slash-path", "spiffe://example.org/w/", "trailing slash"),
    ("empty-segment", "spiffe://example.org//w", "empty segments"),
    ("dot-segment", "spiffe://example.org/./w", "'.' or '..'"),
    ("dotdot-segment", "spiffe://example.org/a/../b", "'.' or '..'"),
    ("dotdot-last", "spiffe://example.org/a/..", "'.' or '..'"),
    ("path-bad-char", "spiffe://example.org/w x", "path segment characters"),
    ("path-colon", "spiffe://example.org/w:x", "path segment characters"),
    ("path-unicode", "spiffe://example.org/wörk", "path segment characters"),
    ("too-long", "spiffe://example.org/" + "a" * (2048 - 20), "longer than 2048"),
    ("td-too-long", "spiffe://" + "a" * 256, "longer than 255"),
    ("not-a-string", b"spiffe://example.org", "must be a string"),
]


@pytest.mark.parametrize(("value", "td", "path"), [c[1:] for c in VALID],
                         ids=[c[0] for c in VALID])
def test_valid_ids(value: str, td: str, path: str) -> None:
    sid = parse_spiffe_id(value)
    assert sid == SpiffeId(trust_domain=td, path=path)
    assert str(sid) == value
    assert sid.member_of(td)


@pytest.mark.parametrize(("value", "message"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_ids(value: str, message: str) -> None:
    with pytest.raises(CertificateError, match="SPIFFE ID") as info:
        parse_spiffe_id(value)
    assert message in str(info.value)


def test_validate_trust_domain() -> None:
    assert validate_trust_domain("prod.example.org") == "prod.example.org"
    with pytest.raises(CertificateError, match="lowercase"):
        validate_trust_domain("Prod")


_ID_ALPHABET = st.sampled_from([*"spifeSPIF:/.-_%?#@aZ09 é\x00", "spiffe://", "//", ".."])


@given(st.text())
def test_any_text_parses_or_raises_certificate_error(value: str) -> None:
    try:
        sid = parse_spiffe_id(value)
    except CertificateError:
        return
    assert str(sid) == value


@given(st.lists(_ID_ALPHABET, max_size=30).map("".join))
def test_id_like_text_round_trips_or_raises(value: str) -> None:
    try:
        sid = parse_spiffe_id(value)
    except CertificateError:
        return
    # Whatever parses is canonical: printing and re-parsing gives the same ID.
    assert parse_spiffe_id(str(sid)) == sid
    assert str(sid) == value
    assert sid.trust_domain and sid.trust_domain == sid.trust_domain.lower()
    assert not sid.path.endswith("/")


@given(st.from_regex(r"spiffe://[a-z0-9._-]{1,20}(/[A-Za-z0-9._-]{1,8}){0,4}", fullmatch=True))
def test_generated_valid_ids_parse_unless_dot_segments(value: str) -> None:
    segments = value[len("spiffe://"):].split("/")[1:]
    if any(s in (".", "..") for s in segments):
        with pytest.raises(CertificateError):
            parse_spiffe_id(value)
    else:
        assert str(parse_spiffe_id(value)) == value
