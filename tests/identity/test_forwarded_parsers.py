"""The header parsers of identity/forwarded_parsers.py: tables of real formats and
grammar edge cases, and one property test per parser (parses, or raises only
ForwardedCertificateError)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from endpointsec.errors import ForwardedCertificateError
from endpointsec.identity.forwarded_parsers import (
    MAX_HEADER_LENGTH,
    XfccElement,
    check_der,
    parse_base64_der,
    parse_escaped_pem,
    parse_sf_binary,
    parse_sf_binary_list,
    parse_traefik,
    parse_xfcc,
)
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

# One CA and two certificates for the whole module (key generation is the slow part).
_CA = CertificateAuthority.create(name="parsers root")
_INTER = _CA.intermediate()
_LEAF: IssuedCertificate = _INTER.issue_client(spiffe_id="spiffe://example.org/ns/a/sa/b")
LEAF_DER = _LEAF.der
LEAF_PEM = _LEAF.cert_pem.decode()
INTER_DER = _INTER.certificate.public_bytes(Encoding.DER)
CHAIN_PEM = _LEAF.chain_pem.decode()
LEAF_HASH = hashlib.sha256(LEAF_DER).hexdigest()


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def envoy_escape(pem: str) -> str:
    # Envoy URL-encodes the PEM (every reserved character, newlines as %0A).
    return quote(pem, safe="")


# -- XFCC: the examples of Envoy's documentation, verbatim ---------------------------

ENVOY_DOC_EXAMPLES = [
    pytest.param(
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a'
        '02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://test'
        'client.lyft.com',
        (XfccElement(
            by=("http://frontend.lyft.com",),
            hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
            subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
            uri=("http://testclient.lyft.com",),
        ),),
        id="one-client-uri-san",
    ),
    pytest.param(
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a'
        '02dd8de688;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba61d64253034'
        '43c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;URI=http://frontend.lyft.com',
        (
            XfccElement(
                by=("http://frontend.lyft.com",),
                hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
                uri=("http://testclient.lyft.com",),
            ),
            XfccElement(
                by=("http://backend.lyft.com",),
                hash="9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e",
                uri=("http://frontend.lyft.com",),
            ),
        ),
        id="two-hops",
    ),
    pytest.param(
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a'
        '02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://test'
        'client.lyft.com;DNS=lyft.com;DNS=www.lyft.com',
        (XfccElement(
            by=("http://frontend.lyft.com",),
            hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
            subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
            uri=("http://testclient.lyft.com",),
            dns=("lyft.com", "www.lyft.com"),
        ),),
        id="uri-and-dns-sans",
    ),
    pytest.param(
        'By=spiffe://cluster.local/ns/shop/sa/api;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425'
        '303443c0748a02dd8de688;Subject="";URI=spiffe://cluster.local/ns/shop/sa/web',
        (XfccElement(
            by=("spiffe://cluster.local/ns/shop/sa/api",),
            hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
            subject="",
            uri=("spiffe://cluster.local/ns/shop/sa/web",),
        ),),
        id="istio-sidecar-empty-subject",
    ),
]


@pytest.mark.parametrize(("value", "expected"), ENVOY_DOC_EXAMPLES)
def test_envoy_documentation_examples(value: str, expected: tuple[XfccElement, ...]) -> None:
    assert parse_xfcc(value) == expected


# -- XFCC grammar -------------------------------------------------------------------

XFCC_OK = [
    pytest.param("hash=" + "AB" * 32, XfccElement(hash="ab" * 32), id="keys-case-insensitive"),
    pytest.param('Subject="a\\"b,c;d=e"', XfccElement(subject='a"b,c;d=e'),
                 id="quoted-value-with-escapes-and-separators"),
    pytest.param('Subject="a\\\\b"', XfccElement(subject="a\\b"), id="escaped-backslash"),
    pytest.param("URI=", XfccElement(uri=("",)), id="empty-unquoted-value"),
    pytest.param("URI=a;URI=b", XfccElement(uri=("a", "b")), id="uri-repeats"),
    pytest.param("By=a;By=b", XfccElement(by=("a", "b")), id="by-repeats"),
    pytest.param("Foo=bar;URI=a", XfccElement(uri=("a",)), id="unknown-key-ignored"),
    pytest.param("  URI=a  ", XfccElement(uri=("a",)), id="outer-whitespace"),
    pytest.param(f'Cert="{envoy_escape(LEAF_PEM)}"', XfccElement(cert=LEAF_DER),
                 id="cert-quoted"),
    pytest.param(f"Cert={envoy_escape(LEAF_PEM)}", XfccElement(cert=LEAF_DER),
                 id="cert-unquoted"),
    pytest.param(f'Chain="{envoy_escape(CHAIN_PEM)}"', XfccElement(chain=(LEAF_DER, INTER_DER)),
                 id="chain-leaf-first"),
]


@pytest.mark.parametrize(("value", "expected"), XFCC_OK)
def test_xfcc_grammar_accepted(value: str, expected: XfccElement) -> None:
    assert parse_xfcc(value) == (expected,)


def test_xfcc_elements_after_list_whitespace() -> None:
    # Several header lines joined as an HTTP list: ", " between elements.
    assert parse_xfcc("URI=a, URI=b") == (XfccElement(uri=("a",)), XfccElement(uri=("b",)))


XFCC_BAD = [
    pytest.param("", "empty", id="empty"),
    pytest.param("URI", "without '='", id="no-equals"),
    pytest.param("=a", "not a token", id="empty-key"),
    pytest.param("U RI=a", "not a token", id="space-in-key"),
    pytest.param("URI=a,", "empty element", id="trailing-comma"),
    pytest.param("URI=a,,URI=b", "not a token", id="empty-element-in-middle"),
    pytest.param("URI=a;", "ends with ';'", id="trailing-semicolon"),
    pytest.param('Subject="abc', "not closed", id="unclosed-quote"),
    pytest.param('Subject="abc\\', "backslash", id="dangling-backslash"),
    pytest.param('Subject="a"b;URI=c', "other than", id="junk-after-quote"),
    pytest.param("URI=a=b", "must be quoted", id="unquoted-equals"),
    pytest.param('URI=a"b', "must be quoted", id="unquoted-quote"),
    pytest.param("Hash=abc", "hex SHA-256", id="short-hash"),
    pytest.param("Hash=" + "g" * 64, "hex SHA-256", id="non-hex-hash"),
    pytest.param(f"Hash={LEAF_HASH};hash={LEAF_HASH}", "repeats", id="repeated-hash"),
    pytest.param('Subject="a";Subject="b"', "repeats", id="repeated-subject"),
    pytest.param(f'Cert="{envoy_escape(LEAF_PEM)}";Cert="{envoy_escape(LEAF_PEM)}"',
                 "repeats", id="repeated-cert"),
    pytest.param(f'Cert="{envoy_escape(CHAIN_PEM)}"', "more than one", id="cert-with-two"),
    pytest.param('Cert="not-pem"', "outside the PEM", id="cert-not-pem"),
    pytest.param("x" * (MAX_HEADER_LENGTH + 1), "limit", id="too-long"),
]


@pytest.mark.parametrize(("value", "message"), XFCC_BAD)
def test_xfcc_grammar_refused(value: str, message: str) -> None:
    with pytest.raises(ForwardedCertificateError, match=message or None):
        parse_xfcc(value)


# -- URL-encoded PEM (nginx, ALB, XFCC Cert) ------------------------------------------

PEM_OK = [
    pytest.param(quote(LEAF_PEM, safe=""), (LEAF_DER,), id="nginx-escaped"),
    pytest.param(quote(LEAF_PEM, safe="+=/"), (LEAF_DER,), id="alb-plus-equals-slash-safe"),
    pytest.param(quote(CHAIN_PEM, safe="+=/"), (LEAF_DER, INTER_DER), id="alb-passthrough-chain"),
    pytest.param(quote(LEAF_PEM.replace("\n", "\r\n"), safe=""), (LEAF_DER,), id="crlf"),
]


@pytest.mark.parametrize(("value", "expected"), PEM_OK)
def test_escaped_pem_accepted(value: str, expected: tuple[bytes, ...]) -> None:
    assert parse_escaped_pem(value) == expected


def test_plus_is_never_a_space() -> None:
    # A '+' that a form decoder would turn into a space must stay a '+'.
    pem = LEAF_PEM
    assert "+" in pem or "/" in pem  # base64 of a key almost surely has one
    assert parse_escaped_pem(quote(pem, safe="+/=")) == (LEAF_DER,)


PEM_BAD = [
    pytest.param("", "no PEM", id="empty"),
    pytest.param(quote("junk" + LEAF_PEM, safe=""), "outside", id="leading-junk"),
    pytest.param(quote(LEAF_PEM + "junk", safe=""), "outside", id="trailing-junk"),
    pytest.param(quote(LEAF_PEM.replace("CERTIFICATE", "PRIVATE KEY"), safe=""), "outside the PEM",
                 id="other-block-type"),
    pytest.param(quote(LEAF_PEM[:200] + "\n-----END CERTIFICATE-----\n", safe=""), "",
                 id="truncated"),
    pytest.param("%ff%fe", "ASCII", id="not-ascii"),
    pytest.param(quote("-----BEGIN CERTIFICATE-----\nMIIB*\n-----END CERTIFICATE-----", safe=""),
                 "not base64", id="bad-base64-char"),
    pytest.param(quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", safe=""),
                 "not DER", id="base64-but-not-der"),
]


@pytest.mark.parametrize(("value", "message"), PEM_BAD)
def test_escaped_pem_refused(value: str, message: str) -> None:
    with pytest.raises(ForwardedCertificateError, match=message or None):
        parse_escaped_pem(value)


# -- base64 DER (HAProxy, Caddy) -------------------------------------------------------


def test_base64_der_accepted() -> None:
    assert parse_base64_der(b64(LEAF_DER)) == LEAF_DER


BASE64_BAD = [
    pytest.param("", "empty", id="empty"),
    pytest.param(b64(LEAF_DER)[:-4], "", id="truncated"),
    pytest.param(b64(LEAF_DER) + "," + b64(LEAF_DER), "not base64", id="two-joined-by-comma"),
    pytest.param(b64(LEAF_DER)[:-1], "", id="one-character-short"),
    pytest.param(b64(LEAF_DER + b"\x00"), "not DER", id="trailing-byte"),
    pytest.param(b64(b"\x30\x81\x05hello"), "non-minimal", id="non-minimal-length"),
    pytest.param(b64(b"\x31\x03abc"), "not DER", id="not-a-sequence"),
    pytest.param(quote(b64(LEAF_DER), safe=""), "not base64", id="url-escaped"),
]


@pytest.mark.parametrize(("value", "message"), BASE64_BAD)
def test_base64_der_refused(value: str, message: str) -> None:
    with pytest.raises(ForwardedCertificateError, match=message or None):
        parse_base64_der(value)


# -- Traefik ----------------------------------------------------------------------------

TRAEFIK_OK = [
    pytest.param(b64(LEAF_DER), (LEAF_DER,), id="v3-plain"),
    pytest.param(quote(b64(LEAF_DER), safe=""), (LEAF_DER,), id="v2-query-escaped"),
    pytest.param(f"{b64(LEAF_DER)},{b64(INTER_DER)}", (LEAF_DER, INTER_DER), id="chain"),
    pytest.param(quote(f"{b64(LEAF_DER)},{b64(INTER_DER)}", safe=""), (LEAF_DER, INTER_DER),
                 id="chain-escaped"),
]


@pytest.mark.parametrize(("value", "expected"), TRAEFIK_OK)
def test_traefik_accepted(value: str, expected: tuple[bytes, ...]) -> None:
    assert parse_traefik(value) == expected


@pytest.mark.parametrize("value", [
    pytest.param("", id="empty"),
    pytest.param(f"{b64(LEAF_DER)},", id="trailing-comma"),
    pytest.param("%zz", id="bad-escape-is-not-base64"),
])
def test_traefik_refused(value: str) -> None:
    with pytest.raises(ForwardedCertificateError):
        parse_traefik(value)


# -- RFC 9440 ---------------------------------------------------------------------------

SF_OK = [
    pytest.param(f":{b64(LEAF_DER)}:", LEAF_DER, id="padded"),
    pytest.param(f":{b64(LEAF_DER).rstrip('=')}:", LEAF_DER, id="unpadded-is-tolerated"),
]


@pytest.mark.parametrize(("value", "expected"), SF_OK)
def test_sf_binary_accepted(value: str, expected: bytes) -> None:
    assert parse_sf_binary(value) == expected


SF_BAD = [
    pytest.param(b64(LEAF_DER), "byte sequence", id="no-colons"),
    pytest.param(f":{b64(LEAF_DER)}:;a=1", "byte sequence", id="parameter"),
    pytest.param(f":{b64(LEAF_DER)}:, :{b64(LEAF_DER)}:", "several", id="a-list"),
    pytest.param("::", "empty", id="empty-sequence"),
    pytest.param(f":{base64.urlsafe_b64encode(LEAF_DER).decode()}:", "", id="urlsafe-alphabet"),
]


@pytest.mark.parametrize(("value", "message"), SF_BAD)
def test_sf_binary_refused(value: str, message: str) -> None:
    with pytest.raises(ForwardedCertificateError, match=message or None):
        parse_sf_binary(value)


def test_sf_binary_list() -> None:
    value = f":{b64(INTER_DER)}:, :{b64(LEAF_DER)}:"
    assert parse_sf_binary_list(value) == (INTER_DER, LEAF_DER)
    assert parse_sf_binary_list("") == ()
    with pytest.raises(ForwardedCertificateError):
        parse_sf_binary_list(f":{b64(INTER_DER)}:,")


def test_check_der_accepts_the_certificate_and_nothing_around_it() -> None:
    assert check_der(LEAF_DER) == LEAF_DER
    for bad in (b"", b"\x30", LEAF_DER[:-1], LEAF_DER + b"\x00", b"\x30\x80\x00\x00"):
        with pytest.raises(ForwardedCertificateError):
            check_der(bad)


# -- properties: parses, or raises only ForwardedCertificateError ---------------------

HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300
)
XFCC_ALPHABET = st.sampled_from(
    ['By=', 'Hash=', 'Cert=', 'Chain=', 'URI=', 'DNS=', 'Subject=', '"', '\\', ';', ',', '=',
     'a', ' ', '%0A', f'"{envoy_escape(LEAF_PEM)}"', LEAF_HASH]
)
XFCC_LIKE = st.lists(XFCC_ALPHABET, max_size=25).map("".join)


def _mutations(valid: str) -> st.SearchStrategy[str]:
    """The valid value with a slice cut out, or a character replaced or inserted."""
    n = len(valid)
    return st.one_of(
        st.tuples(st.integers(0, n), st.integers(0, n)).map(
            lambda ij: valid[: min(ij)] + valid[max(ij):]),
        st.tuples(st.integers(0, n), st.sampled_from(list(",;:=\"%+/ \\A0"))).map(
            lambda ic: valid[: ic[0]] + ic[1] + valid[ic[0]:]),
    )


def _parses_or_our_error(parser: object, value: str) -> None:
    with contextlib.suppress(ForwardedCertificateError):
        parser(value)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(HEADER_TEXT, XFCC_LIKE,
                       _mutations(f'By=a;Hash={LEAF_HASH};Cert="{envoy_escape(LEAF_PEM)}"')))
def test_property_xfcc(value: str) -> None:
    _parses_or_our_error(parse_xfcc, value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(HEADER_TEXT, _mutations(quote(CHAIN_PEM, safe="+=/"))))
def test_property_escaped_pem(value: str) -> None:
    _parses_or_our_error(parse_escaped_pem, value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(HEADER_TEXT, _mutations(b64(LEAF_DER)),
                       st.binary(max_size=64).map(lambda b: b64(b"\x30" + b))))
def test_property_base64_der(value: str) -> None:
    _parses_or_our_error(parse_base64_der, value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(HEADER_TEXT, _mutations(f"{b64(LEAF_DER)},{b64(INTER_DER)}")))
def test_property_traefik(value: str) -> None:
    _parses_or_our_error(parse_traefik, value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(HEADER_TEXT, _mutations(f":{b64(LEAF_DER)}:")))
def test_property_sf_binary(value: str) -> None:
    _parses_or_our_error(parse_sf_binary, value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(HEADER_TEXT, _mutations(f":{b64(LEAF_DER)}:, :{b64(INTER_DER)}:")))
def test_property_sf_binary_list(value: str) -> None:
    _parses_or_our_error(parse_sf_binary_list, value)


@given(der=st.binary(max_size=300))
def test_property_check_der(der: bytes) -> None:
    with contextlib.suppress(ForwardedCertificateError):
        assert check_der(der) == der
