"""X509ChainVerifier: chain verification, SPIFFE rules, federation, cache, reloads."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from identity_support import Pki, presented

from endpointsec.errors import CertificateError, ConfigurationError
from endpointsec.facts import PresentedCertificate
from endpointsec.identity import verify as verify_module
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.protocols import ChainVerifier
from endpointsec.testing.pki import CertificateAuthority, IssuedCertificate

NOW = dt.datetime.now(dt.UTC)
SID = "spiffe://example.org/ns/shop/sa/orders"


def make(pki: Pki, **kwargs: object) -> X509ChainVerifier:
    kwargs.setdefault("trust_bundles", (pki.bundle,))
    return X509ChainVerifier(config=IdentityConfig(**kwargs))  # type: ignore[arg-type]


def test_is_a_chain_verifier(pki: Pki) -> None:
    assert isinstance(make(pki), ChainVerifier)


def test_valid_svid(pki: Pki) -> None:
    leaf = pki.ca.issue_client(spiffe_id=SID)
    ident = make(pki).verify(presented(leaf, source="asgi-tls"))
    assert ident.id == SID
    assert ident.source == "asgi-tls"
    assert ident.fingerprint_sha256 == leaf.fingerprint_sha256
    assert ident.chain == (leaf.certificate, pki.ca.certificate)


def test_chain_through_intermediate(pki: Pki) -> None:
    leaf = pki.intermediate.issue_client(spiffe_id=SID)
    ident = make(pki).verify(presented(leaf))
    assert ident.chain == (leaf.certificate, pki.intermediate.certificate, pki.ca.certificate)


def test_missing_intermediate_fails(pki: Pki) -> None:
    leaf = pki.intermediate.issue_client(spiffe_id=SID)
    with pytest.raises(CertificateError, match="does not verify"):
        make(pki).verify(PresentedCertificate(leaf=leaf.der))


def _expired(pki: Pki) -> IssuedCertificate:
    return pki.ca.issue_client(spiffe_id=SID, not_before=NOW - dt.timedelta(days=3),
                               not_after=NOW - dt.timedelta(days=1))


def _future(pki: Pki) -> IssuedCertificate:
    return pki.ca.issue_client(spiffe_id=SID, not_before=NOW + dt.timedelta(days=1),
                               not_after=NOW + dt.timedelta(days=3))


REJECTED: list[tuple[str, Callable[[Pki], IssuedCertificate], str]] = [
    ("expired", _expired, "not valid at validation time"),
    ("not-yet-valid", _future, "not valid at validation time"),
    ("unknown-ca", lambda p: p.other_ca.issue_client(spiffe_id=SID), "does not verify"),
    ("ca-flagged-leaf", lambda p: p.ca.issue(uris=[SID], is_ca=True), "cA must not be asserted"),
    ("server-auth-only", lambda p: p.ca.issue(
        uris=[SID], extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,)), "EKU"),
    ("two-uri-sans", lambda p: p.ca.issue_client(spiffe_id=SID, uris=["https://x"]),
     "exactly one URI SAN"),
    ("two-spiffe-ids", lambda p: p.ca.issue_client(spiffe_id=SID, uris=[SID + "2"]),
     "exactly one URI SAN"),
    ("bad-spiffe-id", lambda p: p.ca.issue_client(uris=["spiffe://Example.org/x"]), "lowercase"),
    ("no-san", lambda p: p.ca.issue_client(common_name="no-san"), "missing required extension"),
]


@pytest.mark.parametrize(("factory", "message"), [r[1:] for r in REJECTED],
                         ids=[r[0] for r in REJECTED])
def test_rejected(pki: Pki, factory: Callable[[Pki], IssuedCertificate], message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        make(pki).verify(presented(factory(pki)))


REQUIRE_SPIFFE = [
    ("dns-only", dict(dns_names=["svc.example"]), "no URI SAN"),
    ("https-uri", dict(uris=["https://svc.example"]), "not spiffe://"),
    ("two-https-uris", dict(uris=["https://a", "https://b"]), "exactly one URI SAN"),
]


@pytest.mark.parametrize(("kwargs", "message"), [r[1:] for r in REQUIRE_SPIFFE],
                         ids=[r[0] for r in REQUIRE_SPIFFE])
def test_require_spiffe(pki: Pki, kwargs: dict[str, list[str]], message: str) -> None:
    leaf = pki.ca.issue_client(**kwargs)  # type: ignore[arg-type]
    assert make(pki).verify(presented(leaf)).spiffe_id is None
    with pytest.raises(CertificateError, match=message):
        make(pki, require_spiffe=True).verify(presented(leaf))


def test_garbage_leaf(pki: Pki) -> None:
    v = make(pki)
    with pytest.raises(CertificateError, match="not valid DER"):
        v.verify(PresentedCertificate(leaf=b"garbage"))
    with pytest.raises(CertificateError, match="empty client certificate"):
        v.verify(PresentedCertificate(leaf=b""))
    leaf = pki.intermediate.issue_client(spiffe_id=SID)
    with pytest.raises(CertificateError, match="not valid DER"):
        v.verify(PresentedCertificate(leaf=leaf.der, intermediates=(b"junk",)))


def test_upstream_not_verified_is_refused(pki: Pki) -> None:
    leaf = pki.ca.issue_client(spiffe_id=SID)
    v = make(pki)
    v.verify(presented(leaf))  # cached now: the refusal must still happen
    with pytest.raises(CertificateError, match="not verified"):
        v.verify(presented(leaf, upstream_verified=False))
    with pytest.raises(CertificateError, match="not verified"):
        v.identify(presented(leaf, upstream_verified=False))
    assert v.verify(presented(leaf, upstream_verified=True)).id == SID


@pytest.mark.parametrize("style", ["lower", "upper", "colons"])
def test_claimed_sha256_matches(pki: Pki, style: str) -> None:
    leaf = pki.ca.issue_client(spiffe_id=SID)
    fp = leaf.fingerprint_sha256
    claim = {"lower": fp, "upper": fp.upper(),
             "colons": ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))}[style]
    assert make(pki).verify(presented(leaf, claimed_sha256=claim)).id == SID


def test_claimed_sha256_mismatch(pki: Pki) -> None:
    leaf = pki.ca.issue_client(spiffe_id=SID)
    v = make(pki)
    for _ in range(2):  # cold, then with the chain cached
        with pytest.raises(CertificateError, match="does not match"):
            v.verify(presented(leaf, claimed_sha256="00" * 32))
        v.verify(presented(leaf))
    with pytest.raises(CertificateError, match="does not match"):
        v.identify(presented(leaf, claimed_sha256="00" * 32))


# -- federation and allowlist ---------------------------------------------------------


def test_federation_one_bundle_per_trust_domain(pki: Pki) -> None:
    v = make(pki, trust_bundles=(), trust_domains={"example.org": pki.bundle,
                                                   "partner.org": pki.other_bundle})
    assert v.verify(presented(pki.ca.issue_client(spiffe_id=SID))).id == SID
    partner = pki.other_ca.issue_client(spiffe_id="spiffe://partner.org/billing")
    assert v.verify(presented(partner)).id == "spiffe://partner.org/billing"
    # The partner CA cannot mint identities in example.org, and vice versa.
    with pytest.raises(CertificateError, match="does not verify"):
        v.verify(presented(pki.other_ca.issue_client(spiffe_id=SID)))
    with pytest.raises(CertificateError, match="does not verify"):
        v.verify(presented(pki.ca.issue_client(spiffe_id="spiffe://partner.org/billing")))


def test_trust_domains_imply_the_allowlist(pki: Pki) -> None:
    v = make(pki, trust_domains={"example.org": pki.bundle})
    with pytest.raises(CertificateError, match=r"'evil.org' is not allowed"):
        v.verify(presented(pki.ca.issue_client(spiffe_id="spiffe://evil.org/x")))
    # Certificates without a SPIFFE ID use trust_bundles.
    assert v.verify(presented(pki.ca.issue_client(dns_names=["a.b"]))).id == "dns:a.b"


def test_explicit_allowlist(pki: Pki) -> None:
    v = make(pki, allowed_trust_domains=("example.org",))
    assert v.verify(presented(pki.ca.issue_client(spiffe_id=SID))).id == SID
    with pytest.raises(CertificateError, match="not allowed"):
        v.verify(presented(pki.ca.issue_client(spiffe_id="spiffe://other.org/x")))
    with pytest.raises(CertificateError, match="not allowed"):
        v.identify(presented(pki.ca.issue_client(spiffe_id="spiffe://other.org/x")))


def test_no_bundle_for_certificates_without_spiffe(pki: Pki) -> None:
    v = make(pki, trust_bundles=(), trust_domains={"example.org": pki.bundle})
    with pytest.raises(CertificateError, match="no SPIFFE ID"):
        v.verify(presented(pki.ca.issue_client(dns_names=["a.b"])))


def test_allowed_domain_without_bundle(pki: Pki) -> None:
    v = make(pki, trust_bundles=(), trust_domains={"example.org": pki.bundle},
             allowed_trust_domains=("example.org", "lonely.org"))
    with pytest.raises(CertificateError, match="no trust bundle for SPIFFE trust domain"):
        v.verify(presented(pki.ca.issue_client(spiffe_id="spiffe://lonely.org/x")))


# -- configuration ---------------------------------------------------------------------


def test_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"identity.trust_bundles: no trust bundle"):
        X509ChainVerifier(config=IdentityConfig())
    with pytest.raises(ConfigurationError, match=r"identity.trust_bundles: cannot load"):
        make(pki, trust_bundles=(tmp_path / "missing.pem",))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"identity.trust_domains.x.org.bundle"):
        make(pki, trust_domains={"x.org": bad})
    with pytest.raises(ConfigurationError, match=r"identity.trust_domains.X.org: .*lowercase"):
        make(pki, trust_domains={"X.org": pki.bundle})
    with pytest.raises(ConfigurationError, match=r"identity.allowed_trust_domains"):
        make(pki, allowed_trust_domains=("a:1",))


# -- identify ----------------------------------------------------------------------------


def test_identify_skips_the_chain_but_not_the_identity_rules(pki: Pki) -> None:
    v = make(pki)
    unknown = pki.other_ca.issue_client(spiffe_id=SID)
    assert v.identify(presented(unknown)).id == SID
    with pytest.raises(CertificateError, match="exactly one URI SAN"):
        v.identify(presented(pki.other_ca.issue_client(spiffe_id=SID, uris=["https://x"])))
    with pytest.raises(CertificateError, match="expired"):
        v.identify(presented(_expired(pki)))
    with pytest.raises(CertificateError, match="not yet valid"):
        v.identify(presented(_future(pki)))
    with pytest.raises(CertificateError, match="not valid DER"):
        v.identify(PresentedCertificate(leaf=b"junk"))
    with pytest.raises(CertificateError, match="SPIFFE ID is required"):
        make(pki, require_spiffe=True).identify(
            presented(pki.ca.issue_client(dns_names=["a.b"])))


# -- cache --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.wall = NOW.timestamp()
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(verify_module.time, "time", c.time)
    monkeypatch.setattr(verify_module.time, "monotonic", c.monotonic)
    return c


def _count_chain_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = verify_module.verify_client_chain

    def counting(**kwargs: object) -> object:
        calls.append(1)
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "verify_client_chain", counting)
    return calls


def test_cache_hit_skips_the_chain_check(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_chain_checks(monkeypatch)
    v = make(pki)
    leaf = pki.ca.issue_client(spiffe_id=SID)
    first = v.verify(presented(leaf, source="a"))
    second = v.verify(presented(leaf, source="a"))
    assert second is first
    assert len(calls) == 1
    # Same chain from another source: cached, relabelled.
    assert v.verify(presented(leaf, source="b")).source == "b"
    assert len(calls) == 1
    assert v.cache_len == 1
    v.clear_cache()
    v.verify(presented(leaf))
    assert len(calls) == 2


def test_cache_never_outlives_the_earliest_not_after(
    pki: Pki, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_chain_checks(monkeypatch)
    not_after = (NOW + dt.timedelta(minutes=10)).replace(microsecond=0)
    leaf = pki.ca.issue_client(spiffe_id=SID, not_after=not_after)
    v = make(pki)
    v.verify(presented(leaf))
    clock.wall = not_after.timestamp() - 1
    v.verify(presented(leaf))
    assert len(calls) == 1
    clock.wall = not_after.timestamp()  # the cached entry is gone at notAfter ...
    v.verify(presented(leaf))  # ... and re-verification still passes at notAfter
    assert len(calls) == 2
    clock.wall = not_after.timestamp() + 1
    with pytest.raises(CertificateError, match="not valid at validation time"):
        v.verify(presented(leaf))


def test_cache_expiry_uses_the_intermediate_not_after(
    pki: Pki, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    inter = pki.intermediate  # expires in ~180 days; leaf issued for 400 days
    leaf = inter.issue_client(spiffe_id=SID, not_after=NOW + dt.timedelta(days=400))
    v = make(pki)
    v.verify(presented(leaf))
    clock.wall = inter.certificate.not_valid_after_utc.timestamp() + 1
    with pytest.raises(CertificateError, match="not valid at validation time"):
        v.verify(presented(leaf))


def test_cache_is_bounded(pki: Pki) -> None:
    v = make(pki, cache_size=2)
    leaves = [pki.ca.issue_client(spiffe_id=f"{SID}{i}") for i in range(3)]
    for leaf in leaves:
        v.verify(presented(leaf))
    assert v.cache_len == 2
    v0 = make(pki, cache_size=0)
    v0.verify(presented(leaves[0]))
    assert v0.cache_len == 0


def _rewrite(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    # Make sure the change is visible even on coarse mtime filesystems.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_bundle_reload_revokes_cached_chains(
    pki: Pki, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_chain_checks(monkeypatch)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem)
    v = make(pki, trust_bundles=(bundle,), reload_interval=5.0)
    leaf = pki.ca.issue_client(spiffe_id=SID)
    v.verify(presented(leaf))
    version = v.bundles["identity.trust_bundles"].version
    _rewrite(bundle, pki.other_ca.cert_pem)
    clock.mono += 1  # within reload_interval: the file is not looked at yet
    v.verify(presented(leaf))
    assert len(calls) == 1
    clock.mono += 5
    with pytest.raises(CertificateError, match="does not verify"):
        v.verify(presented(leaf))
    assert v.bundles["identity.trust_bundles"].version == version + 1
    other = pki.other_ca.issue_client(spiffe_id=SID)
    assert v.verify(presented(other)).id == SID


def test_bundle_that_fails_to_reload_keeps_the_last_good_one(
    pki: Pki, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem)
    v = make(pki, trust_bundles=(bundle,), reload_interval=0.5)
    leaf = pki.ca.issue_client(spiffe_id=SID)
    v.verify(presented(leaf))
    _rewrite(bundle, b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    clock.mono += 1
    with caplog.at_level(logging.WARNING, logger="endpointsec.identity"):
        assert v.verify(presented(leaf)).id == SID
    assert "reload failed" in caplog.text
    assert v.bundles["identity.trust_bundles"].version == 0
    bundle.unlink()
    clock.mono += 1
    with caplog.at_level(logging.WARNING, logger="endpointsec.identity"):
        v.clear_cache()
        assert v.verify(presented(leaf)).id == SID
    assert "cannot stat" in caplog.text


def test_domain_bundle_reload_is_per_domain(pki: Pki, clock: Clock, tmp_path: Path) -> None:
    a = tmp_path / "a.pem"
    a.write_bytes(pki.ca.cert_pem)
    v = make(pki, trust_bundles=(), trust_domains={"example.org": a,
                                                   "partner.org": pki.other_bundle})
    partner = pki.other_ca.issue_client(spiffe_id="spiffe://partner.org/x")
    v.verify(presented(partner))
    new_ca = CertificateAuthority.create(name="rotated")
    _rewrite(a, pki.ca.cert_pem + new_ca.cert_pem)
    clock.mono += 10
    assert v.verify(presented(new_ca.issue_client(spiffe_id=SID))).id == SID
    assert v.verify(presented(partner)).id == "spiffe://partner.org/x"
    assert v.bundles["identity.trust_domains.partner.org.bundle"].version == 0
    assert v.bundles["identity.trust_domains.example.org.bundle"].version == 1


def test_der_intermediates_are_used(pki: Pki) -> None:
    leaf = pki.intermediate.issue_client(spiffe_id=SID)
    inter_der = pki.intermediate.certificate.public_bytes(serialization.Encoding.DER)
    ident = make(pki).verify(PresentedCertificate(leaf=leaf.der, intermediates=(inter_der,)))
    assert ident.id == SID


# -- from endpointsec.toml ------------------------------------------------------------------


def test_from_config_file_with_federation(pki: Pki, tmp_path: Path) -> None:
    from endpointsec import Gatekeeper, load_config

    (tmp_path / "ca.pem").write_bytes(pki.ca.cert_pem)
    (tmp_path / "partner.pem").write_bytes(pki.other_ca.cert_pem)
    path = tmp_path / "endpointsec.toml"
    path.write_text("""
[identity]
sources = ["asgi-tls", "gunicorn"]
trust_bundles = ["ca.pem"]
allowed_trust_domains = ["example.org", "partner.org"]
require_spiffe = true
reload_interval = 0.5
cache_size = 16
max_chain_depth = 4

[identity.trust_domains."partner.org"]
bundle = "partner.pem"

[policy]
allow_authenticated = true
""")
    gk = Gatekeeper.from_config(load_config(path))
    assert [s.name for s in gk.sources] == ["asgi-tls", "gunicorn"]
    assert gk.verifier is not None
    assert gk.verifier.verify(presented(pki.ca.issue_client(spiffe_id=SID))).id == SID
    partner = pki.other_ca.issue_client(spiffe_id="spiffe://partner.org/x")
    assert gk.verifier.verify(presented(partner)).id == "spiffe://partner.org/x"
    with pytest.raises(CertificateError, match="does not verify"):
        gk.verifier.verify(presented(pki.ca.issue_client(spiffe_id="spiffe://partner.org/x")))
    with pytest.raises(CertificateError, match="SPIFFE ID is required"):
        gk.verifier.verify(presented(pki.ca.issue_client(dns_names=["a.b"])))


def test_from_config_file_bad_domain_bundle_names_the_key(pki: Pki, tmp_path: Path) -> None:
    from endpointsec import Gatekeeper, load_config

    (tmp_path / "bad.pem").write_text("nope")
    path = tmp_path / "endpointsec.toml"
    path.write_text("""
[identity]
sources = ["asgi-tls"]

[identity.trust_domains."partner.org"]
bundle = "bad.pem"

[policy]
allow_authenticated = true
""")
    with pytest.raises(ConfigurationError, match=r"identity\.trust_domains\.partner\.org\.bundle"):
        Gatekeeper.from_config(load_config(path))


class _Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def time(self) -> float:
        return self.at

    def monotonic(self) -> float:
        return self.at


def test_identify_is_remembered_until_the_leaf_expires(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted proxy's certificate is identified once, then answered from the cache
    (no DER parsing per request); the claimed hash is still checked on every hit, and
    the answer ends at the leaf's notAfter."""
    leaf = pki.ca.issue_client(spiffe_id=SID, not_after=NOW + dt.timedelta(hours=1))
    clock = _Clock(NOW.timestamp())
    monkeypatch.setattr(verify_module, "time", clock)
    verifier = make(pki)
    parsed: list[bytes] = []
    real = verify_module.load_der_certificate

    def counting(der: bytes) -> object:
        parsed.append(der)
        return real(der)

    monkeypatch.setattr(verify_module, "load_der_certificate", counting)
    first = verifier.identify(presented(leaf, upstream_verified=True))
    again = verifier.identify(presented(leaf, source="other", upstream_verified=True))
    assert first.id == again.id == SID and again.source == "other"
    assert len(parsed) == 1
    with pytest.raises(CertificateError, match="hash"):
        verifier.identify(presented(leaf, upstream_verified=True, claimed_sha256="00" * 32))
    with pytest.raises(CertificateError, match="not verified"):
        verifier.identify(presented(leaf, upstream_verified=False))
    clock.at += 2 * 3600
    with pytest.raises(CertificateError, match="expired"):
        verifier.identify(presented(leaf, upstream_verified=True))
