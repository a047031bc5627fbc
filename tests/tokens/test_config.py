"""[tokens] configuration: TOML tables, Python keywords, and every rejection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from endpointsec._config import Table
from endpointsec.config import Config
from endpointsec.errors import ConfigurationError
from endpointsec.tokens import IssuerConfig, TokensConfig


def _issuer(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"issuer": "https://idp.example", "audiences": ["api"],
                            "algorithms": ["RS256"], "jwks_url": "https://idp.example/jwks"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def test_full_table(tmp_path: Path) -> None:
    cfg = TokensConfig.from_table(Table({
        "max_token_bytes": 4096, "cookie": "at", "query_param": "access_token",
        "cache_size": 10,
        "issuers": [_issuer(leeway=5, max_lifetime=600, typ="at+jwt",
                            required_claims=["jti"], roles_claim="realm_access.roles",
                            scope_claim="scp", groups_claim="", jwks_ttl=60,
                            jwks_cooldown=5, jwks_max_stale=120, jwks_timeout=2,
                            jwks_max_bytes=10000, jwks_max_keys=4, min_rsa_bits=3072)],
    }, key="tokens", base_dir=tmp_path))
    assert cfg.max_token_bytes == 4096 and cfg.cookie == "at" and cfg.cache_size == 10
    i = cfg.issuers[0]
    assert i.audiences == ("api",) and i.leeway == 5.0 and i.typ == "at+jwt"
    assert i.roles_claim == "realm_access.roles" and i.scope_claim == "scp"
    assert i.groups_claim is None  # "" disables the mapping
    assert i.min_rsa_bits == 3072 and i.jwks_max_keys == 4


def test_through_root_config(tmp_path: Path) -> None:
    jwks = tmp_path / "k.json"
    jwks.write_text(json.dumps({"keys": []}))
    cfg = Config.from_mapping({"tokens": {"issuers": [_issuer(jwks_url=None,
                                                              jwks_file="k.json")]}},
                              base_dir=tmp_path)
    assert cfg.tokens.issuers[0].jwks_file == jwks


def test_python_keywords() -> None:
    i = IssuerConfig(issuer="x", audiences=("a",), algorithms=("ES256",),
                     jwks_url="https://x/jwks")
    assert TokensConfig(issuers=(i,)).issuer_names == ("x",)


@pytest.mark.parametrize(("table", "key", "message"), [
    pytest.param({"issuers": [_issuer(typo=1)]}, "tokens.issuers[0].typo", "unknown",
                 id="unknown-issuer-key"),
    pytest.param({"cach_size": 1}, "tokens.cach_size", "unknown", id="unknown-tokens-key"),
    pytest.param({"issuers": [_issuer(issuer=None)]}, "tokens.issuers[0].issuer", "required",
                 id="issuer-missing"),
    pytest.param({"issuers": [_issuer(audiences=[])]}, "audiences", "audience",
                 id="no-audiences"),
    pytest.param({"issuers": [_issuer(algorithms=None)]}, "algorithms", "required",
                 id="algorithms-missing"),
    pytest.param({"issuers": [_issuer(algorithms=["none"])]}, "algorithms",
                 "algorithm .none.; expected one of",
                 id="alg-none"),
    pytest.param({"issuers": [_issuer(algorithms=["RS256", "HS256"])]}, "algorithms",
                 "mixed", id="hs-and-rs"),
    pytest.param({"issuers": [_issuer(algorithms=["HS256"])]}, "algorithms", "jwks_file",
                 id="hs-remote"),
    pytest.param({"issuers": [_issuer(jwks_url=None)]}, "tokens.issuers", "exactly one",
                 id="no-source"),
    pytest.param({"issuers": [_issuer(discovery_url="https://idp.example/.well-known")]},
                 "tokens.issuers", "exactly one", id="two-sources"),
    pytest.param({"issuers": [_issuer(jwks_url="http://idp.example/jwks")]}, "jwks_url",
                 "plain http", id="http-refused"),
    pytest.param({"issuers": [_issuer(jwks_url="http://idp.example/jwks",
                                      allow_http=True)]}, "jwks_url", "loopback",
                 id="http-non-loopback"),
    pytest.param({"issuers": [_issuer(jwks_url="ftp://idp.example/jwks")]}, "jwks_url",
                 "http", id="ftp"),
    pytest.param({"issuers": [_issuer(jwks_url="https://u:p@idp.example/jwks")]},
                 "jwks_url", "credentials", id="credentials-in-url"),
    pytest.param({"issuers": [_issuer(leeway=-1)]}, "leeway", "at least", id="leeway-neg"),
    pytest.param({"issuers": [_issuer(leeway="5")]}, "leeway", "number", id="leeway-str"),
    pytest.param({"issuers": [_issuer(min_rsa_bits=1024)]}, "min_rsa_bits", "2048",
                 id="rsa-1024"),
    pytest.param({"issuers": [_issuer(), _issuer()]}, "tokens.issuers", "twice",
                 id="duplicate-issuer"),
    pytest.param({"max_token_bytes": 100}, "max_token_bytes", "512", id="tiny-max"),
    pytest.param({"cookie": "a b"}, "tokens.cookie", "plain", id="bad-cookie-name"),
    pytest.param({"issuers": [_issuer(jwks_url=None, public_key="missing.pem")]},
                 "public_key", "not found", id="pem-missing"),
])
def test_rejections(tmp_path: Path, table: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as exc:
        TokensConfig.from_table(Table(table, key="tokens", base_dir=tmp_path))
    assert key in str(exc.value)


def test_loopback_http_allowed_when_asked() -> None:
    for url in ("http://127.0.0.1:8080/jwks", "http://[::1]/jwks", "http://localhost/jwks"):
        IssuerConfig(issuer="x", audiences=("a",), algorithms=("RS256",), jwks_url=url,
                     allow_http=True)


def test_jwks_ca_file_needs_a_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    k = tmp_path / "k.json"
    k.write_text("{}")
    with pytest.raises(ConfigurationError, match="jwks_ca_file"):
        IssuerConfig(issuer="x", audiences=("a",), algorithms=("RS256",), jwks_file=k,
                     jwks_ca_file=ca)


def test_jwks_ca_file_unreadable_bundle(tmp_path: Path) -> None:
    from endpointsec.tokens import JWTVerifier

    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    cfg = TokensConfig(issuers=(IssuerConfig(issuer="x", audiences=("a",),
                                             algorithms=("RS256",),
                                             jwks_url="https://x.example/jwks",
                                             jwks_ca_file=ca),))
    with pytest.raises(ConfigurationError, match="CA bundle"):
        JWTVerifier(config=cfg)
