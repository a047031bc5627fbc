"""Parsers for the headers TLS-terminating proxies use to forward a client certificate.

Pure functions, no trust decisions: each takes a header value (``str``, as decoded
from latin-1) and returns DER bytes, or raises
:class:`~endpointsec.errors.ForwardedCertificateError` with a specific message. Whether
the header may be read at all (is the peer a trusted proxy?) is decided by the
sources in :mod:`endpointsec.identity.forwarded`.

Formats:

- Envoy ``x-forwarded-client-cert`` (XFCC): :func:`parse_xfcc`.
- RFC 9440 ``Client-Cert`` / ``Client-Cert-Chain`` (structured-field byte sequences):
  :func:`parse_sf_binary`, :func:`parse_sf_binary_list`.
- URL-encoded PEM (nginx ``$ssl_client_escaped_cert``, AWS ALB, XFCC ``Cert``/``Chain``):
  :func:`parse_escaped_pem`.
- base64 DER (HAProxy ``%[ssl_c_der,base64]``, Caddy ``certificate_der_base64``):
  :func:`parse_base64_der`.
- Traefik ``X-Forwarded-Tls-Client-Cert`` (base64 DER, comma-separated, URL-escaped by
  Traefik v2, plain in v3): :func:`parse_traefik`.

Only the outer DER structure is checked here (one SEQUENCE whose length matches the
bytes exactly); the chain verifier parses the certificate itself.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from itertools import product

from endpointsec.errors import ForwardedCertificateError

__all__ = [
    "MAX_HEADER_LENGTH",
    "XfccElement",
    "check_der",
    "parse_base64_der",
    "parse_escaped_pem",
    "parse_sf_binary",
    "parse_sf_binary_list",
    "parse_traefik",
    "parse_xfcc",
]

#: Longer header values are refused before parsing (a chain of a few certificates is
#: a few kilobytes; servers cap headers well below this).
MAX_HEADER_LENGTH = 65536

_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_XFCC_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
#: XFCC keys that carry one value per element (a repeat is ambiguous).
_XFCC_SINGLE = frozenset({"hash", "cert", "chain", "subject"})


def _check_length(value: str, what: str) -> None:
    if len(value) > MAX_HEADER_LENGTH:
        raise ForwardedCertificateError(
            f"{what} is {len(value)} characters long (limit {MAX_HEADER_LENGTH})"
        )


def check_der(der: bytes, *, what: str = "certificate") -> bytes:
    """Return ``der`` if it is exactly one DER SEQUENCE (the outer shape of an X.509
    certificate), else raise :class:`ForwardedCertificateError`."""
    n = len(der)
    if n < 2 or der[0] != 0x30:
        raise ForwardedCertificateError(f"{what} is not DER (no outer SEQUENCE)")
    first = der[1]
    if first < 0x80:
        length, header = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or n < 2 + count:
            raise ForwardedCertificateError(f"{what} is not DER (bad length)")
        length = int.from_bytes(der[2 : 2 + count], "big")
        header = 2 + count
        if der[2] == 0 or length < 0x80:
            raise ForwardedCertificateError(f"{what} is not DER (non-minimal length)")
    if header + length != n:
        raise ForwardedCertificateError(
            f"{what} is not DER (declares {length} bytes, carries {n - header})"
        )
    return der


def _b64decode(text: str, *, what: str, padding_optional: bool = False) -> bytes:
    if not text:
        raise ForwardedCertificateError(f"{what} is empty")
    if _B64.fullmatch(text) is None:
        raise ForwardedCertificateError(f"{what} is not base64")
    if padding_optional and len(text) % 4:
        text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise ForwardedCertificateError(f"{what} is not valid base64: {exc}") from None


def parse_base64_der(value: str, *, what: str = "certificate") -> bytes:
    """One certificate as base64 DER (HAProxy ``%[ssl_c_der,base64]``, Caddy
    ``{http.request.tls.client.certificate_der_base64}``)."""
    _check_length(value, what)
    return check_der(_b64decode(value.strip(" \t"), what=what), what=what)


#: "%XX" (either case) -> character, for the ASCII range.
_HEX2: dict[str, str] = {
    a + b: chr(i)
    for i in range(0x80)
    for a, b in product(*({c.lower(), c.upper()} for c in f"{i:02x}"))
}


def _unquote(value: str, *, what: str) -> str:
    """Percent-decode to ASCII (``+`` stays ``+``); any other escape is an error."""
    if "%" not in value:
        if not value.isascii():
            raise ForwardedCertificateError(f"{what} is not URL-encoded ASCII")
        return value
    parts = value.split("%")
    out = [parts[0]]
    hex2 = _HEX2
    for part in parts[1:]:
        ch = hex2.get(part[:2])
        if ch is None:
            raise ForwardedCertificateError(
                f"{what} has a bad or non-ASCII percent-escape")
        out.append(ch)
        out.append(part[2:])
    text = "".join(out)
    if not text.isascii():
        raise ForwardedCertificateError(f"{what} is not URL-encoded ASCII")
    return text


def parse_escaped_pem(value: str, *, what: str = "certificate") -> tuple[bytes, ...]:
    """URL-encoded PEM (one or more ``CERTIFICATE`` blocks), as DER, in order.

    Used by nginx ``$ssl_client_escaped_cert``, AWS ALB and XFCC ``Cert``/``Chain``.
    ``+`` is a literal ``+`` (never a space). Anything but whitespace outside the
    blocks, or a block that is not base64 DER, is an error.
    """
    _check_length(value, what)
    text = _unquote(value, what=what)
    out: list[bytes] = []
    pos = 0
    while True:
        begin = text.find(_BEGIN, pos)
        if begin < 0:
            break
        if text[pos:begin].strip():
            raise ForwardedCertificateError(f"{what} has data outside the PEM blocks")
        start = begin + len(_BEGIN)
        end = text.find(_END, start)
        if end < 0:
            raise ForwardedCertificateError(f"{what} has a PEM block without its end line")
        body = "".join(text[start:end].split())
        out.append(check_der(_b64decode(body, what=what), what=what))
        pos = end + len(_END)
    if text[pos:].strip():
        raise ForwardedCertificateError(f"{what} has data outside the PEM blocks")
    if not out:
        raise ForwardedCertificateError(f"{what} has no PEM CERTIFICATE block")
    return tuple(out)


def parse_traefik(value: str, *, what: str = "Traefik certificate") -> tuple[bytes, ...]:
    """Traefik ``X-Forwarded-Tls-Client-Cert``: base64 DER bodies (PEM without the
    delimiters), comma-separated, leaf first; URL-escaped by Traefik v2."""
    _check_length(value, what)
    text = _unquote(value, what=what) if "%" in value else value
    parts = [p.strip(" \t") for p in text.split(",")]
    return tuple(check_der(_b64decode(p, what=what), what=what) for p in parts)


# -- RFC 8941 byte sequences (RFC 9440) ---------------------------------------------


def _sf_binary(text: str, *, what: str) -> bytes:
    if len(text) < 2 or text[0] != ":" or text[-1] != ":":
        raise ForwardedCertificateError(
            f"{what} is not a structured-field byte sequence (:base64:)"
        )
    inner = text[1:-1]
    if ":" in inner:
        raise ForwardedCertificateError(f"{what} has parameters or several items")
    return check_der(_b64decode(inner, what=what, padding_optional=True), what=what)


def parse_sf_binary(value: str, *, what: str = "Client-Cert") -> bytes:
    """RFC 9440 ``Client-Cert``: one byte sequence ``:base64(DER):``. Parameters are
    refused (RFC 9440 defines none)."""
    _check_length(value, what)
    return _sf_binary(value.strip(" \t"), what=what)


def parse_sf_binary_list(value: str, *, what: str = "Client-Cert-Chain") -> tuple[bytes, ...]:
    """RFC 9440 ``Client-Cert-Chain``: a list of byte sequences (the chain without the
    leaf), in order."""
    _check_length(value, what)
    text = value.strip(" \t")
    if not text:
        return ()
    return tuple(_sf_binary(p.strip(" \t"), what=what) for p in text.split(","))


# -- Envoy XFCC ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One XFCC element: what one proxy said about the client certificate it saw."""

    by: tuple[str, ...] = ()
    #: Lower-case hex SHA-256 of the client certificate's DER, if sent.
    hash: str | None = None
    #: ``Cert``: the client certificate, DER.
    cert: bytes | None = None
    #: ``Chain``: the whole client chain including the leaf, DER, leaf first.
    chain: tuple[bytes, ...] = ()
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


_XFCC_PAIR = re.compile(
    r'([A-Za-z][A-Za-z0-9_-]*)=(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^;,="\\]*))([;,]|\Z)', re.S
)
_XFCC_UNESCAPE = re.compile(r"\\(.)", re.S)


def _split_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Tokenize into elements of (key, value) pairs, honouring quoted values."""
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    pos, n = 0, len(value)
    match = _XFCC_PAIR.match
    while True:
        m = match(value, pos)
        if m is None:
            raise ForwardedCertificateError(_xfcc_error(value, pos))
        key, quoted, plain, sep = m.groups()
        if quoted is not None:
            val = _XFCC_UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
        else:
            val = plain
        pairs.append((key.lower(), val))
        pos = m.end()
        if not sep:
            elements.append(pairs)
            return elements
        if pos >= n:
            raise ForwardedCertificateError(
                "XFCC ends with an empty element" if sep == "," else
                "XFCC element ends with ';'")
        if sep == ",":
            elements.append(pairs)
            pairs = []
            while pos < n and value[pos] in " \t":
                pos += 1


def _xfcc_error(value: str, pos: int) -> str:
    """A specific message for the pair that failed to match at ``pos``."""
    rest = value[pos:]
    eq = rest.find("=")
    if eq < 0:
        return "XFCC pair without '='"
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", rest[:eq]) is None:
        return "XFCC key is empty or not a token"
    val = rest[eq + 1:]
    if val.startswith('"'):
        m = re.match(r'"[^"\\]*(?:\\.[^"\\]*)*"', val, re.S)
        if m is None:
            return ("XFCC value ends in a backslash" if val.endswith("\\")
                    and not val.endswith("\\\\") else "XFCC quoted value is not closed")
        return "XFCC quoted value is followed by something other than ';' or ','"
    return "XFCC value with '=', '\"' or '\\' must be quoted"


def parse_xfcc(value: str) -> tuple[XfccElement, ...]:
    """Parse an Envoy ``x-forwarded-client-cert`` value into its elements, in order
    (the last element was added by the proxy nearest the app).

    Keys are case-insensitive; ``By``, ``URI`` and ``DNS`` may repeat, ``Hash``,
    ``Cert``, ``Chain`` and ``Subject`` may not; unknown keys are ignored. ``Cert`` and
    ``Chain`` are URL-encoded PEM and are decoded to DER here.
    """
    _check_length(value, "XFCC header")
    text = value.strip(" \t")
    if not text:
        raise ForwardedCertificateError("XFCC header is empty")
    out: list[XfccElement] = []
    for pairs in _split_xfcc(text):
        seen: set[str] = set()
        by: list[str] = []
        uri: list[str] = []
        dns: list[str] = []
        fields: dict[str, str] = {}
        for key, val in pairs:
            if key in _XFCC_SINGLE:
                if key in seen:
                    raise ForwardedCertificateError(
                        f"XFCC element repeats the key {key!r} (ambiguous)"
                    )
                seen.add(key)
                fields[key] = val
            elif key == "by":
                by.append(val)
            elif key == "uri":
                uri.append(val)
            elif key == "dns":
                dns.append(val)
        digest = fields.get("hash")
        if digest is not None and _HEX64.fullmatch(digest) is None:
            raise ForwardedCertificateError("XFCC Hash is not a hex SHA-256 digest")
        cert: bytes | None = None
        if "cert" in fields:
            certs = parse_escaped_pem(fields["cert"], what="XFCC Cert")
            if len(certs) != 1:
                raise ForwardedCertificateError("XFCC Cert holds more than one certificate")
            cert = certs[0]
        chain = (parse_escaped_pem(fields["chain"], what="XFCC Chain")
                 if "chain" in fields else ())
        out.append(XfccElement(
            by=tuple(by),
            hash=digest.lower() if digest is not None else None,
            cert=cert,
            chain=chain,
            subject=fields.get("subject"),
            uri=tuple(uri),
            dns=tuple(dns),
        ))
    return tuple(out)
