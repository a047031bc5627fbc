"""Prometheus metrics (``pip install 'endpointsec[prometheus]'``).

Enable with ``[audit] metrics = true`` (or ``endpointsec serve --metrics-port N``).
Counting is done in plain Python on the request path (an integer increment in a dict
and one in a histogram list, measured several times cheaper than a
``prometheus_client`` ``Counter.labels().inc()``); everything else is read from the
components (key sets, caches, policy, trust bundles) when Prometheus scrapes, by one
collector. Exposed:

=============================================== =====================================
``endpointsec_decisions_total``                  decisions by ``decision`` (allow,
                                                 deny, would_deny), ``status`` and
                                                 ``reason`` (:data:`REASON_CLASSES`)
``endpointsec_decision_duration_seconds``        histogram: gather + decide
``endpointsec_jwks_fetches_total``               key-set fetch attempts, by ``issuer``
``endpointsec_jwks_fetch_failures_total``        failed fetches, by ``issuer``
``endpointsec_jwks_keys``                        keys held, by ``issuer`` (0: none)
``endpointsec_token_cache_entries``              verified tokens cached
``endpointsec_token_cache_lookups_total``        by ``result`` (hit, miss)
``endpointsec_chain_cache_entries``              verified certificate chains cached
``endpointsec_chain_cache_lookups_total``        by ``result`` (hit, miss)
``endpointsec_policy_generation``                successful policy reloads
``endpointsec_policy_reload_failures_total``     failed policy reloads
``endpointsec_policy_rules`` / ``_roles``         ``p`` and ``g`` lines in force
``endpointsec_trust_bundle_reloads_total``       by ``bundle`` (its configuration key)
``endpointsec_trust_bundle_reload_failures_total`` by ``bundle``
``endpointsec_trust_bundle_certificates``        by ``bundle``
=============================================== =====================================

Serve them from a separate app that the application's routes can never shadow::

    from endpointsec.metrics import asgi_app, wsgi_app, start_http_server

    start_http_server(9464)               # a thread serving 127.0.0.1:9464/metrics
    metrics_app = asgi_app()              # or mount the ASGI / WSGI app yourself

To add endpointsec's metrics to an existing ``prometheus_client`` registry (and your own
``/metrics``), call :func:`register` with that registry.

Counts are per process (with several gunicorn workers, each worker counts its own).
Increments are not locked: under threads, an increment can in rare cases be lost
(counters never go down).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from endpointsec.audit import REASON_CLASSES, outcome, reason_class

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from endpointsec.facts import Decision, RequestFacts

__all__ = [
    "REASON_CLASSES",
    "Metrics",
    "asgi_app",
    "collector",
    "enable",
    "register",
    "registry",
    "start_http_server",
    "wsgi_app",
]

#: Histogram bucket upper bounds, in seconds (5 µs to 2.5 s).
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
           2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)
_BOUNDS_NS = tuple(int(b * 1e9) for b in BUCKETS)

_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()
_forced = False


def enable() -> None:
    """Count decisions in every gatekeeper built from configuration from now on, as if
    ``[audit] metrics = true`` (``endpointsec serve --metrics-port`` calls it)."""
    global _forced
    _forced = True


def forced() -> bool:
    return _forced


class Metrics:
    """The per-gatekeeper counters, and the components read at scrape time."""

    __slots__ = ("__weakref__", "_bounds", "buckets", "chain_cache", "chain_verifier",
                 "counts", "duration_sum_ns", "policy", "token_cache", "token_verifier")

    def __init__(self, *, policy: Any = None, token_verifier: Any = None,
                 chain_verifier: Any = None) -> None:
        self.policy = policy
        self.token_verifier = token_verifier
        self.chain_verifier = chain_verifier
        #: ``(decision, status, reason) -> count``.
        self.counts: dict[tuple[str, int, str], int] = {}
        #: Per histogram bucket (the last one is +Inf), not cumulative.
        self.buckets = [0] * (len(_BOUNDS_NS) + 1)
        self.duration_sum_ns = 0
        self._bounds = _BOUNDS_NS
        #: ``[hits, misses]`` of the verified-token and verified-chain caches, counted
        #: by the wrappers :func:`_count_cache_lookups` puts around their lookups.
        self.token_cache = _count_token_cache(token_verifier)
        self.chain_cache = _count_chain_cache(chain_verifier)
        _LIVE.add(self)

    def observe(self, facts: RequestFacts, decision: Decision, duration_ns: int) -> None:
        """Count one decision (the request path: a few dict and list operations)."""
        if decision.allowed and not decision.would_deny and not facts.requirements.public:
            key: tuple[str, int, str] = _ALLOW
        else:
            key = (outcome(decision), decision.status, reason_class(facts, decision))
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.buckets[bisect.bisect_left(self._bounds, duration_ns)] += 1
        self.duration_sum_ns += duration_ns


_ALLOW = ("allow", 200, "policy_allow")


# -- cache hit counting (only when metrics are on: a wrapper around the lookup) ----------


class _CountingTokenCache:
    """Stands in for a :class:`~endpointsec.tokens.cache.VerifiedTokenCache` and counts
    its lookups; everything else goes to the real cache (whose invalidation callbacks
    keep working, since they are bound to it)."""

    __slots__ = ("_inner", "counts")

    def __init__(self, inner: Any, counts: list[int]) -> None:
        self._inner = inner
        self.counts = counts

    def get(self, token: str) -> Any:
        hit = self._inner.get(token)
        self.counts[0 if hit is not None else 1] += 1
        return hit

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _count_token_cache(verifier: Any) -> list[int] | None:
    cache = getattr(verifier, "_cache", None)
    if cache is None or not callable(getattr(cache, "get", None)):
        return None
    if isinstance(cache, _CountingTokenCache):  # another gatekeeper counts already
        return cache.counts
    counts = [0, 0]
    verifier._cache = _CountingTokenCache(cache, counts)
    return counts


def _count_chain_cache(verifier: Any) -> list[int] | None:
    lookup = getattr(verifier, "_cache_get", None)
    if lookup is None:
        return None
    existing = getattr(lookup, "endpointsec_counts", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]  # another gatekeeper counts already
    counts = [0, 0]

    def counted(key: Any, now: float) -> Any:
        hit = lookup(key, now)
        counts[0 if hit is not None else 1] += 1
        return hit

    counted.endpointsec_counts = counts  # type: ignore[attr-defined]
    verifier._cache_get = counted
    return counts


# -- exposition ---------------------------------------------------------------------------


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        from endpointsec.errors import ConfigurationError

        raise ConfigurationError(
            "metrics need prometheus_client: pip install 'endpointsec[prometheus]'",
            key="audit.metrics") from exc
    return prometheus_client


class _Collector:
    """Reads every live :class:`Metrics` (and its components) at scrape time."""

    def describe(self) -> list[Any]:
        return []  # no describe-time collection (the values are read at scrape time)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        live = list(_LIVE)
        decisions = CounterMetricFamily(
            "endpointsec_decisions", "Decisions by outcome, status and reason class.",
            labels=["decision", "status", "reason"])
        totals: dict[tuple[str, int, str], int] = {}
        buckets = [0] * (len(_BOUNDS_NS) + 1)
        total_ns = 0
        for m in live:
            for key, n in list(m.counts.items()):
                totals[key] = totals.get(key, 0) + n
            for i, n in enumerate(m.buckets):
                buckets[i] += n
            total_ns += m.duration_sum_ns
        for (what, status, reason), n in sorted(totals.items()):
            decisions.add_metric([what, str(status), reason], n)
        yield decisions

        cumulative = 0
        points: list[tuple[str, float]] = []
        for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
            cumulative += n
            points.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        histogram = HistogramMetricFamily(
            "endpointsec_decision_duration_seconds",
            "Time spent gathering the facts of a request and deciding.")
        histogram.add_metric([], points, sum_value=total_ns / 1e9)
        yield histogram

        yield from _component_metrics(live, CounterMetricFamily, GaugeMetricFamily)


def _unique(objects: Iterable[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for obj in objects:
        if obj is not None:
            seen.setdefault(id(obj), obj)
    return list(seen.values())


def _component_metrics(live: list[Metrics], counter: Any, gauge: Any) -> Iterator[Any]:
    # Key sets, per issuer.
    fetches = counter("endpointsec_jwks_fetches", "Key-set fetch attempts.",
                      labels=["issuer"])
    failures = counter("endpointsec_jwks_fetch_failures", "Key-set fetches that failed.",
                       labels=["issuer"])
    keys = gauge("endpointsec_jwks_keys", "Keys held for the issuer (0: none).",
                 labels=["issuer"])
    token_entries = 0
    per_issuer: dict[str, list[int]] = {}
    for verifier in _unique(m.token_verifier for m in live):
        cache = getattr(verifier, "_cache", None)
        token_entries += len(cache) if cache is not None else 0
        for name, issuer in dict(getattr(verifier, "_issuers", {})).items():
            source = getattr(issuer, "keys", None)
            fetch_count = getattr(source, "fetch_count", None)
            if fetch_count is None:
                continue  # static keys: never fetched
            held = getattr(source, "_keys", None)
            row = per_issuer.setdefault(name, [0, 0, 0])
            row[0] += int(fetch_count)
            row[1] += int(getattr(source, "failure_count", 0))
            row[2] = max(row[2], len(held.keys) if held is not None else 0)
    for name, (f, fail, k) in sorted(per_issuer.items()):
        fetches.add_metric([name], f)
        failures.add_metric([name], fail)
        keys.add_metric([name], k)
    yield fetches
    yield failures
    yield keys
    yield gauge("endpointsec_token_cache_entries", "Verified tokens cached.",
                value=token_entries)
    for what, attribute in (("token", "token_cache"), ("chain", "chain_cache")):
        lookups = counter(f"endpointsec_{what}_cache_lookups",
                          f"Verified-{what} cache lookups, by result (hit or miss).",
                          labels=["result"])
        hits = misses = 0
        for counts in _unique(getattr(m, attribute) for m in live):
            hits += counts[0]
            misses += counts[1]
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["miss"], misses)
        yield lookups

    chain_entries = 0
    reloads = counter("endpointsec_trust_bundle_reloads", "Successful trust-bundle reloads.",
                      labels=["bundle"])
    reload_failures = counter("endpointsec_trust_bundle_reload_failures",
                              "Trust-bundle reloads that failed (the last good one stays).",
                              labels=["bundle"])
    certificates = gauge("endpointsec_trust_bundle_certificates",
                         "Certificates in the trust bundle.", labels=["bundle"])
    # Several gatekeepers in one process may configure a bundle under the same key:
    # counters add up, the certificate gauge is the largest bundle's.
    bundles: dict[str, list[Any]] = {}
    for verifier in _unique(m.chain_verifier for m in live):
        cache_len = getattr(verifier, "cache_len", 0)  # a property
        chain_entries += int(cache_len() if callable(cache_len) else cache_len)
        for key, bundle in dict(getattr(verifier, "bundles", {})).items():
            if all(b is not bundle for b in bundles.setdefault(key, [])):
                bundles[key].append(bundle)
    for key, same_key in sorted(bundles.items()):
        reloads.add_metric([key], sum(b.version for b in same_key))
        reload_failures.add_metric(
            [key], sum(int(getattr(b, "reload_failures", 0)) for b in same_key))
        certificates.add_metric([key], max(len(b.certificates) for b in same_key))
    yield gauge("endpointsec_chain_cache_entries", "Verified certificate chains cached.",
                value=chain_entries)
    yield reloads
    yield reload_failures
    yield certificates

    policies = _unique(m.policy for m in live)
    generation = gauge("endpointsec_policy_generation",
                       "Successful policy reloads since start (0: the first load).")
    policy_failures = counter("endpointsec_policy_reload_failures",
                              "Policy reloads that failed (the last good policy stays).")
    rules = gauge("endpointsec_policy_rules", "Policy (p) lines in force.")
    roles = gauge("endpointsec_policy_roles", "Role (g) lines in force.")
    gen = fails = n_rules = n_roles = 0
    for policy in policies:
        gen = max(gen, int(getattr(policy, "generation", 0)))
        fails += int(getattr(policy, "reload_failures", 0))
        snapshot = getattr(policy, "_snapshot", None)
        n_rules += int(getattr(snapshot, "rule_count", 0))
        n_roles += int(getattr(snapshot, "role_count", 0))
    generation.add_metric([], gen)
    policy_failures.add_metric([], fails)
    rules.add_metric([], n_rules)
    roles.add_metric([], n_roles)
    yield generation
    yield policy_failures
    yield rules
    yield roles


_lock = threading.Lock()
_collector: _Collector | None = None
_registry: Any = None


def collector() -> _Collector:
    """The one collector of endpointsec's metrics (register it where you like)."""
    global _collector
    with _lock:
        if _collector is None:
            _collector = _Collector()
        return _collector


def registry() -> Any:
    """endpointsec's own ``prometheus_client.CollectorRegistry`` (what :func:`asgi_app`,
    :func:`wsgi_app` and :func:`start_http_server` serve by default)."""
    global _registry
    prometheus_client = _prometheus()
    coll = collector()
    with _lock:
        if _registry is None:
            _registry = prometheus_client.CollectorRegistry(auto_describe=False)
            _registry.register(coll)
        return _registry


def register(target: Any = None) -> None:
    """Add endpointsec's collector to ``target`` (default: ``prometheus_client.REGISTRY``)."""
    prometheus_client = _prometheus()
    (target if target is not None else prometheus_client.REGISTRY).register(collector())


def _exposition(target: Any) -> tuple[bytes, str]:
    prometheus_client = _prometheus()
    return (prometheus_client.generate_latest(target or registry()),
            prometheus_client.CONTENT_TYPE_LATEST)


_NOT_FOUND = b"not found\n"


def wsgi_app(registry: Any = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering ``GET /metrics`` (404 for anything else)."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in (
                "GET", "HEAD"):
            start_response("404 Not Found", [("content-type", "text/plain"),
                                              ("content-length", str(len(_NOT_FOUND)))])
            return [_NOT_FOUND]
        body, content_type = _exposition(registry)
        start_response("200 OK", [("content-type", content_type),
                                  ("content-length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else []

    return app


def asgi_app(registry: Any = None) -> Callable[..., Any]:
    """An ASGI app answering ``GET /metrics`` (404 for anything else)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("path") != "/metrics" or scope.get("method") not in ("GET", "HEAD"):
            status, body, content_type = 404, _NOT_FOUND, "text/plain"
        else:
            status = 200
            body, content_type = _exposition(registry)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body",
                    "body": body if scope.get("method") != "HEAD" else b""})

    return app


def start_http_server(port: int, *, host: str = "127.0.0.1", registry: Any = None
                      ) -> WSGIServer:
    """Serve :func:`wsgi_app` on ``host:port`` from a daemon thread; returns the server
    (``server.shutdown()`` stops it). Binds 127.0.0.1 unless told otherwise."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    _prometheus()
    server = make_server(host, port, wsgi_app(registry), server_class=_Server,
                         handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="endpointsec-metrics",
                              daemon=True)
    thread.start()
    return server
