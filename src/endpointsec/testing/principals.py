"""Principals for tests, built offline: no chain verification, no token signature.

These helpers turn what a test names (a SPIFFE ID, an issued certificate, a dict of
token claims) into the :class:`PeerIdentity` and :class:`RequestPrincipal` that the
gather step would have produced, so that policy can be tested without a server.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from endpointsec.errors import ConfigurationError, EndpointSecError
from endpointsec.facts import PeerIdentity, RequestPrincipal
from endpointsec.testing.pki import CertificateLike, IssuedCertificate, certificate_chain

__all__ = [
    "PeerLike",
    "TokenLike",
    "cnf_thumbprint",
    "peer_identity",
    "request_principal",
]

#: What a test may name as the peer: a principal string, an identity, or a certificate
#: (issued, ``cryptography``, or what ``endpointsec pki`` writes: a PEM file path or PEM
#: text, leaf first).
PeerLike = str | bytes | os.PathLike[str] | PeerIdentity | IssuedCertificate | x509.Certificate
#: What a test may name as the request principal (a JWT string needs a verifier).
TokenLike = str | RequestPrincipal | Mapping[str, Any]


def cnf_thumbprint(certificate: CertificateLike) -> str:
    """The RFC 8705 ``x5t#S256`` thumbprint (base64url SHA-256 of the DER certificate);
    ``certificate`` may also be a PEM file path or PEM text (its leaf)."""
    __tracebackhide__ = True
    cert = _leaf(certificate)
    digest = cert.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _leaf(certificate: CertificateLike) -> x509.Certificate:
    __tracebackhide__ = True
    try:
        return certificate_chain(certificate)[0]
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _is_pem_source(peer: object) -> bool:
    """PEM text, or a path to an existing file: what ``endpointsec pki`` writes."""
    if isinstance(peer, bytes | os.PathLike):
        return True
    if not isinstance(peer, str):
        return False
    if "-----BEGIN" in peer:
        return True
    # A principal string always has a scheme ("spiffe:", "dns:" ...); a path names a file.
    return ":" not in peer.split("/", 1)[0] and Path(peer).is_file()


def _spiffe(value: str) -> Any:
    """Parse a SPIFFE ID with the identity package's parser."""
    __tracebackhide__ = True
    from endpointsec.identity.spiffe import parse_spiffe_id

    try:
        return parse_spiffe_id(value)
    except EndpointSecError as exc:
        raise ConfigurationError(f"not a valid SPIFFE ID {value!r}: {exc}") from None


def _from_certificate(cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> PeerIdentity:
    __tracebackhide__ = True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris, dns = (), ()
    spiffe_uris = [u for u in uris if u.startswith("spiffe://")]
    spiffe_id = _spiffe(spiffe_uris[0]) if len(spiffe_uris) == 1 and len(uris) == 1 else None
    return PeerIdentity(
        subject=cert.subject.rfc4514_string(),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        spiffe_id=spiffe_id,
        uri_sans=uris,
        dns_sans=dns,
        not_after=cert.not_valid_after_utc,
        source="testing",
        chain=(cert, *chain),
    )


def peer_identity(peer: PeerLike) -> PeerIdentity:
    """The peer identity for a SPIFFE ID / URI / ``dns:name`` / ``sha256:hex`` string,
    a certificate, an :class:`IssuedCertificate`, or a PEM file path / PEM text (as
    ``endpointsec pki`` writes them) — without chain verification.

    A SPIFFE ID, ``dns:``, ``sha256:`` or ``uri:`` string becomes an identity whose
    :attr:`PeerIdentity.id` is that string; any other URI becomes ``uri:<uri>``.
    """
    __tracebackhide__ = True
    if isinstance(peer, PeerIdentity):
        return peer
    if isinstance(peer, IssuedCertificate):
        return _from_certificate(peer.certificate, peer.intermediates)
    if isinstance(peer, x509.Certificate):
        return _from_certificate(peer, ())
    if _is_pem_source(peer):
        try:
            chain = certificate_chain(peer)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return _from_certificate(chain[0], chain[1:])
    if not isinstance(peer, str) or not peer:
        raise ConfigurationError(f"cannot make a peer identity from {type(peer).__name__}")
    fingerprint = hashlib.sha256(peer.encode()).hexdigest()
    if peer.startswith("spiffe://"):
        return PeerIdentity(subject="", fingerprint_sha256=fingerprint,
                            spiffe_id=_spiffe(peer), uri_sans=(peer,), source="testing")
    if peer.startswith("dns:"):
        return PeerIdentity(subject="", fingerprint_sha256=fingerprint,
                            dns_sans=(peer[4:],), source="testing")
    if peer.startswith("sha256:"):
        fp = peer[7:].lower()
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise ConfigurationError(f"not a SHA-256 fingerprint: {peer!r}")
        return PeerIdentity(subject="", fingerprint_sha256=fp, source="testing")
    if peer.startswith("uri:"):  # a URI SAN, written as its policy subject
        peer = peer[4:]
    if ":" in peer:  # any other URI SAN (its policy subject is "uri:<uri>")
        return PeerIdentity(subject="", fingerprint_sha256=fingerprint, uri_sans=(peer,),
                            source="testing")
    raise ConfigurationError(
        f"peer {peer!r} is not a SPIFFE ID, a URI, 'dns:<name>' or 'sha256:<hex>'"
    )


def _names(value: Any, *, what: str, split: bool = False) -> frozenset[str]:
    __tracebackhide__ = True
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split()) if split else frozenset({value})
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise ConfigurationError(f"token {what} must be a string or a list of strings")


def _time(value: Any, *, what: str) -> float | None:
    __tracebackhide__ = True
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"token {what} must carry a time zone")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigurationError(f"token {what} must be a number of seconds or a datetime")


def request_principal(claims: RequestPrincipal | Mapping[str, Any]) -> RequestPrincipal:
    """The request principal for a mapping of token claims, as the verifier maps them.

    Keys: ``iss`` and ``sub`` (required), ``aud``, ``roles``, ``scope`` (space-separated)
    or ``scopes`` (a list), ``groups``, ``exp``, ``cnf_x5t_s256`` (or ``cnf``:
    ``{"x5t#S256": ...}``). Other keys are kept in :attr:`RequestPrincipal.claims`.
    """
    __tracebackhide__ = True
    if isinstance(claims, RequestPrincipal):
        return claims
    if not isinstance(claims, Mapping):
        raise ConfigurationError("token claims must be a mapping")
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not iss or not isinstance(sub, str) or not sub:
        raise ConfigurationError("token claims need non-empty 'iss' and 'sub' strings")
    scopes = _names(claims.get("scope"), what="scope", split=True) | _names(
        claims.get("scopes"), what="scopes")
    cnf = claims.get("cnf_x5t_s256")
    cnf_claim = claims.get("cnf")
    if cnf is None and isinstance(cnf_claim, Mapping):
        cnf = cnf_claim.get("x5t#S256")
    if cnf is not None and not isinstance(cnf, str):
        raise ConfigurationError("token cnf x5t#S256 must be a string")
    return RequestPrincipal(
        issuer=iss,
        subject=sub,
        audience=tuple(sorted(_names(claims.get("aud"), what="aud"))),
        roles=_names(claims.get("roles"), what="roles"),
        scopes=scopes,
        groups=_names(claims.get("groups"), what="groups"),
        expires_at=_time(claims.get("exp"), what="exp"),
        cnf_x5t_s256=cnf,
        claims=dict(claims),
    )
