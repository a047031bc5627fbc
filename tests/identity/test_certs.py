"""Reading certificates and building a PeerIdentity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from identity_support import Pki

from endpointsec.errors import CertificateError
from endpointsec.identity.certs import (
    load_certificates,
    load_der_certificate,
    peer_identity,
    pem_to_der,
    spiffe_id_of,
)
from endpointsec.identity.spiffe import SpiffeId

GARBAGE = [
    ("empty-bytes", b"", "empty"),
    ("random-bytes", b"\x30\x82\x01\x00garbage", "not valid DER"),
    ("text", b"hello world", "not valid DER"),
    ("pem-no-body", b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "empty"),
    ("pem-bad-base64", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
     "base64"),
    ("pem-valid-base64-not-der",
     b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
     "not valid DER"),
    ("pem-other-type", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     "no PEM CERTIFICATE"),
    ("non-ascii-str", "-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----", "non-ASCII"),
    ("too-large", b"A" * (256 * 1024 + 1), "too large"),
]


@pytest.mark.parametrize(("data", "message"), [g[1:] for g in GARBAGE],
                         ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_certificate_error(data: bytes | str, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        load_certificates(data)


def test_wrong_type_is_a_certificate_error() -> None:
    with pytest.raises(CertificateError, match="bytes or str"):
        load_certificates(123)  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match="must be bytes"):
        load_der_certificate("abc")  # type: ignore[arg-type]


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_certificate_error(data: bytes) -> None:
    try:
        certs = load_certificates(data)
    except CertificateError:
        return
    assert certs


@given(st.text(max_size=200))
def test_any_pem_text_parses_or_raises_certificate_error(body: str) -> None:
    data = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    try:
        load_certificates(data)
    except CertificateError:
        return


def test_pem_der_and_chain(pki: Pki) -> None:
    leaf = pki.intermediate.issue_client(spiffe_id="spiffe://example.org/a")
    assert load_certificates(leaf.der)[0] == leaf.certificate
    assert load_certificates(leaf.cert_pem.decode())[0] == leaf.certificate
    chain = load_certificates(leaf.chain_pem)
    assert chain == [leaf.certificate, *leaf.intermediates]
    assert pem_to_der(leaf.chain_pem)[0] == leaf.der


def test_peer_identity_of_an_svid(pki: Pki) -> None:
    leaf = pki.ca.issue_client(spiffe_id="spiffe://example.org/ns/a", dns_names=["a.local"],
                               common_name="a")
    ident = peer_identity([leaf.certificate, pki.ca.certificate], source="s")
    assert ident.spiffe_id == SpiffeId(trust_domain="example.org", path="/ns/a")
    assert ident.id == "spiffe://example.org/ns/a"
    assert ident.subject == "CN=a"
    assert ident.fingerprint_sha256 == leaf.fingerprint_sha256
    assert ident.uri_sans == ("spiffe://example.org/ns/a",)
    assert ident.dns_sans == ("a.local",)
    assert ident.not_after == leaf.certificate.not_valid_after_utc
    assert ident.chain == (leaf.certificate, pki.ca.certificate)
    assert ident.source == "s"


def test_peer_identity_without_spiffe(pki: Pki) -> None:
    leaf = pki.ca.issue_client(uris=["https://svc.example"], dns_names=["svc.example"])
    ident = peer_identity([leaf.certificate])
    assert ident.spiffe_id is None
    assert ident.id == "uri:https://svc.example"
    dns_only = peer_identity([pki.ca.issue_client(dns_names=["b.example"]).certificate])
    assert dns_only.id == "dns:b.example"


def test_empty_chain() -> None:
    with pytest.raises(CertificateError, match="empty certificate chain"):
        peer_identity([])


SAN_RULES = [
    ("svid", ["spiffe://td/a"], False, "spiffe://td/a"),
    ("svid-required", ["spiffe://td/a"], True, "spiffe://td/a"),
    ("no-uri", [], False, None),
    ("https-uri", ["https://x"], False, None),
    ("two-non-spiffe", ["https://x", "https://y"], False, None),
    ("spiffe-and-other", ["spiffe://td/a", "https://x"], False,
     "exactly one URI SAN; the certificate has 2"),
    ("two-spiffe", ["spiffe://td/a", "spiffe://td/b"], False, "exactly one URI SAN"),
    ("uppercase-scheme-counts", ["SPIFFE://td/a", "https://x"], False, "exactly one URI SAN"),
    ("uppercase-scheme-alone", ["SPIFFE://td/a"], False, "lowercase"),
    ("required-no-uri", [], True, "has no URI SAN"),
    ("required-two-uris", ["https://x", "https://y"], True, "exactly one URI SAN"),
    ("required-not-spiffe", ["https://x"], True, "not spiffe://"),
    ("bad-spiffe", ["spiffe://td/a/"], False, "trailing slash"),
]


@pytest.mark.parametrize(("uris", "require", "expected"), [r[1:] for r in SAN_RULES],
                         ids=[r[0] for r in SAN_RULES])
def test_svid_uri_san_rules(uris: list[str], require: bool, expected: str | None) -> None:
    if expected is None:
        assert spiffe_id_of(uris, require_spiffe=require) is None
    elif expected.startswith("spiffe://"):
        assert str(spiffe_id_of(uris, require_spiffe=require)) == expected
    else:
        with pytest.raises(CertificateError, match=expected):
            spiffe_id_of(uris, require_spiffe=require)
