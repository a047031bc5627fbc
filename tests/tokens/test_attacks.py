"""RFC 8725 (JWT BCP) attacks, one named test each, against the full JWTVerifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tokens_helpers import (
    AUDIENCE,
    ISSUER,
    Signer,
    b64,
    default_claims,
    issuer_config,
    raw_token,
    sign_raw,
)

from endpointsec.errors import TokenError
from endpointsec.tokens import JWTVerifier


def _rejects(verifier: JWTVerifier, token: str, match: str) -> None:
    with pytest.raises(TokenError, match=match):
        verifier.verify(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_rejected(verifier: JWTVerifier, alg: str) -> None:
    """RFC 8725 §2.1: an unsigned token must never verify."""
    header = b64(json.dumps({"alg": alg}).encode())
    token = f"{header}.{b64(json.dumps(default_claims()).encode())}."
    _rejects(verifier, token, "alg none|no signature")


def test_hs_rs_confusion_public_key_as_hmac_secret(verifier: JWTVerifier,
                                                   rsa_key: Signer) -> None:
    """RFC 8725 §2.1/§3.1: HS256 signed with the RSA public key (PEM) as the secret."""
    secret = rsa_key.public_pem()
    token = sign_raw({"alg": "HS256", "kid": rsa_key.kid}, default_claims(), secret)
    _rejects(verifier, token, "not allowed")


def test_hs_rs_confusion_even_if_hs256_were_listed(make_verifier: Any, rsa_key: Signer,
                                                    tmp_path: Path) -> None:
    """Mixing HMAC and public-key algorithms for one issuer is a configuration error."""
    from endpointsec.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="mixed"):
        issuer_config(jwks_file=tmp_path, algorithms=("RS256", "HS256"))


def test_algorithm_not_pinned_is_rejected(verifier: JWTVerifier, rsa_key: Signer) -> None:
    """RFC 8725 §3.1: RS512 with the right key, but only RS256/ES256/EdDSA are pinned."""
    _rejects(verifier, rsa_key.sign(alg="RS512"), "not allowed")


def test_algorithm_pinned_but_wrong_for_key(make_verifier: Any, rsa_key: Signer,
                                            tmp_path: Path) -> None:
    """A key published with alg RS256 does not verify PS256, even if PS256 is pinned."""
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [rsa_key.public_jwk()]}))
    v = make_verifier(issuer_config(jwks_file=path, algorithms=("RS256", "PS256")))
    _rejects(v, rsa_key.sign(alg="PS256"), "does not fit")


@pytest.mark.parametrize("kid", [
    "../../../../dev/null", "' OR 1=1 --", "rsa-1\x00", "rsa-1 ", "x" * 300, "",
])
def test_kid_injection(verifier: JWTVerifier, rsa_key: Signer, kid: str) -> None:
    """RFC 8725 §3.10: kid is only a lookup key into configured keys, never a path/query."""
    _rejects(verifier, rsa_key.sign(kid=kid), "kid")


def test_kid_not_a_string(verifier: JWTVerifier, rsa_key: Signer) -> None:
    token = sign_raw({"alg": "RS256", "kid": {"$ne": 1}}, default_claims(), rsa_key.private)
    _rejects(verifier, token, "kid")


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
def test_header_key_members_are_refused(verifier: JWTVerifier, rsa_key: Signer,
                                        member: str) -> None:
    """RFC 8725 §3.10: keys named or embedded in the header are never used (refused)."""
    value: Any = {"jku": "https://evil.example/jwks", "x5u": "https://evil.example/c.pem",
                  "jwk": rsa_key.public_jwk(), "x5c": ["MIIB"]}[member]
    _rejects(verifier, rsa_key.sign(headers={member: value}), member)


def test_embedded_jwk_signed_by_attacker(verifier: JWTVerifier, rsa_key2: Signer) -> None:
    """The classic: attacker signs with its own key and embeds it, using a trusted kid."""
    token = rsa_key2.sign(kid="rsa-1", headers={"jwk": rsa_key2.public_jwk()})
    _rejects(verifier, token, "jwk")


def test_attacker_key_with_trusted_kid(verifier: JWTVerifier, rsa_key2: Signer) -> None:
    _rejects(verifier, rsa_key2.sign(kid="rsa-1"), "signature is invalid")


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "x"])
def test_crit_is_refused(verifier: JWTVerifier, rsa_key: Signer, crit: Any) -> None:
    """RFC 7515 §4.1.11: we understand no extension, so any crit is refused."""
    _rejects(verifier, rsa_key.sign(headers={"crit": crit}), "crit")


@pytest.mark.parametrize("b64_value", [False, "false", 0])
def test_unencoded_payload_b64_false_is_refused(verifier: JWTVerifier, rsa_key: Signer,
                                                b64_value: Any) -> None:
    """RFC 7797 unencoded payloads are refused."""
    _rejects(verifier, rsa_key.sign(headers={"b64": b64_value}), "b64")


@pytest.mark.parametrize("cty", ["JWT", "jwt", "application/JWT"])
def test_nested_jwt_is_refused(verifier: JWTVerifier, rsa_key: Signer, cty: str) -> None:
    """RFC 8725 §2.8/§3.11: nested tokens (cty: JWT) are refused, not unwrapped."""
    _rejects(verifier, rsa_key.sign(headers={"cty": cty}), "nested")


def test_jwe_five_segments_is_refused(verifier: JWTVerifier) -> None:
    header = b64(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    _rejects(verifier, f"{header}.AAAA.BBBB.CCCC.DDDD", "JWE")


def test_jwe_header_on_three_segments_is_refused(verifier: JWTVerifier,
                                                 rsa_key: Signer) -> None:
    _rejects(verifier, rsa_key.sign(headers={"enc": "A256GCM"}), "enc")


def test_audience_substitution(verifier: JWTVerifier, rsa_key: Signer) -> None:
    """RFC 8725 §3.9: a token the same issuer minted for another service."""
    _rejects(verifier, rsa_key.sign(aud="api://payments"), "audience")


def test_issuer_substitution(make_verifier: Any, tmp_path: Path, rsa_key: Signer,
                             rsa_key2: Signer) -> None:
    """RFC 8725 §3.8: issuer B's key cannot sign tokens claiming issuer A."""
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"keys": [rsa_key.public_jwk()]}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"keys": [rsa_key2.public_jwk()]}))
    v = make_verifier(issuer_config(jwks_file=a),
                      issuer_config(issuer="https://b.example", jwks_file=b))
    # B signs a token claiming to be from A, with B's own kid: not in A's key set.
    _rejects(v, rsa_key2.sign(iss=ISSUER), "kid")
    # ... and without kid: A's single key does not verify B's signature.
    _rejects(v, rsa_key2.sign(iss=ISSUER, kid=False), "signature is invalid")


def test_untrusted_issuer_is_refused_before_key_lookup(verifier: JWTVerifier,
                                                       rsa_key: Signer) -> None:
    _rejects(verifier, rsa_key.sign(iss="https://evil.example"), "not trusted")


def test_oversized_token_rejected_before_parsing(verifier: JWTVerifier) -> None:
    token = "a" * 8193
    _rejects(verifier, token, "longer than 8192")


def test_psychic_signature_es256_zero(verifier: JWTVerifier, ec_key: Signer) -> None:
    """CVE-2022-21449: r = s = 0 must not verify."""
    token = ec_key.sign()
    head = token.rsplit(".", 1)[0]
    _rejects(verifier, f"{head}.{b64(bytes(64))}", "signature")


def test_es256_der_signature_refused(verifier: JWTVerifier, ec_key: Signer) -> None:
    """JWS ECDSA signatures are raw r||s (RFC 7518 §3.4); DER is refused."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    token = ec_key.sign()
    head = token.rsplit(".", 1)[0]
    der = ec_key.private.sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    _rejects(verifier, f"{head}.{b64(der)}", "signature")


def test_duplicate_header_member(verifier: JWTVerifier, rsa_key: Signer) -> None:
    """Two parsers disagreeing on {"alg":"RS256","alg":"none"} is a classic bypass."""
    token = raw_token('{"alg":"RS256","alg":"none","kid":"rsa-1"}', default_claims())
    _rejects(verifier, token, "duplicate")


def test_duplicate_claim_member(verifier: JWTVerifier, rsa_key: Signer) -> None:
    raw = json.dumps(default_claims())[:-1] + ', "sub": "admin"}'
    token = sign_raw({"alg": "RS256", "kid": rsa_key.kid}, raw.encode(), rsa_key.private)
    _rejects(verifier, token, "duplicate")


def test_signature_stripped(verifier: JWTVerifier, rsa_key: Signer) -> None:
    head = rsa_key.sign().rsplit(".", 1)[0]
    _rejects(verifier, head + ".", "no signature")


def test_payload_swapped(verifier: JWTVerifier, rsa_key: Signer) -> None:
    token = rsa_key.sign()
    h, _, s = token.split(".")
    evil = b64(json.dumps(default_claims(sub="admin")).encode())
    _rejects(verifier, f"{h}.{evil}.{s}", "signature is invalid")


def test_non_canonical_base64(verifier: JWTVerifier, ec_key: Signer) -> None:
    """Malleability: a second spelling of the same signature bytes is refused."""
    token = ec_key.sign()
    head, sig = token.rsplit(".", 1)
    # 64 bytes -> 86 chars, the last carries 2 unused bits: set one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(sig[-1]) | 1]
    if last == sig[-1]:
        last = alphabet[alphabet.index(sig[-1]) | 2]
    _rejects(verifier, f"{head}.{sig[:-1]}{last}", "canonical")


def test_rsa_public_key_from_issuer_cannot_be_hmac_even_in_jwks(tmp_path: Path,
                                                              make_verifier: Any,
                                                              rsa_key: Signer) -> None:
    """A local JWKS mixing an oct secret with RSA keys is refused (mixed key set)."""
    from endpointsec.errors import ConfigurationError

    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [rsa_key.public_jwk(),
                                         {"kty": "oct", "kid": "h", "k": b64(pem)}]}))
    with pytest.raises(ConfigurationError, match="mixes symmetric"):
        make_verifier(issuer_config(jwks_file=path))


def test_expired_token_replay(verifier: JWTVerifier, rsa_key: Signer) -> None:
    import time

    now = int(time.time())
    _rejects(verifier, rsa_key.sign(iat=now - 1000, exp=now - 600), "expired")


def test_token_without_exp(verifier: JWTVerifier, rsa_key: Signer) -> None:
    """exp is always required: a token that never expires is refused."""
    _rejects(verifier, rsa_key.sign(exp=None), "exp")


def test_audience_any_of_configured(make_verifier: Any, jwks_file: Path,
                                    rsa_key: Signer) -> None:
    v = make_verifier(issuer_config(jwks_file=jwks_file, audiences=(AUDIENCE, "api://b")))
    assert v.verify(rsa_key.sign(aud="api://b")).audience == ("api://b",)
