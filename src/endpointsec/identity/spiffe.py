"""SPIFFE IDs, parsed and validated per the SPIFFE ID specification.

A SPIFFE ID is ``spiffe://<trust domain><path>``:

* the scheme is exactly ``spiffe`` (lowercase) followed by ``://``;
* the trust domain is non-empty, at most 255 bytes, made of lowercase letters, digits,
  ``.``, ``-`` and ``_`` only (so no port, no userinfo, no uppercase, no percent-encoding);
* the path is empty or a sequence of ``/segment``, each segment non-empty, made of
  letters, digits, ``.``, ``-`` and ``_``, and neither ``.`` nor ``..``; no trailing slash;
* there is no query and no fragment;
* the whole ID is at most 2048 bytes.

Anything else raises :class:`endpointsec.errors.CertificateError` with a message that
says which rule was broken (a SPIFFE ID always arrives inside a certificate).
"""

from __future__ import annotations

from dataclasses import dataclass

from endpointsec.errors import CertificateError

__all__ = ["MAX_SPIFFE_ID_BYTES", "SpiffeId", "parse_spiffe_id", "validate_trust_domain"]

#: Maximum length of a SPIFFE ID, in bytes (the spec's URI limit).
MAX_SPIFFE_ID_BYTES = 2048
#: Maximum length of a trust domain name, in bytes.
MAX_TRUST_DOMAIN_BYTES = 255

_SCHEME = "spiffe://"
_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"
)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID: ``spiffe://{trust_domain}{path}``.

    Build it with :func:`parse_spiffe_id`; constructing it directly skips validation.
    """

    trust_domain: str
    #: ``""`` or ``/seg/seg...``.
    path: str = ""

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    def member_of(self, trust_domain: str) -> bool:
        """Whether this ID belongs to ``trust_domain``."""
        return self.trust_domain == trust_domain


def validate_trust_domain(name: str) -> str:
    """Return ``name`` if it is a valid trust domain name, else raise CertificateError."""
    if not name:
        raise CertificateError("SPIFFE ID trust domain is missing")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        raise CertificateError(
            f"SPIFFE ID trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    for ch in name:
        if ch in _TD_CHARS:
            continue
        if ch == ":":
            raise CertificateError("SPIFFE ID trust domain must not contain a port")
        if ch == "@":
            raise CertificateError("SPIFFE ID trust domain must not contain userinfo")
        if ch == "%":
            raise CertificateError("SPIFFE ID trust domain must not be percent-encoded")
        if "A" <= ch <= "Z":
            raise CertificateError("SPIFFE ID trust domain must be lowercase")
        raise CertificateError(
            "SPIFFE ID trust domain characters are limited to lowercase letters, "
            "digits, '.', '-' and '_'"
        )
    return name


def _validate_path(path: str) -> None:
    if not path:
        return
    if not path.startswith("/"):  # pragma: no cover - the caller splits on "/"
        raise CertificateError("SPIFFE ID path must start with '/'")
    segments = path[1:].split("/")
    for i, seg in enumerate(segments):
        if seg == "":
            if i == len(segments) - 1:
                raise CertificateError("SPIFFE ID path must not have a trailing slash")
            raise CertificateError("SPIFFE ID path must not contain empty segments")
        if seg in (".", ".."):
            raise CertificateError("SPIFFE ID path must not contain '.' or '..' segments")
        for ch in seg:
            if ch in _PATH_CHARS:
                continue
            if ch == "%":
                raise CertificateError("SPIFFE ID path must not be percent-encoded")
            raise CertificateError(
                "SPIFFE ID path segment characters are limited to letters, digits, "
                "'.', '-' and '_'"
            )


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse and validate a SPIFFE ID.

    Raises :class:`endpointsec.errors.CertificateError` naming the broken rule.
    """
    if not isinstance(value, str):
        raise CertificateError("SPIFFE ID must be a string")
    if not value:
        raise CertificateError("SPIFFE ID is empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise CertificateError(f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")
    if not value.startswith(_SCHEME):
        if value[:9].lower() == _SCHEME:
            raise CertificateError("SPIFFE ID scheme must be lowercase 'spiffe'")
        raise CertificateError("SPIFFE ID scheme is missing or is not 'spiffe://'")
    rest = value[len(_SCHEME):]
    if "#" in rest:
        raise CertificateError("SPIFFE ID must not contain a fragment")
    if "?" in rest:
        raise CertificateError("SPIFFE ID must not contain a query")
    slash = rest.find("/")
    if slash == -1:
        trust_domain, path = rest, ""
    else:
        trust_domain, path = rest[:slash], rest[slash:]
    validate_trust_domain(trust_domain)
    _validate_path(path)
    return SpiffeId(trust_domain=trust_domain, path=path)
