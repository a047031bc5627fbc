"""TokenIssuer: signs JWTs, serves JWKS and OIDC discovery on a real local server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import jwt
import pytest

from endpointsec import ConfigurationError
from endpointsec._config import Table
from endpointsec.testing import CertificateAuthority, TokenIssuer, cnf_thumbprint
from endpointsec.tokens import TokensConfig, build_token_verifier


def _decode(issuer: TokenIssuer, token: str) -> dict[str, Any]:
    jwks = httpx.get(issuer.jwks_url, timeout=5).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid].key
    return jwt.decode(token, key, algorithms=[issuer.algorithm], audience=issuer.audience,
                      issuer=issuer.issuer)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_issued_token_verifies_against_the_served_jwks(algorithm: str) -> None:
    issuer = TokenIssuer(algorithm=algorithm)
    with issuer.serve():
        token = issuer.issue(sub="alice", roles=["admin"], scopes=["a", "b"], tenant="t1")
        claims = _decode(issuer, token)
        assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert claims["sub"] == "alice"
    assert str(claims["iss"]).startswith("http://127.0.0.1:")
    assert claims["roles"] == ["admin"]
    assert claims["scope"] == "a b"
    assert claims["tenant"] == "t1"
    assert claims["exp"] > claims["iat"]


def test_discovery_document_is_self_consistent(endpointsec_issuer: TokenIssuer) -> None:
    doc = httpx.get(endpointsec_issuer.discovery_url, timeout=5).json()
    assert doc["issuer"] == endpointsec_issuer.issuer == endpointsec_issuer.base_url
    assert doc["jwks_uri"] == endpointsec_issuer.jwks_url
    missing = httpx.get(endpointsec_issuer.base_url + "/nope", timeout=5)
    assert missing.status_code == 404
    assert endpointsec_issuer.requests == ["/.well-known/openid-configuration", "/nope"]


def test_server_stops_when_the_block_ends() -> None:
    issuer = TokenIssuer()
    with issuer.serve():
        url = issuer.jwks_url
        assert httpx.get(url, timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)
    with pytest.raises(ConfigurationError, match="not serving"):
        issuer.base_url  # noqa: B018
    assert issuer.issuer == "https://issuer.endpointsec.test"


def test_rotation_keeps_or_drops_old_keys() -> None:
    issuer = TokenIssuer()
    old = issuer.kid
    new = issuer.rotate()
    assert new != old and issuer.kid == new
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [new, old]
    assert jwt.get_unverified_header(issuer.issue(sub="a", kid=old))["kid"] == old
    issuer.rotate(keep_old=False)
    assert len(issuer.jwks()["keys"]) == 1
    with pytest.raises(ConfigurationError, match="no key with kid"):
        issuer.issue(sub="a", kid=old)


def test_expiry_audience_binding_and_overrides() -> None:
    issuer = TokenIssuer(issuer="https://idp.test", typ="at+jwt")
    cert = CertificateAuthority.create().issue_client(spiffe_id="spiffe://t/a")
    token = issuer.issue(sub="svc", aud=["a", "b"], exp=dt.timedelta(seconds=-30),
                         cnf_cert=cert, iat=1)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == ["a", "b"]
    assert claims["cnf"] == {"x5t#S256": cnf_thumbprint(cert)}
    assert claims["iat"] == 1
    assert claims["iss"] == "https://idp.test"
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, issuer._keys[0][1].public_key(), algorithms=["ES256"],
                   audience="a")
    fixed = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert jwt.decode(issuer.issue(sub="x", exp=fixed),
                      options={"verify_signature": False})["exp"] == int(fixed.timestamp())
    with pytest.raises(ConfigurationError, match="timezone"):
        issuer.issue(sub="x", exp=dt.datetime(2030, 1, 1))


@pytest.mark.parametrize("bad", ["HS256", "none", "EdDSA"])
def test_unsupported_algorithm_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="algorithm"):
        TokenIssuer(algorithm=bad)


def test_serving_twice_is_refused() -> None:
    issuer = TokenIssuer()
    with issuer.serve(), pytest.raises(ConfigurationError, match="already serving"), \
            issuer.serve():
        pass


@pytest.mark.parametrize("discovery", [False, True], ids=["jwks_url", "discovery_url"])
def test_endpointsec_verifier_accepts_the_issuer(endpointsec_issuer: TokenIssuer,
                                                 discovery: bool) -> None:
    table = {"issuers": [endpointsec_issuer.issuer_table(discovery=discovery)]}
    verifier = build_token_verifier(TokensConfig.from_table(Table(table, key="tokens")))
    assert verifier is not None
    principal = verifier.verify(endpointsec_issuer.issue(sub="alice", roles=["admin"]))
    assert principal.id == f"{endpointsec_issuer.base_url}#alice"
    assert principal.roles == frozenset({"admin"})
