"""``endpointsec check --online``: every remote key set fetched once, against real local
HTTP servers (a JWKS, an OIDC discovery document, a 404, a port nobody listens on)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from endpointsec.cli import main
from endpointsec.testing.tokens import TokenIssuer


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/jwks.json"


def _issuer(name: str, key: str, url: str) -> str:
    return (f'[[tokens.issuers]]\nissuer = "{name}"\naudiences = ["api"]\n'
            f'algorithms = ["ES256"]\n{key} = "{url}"\nallow_http = true\n'
            "jwks_timeout = 3\n\n")


def _config(tmp_path: Path, issuers: str) -> Path:
    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text(issuers + "[policy]\nallow_authenticated = true\n")
    return cfg


def test_online_reports_what_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = TokenIssuer()
    discovered = TokenIssuer()
    dead = _dead_url()
    with good.serve(), discovered.serve():
        missing = good.base_url + "/no-such-jwks.json"
        cfg = _config(tmp_path,
                      _issuer(good.issuer, "jwks_url", good.jwks_url)
                      + _issuer(discovered.issuer, "discovery_url", discovered.discovery_url)
                      + _issuer("https://gone.example", "jwks_url", dead)
                      + _issuer("https://missing.example", "jwks_url", missing))
        assert main(["check", str(cfg)]) == 0  # offline: nothing fetched
        capsys.readouterr()
        assert main(["check", "--online", str(cfg)]) == 1
        good_url, discovered_url = good.jwks_url, discovered.jwks_url
        good_name, discovered_name = good.issuer, discovered.issuer
    out = capsys.readouterr().out
    assert f"note   issuer '{good_name}': 1 key(s) from {good_url}" in out
    assert f"note   issuer '{discovered_name}': 1 key(s) from {discovered_url}" in out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 2, out
    gone = next(line for line in errors if "gone.example" in line)
    assert f"cannot be fetched from {dead}: ConnectError" in gone
    assert "tokens.issuers['https://gone.example']" in gone
    lost = next(line for line in errors if "missing.example" in line)
    assert f"cannot be fetched from {missing}: key set: HTTP 404" in lost
    assert "2 problems found" in out


def test_online_without_remote_key_sets(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "")
    assert main(["check", "--online", str(cfg)]) == 0
    assert "no remote key set configured" in capsys.readouterr().out
