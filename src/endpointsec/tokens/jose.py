"""Strict JWS compact parsing and signature checking (the layer under the JWT verifier).

Everything untrusted is looked at here, in this order, and any failure raises
:class:`endpointsec.errors.TokenError`:

1. size (before anything is parsed), then the shape: exactly three segments (five is a
   JWE, refused: RFC 8725 §3.x, we verify signatures, we never decrypt);
2. strict base64url: only ``A-Z a-z 0-9 - _``, no padding, no spaces, and canonical
   (unused trailing bits must be zero, so that one token has one spelling);
3. the header: a JSON object with unique member names, ``alg`` a string and not
   ``none``; ``crit`` refused (we understand no extension), ``b64`` refused unless true
   (RFC 7797 unencoded payloads), ``cty: JWT`` refused (nested tokens), and the
   key-carrying members ``jku``, ``jwk``, ``x5u``, ``x5c`` refused outright: keys come
   from configuration only (RFC 8725 §3.10);
4. the payload: a JSON object with unique member names (only for JWTs; the raw JWS
   layer used by the Wycheproof harness takes any payload).

The signature is checked with pyjwt's algorithm objects against a key the caller picked
from configuration, for an algorithm the caller pinned.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from endpointsec.errors import TokenError
from endpointsec.tokens.config import SUPPORTED_ALGORITHMS
from endpointsec.tokens.keys import VerificationKey

__all__ = ["ParsedJWS", "decode_b64url", "parse_claims", "parse_jws", "verify_signature"]

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_FORBIDDEN_HEADERS = ("jku", "jwk", "x5u", "x5c")
_ALGORITHMS: dict[str, Algorithm] = {
    name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS
}


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A JWS in compact serialization, parsed but not verified."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STD = str.maketrans("-_", "+/")
#: For a last character, the bits that must be zero when the length is 2 or 3 mod 4.
_UNUSED_BITS = {2: 0b1111, 3: 0b0011}


def decode_b64url(segment: str, what: str) -> bytes:
    """Strict, canonical, unpadded base64url."""
    if _SEGMENT.fullmatch(segment) is None:
        raise TokenError(f"token {what} is not base64url")
    rem = len(segment) % 4
    if rem == 1:
        raise TokenError(f"token {what} has an impossible base64url length")
    if rem and _ALPHABET.index(segment[-1]) & _UNUSED_BITS[rem]:
        # Canonical: the unused low bits of the last character must be zero.
        raise TokenError(f"token {what} is not canonical base64url")
    try:
        return binascii.a2b_base64(segment.translate(_TO_STD) + "=" * (-len(segment) % 4),
                                   strict_mode=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise TokenError(f"token {what} is not base64url") from exc


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TokenError(f"duplicate JSON member {k[:40]!r}")
        out[k] = v
    return out


def _reject_constant(value: str) -> Any:
    raise TokenError(f"JSON constant {value} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_reject_constant)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except TokenError as exc:
        raise TokenError(f"token {what}: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenError(f"token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def parse_jws(token: str, *, max_bytes: int) -> ParsedJWS:
    """Parse a compact JWS; raise :class:`TokenError` for anything not plainly a JWS."""
    if not isinstance(token, str):
        raise TokenError("token is not a string")
    if len(token) > max_bytes:
        raise TokenError(f"token is longer than {max_bytes} bytes")
    if not token.isascii():
        raise TokenError("token contains non-ASCII characters")
    dots = token.count(".")
    if dots == 4:
        raise TokenError("token is a JWE (encrypted); only signed tokens are accepted")
    if dots != 2:
        raise TokenError("token is not a compact JWS (three segments)")
    h64, p64, s64 = token.split(".")
    if not h64:
        raise TokenError("token has no header")
    header = _json_object(decode_b64url(h64, "header"), "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenError("token header has no 'alg'")
    if alg.lower() == "none":
        raise TokenError("token is unsigned (alg none)")
    if "crit" in header:
        raise TokenError("token header has 'crit': no extension is understood")
    if "b64" in header and header["b64"] is not True:
        raise TokenError("token uses an unencoded payload (b64), which is refused")
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise TokenError(f"token header carries a key ('{name}'); keys come from "
                             "configuration only")
    if "enc" in header:
        raise TokenError("token header has 'enc': a JWE is refused")
    cty = header.get("cty")
    if cty is not None and (not isinstance(cty, str) or cty.upper() in ("JWT",
                                                                         "APPLICATION/JWT")):
        raise TokenError("token is a nested JWT (cty), which is refused")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise TokenError("token 'kid' must be a string of at most 256 characters")
    payload = decode_b64url(p64, "payload")
    if not s64:
        raise TokenError("token has no signature")
    signature = decode_b64url(s64, "signature")
    return ParsedJWS(header=header, payload=payload,
                     signing_input=f"{h64}.{p64}".encode("ascii"), signature=signature)


def parse_claims(parsed: ParsedJWS) -> dict[str, Any]:
    """The JWT claims set of a parsed JWS (not yet trusted)."""
    return _json_object(parsed.payload, "payload")


def verify_signature(parsed: ParsedJWS, key: VerificationKey, *,
                     algorithms: frozenset[str] | tuple[str, ...]) -> None:
    """Check the signature with ``key``; the header ``alg`` must be pinned and fit the key."""
    alg = parsed.alg
    if alg not in algorithms:
        raise TokenError(f"token algorithm {alg[:20]!r} is not allowed for this issuer")
    if alg not in key.algorithms:
        raise TokenError(f"token algorithm {alg!r} does not fit the selected key")
    impl = _ALGORITHMS.get(alg)
    if impl is None:  # pragma: no cover - SUPPORTED_ALGORITHMS are all in pyjwt
        raise TokenError(f"token algorithm {alg!r} is not supported")
    try:
        ok = impl.verify(parsed.signing_input, key.key, parsed.signature)
    except (ValueError, TypeError) as exc:
        raise TokenError(f"token signature could not be checked ({type(exc).__name__})") \
            from exc
    if not ok:
        raise TokenError("token signature is invalid")
