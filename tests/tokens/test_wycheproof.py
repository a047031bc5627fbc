"""Wycheproof JOSE vectors run through endpointsec's own verification layer.

The vectors sign arbitrary payloads (``foo``), not JWT claim sets, so the harness runs
the JWS layer of the verifier — the very functions :class:`JWTVerifier` calls, in the
same order: the key-set policy (``key_set_from_jwks``, as for a local ``jwks_file``),
``parse_jws``, ``KeySet.find`` (by ``kid``) and ``verify_signature`` with the algorithms
pinned for the group. Claim checks are covered by ``test_verifier.py``.

Outcome: *accepted* when no exception is raised; *rejected* when the layer raises
``TokenError`` or ``KeySetUnavailable``/``KeySetError``. Any other exception fails the
test (a crash is never an acceptable rejection). ``acceptable`` vectors may go either
way but must not crash (none of the three files currently has one).

Algorithms pinned per group ("configuration" in the harness, never from the token):
the ``alg`` of the group's key(s); for a key without ``alg`` the family default of its
type (RSA: RS256, EC: by curve, oct: HS256). Exception, written out in ``RFC7520``:
the ``rfc7520*`` groups use the example keys of RFC 7520 §3, which the RFC publishes
*without* an ``alg`` member; Wycheproof added ``alg`` values (``PS256``, ``ES521``) that
contradict the figures it labels valid (Figure 20 is PS384, Figure 27 ES512). For those
groups the harness uses the key as RFC 7520 publishes it (``alg`` removed) and pins the
algorithm each RFC 7520 figure names.

JWE vectors: endpointsec accepts only signed tokens; every JWE is rejected, including
the two labelled ``valid`` (tcId 50 and 67 of json_web_crypto_test.json): a JWE is valid
*for a decrypting implementation*, which this is not by design (see docs/tokens.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from endpointsec.errors import KeySetUnavailable, TokenError
from endpointsec.tokens.jose import parse_jws, verify_signature
from endpointsec.tokens.keys import key_set_from_jwks

WYCHEPROOF = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "wycheproof"

#: json_web_signature_test.json vectors known to be mislabelled (conformance README).
DEFECTIVE = {
    367: "byte-identical to the valid tcId 357 but labelled invalid",
    370: "byte-identical to the valid tcId 357 but labelled invalid",
    372: "contains '?' (not base64url) but is labelled valid",
    373: "contains '?' (not base64url) but is labelled valid",
}

#: RFC 7520 figures and the algorithm each one signs with (see the module docstring).
RFC7520 = {"Figure13": "RS256", "Figure20": "PS384", "Figure27": "ES512",
           "Figure35": "HS256"}

_FAMILY = {"RSA": "RS256", "oct": "HS256", "OKP": "EdDSA"}
_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_SUPPORTED = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA", "HS256", "HS384", "HS512"}


def _load(name: str) -> dict[str, Any]:
    path = WYCHEPROOF / name
    if not path.is_file():
        pytest.skip(f"Wycheproof data not found at {path}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _cases(name: str) -> list[Any]:
    path = WYCHEPROOF / name
    if not path.is_file():
        return [pytest.param(None, None, id=f"{name}-missing",
                             marks=pytest.mark.skip(reason=f"{path} not found"))]
    data = json.loads(path.read_text())
    out = []
    for group in data["testGroups"]:
        for case in group["tests"]:
            marks = []
            if name == "json_web_signature_test.json" and case["tcId"] in DEFECTIVE:
                marks.append(pytest.mark.skip(reason=f"defective vector: "
                                                     f"{DEFECTIVE[case['tcId']]}"))
            out.append(pytest.param(group, case, marks=marks,
                                    id=f"{case['tcId']}-{case['comment']}"))
    return out


def _group_keys(group: dict[str, Any], case: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    jwk = group.get("public") or group.get("private")
    keys = jwk.get("keys", [jwk])
    if group["comment"].startswith("rfc7520"):
        keys = [{k: v for k, v in key.items() if k != "alg"} for key in keys]
        return {"keys": keys}, (RFC7520[case["comment"]],)
    algs: list[str] = []
    for key in keys:
        alg = key.get("alg")
        if alg not in _SUPPORTED:
            alg = _CURVE.get(key.get("crv", "")) if key.get("kty") == "EC" else \
                _FAMILY.get(key.get("kty", ""))
        if alg:
            algs.append(alg)
    return {"keys": keys}, tuple(dict.fromkeys(algs))


def run_case(group: dict[str, Any], case: dict[str, Any]) -> bool:
    """True if endpointsec's JWS layer accepts the vector, False if it rejects it."""
    jwks, algorithms = _group_keys(group, case)
    token = case.get("jws", case.get("jwe"))
    if not isinstance(token, str):  # JSON serialization given as an object
        token = json.dumps(token)
    try:
        keys = key_set_from_jwks(jwks, allow_symmetric=True, what="wycheproof group")
        parsed = parse_jws(token, max_bytes=8192)
        key = keys.find(parsed.kid, parsed.alg)
        if key is None:
            raise TokenError("no key")
        verify_signature(parsed, key, algorithms=algorithms)
    except (TokenError, KeySetUnavailable):
        return False
    return True


def _expect(group: dict[str, Any], case: dict[str, Any]) -> None:
    accepted = run_case(group, case)
    if case["result"] == "acceptable":
        return
    if "jwe" in case:
        assert not accepted, "a JWE must always be rejected"
        return
    expected = case["result"] == "valid"
    assert accepted is expected, (
        f"tcId {case['tcId']} ({case['comment']}, flags {case.get('flags')}): expected "
        f"{case['result']}, endpointsec {'accepted' if accepted else 'rejected'}")


@pytest.mark.parametrize(("group", "case"), _cases("json_web_signature_test.json"))
def test_json_web_signature(group: dict[str, Any], case: dict[str, Any]) -> None:
    _expect(group, case)


@pytest.mark.parametrize(("group", "case"), _cases("json_web_key_test.json"))
def test_json_web_key(group: dict[str, Any], case: dict[str, Any]) -> None:
    _expect(group, case)


@pytest.mark.parametrize(("group", "case"), _cases("json_web_crypto_test.json"))
def test_json_web_crypto(group: dict[str, Any], case: dict[str, Any]) -> None:
    _expect(group, case)


@pytest.mark.parametrize(("name", "count"), [
    ("json_web_signature_test.json", 401),
    ("json_web_key_test.json", 26),
    ("json_web_crypto_test.json", 83),
])
def test_vector_counts(name: str, count: int) -> None:
    data = _load(name)
    assert sum(len(g["tests"]) for g in data["testGroups"]) == count


def test_pyjwt_alone_accepts_the_weak_key_sets_we_reject() -> None:
    """The four key sets pyjwt accepts (README) are rejected by our key-set policy."""
    data = _load("json_web_key_test.json")
    by_comment = {c["comment"]: (g, c) for g in data["testGroups"] for c in g["tests"]}
    for comment in ("rejectsValid", "rejectsDuplicateKid", "rejectsKeyWithRocaVulnerability",
                    "rejectsWrongUse"):
        group, case = by_comment[comment]
        assert run_case(group, case) is False, comment
