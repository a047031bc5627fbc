"""The key-set policy, one reason per row."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tokens_helpers import Signer, b64

from endpointsec.tokens.keys import KeySetError, is_roca_weak, key_set_from_jwks


def _rsa_jwk(bits: int = 2048, **kw: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kw)
    return jwk


def test_good_set(rsa_key: Signer, ec_key: Signer, ed_key: Signer) -> None:
    ks = key_set_from_jwks({"keys": [rsa_key.public_jwk(), ec_key.public_jwk(),
                                     ed_key.public_jwk()]})
    assert set(ks.by_kid) == {"rsa-1", "ec-1", "ed-1"}
    assert ks.by_kid["ec-1"].algorithms == {"ES256"}
    assert not ks.symmetric


def test_key_without_alg_gets_its_family(rsa_key: Signer) -> None:
    jwk = rsa_key.public_jwk()
    del jwk["alg"]
    ks = key_set_from_jwks({"keys": [jwk]})
    assert ks.by_kid["rsa-1"].algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384",
                                             "PS512"}


def test_encryption_keys_are_ignored_not_fatal(rsa_key: Signer) -> None:
    enc = {**rsa_key.public_jwk(), "kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"}
    ks = key_set_from_jwks({"keys": [rsa_key.public_jwk(), enc]})
    assert set(ks.by_kid) == {"rsa-1"}


@pytest.mark.parametrize(("keys", "message"), [
    pytest.param("rsa-1024", "below 2048", id="rsa-1024"),
    pytest.param("dup", "duplicate kid", id="duplicate-kid"),
    pytest.param("mixed", "mixes symmetric", id="mixed-symmetric-asymmetric"),
    pytest.param("private", "private key material", id="private-members"),
    pytest.param("oct-remote", "must not contain secrets", id="oct-in-published-set"),
    pytest.param("only-enc", "no usable signature key", id="only-enc"),
    pytest.param("alg-mismatch", "does not fit", id="alg-mismatch"),
    pytest.param("even-e", "exponent|not a valid RSA key", id="even-exponent"),
    pytest.param("too-many", "more than", id="too-many-keys"),
    pytest.param("not-a-set", "not a JWK set", id="not-a-set"),
    pytest.param("kty-unknown", "unsupported kty", id="kty-unknown"),
    pytest.param("kid-number", "kid must be", id="kid-number"),
    pytest.param("key-not-object", "not an object", id="key-not-object"),
])
def test_rejected_sets(rsa_key: Signer, ec_key: Signer, keys: str, message: str) -> None:
    r = rsa_key.public_jwk()
    allow_symmetric = keys == "mixed"
    data: Any = {
        "rsa-1024": lambda: {"keys": [_rsa_jwk(1024, kid="small")]},
        "dup": lambda: {"keys": [r, {**ec_key.public_jwk(), "kid": "rsa-1"}]},
        "mixed": lambda: {"keys": [r, {"kty": "oct", "kid": "h", "k": b64(bytes(32))}]},
        "private": lambda: {"keys": [{**r, "d": "AAAA"}]},
        "oct-remote": lambda: {"keys": [{"kty": "oct", "kid": "h", "k": b64(bytes(32))}]},
        "only-enc": lambda: {"keys": [{**r, "use": "enc"}]},
        "alg-mismatch": lambda: {"keys": [{**ec_key.public_jwk(), "alg": "ES384"}]},
        "even-e": lambda: {"keys": [{**r, "e": b64((65536).to_bytes(3, "big"))}]},
        "too-many": lambda: {"keys": [{**r, "kid": str(i)} for i in range(33)]},
        "not-a-set": lambda: {"key": []},
        "kty-unknown": lambda: {"keys": [{"kty": "XYZ", "kid": "x"}]},
        "kid-number": lambda: {"keys": [{**r, "kid": 5}]},
        "key-not-object": lambda: {"keys": ["x"]},
    }[keys]()
    with pytest.raises(KeySetError, match=message):
        key_set_from_jwks(data, allow_symmetric=allow_symmetric)


def test_roca_detection_on_fresh_keys_is_negative() -> None:
    for _ in range(3):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert not is_roca_weak(key.public_key().public_numbers().n)


def test_roca_detection_on_fingerprinted_modulus() -> None:
    # 65537^k mod M for the primorial M of the ROCA primes has the fingerprint by
    # construction (n mod p is then a power of 65537 mod p for every p).
    from endpointsec.tokens.keys import _ROCA_PRIMES

    m = 1
    for p in _ROCA_PRIMES:
        m *= p
    assert is_roca_weak(pow(65537, 12345, m))
    assert not is_roca_weak(pow(65537, 12345, m) * 2 + 1)


@pytest.mark.parametrize(("length", "alg", "ok"), [
    (31, "HS256", False), (32, "HS256", True), (47, "HS384", False), (48, "HS384", True),
    (63, "HS512", False), (64, "HS512", True), (0, "HS256", False),
])
def test_hmac_secret_length(length: int, alg: str, ok: bool) -> None:
    jwk = {"kty": "oct", "kid": "h", "alg": alg, "k": b64(bytes(range(length)))}
    if ok:
        assert key_set_from_jwks({"keys": [jwk]}, allow_symmetric=True).by_kid["h"]
    else:
        with pytest.raises(KeySetError):
            key_set_from_jwks({"keys": [jwk]}, allow_symmetric=True)
