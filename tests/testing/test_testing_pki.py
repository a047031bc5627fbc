"""The testing helpers take what `endpointsec pki` writes (PEM file paths or PEM text,
certificates and keys) and the positional forms users try first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from endpointsec import Config, ConfigurationError, WSGIMiddleware
from endpointsec.cli import main
from endpointsec.policy.enforcer import CasbinPolicy
from endpointsec.testing import (
    CertificateAuthority,
    IssuedCertificate,
    TokenIssuer,
    assert_allowed,
    assert_denied,
    cnf_thumbprint,
    evaluate,
    peer_identity,
    tls_extension,
    wsgi_client,
    wsgi_environ,
)

WEB = "spiffe://shop.local/ns/shop/sa/web"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA and a client certificate written by the command line."""
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d)]) == 0
    assert main(["pki", "client", "--dir", str(d), "--name", "web", "--spiffe-id", WEB]) == 0
    return d


def _forms(path: Path) -> dict[str, Any]:
    return {"path": path, "str-path": str(path), "pem-str": path.read_text(),
            "pem-bytes": path.read_bytes()}


FORMS = ["path", "str-path", "pem-str", "pem-bytes"]


def test_certificate_authority_loads_from_a_directory_or_pem(pki: Path) -> None:
    cert, key = pki / "ca.pem", pki / "ca.key"
    expected = CertificateAuthority.load(cert_path=cert, key_path=key).certificate
    for ca in (CertificateAuthority.load(pki), CertificateAuthority.load(str(pki)),
               CertificateAuthority.load(cert=cert.read_text(), key=key.read_bytes()),
               CertificateAuthority.load(cert=str(cert), key=str(key))):
        assert ca.certificate == expected
    # it still issues certificates that chain to the written CA
    issued = CertificateAuthority.load(pki).issue_client(WEB)
    assert issued.certificate.issuer == expected.subject


def test_certificate_authority_load_errors(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    CertificateAuthority.create().write(other)
    with pytest.raises(ValueError, match="does not belong"):
        CertificateAuthority.load(cert=pki / "ca.pem", key=other / "ca.key")
    with pytest.raises(ValueError, match="cannot read"):
        CertificateAuthority.load(tmp_path / "absent")
    with pytest.raises(TypeError, match="directory"):
        CertificateAuthority.load()
    with pytest.raises(ValueError, match="no PEM certificate"):
        CertificateAuthority.load(cert=pki / "ca.key", key=pki / "ca.key")


@pytest.mark.parametrize("form", FORMS)
def test_issued_certificate_loads(pki: Path, form: str) -> None:
    cert = _forms(pki / "web.pem")[form]
    key = _forms(pki / "web.key")[form]
    issued = IssuedCertificate.load(cert, key=key)
    assert peer_identity(issued).id == WEB
    if form in ("path", "str-path"):  # the key next to the certificate
        assert IssuedCertificate.load(cert).certificate == issued.certificate
    else:
        with pytest.raises(ValueError, match="key="):
            IssuedCertificate.load(cert)


def test_issued_certificate_refuses_a_foreign_key(pki: Path) -> None:
    main(["pki", "client", "--dir", str(pki), "--name", "other", "--spiffe-id", WEB + "2"])
    with pytest.raises(ValueError, match="does not belong"):
        IssuedCertificate.load(pki / "web.pem", key=pki / "other.key")


@pytest.mark.parametrize("form", FORMS)
def test_peer_may_be_a_pem_file_or_text(pki: Path, policy_file: Path, form: str) -> None:
    peer = _forms(pki / "web.pem")[form]
    assert peer_identity(peer).id == WEB
    policy_file.write_text(f"p, {WEB}, *, /orders/:id, GET, allow\n")
    policy = CasbinPolicy(policy=policy_file)
    assert_allowed(policy, path="/orders/1", peer=peer)
    assert_denied(policy, method="DELETE", path="/orders/1", peer=peer)


def test_peer_strings_are_still_principals(pki: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert peer_identity("dns:web").dns_sans == ("web",)
    with pytest.raises(ConfigurationError, match="is not a SPIFFE ID"):
        peer_identity("web.pem")  # no such file: not silently a principal either
    with pytest.raises(ConfigurationError, match="no PEM certificate"):
        peer_identity(pki / "web.key")


def test_thumbprint_and_token_binding_from_a_file(pki: Path) -> None:
    issued = IssuedCertificate.load(pki / "web.pem")
    assert cnf_thumbprint(pki / "web.pem") == cnf_thumbprint(issued)
    assert cnf_thumbprint((pki / "web.pem").read_text()) == cnf_thumbprint(issued)
    issuer = TokenIssuer()
    import jwt

    token = issuer.issue("alice", cnf_cert=pki / "web.pem")   # sub positional
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["cnf"] == {"x5t#S256": cnf_thumbprint(issued)}
    assert jwt.decode(issuer.issue(sub="bob"), options={"verify_signature": False})["sub"] \
        == "bob"


def test_issue_positional_names() -> None:
    ca = CertificateAuthority.create()
    assert peer_identity(ca.issue_client(WEB)).id == WEB
    assert peer_identity(ca.issue_client(spiffe_id=WEB)).id == WEB
    server = ca.issue_server("localhost")
    assert peer_identity(server).dns_sans == ("localhost",)


@pytest.mark.parametrize("form", FORMS)
def test_clients_take_pem_files(pki: Path, tmp_path: Path, form: str) -> None:
    cert = _forms(pki / "web.pem")[form]
    ext = tls_extension(cert)
    assert len(ext["client_cert_chain"]) == 1
    assert wsgi_environ(cert=cert)["SSL_CLIENT_VERIFY"] == "SUCCESS"
    # through the real middleware: verified against the CA `endpointsec pki` wrote
    (tmp_path / "policy.csv").write_text(f"p, {WEB}, *, /whoami, GET, allow\n")
    config = Config.from_mapping({
        "identity": {"sources": ["wsgi-environ"], "trust_bundles": [str(pki / "ca.pem")]},
        "policy": {"policy": str(tmp_path / "policy.csv")},
    })
    flask_app = Flask(__name__)

    @flask_app.get("/whoami")
    def whoami() -> str:
        return str(request.environ["endpointsec"].principal.peer.id)

    app = WSGIMiddleware(flask_app, config=config)
    assert wsgi_client(app, cert=cert).get("/whoami").text == WEB
    assert wsgi_client(app).get("/whoami").status_code == 401


# -- the request, positionally ---------------------------------------------------------

@pytest.fixture
def policy(policy_file: Path) -> CasbinPolicy:
    policy_file.write_text(f"p, {WEB}, *, /orders/:id, GET, allow\n")
    return CasbinPolicy(policy=policy_file)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {"path": "/orders/1"}), (("/orders/1",), {}), (("GET", "/orders/1"), {}),
     (("GET /orders/1",), {}), (("/orders/1",), {"method": "GET"}),
     (("GET",), {"path": "/orders/1"})],
    ids=["keywords", "path", "method-path", "request-line", "path-and-method-keyword",
         "method-and-path-keyword"],
)
def test_request_positionally(policy: CasbinPolicy, args: tuple[str, ...],
                              kwargs: dict[str, str]) -> None:
    assert_allowed(policy, *args, peer=WEB, **kwargs)
    assert evaluate(policy, *args, peer=WEB, **kwargs).allowed


def test_request_positionally_denied(policy: CasbinPolicy) -> None:
    assert_denied(policy, "DELETE", "/orders/1", peer=WEB, status=403)
    assert_denied(policy, "DELETE /orders/1", peer=WEB, status=403)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [(("GET", "/a"), {"method": "GET"}, "method is given twice"),
     (("/a",), {"path": "/a"}, "path is given twice"),
     ((), {}, "path is required"),
     (("GET", "/a", "x"), {}, "give the request as")],
    ids=["method-twice", "path-twice", "no-path", "too-many"],
)
def test_request_argument_errors(policy: CasbinPolicy, args: tuple[str, ...],
                                 kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        assert_allowed(policy, *args, peer=WEB, **kwargs)
