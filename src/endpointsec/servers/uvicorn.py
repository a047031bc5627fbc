"""uvicorn protocol classes that pass the client certificate to the app.

uvicorn (0.54) does not fill the ASGI TLS extension. These subclasses of its httptools
and h11 protocols add ``scope["extensions"]["tls"]`` (asgiref TLS spec 0.2) to every
HTTP and websocket scope of a TLS connection::

    uvicorn app:app --http endpointsec.servers.uvicorn:HttpToolsProtocol \\
        --ssl-certfile server.pem --ssl-keyfile server.key \\
        --ssl-ca-certs ca.pem --ssl-cert-reqs 2

(``--http endpointsec.servers.uvicorn:H11Protocol`` for the pure-Python parser;
``uvicorn.Config(http=HttpToolsProtocol)`` works too.) Then enable the ``"asgi-tls"``
certificate source.

The TLS facts are worked out once, in ``connection_made`` (after the handshake), and
shared by every request on the connection: each request gets its own ``extensions``
and ``tls`` dicts (so an app cannot alter what the next request sees) holding the
same, already computed values. Websocket connections upgraded from these protocols get
the same extension, whatever websocket implementation uvicorn uses.

``client_cert_chain`` is the leaf alone on Python < 3.13 (the ``ssl`` module exposes
only the peer's leaf); on 3.13+ it is ``SSLObject.get_verified_chain()`` minus the
trust anchor. Intermediates that are not sent are found in the trust bundle anyway.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11Protocol
from uvicorn.protocols.http.httptools_impl import (
    HttpToolsProtocol as _UvicornHttpToolsProtocol,
)

from endpointsec.servers.tls import RotatingServerContext

__all__ = ["H11Protocol", "HttpToolsProtocol", "RotatingSSLContextFactory", "tls_extension"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

#: TLS protocol names (``SSLObject.version()``) to the asgiref integer form.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

#: IANA cipher suite values for the OpenSSL/IANA names ``SSLObject.cipher()`` reports
#: for modern suites (anything else is ``None``, which the spec allows).
_CIPHER_SUITES = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
}


def _subject_name(der: bytes) -> str | None:
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any] | None:
    """The asgiref ``tls`` extension for a connection, or ``None`` without TLS."""
    if ssl_object is None:
        return None
    chain: list[str] = []
    name: str | None = None
    leaf = ssl_object.getpeercert(binary_form=True)
    if leaf:
        ders: list[bytes] = [leaf]
        get_chain = getattr(ssl_object, "get_verified_chain", None)
        if get_chain is not None:  # Python 3.13+
            verified = list(get_chain() or ())
            if verified and all(isinstance(c, bytes) for c in verified) \
                    and verified[0] == leaf:
                # Leaf, intermediates; the last one is the trust anchor: drop it.
                ders = verified[:-1] if len(verified) > 1 else verified
        chain = [ssl.DER_cert_to_PEM_cert(d) for d in ders]
        name = _subject_name(leaf)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": _CIPHER_SUITES.get(cipher[0]) if cipher else None,
    }


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    chain = tls["client_cert_chain"]

    async def tls_app(scope: Scope, receive: Any, send: Any) -> None:
        extensions = scope.get("extensions")
        extensions = dict(extensions) if extensions else {}
        ext = dict(tls)
        ext["client_cert_chain"] = list(chain)
        extensions["tls"] = ext
        scope["extensions"] = extensions
        await app(scope, receive, send)

    return tls_app


class _TLSMixin:
    """Adds the TLS extension; mixed into uvicorn's protocol classes."""

    app: ASGIApp
    ws_protocol_class: Any

    def _endpointsec_connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is None:
            return
        self.app = _with_tls(self.app, tls)
        ws_class = self.ws_protocol_class
        if ws_class is not None:
            def ws_factory(**kwargs: Any) -> Any:
                protocol = ws_class(**kwargs)
                protocol.app = _with_tls(protocol.app, tls)
                return protocol

            self.ws_protocol_class = ws_factory


class HttpToolsProtocol(_TLSMixin, _UvicornHttpToolsProtocol):
    """uvicorn's httptools protocol plus ``scope["extensions"]["tls"]``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._endpointsec_connection_made(transport)


class H11Protocol(_TLSMixin, _UvicornH11Protocol):
    """uvicorn's h11 protocol plus ``scope["extensions"]["tls"]``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._endpointsec_connection_made(transport)


class RotatingSSLContextFactory:
    """``uvicorn.Config(ssl_context_factory=...)``: certificate rotation without restart.

    Builds uvicorn's own context (``default_factory``: the ``ssl_*`` settings, ALPN,
    ciphers) and wraps it in :class:`endpointsec.servers.tls.RotatingServerContext`,
    so new handshakes use the certificate, key and client CA files as they are now::

        uvicorn.run(app, ssl_certfile="server.pem", ssl_keyfile="server.key",
                    ssl_ca_certs="ca.pem", ssl_cert_reqs=ssl.CERT_REQUIRED,
                    http=HttpToolsProtocol,
                    ssl_context_factory=RotatingSSLContextFactory(reload_interval=5))

    An instance of a module-level class, so it pickles (uvicorn ``workers > 1``).
    """

    def __init__(self, *, reload_interval: float = 5.0) -> None:
        self.reload_interval = reload_interval
        #: The rotating context of the last :meth:`__call__` (for diagnostics and tests).
        self.rotating: RotatingServerContext | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"reload_interval": self.reload_interval, "rotating": None}

    def __call__(self, config: Any,
                 default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        if self.rotating is not None:
            self.rotating.close()
        self.rotating = RotatingServerContext(
            certfile=config.ssl_certfile, keyfile=config.ssl_keyfile,
            client_ca=config.ssl_ca_certs, cert_reqs=config.ssl_cert_reqs,
            reload_interval=self.reload_interval, build=default_factory,
            password=config.ssl_keyfile_password,
        ).start()
        return self.rotating.context
