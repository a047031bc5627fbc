"""Request-path normalization before route matching and policy (Envoy/Istio semantics).

A policy written for ``/private`` must see ``/public/../private``,
``/public/%2e%2e/private`` and ``//private`` as ``/private``, or an attacker walks
around it. :class:`PathNormalizer` turns the path as sent on the wire into one
canonical form; the same canonical form is used for route selection and for Casbin.

The steps, in order (see ``docs/policy.md`` for the full table):

1. cut the query (``?``) and the fragment (``#``); the target must start with ``/``;
2. read the path as bytes (a wire path arrives as a latin-1 string; characters above
   U+00FF are taken as UTF-8) and decode every percent-escape **once**:

   * an escape of an *unreserved* character (``A-Z a-z 0-9 - . _ ~``) is decoded:
     ``%2e`` becomes ``.``, ``%41`` becomes ``A``;
   * ``%2F`` and ``%5C`` (encoded ``/`` and ``\\``) stay encoded (upper-cased), unless
     ``decode_encoded_slashes`` (then they are separators) or
     ``reject_encoded_slashes`` (then the request is a 400);
   * every other escape stays encoded, upper-cased: ``%25`` is never decoded, so
     ``%252F`` stays ``%252F`` and a second decoder downstream cannot turn it into a
     slash that we did not see (no double decoding, and a fixed point);
   * ``%00``, any other control character (raw or escaped), a malformed escape
     (``%G1``, ``%4``) and a byte sequence that is not UTF-8 (including overlong forms
     such as ``%C0%AE``) raise :class:`~endpointsec.errors.PathError` (a 400);
3. a raw backslash is a separator (``backslash = "slash"``, as Envoy and browsers),
   a 400 (``"reject"``) or kept as the literal ``%5C`` (``"keep"``);
4. runs of slashes are merged (``merge_slashes``, default on), then ``.`` and ``..``
   segments are resolved (RFC 3986 5.2.4), never above the root;
5. characters that may not appear raw in a path are percent-encoded.

The result always starts with ``/``, has no ``.``/``..`` segment and is a fixed point:
``normalize(normalize(p)) == normalize(p)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from endpointsec.errors import ConfigurationError, PathError

__all__ = ["BACKSLASH_CHOICES", "PathNormalizer", "PathOptions"]

#: What a raw backslash in a path may become.
BACKSLASH_CHOICES = ("slash", "reject", "keep")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Bytes that may stay raw in a normalized path (RFC 3986 pchar without "%", plus "/").
_RAW_OK = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FAST = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


@dataclass(frozen=True, kw_only=True)
class PathOptions:
    """How request paths are normalized (``[policy.paths]``)."""

    #: Merge runs of ``/`` into one (``//private`` -> ``/private``).
    merge_slashes: bool = True
    #: Decode ``%2F``/``%5C`` into separators (Istio ``DECODE_AND_MERGE_SLASHES``).
    decode_encoded_slashes: bool = False
    #: Reject any ``%2F``/``%5C`` with a 400 (Envoy ``REJECT_REQUEST``).
    reject_encoded_slashes: bool = False
    #: A raw ``\\``: ``"slash"`` (a separator), ``"reject"`` (400) or ``"keep"`` (``%5C``).
    backslash: str = "slash"

    def __post_init__(self) -> None:
        if self.backslash not in BACKSLASH_CHOICES:
            raise ConfigurationError(
                f"must be one of {', '.join(map(repr, BACKSLASH_CHOICES))}, "
                f"not {self.backslash!r}",
                key="policy.paths.backslash",
            )
        if self.decode_encoded_slashes and self.reject_encoded_slashes:
            raise ConfigurationError(
                "decode_encoded_slashes and reject_encoded_slashes exclude each other",
                key="policy.paths.decode_encoded_slashes",
            )


class PathNormalizer:
    """Normalizes wire paths; see the module docstring for the exact rules.

    Instances are immutable and safe to share between threads.
    """

    __slots__ = ("_backslash", "_decode_slash", "_merge", "_reject_slash", "options")

    def __init__(self, *, options: PathOptions | None = None) -> None:
        self.options = options if options is not None else PathOptions()
        self._merge = self.options.merge_slashes
        self._decode_slash = self.options.decode_encoded_slashes
        self._reject_slash = self.options.reject_encoded_slashes
        self._backslash = self.options.backslash

    def __call__(self, raw_path: str) -> str:
        return self.normalize(raw_path)

    def normalize(self, raw_path: str) -> str:
        """Return the canonical form of ``raw_path`` or raise :class:`PathError`."""
        if not isinstance(raw_path, str):
            raise PathError(f"request path must be a string, not {type(raw_path).__name__}")
        cut = len(raw_path)
        for sep in ("?", "#"):
            i = raw_path.find(sep)
            if i != -1 and i < cut:
                cut = i
        path = raw_path[:cut]
        if not path.startswith("/"):
            raise PathError("request path must start with '/'"
                            if path else "request path is empty")
        # Fast path: nothing to decode, no separator to merge, no dot segment.
        if (_FAST.fullmatch(path) is not None and "/." not in path
                and (not self._merge or "//" not in path)):
            return path
        return self._resolve(self._decode(path))

    # -- steps ----------------------------------------------------------------------

    def _to_bytes(self, path: str) -> bytes:
        if max(path) <= "\xff":
            return path.encode("latin-1")
        try:
            return path.encode("utf-8")
        except UnicodeEncodeError:
            raise PathError("request path contains an unpaired surrogate") from None

    def _separator_for_backslash(self) -> str:
        if self._backslash == "slash":
            return "/"
        if self._backslash == "reject":
            raise PathError("request path contains a backslash")
        return "%5C"

    def _decode(self, path: str) -> str:
        data = self._to_bytes(path)
        out: list[str] = []
        decoded = bytearray()  # the fully decoded bytes, checked for UTF-8
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b == 0x25:  # "%"
                if i + 2 >= n:
                    raise PathError("malformed percent-escape in request path (truncated)")
                h1, h2 = data[i + 1], data[i + 2]
                if h1 not in _HEX or h2 not in _HEX:
                    raise PathError("malformed percent-escape in request path")
                v = int(data[i + 1:i + 3], 16)
                i += 3
                decoded.append(v)
                if v == 0:
                    raise PathError("request path contains an encoded NUL (%00)")
                if v < 0x20 or v == 0x7F:
                    raise PathError("request path contains an encoded control character")
                if v in _UNRESERVED:
                    out.append(chr(v))
                elif v in (0x2F, 0x5C):
                    if self._reject_slash:
                        raise PathError("request path contains an encoded slash or backslash")
                    if not self._decode_slash:
                        out.append(f"%{v:02X}")
                    elif v == 0x2F:
                        out.append("/")
                    else:
                        out.append(self._separator_for_backslash())
                else:
                    out.append(f"%{v:02X}")
                continue
            i += 1
            decoded.append(b)
            if b < 0x20 or b == 0x7F:
                raise PathError("request path contains a control character")
            if b == 0x5C:
                out.append(self._separator_for_backslash())
            elif b in _RAW_OK:
                out.append(chr(b))
            else:
                out.append(f"%{b:02X}")
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise PathError("request path is not valid UTF-8 once decoded") from None
        return "".join(out)

    def _resolve(self, path: str) -> str:
        segments = path[1:].split("/")
        last = len(segments) - 1
        out: list[str] = []
        for i, seg in enumerate(segments):
            if seg in (".", ".."):
                if seg == ".." and out:
                    out.pop()
                if i == last:
                    out.append("")  # "/a/b/.." -> "/a/"
            elif seg == "" and self._merge and i != last:
                continue
            else:
                out.append(seg)
        return "/" + "/".join(out)
