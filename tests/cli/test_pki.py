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
