"""Server TLS contexts that follow their files: certificate rotation without a restart.

SPIFFE agents and cert-manager replace short-lived server certificates every few hours.
uvicorn and gunicorn build their ``ssl.SSLContext`` once (or, for gunicorn's sync and
gthread workers, rebuild it from the files on every connection, so that a half-written
file breaks handshakes). :class:`RotatingServerContext` keeps one *front* context, the
one handed to the server, whose ``sni_callback`` switches every new handshake to the
*current* context (``ssl_object.context = current``, OpenSSL's ``SSL_set_SSL_CTX``).
That callback runs for every ClientHello, with or without SNI, before the server
certificate is chosen and before the client certificate is verified, so a new
handshake gets the current certificate, key and client CA store. Open connections keep
the context they were made with and are never dropped.

A watcher thread polls the files (mtime, size, inode and ctime, so a symlink swap as
Kubernetes does it is seen) every ``reload_interval`` seconds. A change is loaded once
the files have held still for one interval (a file being written is not read half-way;
a symlink swap of all files at once is loaded as one set). The new set is checked
before it is used:

* the certificate file parses as PEM certificates, the client CA file too;
* the key loads and matches the certificate (OpenSSL's check in ``load_cert_chain``);
* the context builds with the server's own settings (``build``, for instance uvicorn's
  or gunicorn's default factory, so ciphers, ALPN and ``verify_mode`` stay as
  configured).

A set that fails keeps the last good context in use and logs an error on the
``endpointsec.servers`` logger that names the file; that version is not retried until a
file changes again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from endpointsec.errors import ConfigurationError

__all__ = ["RotatingServerContext"]

logger = logging.getLogger("endpointsec.servers")

_FileSignature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: tuple[Path, ...]) -> _FileSignature:
    out: list[tuple[int, int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
        else:
            # ctime: a file rewritten in place with its mtime kept (cp -p) and the same
            # size keeps mtime, size and inode, never its ctime.
            out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns))
    return tuple(out)


def _read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{what} {path}: not a PEM certificate file") from None
    return certs


class RotatingServerContext:
    """A server ``SSLContext`` whose certificate, key and client CA follow their files.

    Give the server :attr:`context` and call :meth:`start` (or use the object as a
    context manager). ``build`` makes a complete context from the files (default: TLS
    1.2+, ``load_cert_chain(certfile, keyfile)``, ``load_verify_locations(client_ca)``,
    ``verify_mode = cert_reqs``); it is called again for every new version of the files.
    ``password`` decrypts an encrypted key. ``reload_interval = 0`` turns watching off
    (:meth:`check` still works).
    """

    def __init__(
        self,
        *,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
        cert_reqs: ssl.VerifyMode | int = ssl.CERT_REQUIRED,
        reload_interval: float = 5.0,
        build: Callable[[], ssl.SSLContext] | None = None,
        password: str | bytes | None = None,
    ) -> None:
        if reload_interval < 0:
            raise ConfigurationError("must be at least 0", key="server.reload_interval")
        self.certfile = Path(certfile)
        self.keyfile = Path(keyfile) if keyfile is not None else None
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.cert_reqs = ssl.VerifyMode(cert_reqs)
        self.reload_interval = float(reload_interval)
        self._build_context = build or self._default_build
        # Never OpenSSL's interactive prompt (it would block on a terminal): without a
        # password, an encrypted key fails to load with an error.
        self._password: str | bytes | Callable[[], bytes] = (
            password if password is not None else (lambda: b""))
        self._paths = tuple(p for p in (self.certfile, self.keyfile, self.client_ca)
                            if p is not None)
        #: The process that owns the watcher thread (threads do not survive a fork).
        self.pid = os.getpid()
        #: Goes up by one on every successful reload.
        self.generation = 0
        #: Why the last reload failed (``None`` after a successful one).
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        sig = _signature(self._paths)
        try:
            current = self._load()
        except ValueError as exc:
            raise ConfigurationError(f"cannot load the server TLS files: {exc}",
                                     key="server") from None
        self._loaded_sig = sig
        self._pending_sig: _FileSignature | None = None
        self._current = current
        #: The context to give the server: it hands every new handshake to the current one.
        self.context = current
        current.sni_callback = self._select

    # -- the handshake path ------------------------------------------------------------

    def _select(self, ssl_object: Any, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self._current
        if current is not context:
            ssl_object.context = current

    @property
    def current(self) -> ssl.SSLContext:
        """The context new handshakes use now."""
        return self._current

    # -- loading -----------------------------------------------------------------------

    def _default_build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certfile, self.keyfile, self._password)
        if self.client_ca is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca))
        ctx.verify_mode = self.cert_reqs
        return ctx

    def _load(self) -> ssl.SSLContext:
        """A new context from the files; ``ValueError`` naming the file that is wrong."""
        certs = _read_certificates(self.certfile, "server certificate")
        if self.client_ca is not None:
            _read_certificates(self.client_ca, "client CA bundle")
        keyfile = self.keyfile or self.certfile
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.load_cert_chain(self.certfile, self.keyfile, self._password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"server certificate {self.certfile} and key {keyfile} "
                                 "do not match") from None
            raise ValueError(f"server key {keyfile}: cannot load "
                             f"({exc.reason or exc})") from None
        except OSError as exc:
            raise ValueError(f"server key {keyfile}: cannot read "
                             f"({exc.strerror or exc})") from None
        try:
            ctx = self._build_context()
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"server TLS files {', '.join(map(str, self._paths))}: "
                             f"cannot build a context ({exc})") from None
        leaf = certs[0]
        now = dt.datetime.now(dt.UTC)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            logger.warning("server certificate %s (serial %x) is outside its validity "
                           "period (%s to %s)", self.certfile, leaf.serial_number,
                           leaf.not_valid_before_utc, leaf.not_valid_after_utc)
        self._leaf = leaf
        return ctx

    def reload(self) -> None:
        """Load the files now and switch new handshakes to them.

        On failure the last good context stays in use, the reason is logged and kept in
        :attr:`last_error`, and :class:`ConfigurationError` is raised.
        """
        with self._lock:
            try:
                ctx = self._load()
            except ValueError as exc:
                self.last_error = str(exc)
                logger.error("server TLS reload failed; keeping the last good certificate "
                             "and client CA: %s", exc)
                raise ConfigurationError(str(exc), key="server") from None
            self._current = ctx
            self.generation += 1
            self.last_error = None
            logger.info("server TLS reloaded (generation %d): certificate %s serial %x, "
                        "valid until %s", self.generation, self.certfile,
                        self._leaf.serial_number, self._leaf.not_valid_after_utc)

    def check(self) -> bool:
        """One watcher step: reload once the files changed and then held still for one
        step. ``True`` if a new context is in use."""
        sig = _signature(self._paths)
        if sig == self._loaded_sig:
            self._pending_sig = None
            return False
        if sig != self._pending_sig:
            self._pending_sig = sig
            return False
        self._pending_sig = None
        self._loaded_sig = sig  # a failing version is not retried until it changes again
        try:
            self.reload()
        except ConfigurationError:
            return False  # logged; the last good context stays
        return True

    # -- the watcher -------------------------------------------------------------------

    def start(self) -> RotatingServerContext:
        """Start the watcher thread (once; not when ``reload_interval`` is 0)."""
        if self.reload_interval > 0 and not self.watching:
            self._stop.clear()
            self.pid = os.getpid()
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="endpointsec-tls-watch")
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            try:
                self.check()
            except Exception:  # never let the watcher die: log and keep polling
                logger.exception("server TLS watcher step failed")

    @property
    def watching(self) -> bool:
        """The watcher thread is running (in this process)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the watcher thread (idempotent). The contexts stay usable."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.reload_interval * 2))

    def __enter__(self) -> RotatingServerContext:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
