"""x509-limbo conformance: CLIENT cases through X509ChainVerifier, SERVER cases through
the same policy (``policy_builder``) with a server verifier.

The data is read from ``../shared/conformance/x509-limbo/`` (never copied here). The
counts (pass/skip per kind) are printed at the end of the session (``-s`` or ``-rA``)
and written to ``limbo-results`` in pytest's cache.
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import Store, VerificationError

from endpointsec.errors import CertificateError
from endpointsec.facts import PresentedCertificate
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.verify import X509ChainVerifier, policy_builder

LIMBO_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance"
             / "x509-limbo").resolve()

#: Features pyca/cryptography's own limbo harness skips, with its reasons.
UNSUPPORTED_FEATURES = {
    "pedantic-public-suffix-wildcard": "rejecting wildcards on public suffixes is not "
                                       "practical; pyca (like most verifiers) does not",
    "pedantic-webpki-subscriber-key": "pyca does not check subscriber key sizes/curves "
                                      "beyond its minimums",
    "pedantic-webpki-eku": "pyca does not enforce the pedantic webpki EKU rules",
    "pedantic-serial-number": "pyca accepts some non-conforming serial numbers (as "
                              "most verifiers do)",
    "pedantic-rfc5280": "pedantic RFC 5280 checks beyond what pyca implements",
    "name-constraint-dn": "pyca does not implement directoryName name constraints",
    "has-policy-constraints": "pyca does not implement certificate policy constraints",
    "rfc5280-incompatible-with-webpki": "pyca implements webpki, which deliberately "
                                        "diverges from RFC 5280 here",
    "has-crl": "revocation (CRLs) is implemented neither by pyca's verifier nor by "
               "endpointsec (documented; keep certificates short-lived)",
}

#: Individual cases where pyca/cryptography deliberately diverges (its own harness skips
#: them, for the reason given); these run nowhere else in endpointsec either.
KNOWN_DIVERGENCES = {
    "pathlen::self-issued-certs-pathlen": "pyca counts self-issued intermediates for "
        "pathlen/depth (as Go crypto/x509 and rustls-webpki do), against RFC 5280",
    "pathlen::max-chain-depth-1-self-issued": "pyca counts self-issued intermediates for "
        "pathlen/depth (as Go crypto/x509 and rustls-webpki do), against RFC 5280",
    "pathlen::validation-ignores-pathlen-in-leaf": "webpki forbids a CA certificate in "
        "the leaf position (CABF); RFC 5280 allows it",
    "rfc5280::ca-as-leaf": "webpki forbids a CA certificate in the leaf position (CABF); "
        "RFC 5280 allows it (the conflicting webpki::ca-as-leaf case runs and passes)",
    "rfc5280::aki::intermediate-missing-aki": "pyca accepts intermediates without AKI (as "
        "Go crypto/x509 and rustls-webpki do)",
    "rfc5280::ski::root-missing-ski": "pyca accepts CAs without SKI (as Go crypto/x509 "
        "and rustls-webpki do)",
    "rfc5280::ski::intermediate-missing-ski": "pyca accepts CAs without SKI (as Go "
        "crypto/x509 and rustls-webpki do)",
    "webpki::aki::root-with-aki-authoritycertissuer": "pyca does not police the AKI "
        "fields of a trust anchor (trust anchors are trusted as configured)",
    "webpki::aki::root-with-aki-authoritycertserialnumber": "pyca does not police the AKI "
        "fields of a trust anchor (trust anchors are trusted as configured)",
    "webpki::aki::root-with-aki-all-fields": "pyca does not police the AKI fields of a "
        "trust anchor (trust anchors are trusted as configured)",
    "webpki::aki::root-with-aki-ski-mismatch": "pyca accepts a root whose AKI and SKI "
        "differ (as Go crypto/x509 and rustls-webpki do)",
    "webpki::forbidden-rsa-not-divisible-by-8-in-root": "pyca accepts RSA moduli not "
        "divisible by 8 (no common verifier checks this)",
    "webpki::forbidden-rsa-key-not-divisable-by-8-in-leaf": "pyca accepts RSA moduli not "
        "divisible by 8 (no common verifier checks this)",
}
for _cn in ("ipv4-hex-mismatch", "ipv4-leading-zeros-mismatch", "ipv6-uppercase-mismatch",
            "ipv6-uncompressed-mismatch", "ipv6-non-rfc5952-mismatch", "punycode-not-in-san",
            "utf8-vs-punycode-mismatch", "not-in-san", "case-mismatch"):
    KNOWN_DIVERGENCES[f"webpki::cn::{_cn}"] = (
        "pyca ignores the subject CN entirely (names come from the SAN only), so it does "
        "not check that the CN copies a SAN entry (CABF 7.1.4.3); endpointsec also never "
        "reads the CN for identity")

COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()


def _load() -> list[dict[str, Any]]:
    path = LIMBO_DIR / "limbo.json"
    if not path.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(path.read_text())["testcases"]
    return cases


def _load_client() -> list[dict[str, Any]]:
    path = LIMBO_DIR / "limbo-client.json"
    if not path.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(path.read_text())["testcases"]
    return cases


CLIENT = _load_client()
SERVER = [c for c in _load() if c["validation_kind"] == "SERVER"]


def _skip_reason(case: dict[str, Any]) -> str | None:
    if case["id"] in KNOWN_DIVERGENCES:
        return f"known pyca divergence: {KNOWN_DIVERGENCES[case['id']]}"
    for feature in case.get("features") or ():
        if feature in UNSUPPORTED_FEATURES:
            return f"feature {feature}: {UNSUPPORTED_FEATURES[feature]}"
    if case.get("signature_algorithms") or case.get("key_usage"):
        return ("the case restricts signature algorithms / key usage, which the verifier "
                "API does not take as input")
    return None


def _cert(pem: str) -> x509.Certificate:
    with warnings.catch_warnings():
        # Some real-world (online::*) certificates have non-positive serial numbers.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_pem_x509_certificate(pem.encode())


def _der(pem: str) -> bytes:
    return _cert(pem).public_bytes(serialization.Encoding.DER)


def _peer(name: dict[str, str]) -> x509.DNSName | x509.IPAddress | x509.RFC822Name:
    if name["kind"] == "DNS":
        return x509.DNSName(name["value"])
    if name["kind"] == "IP":
        return x509.IPAddress(ipaddress.ip_address(name["value"]))
    return x509.RFC822Name(name["value"])


def _record(kind: str, outcome: str) -> None:
    COUNTS[(kind, outcome)] += 1


def summary_lines() -> list[str]:
    """The counts, for the terminal summary (see conftest.py) and the cache."""
    return [f"x509-limbo {kind}: {outcome} {n}"
            for (kind, outcome), n in sorted(COUNTS.items())]


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request: pytest.FixtureRequest) -> Any:
    yield
    cache = getattr(request.config, "cache", None)
    if COUNTS and cache is not None:
        cache.set("endpointsec/limbo-results",
                  {f"{k} {o}": n for (k, o), n in COUNTS.items()})


def _require_data() -> None:
    if not LIMBO_DIR.is_dir():
        pytest.skip(f"x509-limbo data not found at {LIMBO_DIR}")


def test_limbo_data_present() -> None:
    _require_data()
    assert len(CLIENT) == 10
    assert all(c["validation_kind"] == "CLIENT" for c in CLIENT)
    assert len(SERVER) == 197


@pytest.mark.parametrize("case", CLIENT, ids=[c["id"] for c in CLIENT])
def test_limbo_client(case: dict[str, Any], tmp_path: Path) -> None:
    """Through the real X509ChainVerifier: bundle file, presented DER, at 'now'."""
    reason = _skip_reason(case)
    if reason:
        _record("CLIENT", "skip")
        pytest.skip(reason)
    assert case["validation_time"] is None, "X509ChainVerifier always validates at now"
    bundle = tmp_path / "trusted.pem"
    bundle.write_text("".join(case["trusted_certs"]))
    verifier = X509ChainVerifier(config=IdentityConfig(
        trust_bundles=(bundle,), max_chain_depth=case["max_chain_depth"] or 8))
    presented = PresentedCertificate(
        leaf=_der(case["peer_certificate"]),
        intermediates=tuple(_der(p) for p in case["untrusted_intermediates"]),
        source="limbo",
    )
    if case["expected_result"] == "SUCCESS":
        identity = verifier.verify(presented)
        assert identity.chain[0] == _cert(case["peer_certificate"])
        for child, issuer in itertools.pairwise(identity.chain):
            child.verify_directly_issued_by(issuer)
        san = identity.chain[0].extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        for name in case["expected_peer_names"]:
            assert _peer(name) in list(san)
    else:
        with pytest.raises(CertificateError):
            verifier.verify(presented)
    _record("CLIENT", "pass")


@pytest.mark.parametrize("case", SERVER, ids=[c["id"] for c in SERVER])
def test_limbo_server_chain_building(case: dict[str, Any]) -> None:
    """The same policy builder (store, time, depth, webpki), with a server verifier."""
    reason = _skip_reason(case)
    if reason is None and case.get("expected_peer_name") is None:
        reason = "SERVER case without a peer name: a server verifier needs one"
    if reason is None and case["expected_peer_name"]["kind"] not in ("DNS", "IP"):
        reason = "server peer names are DNS or IP only in pyca's API"
    if reason:
        _record("SERVER", "skip")
        pytest.skip(reason)
    when = (dt.datetime.fromisoformat(case["validation_time"]) if case["validation_time"]
            else dt.datetime.now(dt.UTC))
    builder = policy_builder(
        store=Store([_cert(p) for p in case["trusted_certs"]]),
        now=when,
        max_chain_depth=case["max_chain_depth"],
    )
    try:
        verifier = builder.build_server_verifier(_peer(case["expected_peer_name"]))  # type: ignore[arg-type]
    except ValueError:
        # pyca refuses the peer name itself (an underscore in a DNS name): nothing can
        # verify for it, which is what a FAILURE case expects.
        assert case["expected_result"] == "FAILURE"
        _record("SERVER", "pass")
        return
    leaf = _cert(case["peer_certificate"])
    intermediates = [_cert(p) for p in case["untrusted_intermediates"]]
    if case["expected_result"] == "SUCCESS":
        chain = verifier.verify(leaf, intermediates)
        assert chain[0] == leaf
        for child, issuer in itertools.pairwise(chain):
            child.verify_directly_issued_by(issuer)
    else:
        with pytest.raises(VerificationError):
            verifier.verify(leaf, intermediates)
    _record("SERVER", "pass")
