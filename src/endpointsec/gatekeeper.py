"""The gatekeeper: *gather* the facts of a request, then :func:`decide`.

Gather is the only step with I/O (reading the certificate source, verifying the
chain, fetching keys, verifying the token). It produces one frozen
:class:`RequestFacts`; :meth:`Gatekeeper.decide` hands it to the pure
:func:`endpointsec.core.decide` with the current policy snapshot.

The sync (WSGI, threads) and async (ASGI) paths share every step except the token
verification call, which is ``verify`` in a thread and ``averify`` on the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["Gatekeeper", "SecurityContext"]

logger = logging.getLogger("endpointsec.decision")

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
        decision_cache_ttl: float = 1.0,
        decision_cache_size: int = 4096,
    ) -> None:
        self.policy = policy
        self.sources = tuple(sources)
        self.verifier = verifier
        self.token_verifier = token_verifier
        self.token_reader = token_reader
        self.routes = routes or RouteTable()
        self._domain_header = domain_header.lower().encode() if domain_header else None
        if self.sources and self.verifier is None:
            raise ConfigurationError("certificate sources are configured but no verifier",
                                     key="identity")
        self._recent = _RecentDecisions(ttl=decision_cache_ttl, size=decision_cache_size)
        self._key_headers = frozenset(
            {b"authorization", b"cookie"} | ({self._domain_header} if self._domain_header
                                             else set())
        )
        from endpointsec.identity.sources import ASGITLSSource

        # The fast path keys on the scope's TLS extension and a few headers: it is used
        # only when nothing else (a proxy header, a custom source) can carry identity.
        self._asgi_fast_path = self._recent.enabled and all(
            type(s) is ASGITLSSource for s in self.sources)

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
        return cls(
            policy=build_policy(config.policy),
            sources=sources,
            verifier=verifier,
            token_verifier=build_token_verifier(config.tokens),
            token_reader=build_token_reader(config.tokens),
            routes=routes,
            domain_header=getattr(config.policy, "domain_header", None),
            decision_cache_ttl=config.cache.decisions_ttl,
            decision_cache_size=config.cache.decisions_size,
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

    # -- the recent-decisions fast path (ASGI) -----------------------------------------

    def recent_key_asgi(self, scope: Scope) -> tuple[Any, ...] | None:
        """The key under which an allowed decision for this request may be remembered:
        every input of *gather* (request line, TLS extension, the headers tokens and
        tenants are read from). ``None`` when the request cannot be keyed safely."""
        if not self._asgi_fast_path:
            return None
        try:
            ext = scope.get("extensions")
            tls = ext.get("tls") if isinstance(ext, dict) else None
            chain: Any = None
            if tls is not None:
                if not isinstance(tls, dict):
                    return None
                c = tls.get("client_cert_chain")
                chain = (tuple(c) if isinstance(c, list | tuple) else c,
                         tls.get("client_cert"), tls.get("client_cert_error"))
            picked = []
            wanted = self._key_headers
            for name, value in scope.get("headers", ()):
                if name in wanted:
                    picked.append((name, value))
            key = (scope["type"], scope.get("method"), scope.get("raw_path"),
                   scope.get("path"), scope.get("query_string"), chain, tuple(picked))
            hash(key)
        except (TypeError, ValueError, AttributeError, KeyError):
            return None
        return key

    def recent(self, key: tuple[Any, ...]) -> tuple[RequestFacts, Decision] | None:
        """An allowed decision remembered under ``key``, if still valid."""
        return self._recent.get(key, generation=getattr(self.policy, "generation", None))

    def remember(self, key: tuple[Any, ...], facts: RequestFacts, decision: Decision) -> None:
        """Remember an allowed decision (never a refusal, a dry-run or a failure)."""
        if (not decision.allowed or decision.would_deny or facts.peer_error is not None
                or facts.token_error is not None or facts.request_error is not None):
            return
        self._recent.put(key, facts, decision,
                         generation=getattr(self.policy, "generation", None))

    # -- decide -----------------------------------------------------------------------

    def decide(self, facts: RequestFacts) -> Decision:
        decision = decide(facts, self.policy)
        _log(decision)
        return decision

    def decide_route(self, facts: RequestFacts, route: Requirements | None) -> Decision:
        """Decide with a route's own (narrowing) requirements; see :func:`decide_route`."""
        decision = decide_route(facts, self.policy, route)
        _log(decision)
        return decision

    # -- gather: shared steps ---------------------------------------------------------

    def _route(self, method: str, raw_path: str) -> tuple[str | None, PathError | None,
                                                           Requirements]:
        try:
            path = self.policy.normalize(raw_path)
        except PathError as exc:
            return None, exc, self.routes.defaults
        except EndpointSecError as exc:
            return None, PathError(str(exc)), self.routes.defaults
        except Exception as exc:  # a normalizer bug is a 400, never a 500
            return None, PathError(f"request path could not be normalized: "
                                   f"{type(exc).__name__}"), self.routes.defaults
        if "%2f" in path.lower():
            # Starlette, FastAPI, Flask and werkzeug route on the *decoded* path, where
            # %2F is a separator: a template or rule matching "one segment" here would
            # match two segments in the app (advisory: encoded-slash confusion).
            return None, PathError("request path contains an encoded slash (%2F) that "
                                   "the application would decode into a separator"), \
                self.routes.defaults
        return path, None, self.routes.match(method, path)

    def _wire_route(self, method: str, raw_path: str) -> tuple[
        str | None, PathError | None, Requirements
    ]:
        """:meth:`_route` for a path as received: also refuses what the app would read
        differently from the normalized path (advisory: normalization confusion)."""
        error = _divergent_path(raw_path)
        if error is not None:
            return None, error, self.routes.defaults
        route = self._route(method, raw_path)
        if route[0] is not None and "//" in raw_path and "//" not in route[0]:
            # merge_slashes: "//" would be checked as "/", but the app routes "//"
            # (a private "/{p:path}" ran for "//" when "/" was public).
            return None, PathError("request path contains an empty segment ('//') that "
                                   "the application would not merge"), self.routes.defaults
        return route

    def _peer(self, presented: Sequence[PresentedCertificate]) -> tuple[
        PeerIdentity | None, EndpointSecError | None
    ]:
        if not presented:
            return None, None
        first = presented[0]
        for other in presented[1:]:
            if other.leaf != first.leaf:
                return None, CertificateError(
                    f"ambiguous identity: sources {first.source!r} and {other.source!r} "
                    "presented different certificates"
                )
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

    def _domain(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        if self._domain_header is None:
            return None
        for name, value in headers:
            if isinstance(name, bytes) and name.lower() == self._domain_header:
                return value.decode("latin-1") if isinstance(value, bytes) else None
        return None

    @staticmethod
    def _facts(
        *,
        method: str,
        raw_path: str,
        route: tuple[str | None, PathError | None, Requirements],
        peer: tuple[PeerIdentity | None, EndpointSecError | None],
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
            principal=Principal(peer=peer[0], request=token),
            requirements=requirements,
            peer_error=peer[1],
            token_error=token_error,
            token_presented=token_presented,
            domain=domain,
            websocket=websocket,
        )

    def _gather_peer(self, read: Callable[[CertificateSource], PresentedCertificate | None]
                     ) -> tuple[PeerIdentity | None, EndpointSecError | None]:
        """Ask every source with ``read`` (ASGI or WSGI), then verify what was presented.
        A source that fails stops the search: its error is the peer error."""
        found: list[PresentedCertificate] = []
        for source in self.sources:
            try:
                p = read(source)
            except EndpointSecError as exc:
                return None, exc
            except Exception as exc:
                return None, CertificateError(f"source {source.name!r} failed: "
                                              f"{type(exc).__name__}")
            if p is not None:
                found.append(p)
        return self._peer(found)

    # -- gather: ASGI -----------------------------------------------------------------

    def scrub_asgi(self, scope: Scope) -> None:
        for source in self.sources:
            source.scrub_asgi(scope)

    async def gather_asgi(self, scope: Scope) -> RequestFacts:
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else str(scope.get("method", ""))
        raw = scope.get("raw_path")
        # A "#" in raw_path (h11 passes it through) is part of the app's path, not a
        # fragment to cut: encode it so that the normalizer does not stop there.
        raw_path = (raw.split(b"?", 1)[0].replace(b"#", b"%23").decode("latin-1")
                    if isinstance(raw, bytes) else _quote_path(str(scope.get("path", ""))))
        route = self._wire_route(method, raw_path)
        headers = _asgi_headers(scope)
        if headers is None:
            headers = []
            route = (None, PathError("scope['headers'] is not a list of byte pairs"),
                     self.routes.defaults)
        peer = self._gather_peer(lambda source: source.from_asgi(scope))
        token_str, token_error = self._read_token(headers, scope.get("query_string", b""))
        token: RequestPrincipal | None = None
        if token_str is not None and self.token_verifier is not None:
            try:
                token = await self.token_verifier.averify(token_str)
            except Exception as exc:
                token_error = _token_failure(exc)
        return self._facts(
            method=method, raw_path=raw_path, route=route, peer=peer, token=token,
            token_error=token_error, token_presented=token_str is not None or bool(token_error),
            domain=self._domain(headers), websocket=websocket,
        )

    # -- gather: WSGI -----------------------------------------------------------------

    def scrub_wsgi(self, environ: Environ) -> None:
        for source in self.sources:
            source.scrub_wsgi(environ)

    def gather_wsgi(self, environ: Environ) -> RequestFacts:
        method = str(environ.get("REQUEST_METHOD", ""))
        raw_path = _wsgi_raw_path(environ)
        route = self._wire_route(method, raw_path)
        peer = self._gather_peer(lambda source: source.from_wsgi(environ))
        headers = _wsgi_headers(environ)
        token_str, token_error = self._read_token(
            headers, str(environ.get("QUERY_STRING", "")).encode("latin-1", "replace"))
        token: RequestPrincipal | None = None
        if token_str is not None and self.token_verifier is not None:
            try:
                token = self.token_verifier.verify(token_str)
            except Exception as exc:
                token_error = _token_failure(exc)
        websocket = str(environ.get("HTTP_UPGRADE", "")).lower() == "websocket"
        return self._facts(
            method=method, raw_path=raw_path, route=route, peer=peer, token=token,
            token_error=token_error, token_presented=token_str is not None or bool(token_error),
            domain=self._domain(headers), websocket=websocket,
        )

    # -- gather: direct (CLI explain, tests) ------------------------------------------

    def facts_for(
        self,
        *,
        method: str,
        path: str,
        peer: PeerIdentity | None = None,
        token: RequestPrincipal | None = None,
        domain: str | None = None,
        requirements: Requirements | None = None,
    ) -> RequestFacts:
        """Facts for a request described directly (no server, no I/O)."""
        route = self._route(method, path)
        if requirements is not None:
            route = (route[0], route[1], requirements)
        return self._facts(
            method=method, raw_path=path, route=route, peer=(peer, None), token=token,
            token_error=None, token_presented=token is not None, domain=domain,
            websocket=False,
        )


class _RecentDecisions:
    """Allowed decisions for identical gather inputs, for at most ``ttl`` seconds.

    An entry is also dropped at the certificate's notAfter and the token's ``exp``
    (whichever is first) and when the policy's generation changes (a reload). Key-set and
    trust-bundle changes take effect within ``ttl`` (they are polled every few seconds
    anyway). Bounded: the oldest entry goes first.
    """

    def __init__(self, *, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self.enabled = ttl > 0 and size > 0
        self._entries: dict[tuple[Any, ...],
                            tuple[float, float, Any, RequestFacts, Decision]] = {}

    def get(self, key: tuple[Any, ...], *, generation: Any) -> tuple[RequestFacts,
                                                                        Decision] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, expires, gen, facts, decision = entry
        if gen != generation or time.monotonic() >= deadline or time.time() >= expires:
            self._entries.pop(key, None)
            return None
        return facts, decision

    def put(self, key: tuple[Any, ...], facts: RequestFacts, decision: Decision, *,
            generation: Any) -> None:
        # The TTL runs on the monotonic clock (a wall-clock jump cannot stretch it); the
        # certificate's and token's expiry are wall-clock instants.
        now = time.time()
        expires = now + self.ttl
        peer, token = decision.principal.peer, decision.principal.request
        if peer is not None and peer.not_after is not None:
            expires = min(expires, peer.not_after.timestamp())
        if token is not None and token.expires_at is not None:
            expires = min(expires, token.expires_at)
        if expires <= now:
            return
        entries = self._entries
        while len(entries) >= self.size:
            entries.pop(next(iter(entries)), None)
        entries[key] = (time.monotonic() + self.ttl, expires, generation, facts, decision)


def _token_failure(exc: Exception) -> EndpointSecError:
    """Our own errors pass through (401, 503); anything else is a failed token, never a 500."""
    if isinstance(exc, EndpointSecError):
        return exc
    return TokenError(f"token could not be processed: {type(exc).__name__}")


def _quote_path(path: str | bytes) -> str:
    # ``path`` is already decoded: a "%" in it is a literal percent sign and must be
    # quoted, or "%2e%2e" sent as "%252e%252e" would be decoded a second time. Lone
    # surrogates are passed through as (invalid UTF-8) bytes for the normalizer to refuse.
    from urllib.parse import quote

    safe = "/:@!$&'()*+,;=-._~"
    if isinstance(path, bytes):
        return quote(path, safe=safe)
    return quote(path, safe=safe, errors="surrogatepass")


def _divergent_path(raw_path: str) -> PathError | None:
    """A wire path whose normalized form is not what the application will route on.

    Starlette, FastAPI, Flask and werkzeug route on the percent-decoded path *without*
    resolving dot segments and treat a backslash as an ordinary character. The
    normalizer resolves ``..`` and turns ``\\`` into ``/``, so ``/admin/../healthz``
    would be checked as the public ``/healthz`` while the app runs its
    ``/admin/{rest:path}`` handler. Conforming clients never send either form.
    """
    path = raw_path.split("?", 1)[0]
    if "\\" in path:
        return PathError("request path contains a backslash")
    if "." in path or "%2" in path:
        dotted = path.replace("%2e", ".").replace("%2E", ".")
        if any(seg in (".", "..") for seg in dotted.split("/")):
            return PathError("request path contains a dot segment ('.' or '..')")
    return None


def _asgi_headers(scope: Mapping[str, Any]) -> list[tuple[bytes, bytes]] | None:
    headers = scope.get("headers")
    if headers is None:
        return []
    try:
        out = list(headers)
    except TypeError:
        return None
    for item in out:
        if (not isinstance(item, tuple | list) or len(item) != 2
                or not isinstance(item[0], bytes) or not isinstance(item[1], bytes)):
            return None
    return out


def _wsgi_raw_path(environ: Mapping[str, Any]) -> str:
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
    return _quote_path(raw) if raw else "/"


def _wsgi_headers(environ: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if isinstance(key, str) and key.startswith("HTTP_") and isinstance(value, str):
            # PEP 3333 values are latin-1; anything else is replaced, never a crash.
            name = key[5:].replace("_", "-").lower().encode("latin-1", "replace")
            out.append((name, value.encode("latin-1", "replace")))
    return out


def _log(decision: Decision) -> None:
    """The decision log: denials and dry-run "would deny" at INFO, allows at DEBUG.

    Each record carries the :class:`Decision` as ``record.endpointsec_decision``.
    """
    level = logging.DEBUG if decision.allowed and not decision.would_deny else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(level, "endpointsec decision\n%s", decision.explain(),
                   extra={"endpointsec_decision": decision})
