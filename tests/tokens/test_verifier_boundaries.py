"""JWTVerifier at the edges: every time comparison on both sides of its boundary, the
NumericDate range, claim mapping options and ``typ`` spellings (each case is one that a
boundary mutant of the verifier would get wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokens_helpers import AUDIENCE, ISSUER, Signer, issuer_config

from endpointsec.errors import TokenError
from endpointsec.tokens.config import TokensConfig
from endpointsec.tokens.verifier import MAX_TIME, JWTVerifier, check_time_claim

NOW = 1_700_000_000
LEEWAY = 30  # the default
LIFETIME = 86400  # the default max_lifetime


def _claims(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "iat": NOW,
                            "exp": NOW + 300}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


BOUNDARIES = [
    # exp: refused at or before now - leeway, accepted just after.
    pytest.param(_claims(exp=NOW - LEEWAY, iat=NOW - 100), "expired", id="exp-at-now-minus-leeway"),
    pytest.param(_claims(exp=NOW - LEEWAY + 1, iat=NOW - 100), None,
                 id="exp-just-after-now-minus-leeway"),
    # nbf: accepted up to now + leeway, refused after.
    pytest.param(_claims(nbf=NOW + LEEWAY), None, id="nbf-at-now-plus-leeway"),
    pytest.param(_claims(nbf=NOW + LEEWAY + 1), "not valid yet", id="nbf-after-now-plus-leeway"),
    # iat: accepted up to now + leeway, refused after.
    pytest.param(_claims(iat=NOW + LEEWAY), None, id="iat-at-now-plus-leeway"),
    pytest.param(_claims(iat=NOW + LEEWAY + 1), "issued in the future",
                 id="iat-after-now-plus-leeway"),
    # nbf against exp: equal is a (zero-length) window, after is none.
    pytest.param(_claims(nbf=NOW + 10, exp=NOW + 10), None, id="nbf-equals-exp"),
    pytest.param(_claims(nbf=NOW + 11, exp=NOW + 10), "after its 'exp'",
                 id="nbf-after-exp-inside-leeway"),
    # lifetime: exactly max_lifetime is accepted, one second more is not.
    pytest.param(_claims(exp=NOW + LIFETIME), None, id="lifetime-at-max"),
    pytest.param(_claims(exp=NOW + LIFETIME + 1), "lifetime", id="lifetime-over-max"),
    pytest.param(_claims(iat=None, exp=NOW + LIFETIME), None, id="lifetime-no-iat-at-max"),
    pytest.param(_claims(iat=None, exp=NOW + LIFETIME + 1), "lifetime",
                 id="lifetime-no-iat-over-max"),
]


@pytest.mark.parametrize(("claims", "error"), BOUNDARIES)
def test_time_boundaries(make_verifier: Any, jwks_file: Path, rsa_key: Signer,
                         claims: dict[str, Any], error: str | None) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), clock=lambda: float(NOW))
    token = rsa_key.sign(claims)
    if error is None:
        assert v.verify(token).subject == "u"
    else:
        with pytest.raises(TokenError, match=error):
            v.verify(token)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param(0, 0.0, id="zero"),
    pytest.param(0.0, 0.0, id="zero-float"),
    pytest.param(int(MAX_TIME), MAX_TIME, id="max-int"),
    pytest.param(MAX_TIME, MAX_TIME, id="max-float"),
    pytest.param(-1, "out of range", id="minus-one"),
    pytest.param(-0.5, "out of range", id="negative-fraction"),
    pytest.param(int(MAX_TIME) + 1, "out of range", id="max-int-plus-one"),
    pytest.param(MAX_TIME + 0.5, "out of range", id="max-float-plus-half"),
    pytest.param(float("inf"), "not finite", id="infinity"),
    pytest.param(float("-inf"), "not finite", id="minus-infinity"),
    pytest.param(float("nan"), "not finite", id="nan"),
    pytest.param(True, "must be a number", id="boolean"),
])
def test_numeric_date_range(value: Any, expected: float | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(TokenError, match=expected):
            check_time_claim({"exp": value}, "exp")
    else:
        assert check_time_claim({"exp": value}, "exp") == expected
    assert check_time_claim({}, "exp") is None


def test_roles_and_groups_are_never_split_scopes_are(make_verifier: Any, jwks_file: Path,
                                                     rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file), clock=lambda: float(NOW))
    p = v.verify(rsa_key.sign(_claims(roles="release manager", groups="on call",
                                      scope="orders:read orders:write")))
    assert p.roles == {"release manager"}
    assert p.groups == {"on call"}
    assert p.scopes == {"orders:read", "orders:write"}


def test_unmapped_claims_give_nothing(make_verifier: Any, jwks_file: Path,
                                      rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, roles_claim=None, scope_claim=None,
                                    groups_claim=None), clock=lambda: float(NOW))
    p = v.verify(rsa_key.sign(_claims(roles=["admin"], scope="a b", groups=["ops"])))
    assert (p.roles, p.scopes, p.groups) == (frozenset(), frozenset(), frozenset())


@pytest.mark.parametrize(("configured", "header", "ok"), [
    pytest.param("at+jwt", "at+jwt", True, id="same"),
    pytest.param("at+jwt", "application/at+jwt", True, id="header-with-media-prefix"),
    pytest.param("application/at+jwt", "at+jwt", True, id="config-with-media-prefix"),
    pytest.param("APPLICATION/AT+JWT", "at+JWT", True, id="case-insensitive"),
    pytest.param("application/at+jwt", "JWT", False, id="other-type"),
    pytest.param("at+jwt", "at+jwt/application/", False, id="suffix-is-not-a-prefix"),
])
def test_typ_spellings(make_verifier: Any, jwks_file: Path, rsa_key: Signer,
                       configured: str, header: str, ok: bool) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, typ=configured),
                      clock=lambda: float(NOW))
    token = rsa_key.sign(_claims(), headers={"typ": header})
    if ok:
        assert v.verify(token).subject == "u"
    else:
        with pytest.raises(TokenError, match="'typ'"):
            v.verify(token)


def test_config_is_kept(jwks_file: Path) -> None:
    config = TokensConfig(issuers=(issuer_config(jwks_file=jwks_file),))
    with JWTVerifier(config=config) as v:
        assert v.config is config
