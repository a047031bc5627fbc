"""The request as sent on the wire: its path and headers, and the path checks that keep
the authorized path equal to the path the application routes.

Servers hand the request to the app in different shapes (an ASGI ``raw_path``, a WSGI
``RAW_URI`` or a latin-1 ``PATH_INFO``); :func:`asgi_raw_path` and :func:`wsgi_raw_path`
recover the percent-encoded path as the client sent it. The normalizer then builds the
canonical path that routes and policy see. :func:`check_wire_path` refuses the paths
whose canonical form is *not* what Starlette, FastAPI, Flask or werkzeug will route on
(they percent-decode once and never resolve dot segments): checking one path and running
the handler of another is the classic authorization bypass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from endpointsec.errors import PathError

__all__ = [
    "asgi_headers",
    "asgi_raw_path",
    "check_normalized_path",
    "check_wire_path",
    "quote_path",
    "wsgi_headers",
    "wsgi_raw_path",
]

_SAFE = "/:@!$&'()*+,;=-._~"


def quote_path(path: str | bytes) -> str:
    """Percent-encode an already *decoded* path (ASGI ``path``, WSGI ``PATH_INFO``).

    A ``%`` in it is a literal percent sign and is quoted, or ``%2e%2e`` sent as
    ``%252e%252e`` would be decoded a second time. Lone surrogates pass through as
    (invalid UTF-8) bytes for the normalizer to refuse.
    """
    if isinstance(path, bytes):
        return quote(path, safe=_SAFE)
    return quote(path, safe=_SAFE, errors="surrogatepass")


def asgi_raw_path(scope: Mapping[str, Any]) -> str:
    """The percent-encoded path of an ASGI request, without the query string."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        # A "#" in raw_path (h11 passes it through) is part of the app's path, not a
        # fragment to cut: encode it so that the normalizer does not stop there.
        if b"?" in raw:
            raw = raw.split(b"?", 1)[0]
        if b"#" in raw:
            raw = raw.replace(b"#", b"%23")
        return raw.decode("latin-1")
    return quote_path(str(scope.get("path", "")))


def wsgi_raw_path(environ: Mapping[str, Any]) -> str:
    """The percent-encoded path of a WSGI request, without the query string."""
    # werkzeug's server and gunicorn pass the undecoded request target.
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(uri, str) and uri.startswith("/"):
        return uri.split("?", 1)[0].split("#", 1)[0]
    script = str(environ.get("SCRIPT_NAME", ""))
    path = str(environ.get("PATH_INFO", ""))
    # PEP 3333: PATH_INFO is latin-1 decoded bytes; re-encode then quote (the bytes, so
    # that non-UTF-8 reaches the normalizer as percent-escapes, which it refuses).
    try:
        raw = (script + path).encode("latin-1")
    except UnicodeEncodeError:  # not PEP 3333: characters above U+00FF
        raw = (script + path).encode("utf-8", "surrogatepass")
    return quote_path(raw) if raw else "/"


def check_wire_path(raw_path: str) -> PathError | None:
    """A wire path the application would read differently from its normalized form.

    Starlette, FastAPI, Flask and werkzeug route on the percent-decoded path *without*
    resolving dot segments and treat a backslash as an ordinary character. The
    normalizer resolves ``..`` and turns ``\\`` into ``/``, so ``/admin/../healthz``
    would be checked as the public ``/healthz`` while the app runs its
    ``/admin/{rest:path}`` handler. Conforming clients never send either form.
    """
    path = raw_path.split("?", 1)[0] if "?" in raw_path else raw_path
    if "\\" in path:
        return PathError("request path contains a backslash")
    if "." in path or "%2" in path:
        dotted = path.replace("%2e", ".").replace("%2E", ".")
        if any(seg in (".", "..") for seg in dotted.split("/")):
            return PathError("request path contains a dot segment ('.' or '..')")
    return None


def check_normalized_path(raw_path: str, path: str) -> PathError | None:
    """The normalized ``path`` still differs from what the app routes for ``raw_path``."""
    if "%" in path and "%2f" in path.lower():
        # Starlette, FastAPI, Flask and werkzeug route on the *decoded* path, where
        # %2F is a separator: a template or rule matching "one segment" here would
        # match two segments in the app (advisory: encoded-slash confusion).
        return PathError("request path contains an encoded slash (%2F) that the "
                         "application would decode into a separator")
    if "//" in raw_path and "//" not in path:
        # merge_slashes: "//" would be checked as "/", but the app routes "//"
        # (a private "/{p:path}" ran for "//" when "/" was public).
        return PathError("request path contains an empty segment ('//') that the "
                         "application would not merge")
    return None


def asgi_headers(scope: Mapping[str, Any]) -> list[tuple[bytes, bytes]] | None:
    """``scope["headers"]`` as a list of byte pairs; ``None`` if it is not one."""
    headers = scope.get("headers")
    if headers is None:
        return []
    if type(headers) is list:
        out = headers
    else:
        try:
            out = list(headers)
        except TypeError:
            return None
    for item in out:
        if (not isinstance(item, tuple | list) or len(item) != 2
                or not isinstance(item[0], bytes) or not isinstance(item[1], bytes)):
            return None
    return out


def wsgi_headers(environ: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """The ``HTTP_*`` keys of a WSGI environ as lower-case byte pairs."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if isinstance(key, str) and key.startswith("HTTP_") and isinstance(value, str):
            # PEP 3333 values are latin-1; anything else is replaced, never a crash.
            name = key[5:].replace("_", "-").lower().encode("latin-1", "replace")
            out.append((name, value.encode("latin-1", "replace")))
    return out
