"""Certificates forwarded by a trusted TLS-terminating proxy.

When a proxy (Envoy or an Istio sidecar, nginx, HAProxy, Traefik, Caddy, an AWS ALB)
terminates mTLS in front of the app, the client certificate reaches the app in a
request header. **Anyone can send that header.** It is evidence only when the
immediate peer of the app is a proxy you named, which removed whatever the client sent
under that name and wrote its own value. This module applies that rule, in the manner
of werkzeug's ``ProxyFix``:

- a source reads its header only when the immediate peer (``scope["client"]`` /
  ``REMOTE_ADDR``) is in ``[proxy] trusted`` (address ranges, or ``"unix"`` for a
  Unix-socket peer); from any other peer the header is ignored, and removed before the
  app runs (:meth:`scrub_asgi` / :meth:`scrub_wsgi`);
- XFCC is read from the element added by the trusted hop (``hops``: the last element
  for one proxy); fewer elements than promised is an error (401), as is anything
  ambiguous (a header sent twice, a repeated key, ``Cert`` and ``Chain`` disagreeing,
  an XFCC ``Hash`` that is not the certificate's);
- a certificate header must arrive as one line: several lines (ASGI hands them over
  one by one) are refused, never joined, even when one of them is empty. A WSGI
  server joins repeated lines with ``,`` before the app sees them; what the join leaves
  visible is refused too (an empty XFCC element or Traefik certificate, a Traefik
  "chain" with a second end-entity certificate), but two complete XFCC elements
  cannot be told from a two-hop header: the proxy must replace a client's header,
  never forward it beside its own;
- where the proxy reports its own verification (nginx, HAProxy, the ALB in verify
  mode) it must say it verified;
- the forwarded chain is verified again against the trust bundles unless
  ``verify_again = false`` *and* the proxy said it verified.

The peer must be the connection's own: an app server that rewrites ``scope["client"]``
or ``REMOTE_ADDR`` from ``X-Forwarded-For`` before the middleware runs (uvicorn's
default proxy headers, werkzeug ``ProxyFix`` outside the middleware) hides the proxy,
and with ``--forwarded-allow-ips='*'`` lets any client pose as it. See
``docs/proxies/index.md``.

::

    [proxy]
    trusted = ["127.0.0.1/32", "unix"]
    hops = 1
    sources = ["nginx"]
    verify_again = true
    [proxy.headers]
    nginx = "x-ssl-client-cert"
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from endpointsec._config import Table
from endpointsec._memo import Memo
from endpointsec.errors import ConfigurationError, ForwardedCertificateError
from endpointsec.facts import PresentedCertificate
from endpointsec.identity.forwarded_parsers import (
    parse_base64_der,
    parse_escaped_pem,
    parse_sf_binary,
    parse_sf_binary_list,
    parse_traefik,
    parse_xfcc,
)
from endpointsec.protocols import CertificateSource

__all__ = [
    "DEFAULT_HEADERS",
    "PROXY_SOURCES",
    "ALBPassthroughSource",
    "ALBSource",
    "CaddySource",
    "ClientCertSource",
    "ForwardedSource",
    "HAProxySource",
    "NginxSource",
    "ProxyConfig",
    "TraefikSource",
    "TrustedPeers",
    "XFCCSource",
    "build_proxy_sources",
]

Scope = MutableMapping[str, Any]
Environ = MutableMapping[str, Any]

#: The forwarded-certificate sources, each off unless named in ``[proxy] sources``.
PROXY_SOURCES = (
    "xfcc", "client-cert", "nginx", "traefik", "haproxy", "alb", "alb-passthrough", "caddy",
)

#: Header names per role, overridable in ``[proxy.headers]``.
DEFAULT_HEADERS: Mapping[str, str] = {
    "xfcc": "x-forwarded-client-cert",
    "client-cert": "client-cert",
    "client-cert-chain": "client-cert-chain",
    "nginx": "x-ssl-client-cert",
    "nginx-verify": "x-ssl-client-verify",
    "traefik": "x-forwarded-tls-client-cert",
    "haproxy": "x-ssl-client-der",
    "haproxy-verify": "x-ssl-client-verify",
    "alb": "x-amzn-mtls-clientcert-leaf",
    "alb-passthrough": "x-amzn-mtls-clientcert",
    "caddy": "x-client-cert-der",
}

#: The header roles each source reads (the first is the certificate header).
_ROLES: Mapping[str, tuple[str, ...]] = {
    "xfcc": ("xfcc",),
    "client-cert": ("client-cert", "client-cert-chain"),
    "nginx": ("nginx", "nginx-verify"),
    "traefik": ("traefik",),
    "haproxy": ("haproxy", "haproxy-verify"),
    "alb": ("alb",),
    "alb-passthrough": ("alb-passthrough",),
    "caddy": ("caddy",),
}

#: Sources whose proxy says whether it verified the chain.
_REPORTS_VERIFICATION = frozenset({"nginx", "haproxy", "alb"})

_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_UNIX = "unix"


def _parse_trusted(entries: Sequence[str]) -> tuple[tuple[ipaddress.IPv4Network
                                                           | ipaddress.IPv6Network, ...],
                                                     bool]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    unix = False
    for entry in entries:
        if entry == _UNIX:
            unix = True
            continue
        try:
            net = ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            raise ConfigurationError(f"{entry!r} is not an address range or 'unix': {exc}",
                                     key="proxy.trusted") from None
        if net.prefixlen == 0:
            raise ConfigurationError(
                f"{entry!r} trusts every address: anyone could forge a certificate header",
                key="proxy.trusted",
            )
        networks.append(net)
    return tuple(networks), unix


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """``[proxy]``: trusted proxies and the forwarded-certificate sources they use.

    ``trusted`` lists the immediate peers whose headers count: address ranges
    (``"10.0.0.0/8"``, ``"::1/128"``, a bare address) and ``"unix"`` (the app listens
    on a Unix socket only the proxy can reach). ``hops`` is how many trusted proxies
    stand between the client and the app (XFCC: the caller is in the ``hops``-th
    element from the end). ``sources`` names the headers to read; nothing is read
    unless named. ``headers`` overrides header names per role (see
    :data:`DEFAULT_HEADERS`). ``verify_again = False`` relies on the proxy's own
    verification, only for sources that report it (nginx, HAProxy, ALB verify mode).
    """

    trusted: tuple[str, ...]
    sources: tuple[str, ...]
    hops: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    verify_again: bool = True

    def __post_init__(self) -> None:
        if not self.trusted:
            raise ConfigurationError("name at least one trusted proxy address range or "
                                     "'unix'", key="proxy.trusted")
        _parse_trusted(self.trusted)
        if isinstance(self.hops, bool) or not isinstance(self.hops, int) or self.hops < 1:
            raise ConfigurationError("must be an integer of at least 1", key="proxy.hops")
        if not self.sources:
            raise ConfigurationError(
                f"name at least one source: {', '.join(PROXY_SOURCES)}", key="proxy.sources")
        for s in self.sources:
            if s not in PROXY_SOURCES:
                raise ConfigurationError(
                    f"unknown source {s!r}; expected one of {', '.join(PROXY_SOURCES)}",
                    key="proxy.sources",
                )
        if len(set(self.sources)) != len(self.sources):
            raise ConfigurationError("a source is named twice", key="proxy.sources")
        for role, name in self.headers.items():
            if role not in DEFAULT_HEADERS:
                raise ConfigurationError(
                    f"unknown header role; expected one of {', '.join(DEFAULT_HEADERS)}",
                    key=f"proxy.headers.{role}",
                )
            if not isinstance(name, str) or _TOKEN.fullmatch(name.lower()) is None:
                raise ConfigurationError("must be a header name",
                                         key=f"proxy.headers.{role}")
            if "_" in name:
                raise ConfigurationError(
                    "use '-' instead of '_': WSGI folds both into one key, and nginx "
                    "drops such headers", key=f"proxy.headers.{role}")
        used: dict[str, str] = {}
        for s in self.sources:
            for role in _ROLES[s]:
                name = self.header(role)
                other = used.get(name)
                if other is not None and other != s:
                    raise ConfigurationError(
                        f"sources {other!r} and {s!r} both read the header {name!r}; "
                        "give one of them another name",
                        key=f"proxy.headers.{role}",
                    )
                used[name] = s
        if not self.verify_again and not _REPORTS_VERIFICATION.intersection(self.sources):
            raise ConfigurationError(
                "none of the sources reports the proxy's own verification (only nginx, "
                "haproxy and alb do), so every forwarded chain is verified again; "
                "remove verify_again = false",
                key="proxy.verify_again",
            )

    def header(self, role: str) -> str:
        """The (lower-case) header name used for ``role`` (a key of DEFAULT_HEADERS)."""
        return self.headers.get(role, DEFAULT_HEADERS[role]).lower()

    @classmethod
    def from_table(cls, t: Table) -> ProxyConfig:
        """Read ``[proxy]`` (and ``[proxy.headers]``); unknown keys are errors."""
        headers: dict[str, str] = {}
        ht = t.table("headers")
        if ht is not None:
            for role in DEFAULT_HEADERS:
                name = ht.string(role, None)
                if name is not None:
                    headers[role] = name
            ht.finish()
        return t.build(
            cls,
            trusted=t.str_list("trusted"),
            sources=t.str_list("sources", choices=PROXY_SOURCES, what="source"),
            hops=t.integer("hops", 1, minimum=1),
            headers=headers,
            verify_again=t.boolean("verify_again", True),
        )


class TrustedPeers:
    """Is the immediate peer one of the configured trusted proxies?"""

    #: Answers kept per address string (cleared when full).
    cache_size = 4096

    def __init__(self, *, trusted: Sequence[str]) -> None:
        self._networks, self._unix = _parse_trusted(trusted)
        self._cache: dict[str, bool] = {}

    def _address(self, host: str) -> bool:
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            answer = False
        else:
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            answer = any(addr in net for net in self._networks)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[host] = answer
        return answer

    def asgi(self, scope: Scope) -> bool:
        """``scope["client"]`` is ``(host, port)``, or ``None`` on a Unix socket."""
        client = scope.get("client")
        if client is None:
            return self._unix
        if isinstance(client, (tuple, list)) and client and isinstance(client[0], str):
            return self._address(client[0])
        return False

    def wsgi(self, environ: Environ) -> bool:
        """``REMOTE_ADDR`` is an address; empty, missing or ``<local>`` on a Unix socket
        (gunicorn, werkzeug)."""
        addr = environ.get("REMOTE_ADDR")
        if addr is None or addr in ("", "<local>"):
            return self._unix
        return isinstance(addr, str) and self._address(addr)


def _wsgi_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _fold(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


class ForwardedSource:
    """A :class:`~endpointsec.protocols.CertificateSource` reading one proxy's header.

    Subclasses implement :meth:`_build` from the header values; this class applies the
    trust rule, gathers header values (ASGI) or environ values (WSGI), and scrubs.
    """

    #: What the source is called in configuration and in ``PresentedCertificate.source``.
    name: str = "forwarded"
    #: Whether the proxy behind this source reports its own verification.
    reports_verification: bool = False

    def __init__(self, *, peers: TrustedPeers, headers: Sequence[str], hops: int = 1,
                 verify_again: bool = True) -> None:
        self.peers = peers
        self.header_names = tuple(h.lower() for h in headers)
        self.hops = hops
        self.verify_again = verify_again
        self._asgi_names = tuple(h.encode("latin-1") for h in self.header_names)
        self._wsgi_keys = tuple(_wsgi_key(h) for h in self.header_names)
        self._folded = frozenset(_fold(n) for n in self._asgi_names)
        self._index = {n: i for i, n in enumerate(self._asgi_names)}
        self._memo: Memo[tuple[tuple[str, ...], ...], PresentedCertificate] = Memo(
            max_entries=1024, max_bytes=8 * 1024 * 1024)

    # -- reading ----------------------------------------------------------------------

    def from_asgi(self, scope: Scope) -> PresentedCertificate | None:
        if not self.peers.asgi(scope):
            return None
        values: list[list[str]] = [[] for _ in self._asgi_names]
        found = False
        index = self._index
        for k, v in scope.get("headers") or ():
            i = index.get(k)
            if i is None:
                # ASGI servers send lower-case names; be exact for any that do not.
                i = index.get(bytes(k).lower())
                if i is None:
                    continue
            values[i].append(bytes(v).decode("latin-1"))
            found = True
        return self._remembered(values) if found else None

    def from_wsgi(self, environ: Environ) -> PresentedCertificate | None:
        if not self.peers.wsgi(environ):
            return None
        values: list[list[str]] = []
        found = False
        for key in self._wsgi_keys:
            v = environ.get(key)
            if isinstance(v, str):
                values.append([v])
                found = True
            else:
                values.append([])
        return self._remembered(values) if found else None

    def _remembered(self, values: list[list[str]]) -> PresentedCertificate | None:
        """:meth:`_build`, remembered under the exact header values: a proxy sends the
        same certificate header on every request of a client, and decoding it (percent-
        escapes, base64, DER) would cost more than everything else endpointsec does."""
        key = tuple(tuple(v) for v in values)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        found = self._build(values)
        if found is not None:
            self._memo.put(key, found, size=sum(len(x) for v in values for x in v))
        return found

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        raise NotImplementedError  # pragma: no cover

    # -- scrubbing --------------------------------------------------------------------

    def scrub_asgi(self, scope: Scope) -> None:
        """Remove this source's headers from an untrusted peer; from any peer, remove
        spellings with ``_`` for ``-`` (a WSGI or Django bridge would fold them into
        the same key), which no proxy sets."""
        headers = scope.get("headers")
        if not headers:
            return
        trusted = self.peers.asgi(scope)
        names = self._asgi_names
        kept = []
        changed = False
        for k, v in headers:
            key = bytes(k).lower()
            if (_fold(key) in self._folded) and (not trusted or key not in names):
                changed = True
                continue
            kept.append((k, v))
        if changed:
            scope["headers"] = kept

    def scrub_wsgi(self, environ: Environ) -> None:
        """Remove this source's environ keys when the peer is not trusted (the WSGI
        key is the same for ``X-A-B`` and ``X_A-B``: both are removed)."""
        if self.peers.wsgi(environ):
            return
        for key in self._wsgi_keys:
            environ.pop(key, None)

    # -- helpers for subclasses -------------------------------------------------------

    def _single(self, values: list[str], what: str) -> str | None:
        """One header line expected; empty means none (the proxy saw no certificate)."""
        if not values:
            return None
        if len(values) > 1:
            raise ForwardedCertificateError(f"{what} header sent {len(values)} times "
                                            "(ambiguous)")
        value = values[0].strip(" \t")
        return value or None

    def _presented(self, leaf: bytes, intermediates: Iterable[bytes] = (), *,
                   verified: bool | None = None,
                   claimed_sha256: str | None = None) -> PresentedCertificate:
        return PresentedCertificate(
            leaf=leaf,
            intermediates=tuple(intermediates),
            source=self.name,
            upstream_verified=verified,
            claimed_sha256=claimed_sha256,
            trusted_upstream=(not self.verify_again) and verified is True,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} headers={self.header_names}>"


class XFCCSource(ForwardedSource):
    """Envoy / Istio ``x-forwarded-client-cert``; the caller is in the ``hops``-th
    element from the end. The element must carry ``Cert`` or ``Chain``."""

    name = "xfcc"

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        # One header line: several (even one of them empty) are refused, never joined,
        # or a line a client slipped in could become the element read as the caller.
        value = self._single(values[0], "XFCC")
        if value is None:
            return None
        elements = parse_xfcc(value)
        if len(elements) < self.hops:
            raise ForwardedCertificateError(
                f"XFCC has {len(elements)} element(s) but {self.hops} trusted hop(s) "
                "are configured"
            )
        el = elements[-self.hops]
        if el.cert is None and not el.chain:
            raise ForwardedCertificateError(
                "XFCC element has no Cert or Chain (configure the proxy to forward the "
                "certificate: Envoy set_current_client_cert_details cert: true)"
            )
        leaf = el.cert if el.cert is not None else el.chain[0]
        if el.chain and el.chain[0] != leaf:
            raise ForwardedCertificateError("XFCC Cert and the first certificate of Chain "
                                            "differ (ambiguous)")
        if el.hash is not None and hashlib.sha256(leaf).hexdigest() != el.hash:
            raise ForwardedCertificateError("XFCC Hash does not match the certificate")
        return self._presented(leaf, el.chain[1:], claimed_sha256=el.hash)


class ClientCertSource(ForwardedSource):
    """RFC 9440 ``Client-Cert`` (leaf) and ``Client-Cert-Chain`` (the rest)."""

    name = "client-cert"

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        cert = self._single(values[0], "Client-Cert")
        chain_lines = [v for v in values[1] if v.strip(" \t")]
        if cert is None:
            if chain_lines:
                raise ForwardedCertificateError("Client-Cert-Chain without Client-Cert")
            return None
        leaf = parse_sf_binary(cert)
        chain = parse_sf_binary_list(",".join(chain_lines)) if chain_lines else ()
        return self._presented(leaf, chain)


class _StatusSource(ForwardedSource):
    """A certificate header plus the proxy's verification status header."""

    reports_verification = True
    label = ""
    ok = ""

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        cert = self._single(values[0], f"{self.label} certificate")
        if cert is None:
            return None
        status = self._single(values[1], f"{self.label} verification status")
        if status is None:
            raise ForwardedCertificateError(
                f"{self.label} forwarded a certificate without its verification status "
                f"header ({self.header_names[1]})"
            )
        if status != self.ok:
            raise ForwardedCertificateError(
                f"{self.label} did not verify the client certificate (status "
                f"{status[:40]!r}, expected {self.ok!r})"
            )
        return self._presented(*self._certs(cert), verified=True)

    def _certs(self, value: str) -> tuple[bytes, tuple[bytes, ...]]:
        raise NotImplementedError  # pragma: no cover


class NginxSource(_StatusSource):
    """nginx ``$ssl_client_escaped_cert`` (URL-encoded PEM leaf) with
    ``$ssl_client_verify`` (must be ``SUCCESS``)."""

    name = "nginx"
    label = "nginx"
    ok = "SUCCESS"

    def _certs(self, value: str) -> tuple[bytes, tuple[bytes, ...]]:
        certs = parse_escaped_pem(value, what="nginx certificate")
        return certs[0], certs[1:]


class HAProxySource(_StatusSource):
    """HAProxy ``%[ssl_c_der,base64]`` with ``%[ssl_c_verify]`` (must be ``0``)."""

    name = "haproxy"
    label = "HAProxy"
    ok = "0"

    def _certs(self, value: str) -> tuple[bytes, tuple[bytes, ...]]:
        return parse_base64_der(value, what="HAProxy certificate"), ()


class TraefikSource(ForwardedSource):
    """Traefik ``X-Forwarded-Tls-Client-Cert`` (passTLSClientCert ``pem: true``)."""

    name = "traefik"

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        value = self._single(values[0], "Traefik certificate")
        if value is None:
            return None
        certs = parse_traefik(value)
        _only_issuers_after_the_leaf(certs, what="Traefik certificate")
        return self._presented(certs[0], certs[1:])


def _only_issuers_after_the_leaf(certs: Sequence[bytes], *, what: str) -> None:
    """Refuse a forwarded chain with a second end-entity certificate.

    A WSGI server joins repeated header lines with ``,``, which is also the separator
    of a Traefik chain: two lines (a client's and the proxy's) would read as a leaf and
    an "intermediate". Every certificate after the leaf must be a CA certificate.
    """
    for der in certs[1:]:
        try:
            cert = x509.load_der_x509_certificate(der)
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        except ValueError:
            raise ForwardedCertificateError(
                f"{what}: a chain certificate cannot be parsed") from None
        if not ca:
            raise ForwardedCertificateError(
                f"{what} holds a second end-entity certificate (header lines joined?); "
                "ambiguous")


class ALBSource(ForwardedSource):
    """AWS ALB, mutual TLS *verify* mode: ``X-Amzn-Mtls-Clientcert-Leaf`` (URL-encoded
    PEM). In verify mode the ALB refuses unverified clients, so the header itself
    says the ALB verified."""

    name = "alb"
    reports_verification = True

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        value = self._single(values[0], "ALB certificate")
        if value is None:
            return None
        certs = parse_escaped_pem(value, what="ALB certificate")
        if len(certs) != 1:
            raise ForwardedCertificateError("ALB leaf header holds more than one certificate")
        return self._presented(certs[0], verified=True)


class ALBPassthroughSource(ForwardedSource):
    """AWS ALB, mutual TLS *passthrough* mode: ``X-Amzn-Mtls-Clientcert`` (URL-encoded
    PEM chain, leaf first). The ALB verified nothing: always verified again."""

    name = "alb-passthrough"

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        value = self._single(values[0], "ALB passthrough certificate")
        if value is None:
            return None
        certs = parse_escaped_pem(value, what="ALB passthrough certificate")
        return self._presented(certs[0], certs[1:])


class CaddySource(ForwardedSource):
    """Caddy ``header_up <name> {http.request.tls.client.certificate_der_base64}``."""

    name = "caddy"

    def _build(self, values: list[list[str]]) -> PresentedCertificate | None:
        value = self._single(values[0], "Caddy certificate")
        if value is None:
            return None
        return self._presented(parse_base64_der(value, what="Caddy certificate"))


_CLASSES: Mapping[str, type[ForwardedSource]] = {
    "xfcc": XFCCSource,
    "client-cert": ClientCertSource,
    "nginx": NginxSource,
    "traefik": TraefikSource,
    "haproxy": HAProxySource,
    "alb": ALBSource,
    "alb-passthrough": ALBPassthroughSource,
    "caddy": CaddySource,
}


def build_proxy_sources(config: ProxyConfig) -> list[CertificateSource]:
    """One source per name in ``config.sources``, sharing the trusted-peer check."""
    peers = TrustedPeers(trusted=config.trusted)
    out: list[CertificateSource] = []
    for name in config.sources:
        cls = _CLASSES[name]
        out.append(cls(
            peers=peers,
            headers=[config.header(role) for role in _ROLES[name]],
            hops=config.hops,
            verify_again=config.verify_again,
        ))
    return out
