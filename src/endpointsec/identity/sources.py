"""Certificate sources provided by the server itself (not by a proxy header).

Each source is enabled explicitly in ``[identity] sources`` by naming what is in front
of the app; nothing is read otherwise:

``"asgi-tls"`` (:class:`ASGITLSSource`)
    The ASGI TLS extension, ``scope["extensions"]["tls"]`` (asgiref TLS spec 0.2):
    ``client_cert_chain`` is a list of PEM strings, leaf first. Also accepted: the
    variants proposed upstream (a DER ``client_cert`` bytes value, a ``spec_version``
    key) and missing optional keys. A non-``None`` ``client_cert_error`` means the
    server did not verify the certificate: it is refused.
    Provided by uvicorn with :mod:`endpointsec.servers.uvicorn`, hypercorn, granian.

``"wsgi-environ"`` (:class:`WSGIEnvironSource`)
    ``SSL_CLIENT_CERT`` (PEM) plus ``SSL_CLIENT_CERT_CHAIN_0..n``, as set by
    werkzeug's development server and by mod_wsgi/mod_ssl (``SSLOptions
    +ExportCertData``). If ``SSL_CLIENT_VERIFY`` is present it must be ``SUCCESS``.
    *Threat:* only enable this behind a server that sets these keys itself. granian's
    WSGI copies the process environment into every environ, so a variable named
    ``SSL_CLIENT_CERT`` in the process environment would be read as a client
    certificate.

``"gunicorn"`` (:class:`GunicornSource`)
    ``environ["gunicorn.socket"].getpeercert(binary_form=True)``. gunicorn exposes only
    the leaf; intermediates must therefore be in the trust bundle.

These sources only read what the server placed in the scope/environ; ``scrub_*`` are
no-ops (nothing here is a header a client could forge).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from endpointsec._memo import Memo
from endpointsec.errors import CertificateError
from endpointsec.facts import PresentedCertificate
from endpointsec.identity.certs import MAX_CERTIFICATE_BYTES, pem_to_der
from endpointsec.identity.config import IdentityConfig
from endpointsec.protocols import CertificateSource

__all__ = [
    "ASGITLSSource",
    "GunicornSource",
    "WSGIEnvironSource",
    "build_server_sources",
]

logger = logging.getLogger("endpointsec.identity")

Scope = MutableMapping[str, Any]
Environ = MutableMapping[str, Any]

#: The longest chain a source accepts (leaf included).
MAX_CHAIN_LENGTH = 16
#: Certificates remembered per source, keyed on the exact strings the server hands over
#: (a reused connection hands over the same ones on every request): decoding them again
#: would be the bulk of a request. Bounded in entries and bytes (see endpointsec._memo).
_MEMO_ENTRIES = 1024
_MEMO_BYTES = 8 * 1024 * 1024


def _chain_from_pems(pems: list[Any] | tuple[Any, ...], *, what: str) -> list[bytes]:
    if len(pems) > MAX_CHAIN_LENGTH:
        raise CertificateError(f"{what} holds more than {MAX_CHAIN_LENGTH} certificates")
    ders: list[bytes] = []
    for item in pems:
        if isinstance(item, str | bytes):
            ders.extend(pem_to_der(item))
        else:
            raise CertificateError(f"{what} entries must be PEM strings, "
                                   f"not {type(item).__name__}")
    if len(ders) > MAX_CHAIN_LENGTH:
        raise CertificateError(f"{what} holds more than {MAX_CHAIN_LENGTH} certificates")
    return ders


class _ServerSource:
    name = "server"

    def from_asgi(self, scope: Scope) -> PresentedCertificate | None:
        return None

    def from_wsgi(self, environ: Environ) -> PresentedCertificate | None:
        return None

    def scrub_asgi(self, scope: Scope) -> None:
        """Nothing to remove: the server itself set what this source reads."""

    def scrub_wsgi(self, environ: Environ) -> None:
        """Nothing to remove: the server itself set what this source reads."""


class ASGITLSSource(_ServerSource):
    """The ASGI TLS extension (``scope["extensions"]["tls"]``); see the module docs."""

    name = "asgi-tls"

    def __init__(self) -> None:
        #: The exact PEM strings -> the (immutable) PresentedCertificate built from them,
        #: for chains the server reported no error for.
        self._memo: Memo[tuple[Any, ...], PresentedCertificate] = Memo(
            max_entries=_MEMO_ENTRIES, max_bytes=_MEMO_BYTES)
        self._warned = False

    def _warn_no_tls_extension(self) -> None:
        """Once: TLS requests arrive, but the server does not hand their certificate."""
        self._warned = True
        logger.warning(
            "requests arrive over TLS but the ASGI scope has no TLS extension "
            "(scope['extensions']['tls']): the 'asgi-tls' source cannot see client "
            "certificates, so every request that needs one is refused. Run uvicorn with "
            "--http endpointsec.servers.uvicorn:HttpToolsProtocol (or H11Protocol), or a "
            "server that provides the extension (see docs/servers.md)")

    def from_asgi(self, scope: Scope) -> PresentedCertificate | None:
        extensions = scope.get("extensions")
        if type(extensions) is dict:
            tls = extensions.get("tls")
            if type(tls) is dict and tls.get("client_cert_error") is None:
                chain = tls.get("client_cert_chain")
                if type(chain) is list and chain:
                    key = tuple(chain)
                    hit = self._memo.get(key)
                    if hit is not None:
                        return hit
                    found = self._from_asgi(scope)
                    if found is not None and all(type(c) is str for c in key):
                        self._memo.put(key, found, size=sum(len(c) for c in key))
                    return found
        return self._from_asgi(scope)

    def _from_asgi(self, scope: Scope) -> PresentedCertificate | None:
        extensions = scope.get("extensions")
        tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
        if tls is None:
            if not self._warned and scope.get("scheme") in ("https", "wss"):
                self._warn_no_tls_extension()
            return None
        if not isinstance(tls, Mapping):
            raise CertificateError("scope['extensions']['tls'] is not a mapping")
        chain = tls.get("client_cert_chain")
        ders: list[bytes]
        if chain:
            if isinstance(chain, str | bytes):
                # Tolerated: one PEM string instead of a list of them.
                ders = _chain_from_pems([chain], what="client_cert_chain")
            elif isinstance(chain, list | tuple):
                ders = _chain_from_pems(chain, what="client_cert_chain")
            else:
                raise CertificateError("client_cert_chain is not a list of PEM strings")
        else:
            der = tls.get("client_cert")
            if der is None or der == b"":
                return None
            if not isinstance(der, bytes):
                raise CertificateError("client_cert must be DER bytes")
            if len(der) > MAX_CERTIFICATE_BYTES:
                raise CertificateError("client_cert is too large")
            ders = [der]
        error = tls.get("client_cert_error")
        return PresentedCertificate(
            leaf=ders[0],
            intermediates=tuple(ders[1:]),
            source=self.name,
            upstream_verified=False if error is not None else None,
        )


class WSGIEnvironSource(_ServerSource):
    """``SSL_CLIENT_CERT`` (+ ``SSL_CLIENT_CERT_CHAIN_n``, ``SSL_CLIENT_VERIFY``)."""

    name = "wsgi-environ"

    def __init__(self) -> None:
        self._memo: Memo[tuple[Any, ...], PresentedCertificate] = Memo(
            max_entries=_MEMO_ENTRIES, max_bytes=_MEMO_BYTES)

    def from_wsgi(self, environ: Environ) -> PresentedCertificate | None:
        pem = environ.get("SSL_CLIENT_CERT")
        verify = environ.get("SSL_CLIENT_VERIFY")
        key: tuple[Any, ...] | None = None
        if type(pem) is str and "SSL_CLIENT_CERT_CHAIN_0" not in environ:
            key = (pem, verify)
            hit = self._memo.get(key)
            if hit is not None:
                return hit
        found = self._from_wsgi(environ, pem, verify)
        if found is not None and key is not None and (verify is None or type(verify) is str):
            self._memo.put(key, found, size=len(key[0]))
        return found

    def _from_wsgi(self, environ: Environ, pem: Any, verify: Any
                   ) -> PresentedCertificate | None:
        if pem is None or (isinstance(pem, str | bytes) and not pem.strip()):
            return None
        if pem in ("(null)", b"(null)"):  # mod_ssl without a client certificate
            return None
        if verify == "NONE":
            return None
        if not isinstance(pem, str | bytes):
            raise CertificateError("SSL_CLIENT_CERT is not a PEM string")
        ders = pem_to_der(pem)
        if len(ders) != 1:
            raise CertificateError("SSL_CLIENT_CERT must hold exactly one certificate")
        chain: list[bytes] = []
        for i in range(MAX_CHAIN_LENGTH + 1):
            item = environ.get(f"SSL_CLIENT_CERT_CHAIN_{i}")
            if item is None or (isinstance(item, str | bytes) and not item.strip()):
                break
            if i == MAX_CHAIN_LENGTH:
                raise CertificateError(
                    f"SSL_CLIENT_CERT_CHAIN holds more than {MAX_CHAIN_LENGTH} certificates")
            if not isinstance(item, str | bytes):
                raise CertificateError(f"SSL_CLIENT_CERT_CHAIN_{i} is not a PEM string")
            chain.extend(pem_to_der(item))
        upstream: bool | None = None
        if verify is not None:
            upstream = verify == "SUCCESS"
        return PresentedCertificate(
            leaf=ders[0], intermediates=tuple(chain), source=self.name,
            upstream_verified=upstream,
        )


class GunicornSource(_ServerSource):
    """The peer certificate of gunicorn's TLS socket (leaf only)."""

    name = "gunicorn"

    def from_wsgi(self, environ: Environ) -> PresentedCertificate | None:
        sock = environ.get("gunicorn.socket")
        if sock is None:
            return None
        getpeercert = getattr(sock, "getpeercert", None)
        if getpeercert is None:
            return None  # a plain TCP socket: no TLS, no certificate
        try:
            der = getpeercert(binary_form=True)
        except ValueError:
            raise CertificateError("the TLS handshake has not completed") from None
        if not der:
            return None
        if not isinstance(der, bytes):
            raise CertificateError("gunicorn socket returned a non-DER certificate")
        return PresentedCertificate(leaf=der, source=self.name)


_SOURCES: dict[str, type[_ServerSource]] = {
    ASGITLSSource.name: ASGITLSSource,
    WSGIEnvironSource.name: WSGIEnvironSource,
    GunicornSource.name: GunicornSource,
}


def build_server_sources(config: IdentityConfig) -> list[CertificateSource]:
    """The server-provided sources named in ``config.sources``, in that order."""
    return [_SOURCES[name]() for name in config.sources]
