"""Reading certificates (PEM, DER, chains) and turning a chain into a :class:`PeerIdentity`.

Nothing here verifies a chain: :mod:`endpointsec.identity.verify` does, then calls
:func:`peer_identity` on the verified chain. Every malformed input raises
:class:`endpointsec.errors.CertificateError`, never a ``ValueError`` from the parser.
"""

from __future__ import annotations

import binascii
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from endpointsec.errors import CertificateError
from endpointsec.facts import PeerIdentity
from endpointsec.identity.spiffe import SpiffeId, parse_spiffe_id

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "earliest_not_after",
    "fingerprint_sha256",
    "load_certificates",
    "load_der_certificate",
    "peer_identity",
    "pem_to_der",
    "spiffe_id_of",
]

#: Largest certificate input accepted (PEM or DER, a whole chain), in bytes.
MAX_CERTIFICATE_BYTES = 256 * 1024

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_WHITESPACE = b" \t\r\n\v\f"


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("ascii")
        except UnicodeEncodeError:
            raise CertificateError("PEM certificate contains non-ASCII characters") from None
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise CertificateError(f"certificate must be bytes or str, not {type(data).__name__}")


def pem_to_der(pem: bytes | str) -> list[bytes]:
    """The DER bytes of every ``CERTIFICATE`` block in ``pem``, in order.

    Only decodes base64 (cheap); the DER itself is checked when it is parsed. Raises
    :class:`CertificateError` if there is no block or a block is not valid base64.
    """
    raw = _as_bytes(pem)
    if len(raw) > MAX_CERTIFICATE_BYTES:
        raise CertificateError("certificate data is too large")
    out: list[bytes] = []
    pos = 0
    while True:
        start = raw.find(_BEGIN, pos)
        if start < 0:
            break
        end = raw.find(_END, start + len(_BEGIN))
        if end < 0:
            raise CertificateError("PEM CERTIFICATE block is not terminated")
        body = raw[start + len(_BEGIN):end].translate(None, _WHITESPACE)
        try:
            der = binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError):
            raise CertificateError("PEM CERTIFICATE block is not valid base64") from None
        if not der:
            raise CertificateError("PEM CERTIFICATE block is empty")
        out.append(der)
        pos = end + len(_END)
    if not out:
        raise CertificateError("no PEM CERTIFICATE block found")
    return out


def load_der_certificate(der: bytes) -> x509.Certificate:
    """Parse one DER certificate; :class:`CertificateError` if it is not one."""
    if not isinstance(der, bytes):
        raise CertificateError(f"DER certificate must be bytes, not {type(der).__name__}")
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise CertificateError("certificate data is too large")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"certificate is not valid DER: {exc}") from None


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Parse a PEM bundle/chain (one or more certificates) or one DER certificate."""
    raw = _as_bytes(data)
    if not raw:
        raise CertificateError("certificate data is empty")
    if b"-----BEGIN" in raw:
        return [load_der_certificate(der) for der in pem_to_der(raw)]
    return [load_der_certificate(raw)]


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return (), ()
    except ValueError as exc:
        raise CertificateError(f"certificate extensions cannot be parsed: {exc}") from None
    san = ext.value
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    dns = tuple(san.get_values_for_type(x509.DNSName))
    return uris, dns


def spiffe_id_of(uri_sans: Sequence[str], *, require_spiffe: bool) -> SpiffeId | None:
    """The SPIFFE ID carried by these URI SANs, checked per the X.509-SVID spec.

    An X.509-SVID has exactly one URI SAN. A certificate with a ``spiffe:`` URI SAN
    *and* other URI SANs is rejected (it is not a valid SVID, and picking one would be
    a guess); with ``require_spiffe``, a certificate without exactly one URI SAN that is
    a valid SPIFFE ID is rejected too.
    """
    spiffe_like = [u for u in uri_sans if u[:7].lower() == "spiffe:"]
    if spiffe_like and len(uri_sans) != 1:
        raise CertificateError(
            f"an X.509-SVID must have exactly one URI SAN; the certificate has "
            f"{len(uri_sans)}"
        )
    if require_spiffe:
        if not uri_sans:
            raise CertificateError("a SPIFFE ID is required but the certificate has no URI SAN")
        if len(uri_sans) != 1:
            raise CertificateError(
                f"a SPIFFE ID is required and an X.509-SVID must have exactly one URI SAN; "
                f"the certificate has {len(uri_sans)}"
            )
        if not spiffe_like:
            raise CertificateError("a SPIFFE ID is required but the URI SAN is not spiffe://")
    if not spiffe_like:
        return None
    return parse_spiffe_id(spiffe_like[0])


def earliest_not_after(chain: Sequence[x509.Certificate]) -> dt.datetime:
    """The earliest ``notAfter`` over ``chain`` (leaf, intermediates, anchor): the end
    of the chain's validity, and so of anything remembered about it."""
    if not chain:
        raise CertificateError("empty certificate chain")
    return min(c.not_valid_after_utc for c in chain)


def peer_identity(
    chain: Sequence[x509.Certificate],
    *,
    source: str = "unknown",
    require_spiffe: bool = False,
    fingerprint: str | None = None,
) -> PeerIdentity:
    """Build the :class:`PeerIdentity` of ``chain`` (leaf first).

    Only reads the certificate; call it on a verified chain (or, for ``identify``, on a
    chain whose verification is explicitly trusted elsewhere). ``not_after`` is the
    earliest ``notAfter`` of the whole chain, not the leaf's: the identity holds only
    while every certificate it rests on is valid.
    """
    if not chain:
        raise CertificateError("empty certificate chain")
    leaf = chain[0]
    uris, dns = _sans(leaf)
    spiffe = spiffe_id_of(uris, require_spiffe=require_spiffe)
    try:
        subject = leaf.subject.rfc4514_string()
    except ValueError as exc:  # pragma: no cover - cryptography parses names eagerly
        raise CertificateError(f"certificate subject cannot be read: {exc}") from None
    return PeerIdentity(
        subject=subject,
        fingerprint_sha256=fingerprint or fingerprint_sha256(leaf),
        spiffe_id=spiffe,
        uri_sans=uris,
        dns_sans=dns,
        not_after=earliest_not_after(chain),
        source=source,
        chain=tuple(chain),
    )
