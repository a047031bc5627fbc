"""JWTVerifier: principal mapping, claim checks, the verified-token cache."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tokens_helpers import (
    AUDIENCE,
    ISSUER,
    Signer,
    b64,
    default_claims,
    issuer_config,
    sign_raw,
)

from endpointsec.errors import ConfigurationError, TokenError
from endpointsec.facts import RequestPrincipal
from endpointsec.tokens import JWTVerifier, build_token_reader, build_token_verifier
from endpointsec.tokens.config import TokensConfig


@pytest.mark.parametrize("signer_name", ["rsa_key", "ec_key", "ed_key"])
def test_valid_token_gives_principal(verifier: JWTVerifier, signer_name: str,
                                     request: pytest.FixtureRequest) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    token = signer.sign(realm_access={"roles": ["admin", "reader"]}, scope="orders:read a:b",
                        groups=["ops"])
    p = verifier.verify(token)
    assert p.issuer == ISSUER
    assert p.subject == "user-1"
    assert p.id == f"{ISSUER}#user-1"
    assert p.audience == (AUDIENCE,)
    assert p.roles == {"admin", "reader"}
    assert p.scopes == {"orders:read", "a:b"}
    assert p.groups == {"ops"}
    assert p.cnf_x5t_s256 is None
    assert p.claims["sub"] == "user-1"
    assert p.expires_at is not None and p.expires_at > time.time()


def test_averify_matches_verify(verifier: JWTVerifier, ec_key: Signer) -> None:
    token = ec_key.sign()
    assert asyncio.run(verifier.averify(token)) == verifier.verify(token)


def test_scp_list_claim(make_verifier: Any, jwks_file: Path, rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, scope_claim="scp"))
    assert v.verify(rsa_key.sign(scp=["a", "b"])).scopes == {"a", "b"}


def test_audience_list_any_match(verifier: JWTVerifier, rsa_key: Signer) -> None:
    p = verifier.verify(rsa_key.sign(aud=["other", AUDIENCE]))
    assert p.audience == ("other", AUDIENCE)


NOW = 1_700_000_000


def _claims(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "iat": NOW,
                            "exp": NOW + 300}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


CLAIM_CASES = [
    pytest.param(_claims(exp=None), "missing the 'exp'", id="exp-missing"),
    pytest.param(_claims(exp=str(NOW + 300)), "must be a number", id="exp-numeric-string"),
    pytest.param(_claims(exp=True), "must be a number", id="exp-boolean"),
    pytest.param(_claims(exp=1e300), "out of range", id="exp-1e300"),
    pytest.param(_claims(exp=10**400), "out of range", id="exp-huge-int"),
    pytest.param(_claims(exp=253402300800), "out of range", id="exp-after-year-9999"),
    pytest.param(_claims(exp=-5), "out of range", id="exp-negative"),
    pytest.param(_claims(exp=[NOW + 300]), "must be a number", id="exp-list"),
    pytest.param(_claims(exp=NOW - 31), "expired", id="exp-past-beyond-leeway"),
    pytest.param(_claims(nbf=NOW + 31), "not valid yet", id="nbf-future"),
    pytest.param(_claims(nbf="0"), "must be a number", id="nbf-string"),
    pytest.param(_claims(iat=NOW + 31), "issued in the future", id="iat-future"),
    pytest.param(_claims(iat=False), "must be a number", id="iat-boolean"),
    pytest.param(_claims(iat=NOW - 100000, exp=NOW + 100), "lifetime", id="lifetime-iat"),
    pytest.param(_claims(iat=None, exp=NOW + 90000), "lifetime", id="lifetime-no-iat"),
    pytest.param(_claims(aud="api://other"), "audience", id="aud-other"),
    pytest.param(_claims(aud=None), "no 'aud'", id="aud-missing"),
    pytest.param(_claims(aud=[]), "'aud' must be", id="aud-empty-list"),
    pytest.param(_claims(aud=[1]), "'aud' must be", id="aud-number"),
    pytest.param(_claims(iss="https://evil.example"), "not trusted", id="iss-unknown"),
    pytest.param(_claims(iss=None), "no 'iss'", id="iss-missing"),
    pytest.param(_claims(iss=["x"]), "no 'iss'", id="iss-list"),
    pytest.param(_claims(sub=None), "'sub'", id="sub-missing"),
    pytest.param(_claims(sub=""), "'sub'", id="sub-empty"),
    pytest.param(_claims(sub=5), "'sub'", id="sub-number"),
    pytest.param(_claims(roles="admin"), None, id="roles-string-ok"),
    pytest.param(_claims(roles=[1]), "'roles'", id="roles-not-strings"),
    pytest.param(_claims(scope=["a"]), None, id="scope-list-ok"),
    pytest.param(_claims(scope={"a": 1}), "'scope'", id="scope-object"),
    pytest.param(_claims(cnf={"x5t#S256": 5}), "x5t#S256", id="cnf-not-string"),
    pytest.param(_claims(cnf={"x5t#S256": "abc"}), "x5t#S256", id="cnf-short"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 42}), "x5t#S256", id="cnf-42-chars"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 44}), "x5t#S256", id="cnf-44-chars"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 42 + "="}), "x5t#S256", id="cnf-padded"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 42 + "B"}), "x5t#S256",
                 id="cnf-non-canonical-last-char"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 41 + "+A"}), "x5t#S256", id="cnf-not-url-safe"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 41 + "\u00e9A"}), "x5t#S256",
                 id="cnf-non-ascii"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 42 + "X"}), "x5t#S256",
                 id="cnf-last-char-with-unused-bits"),
    pytest.param(_claims(cnf={"x5t#S256": "A" * 43}), None, id="cnf-43-chars-ok"),
    pytest.param(_claims(cnf={"jkt": "abc"}), "cannot check", id="cnf-dpop-jkt"),
    pytest.param(_claims(cnf="x"), "'cnf' must be", id="cnf-not-object"),
    pytest.param(_claims(exp=NOW - 29), None, id="exp-within-leeway-ok"),
    pytest.param(_claims(exp=NOW + 300.5), None, id="exp-float-ok"),
]


@pytest.mark.parametrize(("claims", "error"), CLAIM_CASES)
def test_claim_checks(make_verifier: Any, jwks_file: Path, rsa_key: Signer,
                      claims: dict[str, Any], error: str | None) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), clock=lambda: float(NOW))
    token = rsa_key.sign(claims)
    if error is None:
        assert isinstance(v.verify(token), RequestPrincipal)
    else:
        with pytest.raises(TokenError, match=error) as exc:
            v.verify(token)
        assert exc.value.oauth_error == "invalid_token"


def test_nan_exp_is_rejected(verifier: JWTVerifier, rsa_key: Signer) -> None:
    raw = json.dumps(default_claims()).replace('"exp": ', '"exp": NaN, "x": ')
    token = sign_raw({"alg": "RS256", "kid": rsa_key.kid}, raw.encode(), rsa_key.private)
    with pytest.raises(TokenError, match="NaN"):
        verifier.verify(token)


@pytest.mark.parametrize(("expected", "typ", "ok"), [
    ("at+jwt", "at+jwt", True),
    ("at+jwt", "application/at+JWT", True),
    ("at+jwt", "JWT", False),
    ("at+jwt", None, False),
    ("at+jwt", 5, False),
])
def test_typ(make_verifier: Any, jwks_file: Path, rsa_key: Signer, expected: str,
             typ: Any, ok: bool) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, typ=expected))
    token = rsa_key.sign(headers={"typ": typ} if typ is not None else {})
    if ok:
        assert v.verify(token).subject == "user-1"
    else:
        with pytest.raises(TokenError, match="typ"):
            v.verify(token)


def test_required_claims(make_verifier: Any, jwks_file: Path, rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, required_claims=("jti", "azp")))
    with pytest.raises(TokenError, match="azp"):
        v.verify(rsa_key.sign(jti="1"))
    assert v.verify(rsa_key.sign(jti="1", azp="c")).subject == "user-1"


def test_cnf_thumbprint_extracted(verifier: JWTVerifier, rsa_key: Signer) -> None:
    thumb = b64(bytes(range(32)))
    assert verifier.verify(rsa_key.sign(cnf={"x5t#S256": thumb})).cnf_x5t_s256 == thumb


def test_roles_claim_disabled(make_verifier: Any, jwks_file: Path, rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, roles_claim=None))
    assert v.verify(rsa_key.sign(roles=["x"])).roles == frozenset()


# -- cache -----------------------------------------------------------------------------

def test_cache_hit_returns_same_principal(verifier: JWTVerifier, rsa_key: Signer) -> None:
    token = rsa_key.sign()
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    assert asyncio.run(verifier.averify(token)) is first


def test_cache_entry_expires_at_exp(make_verifier: Any, jwks_file: Path,
                                    rsa_key: Signer) -> None:
    now = [float(NOW)]
    v = make_verifier(issuer_config(jwks_file=jwks_file, leeway=0), clock=lambda: now[0])
    token = rsa_key.sign(_claims(exp=NOW + 10))
    first = v.verify(token)
    now[0] = NOW + 9.5
    assert v.verify(token) is first  # served from the cache
    now[0] = NOW + 10
    assert v._cache.get(token) is None  # never served at or after exp
    with pytest.raises(TokenError, match="expired"):
        v.verify(token)


def test_cache_is_bounded(make_verifier: Any, jwks_file: Path, rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), cache_size=3)
    tokens = [rsa_key.sign(jti=str(i)) for i in range(5)]
    for t in tokens:
        v.verify(t)
    assert len(v._cache) == 3
    assert v._cache.get(tokens[0]) is None
    assert v._cache.get(tokens[4]) is not None


def test_cache_disabled(make_verifier: Any, jwks_file: Path, rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), cache_size=0)
    token = rsa_key.sign()
    assert v.verify(token) is not v.verify(token)


def test_failed_tokens_are_not_cached(verifier: JWTVerifier, rsa_key: Signer) -> None:
    token = rsa_key.sign(aud="other")
    for _ in range(2):
        with pytest.raises(TokenError):
            verifier.verify(token)
    assert len(verifier._cache) == 0


# -- static keys -------------------------------------------------------------------------

def test_pem_public_key(make_verifier: Any, tmp_path: Path, ec_key: Signer) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_bytes(ec_key.public_pem())
    v = make_verifier(issuer_config(public_key=pem, algorithms=("ES256",)))
    assert v.verify(ec_key.sign()).subject == "user-1"  # kid in token, none on the PEM key
    assert v.verify(ec_key.sign(kid=False)).subject == "user-1"


def test_pem_file_not_a_key(make_verifier: Any, tmp_path: Path) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="PEM"):
        make_verifier(issuer_config(public_key=pem))


def test_no_kid_with_several_keys_is_rejected(verifier: JWTVerifier, rsa_key: Signer,
                                              tmp_path: Path, make_verifier: Any,
                                              rsa_key2: Signer) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"keys": [rsa_key.public_jwk(), rsa_key2.public_jwk()]}))
    v = make_verifier(issuer_config(jwks_file=path))
    with pytest.raises(TokenError, match="no 'kid'"):
        v.verify(rsa_key.sign(kid=False))


def test_averify_selects_the_key_by_kid_and_caches(make_verifier: Any, tmp_path: Path,
                                                   rsa_key: Signer, rsa_key2: Signer) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"keys": [rsa_key.public_jwk(), rsa_key2.public_jwk()]}))
    v = make_verifier(issuer_config(jwks_file=path))
    token = rsa_key2.sign()
    first = asyncio.run(v.averify(token))
    assert first.subject == "user-1"
    assert asyncio.run(v.averify(token)) is first  # cached under the token itself
    assert v.verify(token) is first


def test_hmac_issuer_with_local_jwks(make_verifier: Any, tmp_path: Path) -> None:
    secret = bytes(range(32))
    path = tmp_path / "hs.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64(secret)}]}))
    v = make_verifier(issuer_config(jwks_file=path, algorithms=("HS256",)))
    token = sign_raw({"alg": "HS256", "kid": "h"}, default_claims(), secret)
    assert v.verify(token).subject == "user-1"


def test_builders_return_none_without_issuers() -> None:
    assert build_token_verifier(TokensConfig()) is None
    assert build_token_reader(TokensConfig()) is None


def test_builders(jwks_file: Path) -> None:
    cfg = TokensConfig(issuers=(issuer_config(jwks_file=jwks_file),), cookie="at")
    v = build_token_verifier(cfg)
    assert isinstance(v, JWTVerifier)
    v.close()
    reader = build_token_reader(cfg)
    assert reader is not None and reader.cookie == b"at"


def test_multiple_issuers_pick_by_iss(make_verifier: Any, tmp_path: Path, rsa_key: Signer,
                                      ec_key: Signer) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"keys": [rsa_key.public_jwk()]}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"keys": [ec_key.public_jwk()]}))
    v = make_verifier(issuer_config(jwks_file=a),
                      issuer_config(issuer="https://b.example", jwks_file=b,
                                    algorithms=("ES256",)))
    assert v.verify(rsa_key.sign()).issuer == ISSUER
    assert v.verify(ec_key.sign(iss="https://b.example")).issuer == "https://b.example"


def test_verifier_satisfies_the_protocol(verifier: JWTVerifier) -> None:
    from endpointsec.protocols import TokenVerifier

    assert isinstance(verifier, TokenVerifier)


def test_max_token_bytes_applies_to_verifier(make_verifier: Any, jwks_file: Path,
                                             rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), max_token_bytes=600)
    token = rsa_key.sign(pad="x" * 400)
    assert len(token) > 600
    with pytest.raises(TokenError, match="longer than 600"):
        v.verify(token)


def test_key_source_static_unknown_kid(verifier: JWTVerifier, rsa_key: Signer) -> None:
    with pytest.raises(TokenError, match="no key with kid 'nope'"):
        verifier.verify(rsa_key.sign(kid="nope"))
