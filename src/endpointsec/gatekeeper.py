"""The gatekeeper: *gather* the facts of a request, then :func:`decide`.

Gather is the only step with I/O (reading the certificate source, verifying the
chain, fetching keys, verifying the token). It produces one frozen
:class:`RequestFacts`; :meth:`Gatekeeper.decide` hands it to the pure
:func:`endpointsec.core.decide` with the current policy snapshot.

The per-request path reads top to bottom in :meth:`Gatekeeper.gather_asgi` /
:meth:`Gatekeeper.gather_wsgi`, then :meth:`Gatekeeper.decide`. Each step remembers
what belongs to its own scope, and nothing keyed on the whole request:

* the **connection**: the certificate source keeps the chain it decoded for the
  strings the server hands over on every request of a connection, and the verifier
  keeps a verified chain until the earliest ``notAfter`` of the chain or a trust-bundle
  reload (:mod:`endpointsec.identity`);
* the **token**: the verifier keeps the verified principal, with its policy subjects
  worked out once, until ``exp`` or a key-set change (:mod:`endpointsec.tokens.cache`);
* the **policy**: the engine keeps, per (subjects, action, domain), the rule buckets
  that can apply and the roles held, until the policy reloads
  (:mod:`endpointsec.policy.enforcer`); a new path costs one bucket lookup.

The sync (WSGI, threads) and async (ASGI) paths share every step except the token
verification call, which is ``verify`` in a thread and ``averify`` on the loop.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from types import EllipsisType
from typing import Any

from endpointsec.audit import AuditConfig, Observer, RouteOf, build_observer
from endpointsec.config import Config
from endpointsec.core import decide, decide_route
from endpointsec.errors import (
    CertificateError,
    ConfigurationError,
    EndpointSecError,
    PathError,
    TokenError,
)
from endpointsec.facts import (
    Decision,
    PeerIdentity,
    PresentedCertificate,
    Principal,
    RequestFacts,
    RequestPrincipal,
    Requirements,
)
from endpointsec.protocols import CertificateSource, ChainVerifier, Policy, TokenVerifier
from endpointsec.routing import RouteTable
from endpointsec.wirepath import (
    asgi_headers,
    asgi_raw_path,
    check_asgi_paths_agree,
    check_routed_path,
    wsgi_headers,
    wsgi_raw_path,
)

__all__ = ["Gatekeeper", "SecurityContext"]

Scope = MutableMapping[str, Any]
Environ = MutableMapping[str, Any]


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """What endpointsec attaches to a request as ``scope["endpointsec"]`` /
    ``environ["endpointsec"]``."""

    principal: Principal
    decision: Decision
    facts: RequestFacts = field(repr=False)


class Gatekeeper:
    """Gathers facts and decides; shared by every adapter.

    Build it from a :class:`Config` (:meth:`from_config`) or from components.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        sources: Sequence[CertificateSource] = (),
        verifier: ChainVerifier | None = None,
        token_verifier: TokenVerifier | None = None,
        token_reader: Any = None,
        routes: RouteTable | None = None,
        domain_header: str | None = None,
        observer: Observer | EllipsisType | None = ...,
    ) -> None:
        self.policy = policy
        self.sources = tuple(sources)
        self.verifier = verifier
        self.token_verifier = token_verifier
        self.token_reader = token_reader
        self.routes = routes or RouteTable()
        # -- observability: called after every decision (endpointsec.audit); ``...`` is
        # the default decision log, ``None`` nothing at all.
        self.observer: Observer | None = (
            build_observer(AuditConfig(), policy=policy, routes=self.routes,
                           token_verifier=token_verifier, chain_verifier=verifier)
            if isinstance(observer, EllipsisType) else observer)
        self._domain_header = domain_header.lower().encode() if domain_header else None
        # WSGI servers turn "-" into "_" in HTTP_* keys: the header's environ key.
        self._domain_environ = ("HTTP_" + domain_header.upper().replace("-", "_")
                                if domain_header else None)
        if self.sources and self.verifier is None:
            raise ConfigurationError("certificate sources are configured but no verifier",
                                     key="identity")
        names = getattr(token_reader, "header_names", None)
        self._token_environ: tuple[tuple[bytes, str], ...] | None = tuple(
            (n, "HTTP_" + n.decode("latin-1").upper().replace("-", "_")) for n in names
        ) if isinstance(names, tuple) else None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Config) -> Gatekeeper:
        from endpointsec.identity.forwarded import build_proxy_sources
        from endpointsec.identity.sources import build_server_sources
        from endpointsec.identity.verify import X509ChainVerifier
        from endpointsec.policy import build_policy
        from endpointsec.tokens import build_token_reader, build_token_verifier

        sources: list[CertificateSource] = list(build_server_sources(config.identity))
        if config.proxy is not None:
            sources.extend(build_proxy_sources(config.proxy))
        routes = RouteTable(
            [(r.path, r.methods, r.requirements) for r in config.routes],
            defaults=config.defaults,
        )
        if not sources and routes.any_requires_mtls:
            raise ConfigurationError(
                "routes require mTLS but no certificate source is enabled; name what is in "
                "front of the app (e.g. sources = [\"asgi-tls\"]) or configure [proxy]",
                key="identity.sources",
            )
        verifier = X509ChainVerifier(config=config.identity) if sources else None
        policy = build_policy(config.policy)
        token_verifier = build_token_verifier(config.tokens)
        return cls(
            policy=policy,
            sources=sources,
            verifier=verifier,
            token_verifier=token_verifier,
            token_reader=build_token_reader(config.tokens),
            routes=routes,
            domain_header=getattr(config.policy, "domain_header", None),
            observer=build_observer(config.audit, policy=policy, routes=routes,
                                    token_verifier=token_verifier, chain_verifier=verifier),
        )

    @classmethod
    def resolve(cls, *, config: Config | None, gatekeeper: Gatekeeper | None) -> Gatekeeper:
        """The gatekeeper an adapter uses: exactly one of ``config`` or ``gatekeeper``."""
        if gatekeeper is not None and config is None:
            return gatekeeper
        if config is not None and gatekeeper is None:
            return cls.from_config(config)
        raise ConfigurationError("pass exactly one of config= or gatekeeper=")

    def start(self) -> None:
        """Begin background work that makes the first requests fast (fetching remote key
        sets). Never raises, never blocks; called on ASGI lifespan startup."""
        prefetch = getattr(self.token_verifier, "prefetch", None)
        if callable(prefetch):
            prefetch()

    def close(self) -> None:
        """Stop background work: the key-fetch thread and policy file watchers.
        Idempotent; called on ASGI lifespan shutdown."""
        for component in (self.token_verifier, self.policy):
            close = getattr(component, "close", None)
            if callable(close):
                close()

    # -- decide -----------------------------------------------------------------------

    def decide(self, facts: RequestFacts, *, carrier: Scope | Environ | None = None,
               started_ns: int = 0, route_of: RouteOf | None = None) -> Decision:
        """:func:`endpointsec.decide` with the current policy, then the observer.

        ``carrier`` (the scope or environ), ``started_ns`` (``perf_counter_ns()`` before
        gathering) and ``route_of`` are for the observer (:mod:`endpointsec.audit`).
        """
        observer = self.observer
        if observer is None:
            return decide(facts, self.policy)
        start = started_ns or perf_counter_ns()
        decision = decide(facts, self.policy)
        observer(facts, decision, perf_counter_ns() - start, carrier, route_of)
        return decision

    def decide_route(self, facts: RequestFacts, route: Requirements | None, *,
                     carrier: Scope | Environ | None = None, started_ns: int = 0,
                     route_of: RouteOf | None = None) -> Decision:
        """Decide with a route's own (narrowing) requirements; see :func:`decide_route`."""
        observer = self.observer
        if observer is None:
            return decide_route(facts, self.policy, route)
        start = started_ns or perf_counter_ns()
        decision = decide_route(facts, self.policy, route)
        observer(facts, decision, perf_counter_ns() - start, carrier, route_of)
        return decision

    # -- the per-request path ---------------------------------------------------------

    async def gather_asgi(self, scope: Scope) -> RequestFacts:
        """Everything known about an ASGI request (the only I/O: a key fetch, if any)."""
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else str(scope.get("method", ""))
        raw_path = asgi_raw_path(scope)
        route = self.route(method, raw_path, wire=True)
        error = check_asgi_paths_agree(scope, raw_path)
        if error is not None and route[1] is None:
            route = (None, error, self.routes.defaults)
        headers = asgi_headers(scope)
        if headers is None:
            headers = []
            route = (None, PathError("scope['headers'] is not a list of byte pairs"),
                     self.routes.defaults)
        peer, peer_error = self._gather_peer(scope, asgi=True)
        token_str, token_error = self._read_token(headers, scope.get("query_string", b""))
        token: RequestPrincipal | None = None
        if token_str is not None and self.token_verifier is not None:
            try:
                token = await self.token_verifier.averify(token_str)
            except Exception as exc:
                token_error = _token_failure(exc)
        return _facts(
            method=method, raw_path=raw_path, route=route, peer=peer, peer_error=peer_error,
            token=token, token_error=token_error,
            token_presented=token_str is not None or token_error is not None,
            domain=self._domain(headers) if self._domain_header else None,
            websocket=websocket,
        )

    def gather_wsgi(self, environ: Environ) -> RequestFacts:
        """Everything known about a WSGI request (may wait for a key fetch)."""
        method = str(environ.get("REQUEST_METHOD", ""))
        raw_path = wsgi_raw_path(environ)
        route = self.route(method, raw_path, wire=True)
        peer, peer_error = self._gather_peer(environ, asgi=False)
        headers = self._token_headers_wsgi(environ)
        token_str, token_error = self._read_token(
            headers, str(environ.get("QUERY_STRING", "")).encode("latin-1", "replace"))
        token: RequestPrincipal | None = None
        if token_str is not None and self.token_verifier is not None:
            try:
                token = self.token_verifier.verify(token_str)
            except Exception as exc:
                token_error = _token_failure(exc)
        websocket = str(environ.get("HTTP_UPGRADE", "")).lower() == "websocket"
        domain: str | None = None
        if self._domain_environ is not None:
            value = environ.get(self._domain_environ)
            domain = value if isinstance(value, str) else None
        return _facts(
            method=method, raw_path=raw_path, route=route, peer=peer, peer_error=peer_error,
            token=token, token_error=token_error,
            token_presented=token_str is not None or token_error is not None,
            domain=domain, websocket=websocket,
        )

    def scrub_asgi(self, scope: Scope) -> None:
        """Remove what the certificate sources must not let the app see (spoofable
        proxy headers); called before the app runs."""
        for source in self.sources:
            source.scrub_asgi(scope)

    def scrub_wsgi(self, environ: Environ) -> None:
        for source in self.sources:
            source.scrub_wsgi(environ)

    # -- the steps ----------------------------------------------------------------------

    def route(self, method: str, raw_path: str, *, wire: bool = False) -> _Route:
        """The normalized path and the route's requirements (or the path's error).

        ``wire=True`` for a path as received from a server: it is also refused when the
        application would route on something other than the normalized path
        (:mod:`endpointsec.wirepath`). ``endpointsec explain`` uses it too, so that it
        answers 400 where the server does.
        """
        defaults = self.routes.defaults
        try:
            path = self.policy.normalize(raw_path)
        except PathError as exc:
            return None, exc, defaults
        except EndpointSecError as exc:
            return None, PathError(str(exc)), defaults
        except Exception as exc:  # a normalizer bug is a 400, never a 500
            return None, PathError(f"request path could not be normalized: "
                                   f"{type(exc).__name__}"), defaults
        # The authorized path is the path the application routes, or the request is a
        # 400 (dot/empty segments, backslashes, encoded separators; every path option).
        error = check_routed_path(raw_path if wire else path, path)
        if error is not None:
            return None, error, defaults
        return path, None, self.routes.match(method, path)

    def _gather_peer(self, carrier: Scope | Environ, *, asgi: bool
                     ) -> tuple[PeerIdentity | None, EndpointSecError | None]:
        """Ask every source, then verify what was presented. A source that fails stops
        the search: its error is the peer error. Two different leaves are ambiguous."""
        if not self.sources:
            return None, None
        first: PresentedCertificate | None = None
        for source in self.sources:
            try:
                p = source.from_asgi(carrier) if asgi else source.from_wsgi(carrier)
            except EndpointSecError as exc:
                return None, exc
            except Exception as exc:
                return None, CertificateError(f"source {source.name!r} failed: "
                                              f"{type(exc).__name__}")
            if p is None:
                continue
            if first is None:
                first = p
            elif p.leaf != first.leaf:
                return None, CertificateError(
                    f"ambiguous identity: sources {first.source!r} and {p.source!r} "
                    "presented different certificates")
        if first is None:
            return None, None
        if self.verifier is None:  # pragma: no cover - guarded in __init__
            return None, CertificateError("no verifier configured")
        try:
            if first.trusted_upstream:
                return self.verifier.identify(first), None
            return self.verifier.verify(first), None
        except EndpointSecError as exc:
            return None, exc
        except Exception as exc:
            return None, CertificateError(f"certificate could not be processed: "
                                          f"{type(exc).__name__}")

    def _read_token(self, headers: Sequence[tuple[bytes, bytes]], query: bytes) -> tuple[
        str | None, EndpointSecError | None
    ]:
        if self.token_reader is None:
            return None, None
        try:
            return self.token_reader.read(headers, query), None
        except EndpointSecError as exc:
            return None, exc
        except Exception as exc:  # malformed headers: a failed token, never a 500
            return None, TokenError(f"token could not be read: {type(exc).__name__}")

    def _token_headers_wsgi(self, environ: Environ) -> list[tuple[bytes, bytes]]:
        """The headers the token reader reads, from a WSGI environ (only those: building
        every header of the environ would cost more than reading the token)."""
        if self._token_environ is None:
            return wsgi_headers(environ) if self.token_reader is not None else []
        out = []
        for name, key in self._token_environ:
            value = environ.get(key)
            if isinstance(value, str):
                out.append((name, value.encode("latin-1", "replace")))
        return out

    def _domain(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        wanted = self._domain_header
        for name, value in headers:
            if name.lower() == wanted:
                return value.decode("latin-1")
        return None

    # -- direct (CLI explain, tests) ----------------------------------------------------

    def facts_for(
        self,
        *,
        method: str,
        path: str,
        peer: PeerIdentity | None = None,
        token: RequestPrincipal | None = None,
        domain: str | None = None,
        requirements: Requirements | None = None,
        wire: bool = False,
    ) -> RequestFacts:
        """Facts for a request described directly (no server, no I/O). ``wire=True``
        applies the checks of a path as received (what a server would answer)."""
        route = self.route(method, path, wire=wire)
        if requirements is not None:
            route = (route[0], route[1], requirements)
        return _facts(
            method=method, raw_path=path, route=route, peer=peer, peer_error=None,
            token=token, token_error=None, token_presented=token is not None,
            domain=domain, websocket=False,
        )


_Route = tuple[str | None, PathError | None, Requirements]


def _facts(
    *,
    method: str,
    raw_path: str,
    route: _Route,
    peer: PeerIdentity | None,
    peer_error: EndpointSecError | None,
    token: RequestPrincipal | None,
    token_error: EndpointSecError | None,
    token_presented: bool,
    domain: str | None,
    websocket: bool,
) -> RequestFacts:
    path, path_error, requirements = route
    return RequestFacts(
        method=method,
        raw_path=raw_path,
        path=path,
        request_error=path_error,
        principal=Principal(peer=peer, request=token),
        requirements=requirements,
        peer_error=peer_error,
        token_error=token_error,
        token_presented=token_presented,
        domain=domain,
        websocket=websocket,
    )


def _token_failure(exc: Exception) -> EndpointSecError:
    """Our own errors pass through (401, 503); anything else is a failed token, never a 500."""
    if isinstance(exc, EndpointSecError):
        return exc
    return TokenError(f"token could not be processed: {type(exc).__name__}")
