"""Server-provided certificate sources, driven by tables of scopes and environs."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from identity_support import Pki

from endpointsec.errors import CertificateError
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import (
    ASGITLSSource,
    GunicornSource,
    WSGIEnvironSource,
    build_server_sources,
)
from endpointsec.protocols import CertificateSource

SID = "spiffe://example.org/a"


@pytest.fixture(scope="module")
def certs(pki: Pki) -> dict[str, Any]:
    leaf = pki.intermediate.issue_client(spiffe_id=SID)
    inter = pki.intermediate.certificate
    return {
        "leaf_pem": leaf.cert_pem.decode(),
        "leaf_der": leaf.der,
        "inter_pem": inter.public_bytes(serialization.Encoding.PEM).decode(),
        "inter_der": inter.public_bytes(serialization.Encoding.DER),
    }


def _tls(**kw: Any) -> dict[str, Any]:
    return {"type": "http", "extensions": {"tls": kw}}


def test_build_server_sources() -> None:
    sources = build_server_sources(IdentityConfig(sources=("gunicorn", "asgi-tls")))
    assert [s.name for s in sources] == ["gunicorn", "asgi-tls"]
    assert all(isinstance(s, CertificateSource) for s in sources)
    assert build_server_sources(IdentityConfig()) == []


# Each case: id, scope builder, expected (leaf key, intermediate keys, upstream_verified)
ASGI_OK = [
    ("spec-0.2-full", lambda c: _tls(server_cert=None, client_cert_chain=[c["leaf_pem"],
                                     c["inter_pem"]], client_cert_name="CN=x",
                                     client_cert_error=None, tls_version=0x0304,
                                     cipher_suite=0x1301),
     ("leaf_der", ["inter_der"], None)),
    ("chain-of-one", lambda c: _tls(client_cert_chain=[c["leaf_pem"]]), ("leaf_der", [], None)),
    ("only-chain-key", lambda c: _tls(client_cert_chain=[c["leaf_pem"], c["inter_pem"]]),
     ("leaf_der", ["inter_der"], None)),
    ("spec-version-key", lambda c: _tls(spec_version="0.2", client_cert_chain=[c["leaf_pem"]]),
     ("leaf_der", [], None)),
    ("der-client-cert", lambda c: _tls(client_cert=c["leaf_der"]), ("leaf_der", [], None)),
    ("der-with-empty-chain", lambda c: _tls(client_cert_chain=[], client_cert=c["leaf_der"]),
     ("leaf_der", [], None)),
    ("tuple-chain", lambda c: _tls(client_cert_chain=(c["leaf_pem"],)), ("leaf_der", [], None)),
    ("bytes-pem", lambda c: _tls(client_cert_chain=[c["leaf_pem"].encode()]),
     ("leaf_der", [], None)),
    ("one-string-two-certs", lambda c: _tls(client_cert_chain=c["leaf_pem"] + c["inter_pem"]),
     ("leaf_der", ["inter_der"], None)),
    ("error-reported", lambda c: _tls(client_cert_chain=[c["leaf_pem"]],
                                      client_cert_error="unable to verify"),
     ("leaf_der", [], False)),
    ("other-extensions-kept", lambda c: {"extensions": {"http.response.trailers": {},
                                                        "tls": {"client_cert_chain":
                                                                [c["leaf_pem"]]}}},
     ("leaf_der", [], None)),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in ASGI_OK],
                         ids=[c[0] for c in ASGI_OK])
def test_asgi_tls_presents(certs: dict[str, Any], build: Any, expected: Any) -> None:
    p = ASGITLSSource().from_asgi(build(certs))
    assert p is not None
    leaf, inters, upstream = expected
    assert p.leaf == certs[leaf]
    assert list(p.intermediates) == [certs[k] for k in inters]
    assert p.upstream_verified is upstream
    assert p.source == "asgi-tls"


ASGI_NONE = [
    ("no-extensions", {"type": "http"}),
    ("extensions-none", {"type": "http", "extensions": None}),
    ("no-tls", {"type": "http", "extensions": {"http.response.trailers": {}}}),
    ("tls-none", {"type": "http", "extensions": {"tls": None}}),
    ("empty-chain", _tls(client_cert_chain=[])),
    ("chain-none", _tls(client_cert_chain=None, client_cert_name=None)),
    ("empty-der", _tls(client_cert=b"")),
    ("tls-without-keys", _tls()),
]


@pytest.mark.parametrize("scope", [c[1] for c in ASGI_NONE], ids=[c[0] for c in ASGI_NONE])
def test_asgi_tls_nothing_presented(scope: dict[str, Any]) -> None:
    assert ASGITLSSource().from_asgi(scope) is None


ASGI_BAD = [
    ("tls-not-mapping", {"extensions": {"tls": "x"}}, "not a mapping"),
    ("chain-not-list", _tls(client_cert_chain=42), "not a list"),
    ("chain-item-not-str", _tls(client_cert_chain=[42]), "PEM strings"),
    ("garbage-pem", _tls(client_cert_chain=["garbage"]), "no PEM CERTIFICATE"),
    ("bad-base64", _tls(client_cert_chain=[
        "-----BEGIN CERTIFICATE-----\n***\n-----END CERTIFICATE-----"]), "base64"),
    ("der-not-bytes", _tls(client_cert="abc"), "DER bytes"),
    ("chain-too-long", _tls(client_cert_chain=["x"] * 17), "more than 16"),
]


@pytest.mark.parametrize(("scope", "message"), [c[1:] for c in ASGI_BAD],
                         ids=[c[0] for c in ASGI_BAD])
def test_asgi_tls_malformed(scope: dict[str, Any], message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        ASGITLSSource().from_asgi(scope)


def test_asgi_source_ignores_wsgi_and_scrub_is_a_no_op(certs: dict[str, Any]) -> None:
    scope = _tls(client_cert_chain=[certs["leaf_pem"]])
    src = ASGITLSSource()
    assert src.from_wsgi({"SSL_CLIENT_CERT": certs["leaf_pem"]}) is None
    before = repr(scope)
    src.scrub_asgi(scope)
    assert repr(scope) == before


# -- WSGI environ --------------------------------------------------------------------------

WSGI_OK = [
    ("werkzeug-leaf", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"]}, ("leaf_der", [], None)),
    ("mod-ssl-success", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                   "SSL_CLIENT_VERIFY": "SUCCESS",
                                   "SSL_CLIENT_CERT_CHAIN_0": c["inter_pem"]},
     ("leaf_der", ["inter_der"], True)),
    ("chain-stops-at-gap", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                      "SSL_CLIENT_CERT_CHAIN_0": c["inter_pem"],
                                      "SSL_CLIENT_CERT_CHAIN_2": c["inter_pem"]},
     ("leaf_der", ["inter_der"], None)),
    ("verify-failed", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                 "SSL_CLIENT_VERIFY": "FAILED:certificate has expired"},
     ("leaf_der", [], False)),
    ("verify-generous", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                   "SSL_CLIENT_VERIFY": "GENEROUS"},
     ("leaf_der", [], False)),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in WSGI_OK],
                         ids=[c[0] for c in WSGI_OK])
def test_wsgi_environ_presents(certs: dict[str, Any], build: Any, expected: Any) -> None:
    p = WSGIEnvironSource().from_wsgi(build(certs))
    assert p is not None
    leaf, inters, upstream = expected
    assert p.leaf == certs[leaf]
    assert list(p.intermediates) == [certs[k] for k in inters]
    assert p.upstream_verified is upstream
    assert p.source == "wsgi-environ"


WSGI_NONE = [
    ("absent", lambda c: {}),
    ("empty", lambda c: {"SSL_CLIENT_CERT": ""}),
    ("mod-ssl-null", lambda c: {"SSL_CLIENT_CERT": "(null)"}),
    ("verify-none", lambda c: {"SSL_CLIENT_VERIFY": "NONE"}),
    ("verify-none-with-cert", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                         "SSL_CLIENT_VERIFY": "NONE"}),
]


@pytest.mark.parametrize("build", [c[1] for c in WSGI_NONE], ids=[c[0] for c in WSGI_NONE])
def test_wsgi_environ_nothing_presented(certs: dict[str, Any], build: Any) -> None:
    assert WSGIEnvironSource().from_wsgi(build(certs)) is None


WSGI_BAD = [
    ("garbage", lambda c: {"SSL_CLIENT_CERT": "garbage"}, "no PEM CERTIFICATE"),
    ("two-certs", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"] + c["inter_pem"]},
     "exactly one"),
    ("not-a-string", lambda c: {"SSL_CLIENT_CERT": 42}, "not a PEM string"),
    ("bad-chain-item", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                  "SSL_CLIENT_CERT_CHAIN_0": "junk"}, "no PEM CERTIFICATE"),
    ("chain-not-string", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                    "SSL_CLIENT_CERT_CHAIN_0": 1}, "not a PEM string"),
    ("chain-too-long", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"],
                                  **{f"SSL_CLIENT_CERT_CHAIN_{i}": c["inter_pem"]
                                     for i in range(17)}}, "more than 16"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in WSGI_BAD],
                         ids=[c[0] for c in WSGI_BAD])
def test_wsgi_environ_malformed(certs: dict[str, Any], build: Any, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        WSGIEnvironSource().from_wsgi(build(certs))


# -- gunicorn --------------------------------------------------------------------------------


class FakeTLSSocket:
    def __init__(self, der: object = None, error: Exception | None = None) -> None:
        self.der = der
        self.error = error

    def getpeercert(self, binary_form: bool = False) -> object:
        assert binary_form
        if self.error is not None:
            raise self.error
        return self.der


class PlainSocket:
    pass


GUNICORN = [
    ("no-socket", lambda c: {}, None),
    ("plain-socket", lambda c: {"gunicorn.socket": PlainSocket()}, None),
    ("no-peer-cert", lambda c: {"gunicorn.socket": FakeTLSSocket(None)}, None),
    ("peer-cert", lambda c: {"gunicorn.socket": FakeTLSSocket(c["leaf_der"])}, "leaf_der"),
    ("handshake-pending", lambda c: {"gunicorn.socket": FakeTLSSocket(error=ValueError())},
     "handshake"),
    ("not-bytes", lambda c: {"gunicorn.socket": FakeTLSSocket({"subject": ()})}, "non-DER"),
    # A bare SSL_CLIENT_CERT is not evidence for the gunicorn source.
    ("ignores-environ-cert", lambda c: {"SSL_CLIENT_CERT": c["leaf_pem"]}, None),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in GUNICORN],
                         ids=[c[0] for c in GUNICORN])
def test_gunicorn_source(certs: dict[str, Any], build: Any, expected: str | None) -> None:
    environ = build(certs)
    src = GunicornSource()
    if expected is None:
        assert src.from_wsgi(environ) is None
    elif expected in certs:
        p = src.from_wsgi(environ)
        assert p is not None
        assert p.leaf == certs[expected]
        assert p.intermediates == ()
        assert p.source == "gunicorn"
    else:
        with pytest.raises(CertificateError, match=expected):
            src.from_wsgi(environ)
    assert src.from_asgi({"type": "http"}) is None
    before = dict(environ)
    src.scrub_wsgi(environ)
    assert environ == before


def test_pem_from_ssl_module_is_accepted(certs: dict[str, Any]) -> None:
    """werkzeug builds SSL_CLIENT_CERT with ssl.DER_cert_to_PEM_cert."""
    pem = ssl.DER_cert_to_PEM_cert(certs["leaf_der"])
    p = WSGIEnvironSource().from_wsgi({"SSL_CLIENT_CERT": pem})
    assert p is not None
    assert p.leaf == certs["leaf_der"]


def test_asgi_memo_returns_the_same_presentation_for_the_same_chain(
        certs: dict[str, Any]) -> None:
    src = ASGITLSSource()
    chain = [certs["leaf_pem"], certs["inter_pem"]]
    first = src.from_asgi(_tls(client_cert_chain=list(chain), client_cert_error=None))
    again = src.from_asgi(_tls(client_cert_chain=list(chain)))
    assert first is not None
    assert again is first
    # The memo never hides a reported error, nor serves another chain.
    refused = src.from_asgi(_tls(client_cert_chain=list(chain), client_cert_error="bad"))
    assert refused is not None
    assert refused.upstream_verified is False
    other = src.from_asgi(_tls(client_cert_chain=[certs["inter_pem"]]))
    assert other is not None
    assert other.leaf == certs["inter_der"]
    with pytest.raises(CertificateError, match="no PEM CERTIFICATE"):
        src.from_asgi(_tls(client_cert_chain=["junk"]))
    with pytest.raises(CertificateError, match="PEM strings"):
        src.from_asgi(_tls(client_cert_chain=[["unhashable"]]))


def test_wsgi_memo(certs: dict[str, Any]) -> None:
    src = WSGIEnvironSource()
    a = src.from_wsgi({"SSL_CLIENT_CERT": certs["leaf_pem"]})
    b = src.from_wsgi({"SSL_CLIENT_CERT": certs["leaf_pem"], "SSL_CLIENT_VERIFY": "FAILED"})
    assert a is not None
    assert b is not None
    assert a.leaf == b.leaf == certs["leaf_der"]
    assert b.upstream_verified is False


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from(["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                     "SUCCESS", "NONE", "(null)", ""]),
)
_TLS_KEYS = st.sampled_from(["client_cert_chain", "client_cert", "client_cert_error",
                             "client_cert_name", "spec_version", "tls_version"])


@given(st.dictionaries(_TLS_KEYS, st.one_of(_VALUES, st.lists(_VALUES, max_size=3)),
                       max_size=4))
def test_asgi_tls_parses_or_raises_certificate_error(tls: dict[str, Any]) -> None:
    try:
        p = ASGITLSSource().from_asgi({"type": "http", "extensions": {"tls": tls}})
    except CertificateError:
        return
    assert p is None or (isinstance(p.leaf, bytes) and p.leaf)


@given(st.dictionaries(st.sampled_from(["SSL_CLIENT_CERT", "SSL_CLIENT_VERIFY",
                                        "SSL_CLIENT_CERT_CHAIN_0", "SSL_CLIENT_CERT_CHAIN_1"]),
                       _VALUES, max_size=4))
def test_wsgi_environ_parses_or_raises_certificate_error(environ: dict[str, Any]) -> None:
    try:
        p = WSGIEnvironSource().from_wsgi(environ)
    except CertificateError:
        return
    assert p is None or (isinstance(p.leaf, bytes) and p.leaf)
