"""The request as sent on the wire: its path and headers, and the path checks that keep
the authorized path equal to the path the application routes.

Servers hand the request to the app in different shapes (an ASGI ``raw_path``, a WSGI
``RAW_URI`` or a latin-1 ``PATH_INFO``); :func:`asgi_raw_path` and :func:`wsgi_raw_path`
recover the percent-encoded path as the client sent it. The normalizer then builds the
canonical path that routes and policy see. :func:`check_routed_path` refuses the paths
whose canonical form is *not* what Starlette, FastAPI, Flask or werkzeug will route on
(:func:`routed_path`: they percent-decode once and never merge slashes or resolve dot
segments), for every normalizer option: checking one path and running the handler of
another is the classic authorization bypass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

from endpointsec.errors import PathError

__all__ = [
    "asgi_headers",
    "asgi_raw_path",
    "check_asgi_paths_agree",
    "check_routed_path",
    "quote_path",
    "routed_path",
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


def check_asgi_paths_agree(scope: Mapping[str, Any], raw_path: str) -> PathError | None:
    """The app routes on ``scope["path"]``, endpointsec authorizes ``raw_path``: a server
    whose two disagree (a ``raw_path`` carrying what ``path`` does not, or the reverse)
    is refused, so that what is authorized is always what is routed. Checked for ASCII
    paths (servers refuse the others); one string comparison when nothing is encoded."""
    path = scope.get("path")
    if not isinstance(path, str) or not isinstance(scope.get("raw_path"), bytes):
        return None  # no raw_path: raw_path was built from path itself
    if path == raw_path or not raw_path.isascii():
        return None
    decoded = unquote(raw_path) if "%" in raw_path else raw_path  # as uvicorn decodes
    if decoded == path:
        return None
    # A root path (a mount, or uvicorn --root-path) is in path and maybe not on the wire.
    root = scope.get("root_path")
    if isinstance(root, str) and root and path.startswith(root) and (
            decoded == path[len(root):] or root + decoded == path):
        return None
    return PathError("the server's path and raw_path disagree")


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


def routed_path(raw_path: str) -> bytes:
    """The path the application routes on for ``raw_path``: the target up to ``?``/``#``,
    percent-decoded exactly once, as bytes.

    That is uvicorn's and hypercorn's ``scope["path"]`` (Starlette, FastAPI) and
    werkzeug's and gunicorn's ``PATH_INFO`` (Flask): ``%2F`` and ``%5C`` become ``/`` and
    ``\\``, ``%2e`` becomes ``.``, nothing is merged or resolved. A wire path arrives as a
    latin-1 string; characters above U+00FF are taken as UTF-8 (as the normalizer does).
    """
    for sep in ("?", "#"):
        if sep in raw_path:
            raw_path = raw_path.split(sep, 1)[0]
    if not raw_path or max(raw_path) <= "\xff":
        data = raw_path.encode("latin-1")
    else:
        data = raw_path.encode("utf-8", "surrogatepass")
    return unquote_to_bytes(data) if b"%" in data else data


def check_routed_path(raw_path: str, path: str) -> PathError | None:
    """``path``, the normalized form of ``raw_path``, is not the path the application
    routes on for ``raw_path``; ``None`` when it is.

    The rule: the path that is authorized is the path the framework routes, or the
    request is a 400. Starlette, FastAPI, Flask and werkzeug route on the percent-decoded
    path (:func:`routed_path`) and never merge slashes, resolve ``.``/``..`` or read
    ``\\`` as a separator. So ``path`` is accepted only when decoding it gives back
    exactly the routed path, segment for segment, whatever the normalizer options:

    * a dot segment (``/admin/../healthz``, ``%2e%2e``, or one that only appears once
      ``%2F`` is decoded: ``/admin%2F..%2Fhealthz``) is resolved by the normalizer and
      not by the app;
    * an empty segment (``//healthz``, ``/%2F/healthz``) is merged by the normalizer
      (``merge_slashes``) and not by the app;
    * a backslash (raw, or ``%5C`` with ``decode_encoded_slashes``) that the normalizer
      turns into a separator is an ordinary character to the app;
    * an ``%2F`` the normalizer keeps (one segment for routes and policy) is a separator
      to the app.

    ``raw_path == path`` (nothing was decoded or rewritten) costs one comparison.
    """
    if "%" in path and "%2f" in path.lower():
        # One segment for routes and policy, two for the app (advisory: encoded-slash
        # confusion): a template matching "one segment" would match two in the app.
        return PathError("request path contains an encoded slash (%2F) that the "
                         "application would decode into a separator")
    if path == raw_path:
        return None
    routed = routed_path(raw_path)
    if (unquote_to_bytes(path) if "%" in path else path.encode("ascii", "replace")) == routed:
        return None
    return PathError(_why_different(routed))


def _why_different(routed: bytes) -> str:
    """The specific reason (for logs) why the normalized path is not the routed one."""
    segments = routed.split(b"/")
    if b"." in segments or b".." in segments:
        return ("request path contains a dot segment ('.' or '..') that the application "
                "would not resolve")
    if b"\\" in routed:
        return ("request path contains a backslash that the normalizer reads as a separator "
                "and the application as a character")
    if b"//" in routed:
        return ("request path contains an empty segment ('//') that the application "
                "would not merge")
    return "request path would be routed by the application as a different path"


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
