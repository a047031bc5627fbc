"""Identity-aware test clients: requests that present a client certificate and a token.

ASGI (Starlette, FastAPI): the certificate travels the way a TLS server hands it over,
in ``scope["extensions"]["tls"]`` (asgiref TLS extension 0.2), injected by
:class:`TLSExtensionShim` because ``TestClient`` cannot set scope extensions.

WSGI (Flask, any werkzeug app): the certificate travels in ``SSL_CLIENT_CERT`` (+
``SSL_CLIENT_CERT_CHAIN_<n>`` and ``SSL_CLIENT_VERIFY=SUCCESS``), the way mod_ssl and
werkzeug-style servers put it in the environ.

The app under test must enable the matching certificate source (``"asgi-tls"`` or
``"wsgi-environ"`` in ``[identity] sources``) and trust the CA that issued the
certificate: the middleware verifies it exactly as in production.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from endpointsec.testing.pki import CertificateLike, certificate_chain

if TYPE_CHECKING:
    import httpx
    from starlette.testclient import TestClient
    from werkzeug.test import Client

__all__ = [
    "TLSExtensionShim",
    "asgi_client",
    "asgi_transport",
    "auth_headers",
    "tls_extension",
    "wsgi_client",
    "wsgi_environ",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
WSGIApp = Callable[..., Any]

_TLS_1_3 = 0x0304


def _pem_chain(cert: CertificateLike) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    return [c.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for c in certificate_chain(cert)]


def _subject(cert: CertificateLike) -> str:
    return certificate_chain(cert)[0].subject.rfc4514_string()


def tls_extension(cert: CertificateLike | None) -> dict[str, Any]:
    """The ``scope["extensions"]["tls"]`` a TLS server would set for this client.

    ``cert``: an :class:`IssuedCertificate`, a ``cryptography`` certificate, or what
    ``endpointsec pki`` writes (a PEM file path, or PEM text; leaf then chain).
    """
    return {
        "server_cert": None,
        "client_cert_chain": _pem_chain(cert) if cert is not None else [],
        "client_cert_name": _subject(cert) if cert is not None else None,
        "client_cert_error": None,
        "tls_version": _TLS_1_3,
        "cipher_suite": 0x1301,
    }


def auth_headers(token: str | None) -> dict[str, str]:
    """``{"authorization": "Bearer <token>"}``, or nothing without a token."""
    return {"authorization": f"Bearer {token}"} if token else {}


class TLSExtensionShim:
    """Wrap an ASGI app so every HTTP and websocket request carries a TLS extension.

    ``cert`` is the client certificate presented on every request (``None``: a TLS
    connection without a client certificate); change it with :attr:`cert` between
    requests. Lifespan scopes pass through untouched.
    """

    def __init__(self, app: ASGIApp, *, cert: CertificateLike | None = None) -> None:
        self.app = app
        self.cert = cert
        self._cached: tuple[CertificateLike | None, dict[str, Any]] | None = None

    def _extension(self) -> dict[str, Any]:
        # Read a PEM file once per certificate, not per request.
        cached = self._cached
        if cached is None or cached[0] is not self.cert:
            cached = self._cached = (self.cert, tls_extension(self.cert))
        return dict(cached[1])

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = self._extension()
            scope["extensions"] = extensions
            scope["scheme"] = "https" if scope["type"] == "http" else "wss"
        await self.app(scope, receive, send)


def asgi_client(
    app: ASGIApp,
    *,
    cert: CertificateLike | None = None,
    token: str | None = None,
    base_url: str = "https://testserver",
    **kwargs: Any,
) -> TestClient:
    """A Starlette/FastAPI ``TestClient`` presenting ``cert`` (TLS extension) and ``token``.

    Extra keyword arguments go to ``TestClient`` (``raise_server_exceptions`` ...).
    """
    from starlette.testclient import TestClient

    client = TestClient(TLSExtensionShim(app, cert=cert), base_url=base_url, **kwargs)
    client.headers.update(auth_headers(token))
    return client


def asgi_transport(app: ASGIApp, *, cert: CertificateLike | None = None) -> httpx.ASGITransport:
    """An ``httpx.ASGITransport`` presenting ``cert``; use with ``httpx.AsyncClient``::

        async with httpx.AsyncClient(transport=asgi_transport(app, cert=c),
                                     base_url="https://testserver",
                                     headers=auth_headers(token)) as client:
            r = await client.get("/orders")
    """
    import httpx

    return httpx.ASGITransport(app=TLSExtensionShim(app, cert=cert))


def wsgi_environ(
    *, cert: CertificateLike | None = None, token: str | None = None
) -> dict[str, str]:
    """The environ keys a TLS-terminating WSGI server would set for this client."""
    env: dict[str, str] = {"wsgi.url_scheme": "https", "HTTPS": "on"}
    if cert is not None:
        chain = _pem_chain(cert)
        env["SSL_CLIENT_CERT"] = chain[0]
        for i, pem in enumerate(chain[1:]):
            env[f"SSL_CLIENT_CERT_CHAIN_{i}"] = pem
        env["SSL_CLIENT_VERIFY"] = "SUCCESS"
        env["SSL_CLIENT_S_DN"] = _subject(cert)
    if token:
        env["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return env


def wsgi_client(
    app: WSGIApp, *, cert: CertificateLike | None = None, token: str | None = None
) -> Client:
    """A test client presenting ``cert`` (WSGI environ) and ``token`` on every request.

    For a Flask app this is ``app.test_client()`` (so ``client.get(...)`` returns Flask
    responses); for any other WSGI callable a ``werkzeug.test.Client``.
    """
    env = wsgi_environ(cert=cert, token=token)
    # EnvironBuilder derives wsgi.url_scheme from its base_url: override it per request.
    overrides = {"wsgi.url_scheme": "https"}
    make = getattr(app, "test_client", None)
    client: Any = make() if callable(make) else None
    if client is None or not isinstance(getattr(client, "environ_base", None), dict):
        from werkzeug.test import Client

        client = Client(app)
    else:
        client.environ_base.update(env)
    plain_open = client.open

    def open_with_identity(*args: Any, **kw: Any) -> Any:
        from werkzeug.test import EnvironBuilder

        if args and isinstance(args[0], EnvironBuilder):  # e.g. following a redirect
            builder = args[0]
            builder.environ_base = {**env, **(builder.environ_base or {})}
            builder.environ_overrides = {**overrides, **(builder.environ_overrides or {})}
        elif not args or isinstance(args[0], str):  # a path, not a prepared environ
            kw["environ_base"] = {**env, **(kw.get("environ_base") or {})}
            kw["environ_overrides"] = {**overrides, **(kw.get("environ_overrides") or {})}
        return plain_open(*args, **kw)

    client.open = open_with_identity
    return client  # type: ignore[no-any-return]
