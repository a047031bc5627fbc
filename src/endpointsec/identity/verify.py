"""Client-certificate chain verification with ``cryptography.x509.verification``.

:class:`X509ChainVerifier` verifies a presented chain for client authentication
(webpki defaults, EKU ``clientAuth``) at the current time, against trust bundles read
from PEM files:

* ``trust_bundles``: the anchors for certificates without a SPIFFE ID (and for SPIFFE
  IDs whose trust domain has no bundle of its own, if that domain is allowed);
* ``trust_domains``: one bundle per SPIFFE trust domain (federation). A SPIFFE ID in
  trust domain ``X`` verifies only against ``X``'s bundle, so a CA trusted for one
  domain cannot mint identities in another. This holds on every path: with
  ``trust_domains`` configured, :meth:`X509ChainVerifier.identify` (a proxy's
  verification relied on) verifies the chain as well;
* ``allowed_trust_domains``: the SPIFFE trust domains accepted at all.

A ``cryptography`` verifier has its validation time frozen when it is built, so a new
verifier is built for every verification (building one is cheap next to the signature
checks; the ``Store`` of each bundle is built once per bundle version). Verified chains
are cached, keyed by the chain's bytes, and an entry is used only while the bundle it
was verified against is unchanged and strictly before the earliest ``notAfter`` in the
verified chain. Bundle files are re-read when their mtime, size, inode or ctime changes (checked at
most every ``reload_interval`` seconds); a reload bumps the bundle's version, which
invalidates cached verifications; a file that fails to load keeps the last good bundle
(and the failure is logged).

Not covered: revocation (CRL/OCSP). Keep certificates short-lived (SPIFFE SVIDs are).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (
    ClientVerifier,
    PolicyBuilder,
    Store,
    VerificationError,
)

from endpointsec._memo import Memo
from endpointsec.errors import CertificateError, ConfigurationError
from endpointsec.facts import PeerIdentity, PresentedCertificate
from endpointsec.identity.certs import (
    earliest_not_after,
    fingerprint_sha256,
    load_certificates,
    load_der_certificate,
    peer_identity,
    spiffe_id_of,
)
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.spiffe import SpiffeId, validate_trust_domain

__all__ = ["TrustBundle", "X509ChainVerifier", "policy_builder", "verify_client_chain"]

logger = logging.getLogger("endpointsec.identity")

_Signature = tuple[tuple[str, int, int, int, int], ...]

#: The verified-chain cache holds at most this many bytes of certificates (and at most
#: ``[identity] cache_size`` chains).
_CACHE_BYTES = 16 * 1024 * 1024


def policy_builder(
    *, store: Store, now: dt.datetime, max_chain_depth: int | None = None
) -> PolicyBuilder:
    """The webpki policy every verification uses: ``store``, time ``now``, depth.

    A verifier built from it has ``now`` frozen in; build a new one for every check.
    """
    builder = PolicyBuilder().store(store).time(now)
    if max_chain_depth is not None:
        builder = builder.max_chain_depth(max_chain_depth)
    return builder


def verify_client_chain(
    *,
    store: Store,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    now: dt.datetime,
    max_chain_depth: int | None = None,
) -> list[x509.Certificate]:
    """Verify ``leaf`` for client authentication at ``now``; return the chain built.

    The chain is leaf first and ends with the trust anchor. Raises
    :class:`CertificateError` (with the verifier's reason) if no valid path exists.
    """
    verifier: ClientVerifier = policy_builder(
        store=store, now=now, max_chain_depth=max_chain_depth
    ).build_client_verifier()
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        raise CertificateError(f"certificate chain does not verify: {exc}") from None
    return list(verified.chain)


class TrustBundle:
    """A set of PEM files forming one trust store, reloaded when a file changes.

    ``current()`` returns ``(store, version)``; the version goes up by one on every
    successful reload. A reload that fails keeps the previous store and logs why.
    """

    def __init__(self, *, paths: Sequence[Path], key: str, reload_interval: float) -> None:
        if not paths:
            raise ConfigurationError("no bundle file given", key=key)
        self.paths = tuple(Path(p) for p in paths)
        self.key = key
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        try:
            signature = self._signature()
            certs = self._load()
        except (OSError, CertificateError) as exc:
            raise ConfigurationError(f"cannot load trust bundle: {exc}", key=key) from None
        self._signature_seen = signature
        # Store, version and certificates change together, in one assignment, so that a
        # reader never pairs a new store with an old version (or the reverse).
        self._state: tuple[Store, int, tuple[x509.Certificate, ...]] = (
            Store(list(certs)), 0, tuple(certs))
        self._checked_at = time.monotonic()
        #: Reloads that failed (the last good bundle stayed in force), for metrics.
        self.reload_failures = 0

    def _signature(self) -> _Signature:
        # mtime and size alone miss a file replaced by one of the same size whose mtime
        # was kept (cp -p, rsync -a, tar, image layers with fixed times): the inode
        # (a rename) and the ctime (any write, which no tool can set back) do not.
        out = []
        for p in self.paths:
            st = os.stat(p)
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns))
        return tuple(out)

    def _load(self) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for p in self.paths:
            data = p.read_bytes()
            try:
                loaded = load_certificates(data)
            except CertificateError as exc:
                raise CertificateError(f"{p}: {exc}") from None
            certs.extend(loaded)
        if not certs:  # pragma: no cover - load_certificates never returns []
            raise CertificateError("bundle holds no certificate")
        return certs

    def current(self) -> tuple[Store, int]:
        """The trust store and its version, reloading first if a file changed."""
        now = time.monotonic()
        if now - self._checked_at >= self.reload_interval:
            self._maybe_reload(now)
        store, version, _ = self._state
        return store, version

    @property
    def version(self) -> int:
        """Goes up by one on every successful reload."""
        return self._state[1]

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """The certificates of the current store."""
        return self._state[2]

    def _maybe_reload(self, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; use the current store meanwhile
        try:
            self._checked_at = now
            try:
                signature = self._signature()
            except OSError as exc:
                self.reload_failures += 1
                logger.warning("trust bundle %s: cannot stat (%s); keeping the last good "
                               "bundle", self.key, exc)
                return
            if signature == self._signature_seen:
                return
            try:
                certs = self._load()
            except (OSError, CertificateError) as exc:
                self.reload_failures += 1
                logger.warning("trust bundle %s: reload failed (%s); keeping the last good "
                               "bundle", self.key, exc)
                return
            self._signature_seen = signature
            self._state = (Store(list(certs)), self._state[1] + 1, tuple(certs))
            logger.info("trust bundle %s reloaded (version %d, %d certificates)",
                        self.key, self.version, len(certs))
        finally:
            self._lock.release()


@dataclass(frozen=True, slots=True)
class _Entry:
    identity: PeerIdentity
    #: The bundle the chain was verified against (``None``: identified, not verified).
    bundle: TrustBundle | None
    version: int
    #: Epoch seconds; the entry is used only strictly before this instant.
    expires_at: float


class X509ChainVerifier:
    """The shipped :class:`endpointsec.protocols.ChainVerifier`.

    ``verify`` checks the chain (at the current time, EKU clientAuth, webpki
    defaults) against the bundle that applies, then the identity rules (SPIFFE syntax,
    exactly one URI SAN for an SVID, ``require_spiffe``, the trust-domain allowlist),
    ``claimed_sha256`` and ``upstream_verified``. ``identify`` does the same without
    the chain check when there is one trust set; with ``trust_domains`` it verifies the
    chain too (see :meth:`identify`). Every failure is a :class:`CertificateError` with
    a specific message.
    """

    def __init__(self, *, config: IdentityConfig) -> None:
        self.config = config
        interval = config.reload_interval
        self._default: TrustBundle | None = None
        if config.trust_bundles:
            self._default = TrustBundle(paths=config.trust_bundles,
                                        key="identity.trust_bundles",
                                        reload_interval=interval)
        self._domains: dict[str, TrustBundle] = {}
        for name, path in config.trust_domains.items():
            key = f"identity.trust_domains.{name}.bundle"
            try:
                validate_trust_domain(name)
            except CertificateError as exc:
                raise ConfigurationError(str(exc), key=f"identity.trust_domains.{name}") \
                    from None
            self._domains[name] = TrustBundle(paths=(path,), key=key,
                                              reload_interval=interval)
        for name in config.allowed_trust_domains:
            try:
                validate_trust_domain(name)
            except CertificateError as exc:
                raise ConfigurationError(str(exc), key="identity.allowed_trust_domains") \
                    from None
        if self._default is None and not self._domains:
            raise ConfigurationError(
                "no trust bundle configured: set trust_bundles or trust_domains",
                key="identity.trust_bundles",
            )
        allowed = config.allowed_trust_domains or tuple(self._domains)
        #: ``None``: any trust domain is accepted.
        self._allowed: frozenset[str] | None = frozenset(allowed) if allowed else None
        self._require_spiffe = config.require_spiffe
        self._max_depth = config.max_chain_depth
        #: Verified (and identified) chains: ``[identity] cache_size`` entries, and at
        #: most _CACHE_BYTES of the certificates they are keyed on.
        self._cache: Memo[tuple[object, ...], _Entry] = Memo(
            max_entries=config.cache_size, max_bytes=_CACHE_BYTES)

    # -- public ---------------------------------------------------------------------

    @property
    def bundles(self) -> Mapping[str, TrustBundle]:
        """The loaded bundles by config key (for diagnostics)."""
        out = {b.key: b for b in self._domains.values()}
        if self._default is not None:
            out[self._default.key] = self._default
        return out

    def verify(self, presented: PresentedCertificate) -> PeerIdentity:
        """Verify the presented chain and return the peer's identity."""
        self._upstream_checks(presented)
        key = (presented.leaf, *presented.intermediates)
        now = time.time()
        hit = self._cache_get(key, now)
        if hit is not None:
            if presented.claimed_sha256 is not None:
                _check_claim(presented.claimed_sha256, hit.fingerprint_sha256)
            if hit.source != presented.source:
                return _with_source(hit, presented.source)
            return hit
        leaf = load_der_certificate(presented.leaf)
        intermediates = [load_der_certificate(d) for d in presented.intermediates]
        fp = fingerprint_sha256(leaf)
        if presented.claimed_sha256 is not None:
            _check_claim(presented.claimed_sha256, fp)
        spiffe = self._spiffe(leaf)
        bundle = self._bundle_for(spiffe)
        store, version = bundle.current()
        chain = verify_client_chain(
            store=store, leaf=leaf, intermediates=intermediates,
            now=dt.datetime.fromtimestamp(now, dt.UTC), max_chain_depth=self._max_depth,
        )
        identity = peer_identity(chain, source=presented.source,
                                 require_spiffe=self._require_spiffe, fingerprint=fp)
        # One bound for both: the identity's not_after is the earliest notAfter of the
        # verified chain (leaf, intermediates, anchor), and so is the cache entry's.
        self._cache_put(key, _Entry(identity=identity, bundle=bundle, version=version,
                                    expires_at=earliest_not_after(chain).timestamp()))
        return identity

    def identify(self, presented: PresentedCertificate) -> PeerIdentity:
        """The identity of the presented leaf *without* chain verification.

        For a proxy whose own verification is explicitly trusted. The identity rules,
        the trust-domain allowlist, ``claimed_sha256``, ``upstream_verified`` and the
        leaf's validity period are still checked.

        Only with a single trust set (``trust_bundles`` alone). With per-trust-domain
        bundles (``trust_domains``) the proxy's word cannot say *which* anchor it used,
        and a partner CA it trusts for its own domain could mint identities in ours:
        the chain is then verified (:meth:`verify`) against the bundle of the
        identity's trust domain, exactly as if the proxy's verification were not
        relied on. Federation holds on every path.
        """
        if self._domains:
            return self.verify(presented)
        self._upstream_checks(presented)
        # Remembered like a verification (the proxy sends the same certificate on every
        # request), until the leaf's notAfter: nothing else here changes with time.
        key = ("identify", presented.leaf, *presented.intermediates)
        now_ts = time.time()
        hit = self._cache_get(key, now_ts)
        if hit is not None:
            if presented.claimed_sha256 is not None:
                _check_claim(presented.claimed_sha256, hit.fingerprint_sha256)
            return hit if hit.source == presented.source else _with_source(
                hit, presented.source)
        leaf = load_der_certificate(presented.leaf)
        intermediates = [load_der_certificate(d) for d in presented.intermediates]
        fp = fingerprint_sha256(leaf)
        if presented.claimed_sha256 is not None:
            _check_claim(presented.claimed_sha256, fp)
        now = dt.datetime.fromtimestamp(now_ts, dt.UTC)
        if now < leaf.not_valid_before_utc:
            raise CertificateError("certificate is not yet valid")
        if now > leaf.not_valid_after_utc:
            raise CertificateError("certificate has expired")
        self._spiffe(leaf)
        identity = peer_identity([leaf, *intermediates], source=presented.source,
                                 require_spiffe=self._require_spiffe, fingerprint=fp)
        until = identity.not_after or leaf.not_valid_after_utc
        self._cache_put(key, _Entry(identity=identity, bundle=None, version=0,
                                    expires_at=until.timestamp()))
        return identity

    def clear_cache(self) -> None:
        """Forget every cached verification."""
        self._cache.clear()

    # -- steps ----------------------------------------------------------------------

    @staticmethod
    def _upstream_checks(presented: PresentedCertificate) -> None:
        if presented.upstream_verified is False:
            raise CertificateError(
                f"source {presented.source!r} reports that the client certificate was "
                "not verified"
            )
        if not presented.leaf:
            raise CertificateError("empty client certificate")

    def _spiffe(self, leaf: x509.Certificate) -> SpiffeId | None:
        """SPIFFE ID of the leaf (SVID rules, require_spiffe) and the allowlist."""
        try:
            ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = ext.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        except ValueError as exc:
            raise CertificateError(f"certificate extensions cannot be parsed: {exc}") \
                from None
        spiffe = spiffe_id_of(uris, require_spiffe=self._require_spiffe)
        if spiffe is not None and self._allowed is not None \
                and spiffe.trust_domain not in self._allowed:
            raise CertificateError(
                f"SPIFFE trust domain {spiffe.trust_domain!r} is not allowed"
            )
        return spiffe

    def _bundle_for(self, spiffe: SpiffeId | None) -> TrustBundle:
        if spiffe is not None:
            bundle = self._domains.get(spiffe.trust_domain)
            if bundle is not None:
                return bundle
            if self._default is not None:
                return self._default
            raise CertificateError(
                f"no trust bundle for SPIFFE trust domain {spiffe.trust_domain!r}"
            )
        if self._default is None:
            raise CertificateError(
                "certificate has no SPIFFE ID and no trust_bundles are configured for "
                "certificates without one"
            )
        return self._default

    # -- cache ----------------------------------------------------------------------

    def _cache_get(self, key: tuple[object, ...], now: float) -> PeerIdentity | None:
        # Reads take no lock (a dict lookup is atomic); the oldest entry is evicted
        # first. Each hit checks the deadline and the bundle's version again.
        entry = self._cache.get(key)
        if entry is None:
            return None
        if now >= entry.expires_at or (
                entry.bundle is not None and entry.bundle.current()[1] != entry.version):
            self._cache_drop(key, entry)
            return None
        return entry.identity

    def _cache_drop(self, key: tuple[object, ...], entry: _Entry) -> None:
        self._cache.discard(key, entry)

    def _cache_put(self, key: tuple[object, ...], entry: _Entry) -> None:
        """Remember ``entry``, sized by the certificates it is keyed on."""
        self._cache.put(key, entry, size=sum(len(k) for k in key if isinstance(k, bytes)))

    @property
    def cache_len(self) -> int:
        """Number of cached verifications."""
        return len(self._cache)


def _normalize_hex(value: str) -> str:
    return value.replace(":", "").strip().lower()


def _check_claim(claimed: str, actual: str) -> None:
    if _normalize_hex(claimed) != actual:
        raise CertificateError(
            "the certificate's SHA-256 does not match the hash its source claimed"
        )


def _with_source(identity: PeerIdentity, source: str) -> PeerIdentity:
    from dataclasses import replace

    return replace(identity, source=source)
