"""``endpointsec explain``: one request from the command line, with the matched rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from endpointsec.cli import main
from endpointsec.testing import CertificateAuthority, TokenIssuer

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
IDP = "https://idp.example.com"

POLICY = f"""\
p, {ORDERS}, *, /orders/:id, GET, allow
p, role:admin, *, /orders/*, *, allow
p, role:admin, *, /orders/vault, *, deny
"""


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def _config(tmp_path: Path, *, ca: CertificateAuthority | None = None,
            tokens: str = "") -> Path:
    (tmp_path / "policy.csv").write_text(POLICY)
    identity = ""
    if ca is not None:
        ca.write_bundle(tmp_path / "ca.pem")
        identity = '[identity]\nsources = ["asgi-tls"]\ntrust_bundles = ["ca.pem"]\n'
    config = tmp_path / "endpointsec.toml"
    config.write_text(f'{identity}[policy]\npolicy = "policy.csv"\n'
                      '[defaults]\nmtls = "optional"\n'
                      '[[routes]]\npath = "/health"\npublic = true\n' + tokens)
    return config


def test_described_principal_allowed(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code = main(["explain", "--config", str(config), "--method", "DELETE",
                 "--path", "/orders/1", "--iss", IDP, "--sub", "alice", "--role", "admin"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        "request:      DELETE /orders/1",
        "normalized:   /orders/1",
        "requirements: mtls=optional token=optional",
        "peer:         - (none)",
        f"token:        {IDP}#alice (described, NOT verified)",
        "ALLOW 200 DELETE /orders/1",
        "  reason:   allowed by a rule for 'role:admin'",
        f"  subjects: {IDP}#alice, role:admin",
        "  rule:     p, role:admin, *, /orders/*, *, allow",
    ]


def test_denied_request_exits_1_with_the_deny_rule(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code = main(["explain", "--config", str(config), "--path", "/orders/vault",
                 "--iss", IDP, "--sub", "alice", "--role", "admin", "--domain", "shop"])
    out = capsys.readouterr().out
    assert code == 1
    assert "request:      GET /orders/vault (domain shop)" in out
    assert "DENY 403 GET /orders/vault" in out
    assert "rule:     p, role:admin, *, /orders/vault, *, deny" in out


def test_public_route_and_normalization(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["explain", "--config", str(config), "--path", "/%68ealth"]) == 0
    out = capsys.readouterr().out
    assert "normalized:   /health" in out
    assert "requirements: public" in out
    # a dot segment is refused before normalization, as the server refuses it
    assert main(["explain", "--config", str(config), "--path", "/x/../health"]) == 1
    out = capsys.readouterr().out
    assert "DENY 400" in out
    assert "dot segment" in out


def test_certificate_is_verified_against_the_trust_bundle(
    tmp_path: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, ca=ca)
    cert_path, _ = ca.issue_client(spiffe_id=ORDERS).write(tmp_path, "orders")
    assert main(["explain", "--config", str(config), "--path", "/orders/1",
                 "--cert", str(cert_path)]) == 0
    assert f"peer:         {ORDERS} (verified)" in capsys.readouterr().out

    stranger, _ = CertificateAuthority.create().issue_client(spiffe_id=ORDERS).write(
        tmp_path, "stranger")
    assert main(["explain", "--config", str(config), "--path", "/orders/1",
                 "--cert", str(stranger)]) == 1
    out = capsys.readouterr().out
    assert "peer:         - (rejected)" in out
    assert "DENY 401 GET /orders/1" in out
    assert "client certificate rejected" in out

    assert main(["explain", "--config", str(config), "--path", "/orders/1",
                 "--cert", str(stranger), "--no-verify"]) == 0
    assert f"peer:         {ORDERS} (read, NOT verified (--no-verify))" in capsys.readouterr().out


def test_certificate_without_trust_bundle_is_read_unverified(
    tmp_path: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    cert_path, _ = ca.issue_client(spiffe_id=ORDERS).write(tmp_path, "orders")
    assert main(["explain", "--config", str(config), "--path", "/orders/1",
                 "--cert", str(cert_path)]) == 0
    assert "(read, NOT verified (no [identity] trust bundles))" in capsys.readouterr().out


def test_token_is_verified_by_the_configured_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer = TokenIssuer()
    with issuer.serve():
        t = issuer.issuer_table()
        tokens = ("[[tokens.issuers]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in t.items()))
        config = _config(tmp_path, tokens=tokens)
        good = issuer.issue(sub="alice", roles=["admin"])
        assert main(["explain", "--config", str(config), "--method", "PUT",
                     "--path", "/orders/1", "--token", good]) == 0
        assert f"token:        {issuer.issuer}#alice (verified)" in capsys.readouterr().out
        forged = TokenIssuer(issuer=issuer.issuer).issue(sub="mallory", roles=["admin"])
        assert main(["explain", "--config", str(config), "--path", "/orders/1",
                     "--token", forged]) == 1
        out = capsys.readouterr().out
        assert "token:        - (rejected)" in out
        assert "DENY 401" in out and "bearer token rejected" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--token", "abc"], "no [tokens] issuers", id="token-without-issuers"),
        pytest.param(["--token", "abc", "--sub", "x"], "not both", id="token-and-sub"),
        pytest.param(["--sub", "alice"], "needs both --iss and --sub", id="sub-without-iss"),
        pytest.param(["--cert", "missing.pem"], "cannot read", id="missing-cert"),
        pytest.param(["--cert", "policy.csv"], "holds no PEM certificate", id="not-a-cert"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--config", str(config), "--path", "/orders/1", *args]) == 2
    assert message in capsys.readouterr().err


def test_invalid_configuration_exits_2(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "endpointsec.toml"
    config.write_text("[policy]\nallow_everything = true\n")
    assert main(["explain", "--config", str(config), "--path", "/"]) == 2
    assert "policy.allow_everything: unknown key" in capsys.readouterr().err


# -- explain agrees with the server ----------------------------------------------------

WIRE_PATHS = [
    pytest.param("/health/../orders/1", id="dot-dot"),
    pytest.param("/health/./x", id="dot"),
    pytest.param("/health/%2e%2e/orders/1", id="encoded-dot-dot"),
    pytest.param("/orders/1%2Fx", id="encoded-slash"),
    pytest.param("/orders\\1", id="backslash"),
    pytest.param("//orders/1", id="double-slash"),
    pytest.param("/health//x", id="double-slash-inside"),
    pytest.param("/orders/%00", id="nul"),
    pytest.param("/orders/1", id="plain"),
    pytest.param("/health", id="public"),
]


def _server_status(config: Path, raw_path: str) -> int:
    """The status the real ASGI middleware answers for this raw path."""
    import asyncio

    from endpointsec import ASGIMiddleware, load_config

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    from urllib.parse import unquote

    mw = ASGIMiddleware(app, config=load_config(config))  # type: ignore[arg-type]
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": unquote(raw_path),
             "raw_path": raw_path.encode(), "query_string": b"", "headers": [],
             "scheme": "https", "server": ("127.0.0.1", 443), "client": ("127.0.0.1", 1)}
    asyncio.run(mw(scope, receive, send))  # type: ignore[arg-type]
    return int(sent[0]["status"])  # type: ignore[call-overload]


@pytest.mark.parametrize("raw_path", WIRE_PATHS)
def test_explain_agrees_with_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        raw_path: str) -> None:
    config = _config(tmp_path)
    main(["explain", "--config", str(config), "--path", raw_path])
    out = capsys.readouterr().out
    explained = int(next(line for line in out.splitlines()
                         if line.startswith(("ALLOW ", "DENY "))).split()[1])
    assert explained == _server_status(config, raw_path)
    if raw_path not in ("/orders/1", "/health"):
        assert explained == 400
        assert "normalized:   (invalid)" in out


def test_explain_upper_cases_the_method(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code = main(["explain", "--config", str(config), "--method", "delete",
                 "--path", "/orders/1", "--iss", IDP, "--sub", "alice", "--role", "admin"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == ("note:         method 'delete' read as 'DELETE' (servers and "
                      "frameworks route upper-case methods)")
    assert out[1] == "request:      DELETE /orders/1"
    assert "ALLOW 200 DELETE /orders/1" in out


def test_explain_finds_the_configuration_like_load_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    assert main(["explain", "--path", "/health"]) == 0      # ./endpointsec.toml
    assert "requirements: public" in capsys.readouterr().out
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["explain", "--path", "/health"]) == 2      # none here
    assert "no configuration file" in capsys.readouterr().err
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(config))
    assert main(["explain", "--path", "/health"]) == 0      # the variable
