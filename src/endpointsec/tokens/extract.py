"""Where the bearer token is read: ``Authorization: Bearer`` (RFC 6750 §2.1), and a cookie
or a query parameter only if configured.

:meth:`BearerReader.read` returns ``None`` when the request carries no credentials at
all, the token when it carries exactly one well-formed bearer token, and raises
:class:`TokenError` (401) otherwise:

* two ``Authorization`` headers, or one holding two credentials (``Bearer a, Bearer b``,
  as WSGI folds duplicates) -> ``error="invalid_request"``;
* the token in more than one place (header and cookie, header and query) ->
  ``invalid_request`` (RFC 6750 §2: a client MUST NOT use more than one method);
* ``Bearer`` with an empty token, characters outside ``b64token``, or more than
  ``max_token_bytes`` -> ``invalid_token``;
* **another scheme** (``Basic ...``, ``Digest ...``): an error without an error code.
  Credentials that endpointsec cannot verify are not silently ignored (fail closed: the
  app behind might otherwise take them at face value); RFC 6750 §3.1 says a request
  that "attempted using an unsupported authentication method" gets a challenge without
  an ``error`` attribute. Routes with ``token = "none"`` ignore token errors entirely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl

from endpointsec.errors import TokenError

__all__ = ["BearerReader"]

#: RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
_SCHEME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class BearerReader:
    """Reads the bearer token of a request from ASGI-style headers and the query string."""

    __slots__ = ("cookie", "max_token_bytes", "query_param")

    def __init__(self, *, max_token_bytes: int = 8192, cookie: str | None = None,
                 query_param: str | None = None) -> None:
        self.max_token_bytes = max_token_bytes
        self.cookie = cookie.encode("ascii") if cookie else None
        self.query_param = query_param

    @property
    def header_names(self) -> tuple[bytes, ...]:
        """The only headers :meth:`read` looks at (lower-case)."""
        return (b"authorization", b"cookie") if self.cookie is not None else (b"authorization",)

    def read(self, headers: Sequence[tuple[bytes, bytes]], query_string: bytes) -> str | None:
        """The presented token, ``None`` if none, :class:`TokenError` if malformed."""
        authorization: list[bytes] = []
        cookies: list[bytes] = []
        want_cookie = self.cookie is not None
        for name, value in headers:
            if name == b"authorization":
                authorization.append(value)
            elif want_cookie and name == b"cookie":
                cookies.append(value)
        found: list[tuple[str, str]] = []
        if authorization:
            if len(authorization) > 1:
                raise TokenError("more than one Authorization header",
                                 oauth_error="invalid_request")
            found.append(("header", self._from_authorization(authorization[0])))
        if cookies:
            token = self._from_cookies(cookies)
            if token is not None:
                found.append(("cookie", token))
        if self.query_param is not None and query_string:
            token = self._from_query(query_string)
            if token is not None:
                found.append(("query", token))
        if not found:
            return None
        if len(found) > 1:
            raise TokenError(
                f"token presented in more than one place ({', '.join(w for w, _ in found)})",
                oauth_error="invalid_request")
        return found[0][1]

    def _check(self, token: bytes, where: str) -> str:
        if not token:
            raise TokenError(f"empty bearer token in {where}")
        if len(token) > self.max_token_bytes:
            raise TokenError(f"bearer token in {where} is longer than "
                             f"{self.max_token_bytes} bytes")
        body = token.rstrip(b"=")
        # b64token: one or more allowed characters, then "=" padding only (translate
        # deletes the allowed characters; anything left is outside the alphabet).
        if not body or body.translate(None, _B64TOKEN_CHARS):
            raise TokenError(f"bearer token in {where} has characters outside b64token")
        return token.decode("ascii")

    def _from_authorization(self, value: bytes) -> str:
        if len(value) > self.max_token_bytes + 64:
            raise TokenError(f"Authorization header is longer than "
                             f"{self.max_token_bytes} bytes")
        value = value.strip(b" \t")
        scheme, _, rest = value.partition(b" ")
        if scheme != b"Bearer" and _SCHEME.fullmatch(scheme) is None:
            raise TokenError("malformed Authorization header", oauth_error="invalid_request")
        if scheme.lower() != b"bearer":
            raise TokenError("Authorization uses a scheme other than Bearer",
                             oauth_error=None)
        token = rest.strip(b" ")
        if b"," in token:
            raise TokenError("Authorization header holds more than one credential",
                             oauth_error="invalid_request")
        return self._check(token, "Authorization header")

    def _from_cookies(self, values: list[bytes]) -> str | None:
        if self.cookie is None:
            return None
        tokens: list[bytes] = []
        for header in values:
            for part in header.split(b";"):
                name, sep, val = part.strip(b" \t").partition(b"=")
                if sep and name == self.cookie:
                    tokens.append(val.strip(b" \t").strip(b'"'))
        if not tokens:
            return None
        if len(tokens) > 1:
            raise TokenError("token cookie is present more than once",
                             oauth_error="invalid_request")
        return self._check(tokens[0], "cookie")

    def _from_query(self, query_string: bytes) -> str | None:
        if len(query_string) > 4 * self.max_token_bytes + 4096:
            raise TokenError("query string too long to look for a token",
                             oauth_error="invalid_request")
        try:
            pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True,
                              encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise TokenError("query string cannot be decoded",
                             oauth_error="invalid_request") from exc
        tokens = [v for k, v in pairs if k == self.query_param]
        if not tokens:
            return None
        if len(tokens) > 1:
            raise TokenError("token query parameter is present more than once",
                             oauth_error="invalid_request")
        try:
            raw = tokens[0].encode("ascii")
        except UnicodeEncodeError as exc:
            raise TokenError("bearer token in query has characters outside b64token") from exc
        return self._check(raw, "query")
