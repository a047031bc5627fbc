"""Principals built offline from what a test names: strings, certificates, claims."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpointsec import ConfigurationError, PeerIdentity, RequestPrincipal
from endpointsec.testing import (
    CertificateAuthority,
    cnf_thumbprint,
    peer_identity,
    request_principal,
)

FP = "ab" * 32


@pytest.mark.parametrize(
    ("peer", "expected_id"),
    [
        pytest.param("spiffe://example.org/ns/shop/sa/orders",
                     "spiffe://example.org/ns/shop/sa/orders", id="spiffe"),
        pytest.param("urn:example:service", "uri:urn:example:service", id="other-uri"),
        pytest.param("uri:urn:example:service", "uri:urn:example:service", id="uri-subject"),
        pytest.param("dns:orders.internal", "dns:orders.internal", id="dns"),
        pytest.param(f"sha256:{FP}", f"sha256:{FP}", id="fingerprint"),
    ],
)
def test_peer_string_keeps_its_principal(peer: str, expected_id: str) -> None:
    assert peer_identity(peer).id == expected_id


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param("orders", id="bare-name"),
        pytest.param("", id="empty"),
        pytest.param("spiffe://Example.org/x", id="uppercase-trust-domain"),
        pytest.param("spiffe://example.org/a//b", id="empty-segment"),
        pytest.param("sha256:xyz", id="bad-fingerprint"),
    ],
)
def test_bad_peer_string_is_a_configuration_error(peer: str) -> None:
    with pytest.raises(ConfigurationError):
        peer_identity(peer)


def test_peer_from_issued_certificate_reads_the_svid() -> None:
    ca = CertificateAuthority.create()
    cert = ca.intermediate().issue_client(spiffe_id="spiffe://example.org/ns/a/sa/b")
    identity = peer_identity(cert)
    assert identity.id == "spiffe://example.org/ns/a/sa/b"
    assert identity.spiffe_id is not None
    assert identity.fingerprint_sha256 == cert.fingerprint_sha256
    assert identity.not_after == cert.certificate.not_valid_after_utc
    assert len(identity.chain) == 2  # leaf and the intermediate
    assert peer_identity(cert.certificate).id == identity.id
    assert peer_identity(identity) is identity


def test_certificate_with_two_uris_is_not_an_svid() -> None:
    cert = CertificateAuthority.create().issue_client(
        spiffe_id="spiffe://example.org/a", uris=["https://example.org/b"])
    identity = peer_identity(cert)
    assert identity.spiffe_id is None
    # The first URI SAN, in the certificate namespace: never mistaken for an SVID.
    assert identity.id == "uri:spiffe://example.org/a"


def test_certificate_without_sans_is_identified_by_fingerprint() -> None:
    cert = CertificateAuthority.create().issue_client()
    assert peer_identity(cert).id == f"sha256:{cert.fingerprint_sha256}"


def test_claims_map_like_the_verifier() -> None:
    p = request_principal({
        "iss": "https://idp", "sub": "alice", "aud": "api", "roles": ["admin"],
        "scope": "orders.read orders.write", "scopes": ["extra"], "groups": "ops",
        "exp": dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "cnf": {"x5t#S256": "abc"},
    })
    assert p.id == "https://idp#alice"
    assert p.audience == ("api",)
    assert p.roles == frozenset({"admin"})
    assert p.scopes == frozenset({"orders.read", "orders.write", "extra"})
    assert p.groups == frozenset({"ops"})
    assert p.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert p.cnf_x5t_s256 == "abc"
    principal = RequestPrincipal(issuer="i", subject="s")
    assert request_principal(principal) is principal


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": "alice"}, id="no-iss"),
        pytest.param({"iss": "i", "sub": ""}, id="empty-sub"),
        pytest.param({"iss": "i", "sub": "s", "roles": [1]}, id="roles-not-strings"),
        pytest.param({"iss": "i", "sub": "s", "exp": "tomorrow"}, id="exp-string"),
        pytest.param({"iss": "i", "sub": "s", "exp": float("nan")}, id="exp-nan"),
        pytest.param({"iss": "i", "sub": "s", "exp": True}, id="exp-bool"),
        pytest.param({"iss": "i", "sub": "s", "cnf_x5t_s256": 5}, id="cnf-not-string"),
        pytest.param({"iss": "i", "sub": "s", "exp": dt.datetime(2030, 1, 1)}, id="naive-exp"),
    ],
)
def test_bad_claims_are_a_configuration_error(claims: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        request_principal(claims)


def test_cnf_thumbprint_is_base64url_sha256() -> None:
    import base64
    import hashlib

    cert = CertificateAuthority.create().issue_client()
    expected = base64.urlsafe_b64encode(hashlib.sha256(cert.der).digest()).rstrip(b"=").decode()
    assert cnf_thumbprint(cert) == expected == cnf_thumbprint(cert.certificate)


@given(st.text(max_size=80))
def test_peer_strings_parse_or_raise_our_error(text: str) -> None:
    try:
        identity = peer_identity(text)
    except ConfigurationError:
        return
    assert isinstance(identity, PeerIdentity)
    assert identity.id in (text, f"uri:{text}", f"sha256:{text[7:].lower()}")


_claim_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
                          st.lists(st.text(max_size=5), max_size=3),
                          st.lists(st.integers(), max_size=2))


@given(st.dictionaries(st.sampled_from(["iss", "sub", "aud", "roles", "scope", "scopes",
                                        "groups", "exp", "cnf", "cnf_x5t_s256", "x"]),
                       _claim_values))
def test_claims_parse_or_raise_our_error(claims: dict[str, Any]) -> None:
    try:
        principal = request_principal(claims)
    except ConfigurationError:
        return
    assert principal.issuer == claims["iss"]
    assert principal.subject == claims["sub"]
