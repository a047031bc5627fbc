from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from endpointsec.cli import main


def test_pki_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert main(["pki", "init", "--dir", str(d)]) == 1  # never silently replaces a CA
    assert main(["pki", "server", "--dir", str(d)]) == 0
    assert main(["pki", "client", "--dir", str(d), "--name", "orders",
                 "--spiffe-id", "spiffe://shop.local/ns/shop/sa/orders", "--ou", "admin"]) == 0
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    leaf = x509.load_pem_x509_certificates((d / "orders.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://shop.local/ns/shop/sa/orders"]
    # The files form a working TLS configuration.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(d / "server.pem", d / "server.key")
    ctx.load_cert_chain(d / "orders.pem", d / "orders.key")


def test_client_without_ca(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no CA"):
        main(["pki", "client", "--dir", str(tmp_path), "--name", "x"])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("web", "scheme is missing", id="not-a-uri"),
        pytest.param("https://shop.local/ns/shop/sa/web", "scheme is missing", id="https"),
        pytest.param("spiffe://Shop.local/web", "must be lowercase", id="uppercase-domain"),
        pytest.param("spiffe://shop.local/a/../b", "'..' segments", id="dot-segment"),
        pytest.param("spiffe://shop.local/web/", "trailing slash", id="trailing-slash"),
        pytest.param("spiffe://shop.local:8443/web", "port", id="port"),
    ],
)
def test_client_refuses_an_invalid_spiffe_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, reason: str) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["pki", "client", "--dir", str(d), "--name", "web", "--spiffe-id", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not a valid SPIFFE ID" in err and reason in err and "--uri-san" in err
    assert not (d / "web.pem").exists()


def test_client_takes_a_plain_uri_san_when_asked(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert main(["pki", "client", "--dir", str(d), "--name", "svc",
                 "--uri-san", "https://shop.local/svc", "--uri", "urn:example:svc"]) == 0
    leaf = x509.load_pem_x509_certificates((d / "svc.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://shop.local/svc", "urn:example:svc"]
