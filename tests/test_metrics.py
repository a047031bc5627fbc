"""Prometheus metrics (endpointsec.metrics): a real scrape over HTTP, parsed with
prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import gc
import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpointsec import ASGIMiddleware, Config, ConfigurationError, Gatekeeper
from endpointsec import metrics as m
from endpointsec.testing.tokens import TokenIssuer
from obs_support import Material, asgi_scope, call_asgi, make_material, ok_app

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("metrics"))


@pytest.fixture
def server() -> Iterator[int]:
    gc.collect()  # gatekeepers of earlier tests are no longer counted
    srv = m.start_http_server(0)
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def test_decisions_and_latency_on_a_real_scrape(material: Material, server: int) -> None:
    gk = Gatekeeper.from_config(material.config(audit={"metrics": True}))
    app = ASGIMiddleware(ok_app, gatekeeper=gk)
    token = material.issuer.issue(sub="alice", roles=["reader"])
    for _ in range(3):
        assert call_asgi(app, asgi_scope("/orders/1", cert=material.client, token=token)) \
            == 200
    assert call_asgi(app, asgi_scope("/orders/7", cert=material.client, token=token)) == 403
    assert call_asgi(app, asgi_scope("/orders/1", cert=None)) == 401
    assert call_asgi(app, asgi_scope("/orders/1", cert=material.client,
                                     token="not.a.token")) == 401
    assert call_asgi(app, asgi_scope("/x", raw_path=b"/a/../x", cert=material.client)) == 400

    status, text = scrape(server)
    assert status == 200
    parsed = samples(text)
    d = "endpointsec_decisions_total"
    assert value(parsed, d, decision="allow", status="200", reason="policy_allow") == 3
    assert value(parsed, d, decision="deny", status="403", reason="policy_deny") == 1
    assert value(parsed, d, decision="deny", status="401", reason="no_certificate") == 1
    assert value(parsed, d, decision="deny", status="401", reason="bad_token") == 1
    assert value(parsed, d, decision="deny", status="400", reason="bad_request") == 1
    h = "endpointsec_decision_duration_seconds"
    assert value(parsed, h + "_count") == 7
    assert value(parsed, h + "_bucket", le="+Inf") == 7
    assert 0 < value(parsed, h + "_sum") < 7
    assert value(parsed, "endpointsec_policy_rules") == 3
    assert value(parsed, "endpointsec_policy_generation") == 0
    assert value(parsed, "endpointsec_token_cache_entries") >= 1
    assert value(parsed, "endpointsec_chain_cache_entries") == 1
    # Lookups: the token's first use misses, its reuses hit; "not.a.token" misses.
    assert value(parsed, "endpointsec_token_cache_lookups_total", result="hit") == 3
    assert value(parsed, "endpointsec_token_cache_lookups_total", result="miss") == 2
    # The client certificate: verified once, then found for the 5 other requests.
    assert value(parsed, "endpointsec_chain_cache_lookups_total", result="hit") == 5
    assert value(parsed, "endpointsec_chain_cache_lookups_total", result="miss") == 1
    bundle = "identity.trust_bundles"
    assert value(parsed, "endpointsec_trust_bundle_certificates", bundle=bundle) == 1
    assert value(parsed, "endpointsec_trust_bundle_reloads_total", bundle=bundle) == 0
    del app, gk


def test_reloads_and_reload_failures(material: Material, server: int, tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(material.policy.read_text())
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(material.bundle.read_bytes())
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(bundle)],
                     "reload_interval": 0},
        "policy": {"policy": str(policy)},
        "audit": {"metrics": True},
    })
    gk = Gatekeeper.from_config(config)
    gk.policy.reload()  # type: ignore[attr-defined]
    policy.write_text("p, too, few\n")
    with pytest.raises(ConfigurationError):
        gk.policy.reload()  # type: ignore[attr-defined]
    # Trust bundle: a good change, then garbage (the last good one stays).
    trust = gk.verifier.bundles["identity.trust_bundles"]  # type: ignore[union-attr]
    bundle.write_bytes(material.bundle.read_bytes() * 2)
    time.sleep(0.01)
    trust.current()
    bundle.write_bytes(b"garbage")
    time.sleep(0.01)
    trust.current()

    parsed = samples(scrape(server)[1])
    assert value(parsed, "endpointsec_policy_generation") == 1
    assert value(parsed, "endpointsec_policy_reload_failures_total") == 1
    key = "identity.trust_bundles"
    assert value(parsed, "endpointsec_trust_bundle_reloads_total", bundle=key) == 1
    assert value(parsed, "endpointsec_trust_bundle_reload_failures_total", bundle=key) == 1
    assert value(parsed, "endpointsec_trust_bundle_certificates", bundle=key) == 2
    del gk


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_key_set_fetches_and_failures_by_issuer(material: Material, server: int) -> None:
    issuer = TokenIssuer(issuer="https://live.example")
    dead = f"http://127.0.0.1:{_dead_port()}/jwks.json"
    with issuer.serve():
        config = Config.from_mapping({
            "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(material.bundle)]},
            "tokens": {"issuers": [
                issuer.issuer_table(),
                {"issuer": "https://dead.example", "audiences": ["endpointsec"],
                 "algorithms": ["ES256"], "jwks_url": dead, "allow_http": True,
                 "jwks_timeout": 2},
            ]},
            "policy": {"policy": str(material.policy)},
            "defaults": {"token": "required"},
            "audit": {"metrics": True},
        })
        gk = Gatekeeper.from_config(config)
        app = ASGIMiddleware(ok_app, gatekeeper=gk)
        try:
            good = issuer.issue(sub="bob", roles=["reader"])
            assert call_asgi(app, asgi_scope("/orders/1", cert=material.client,
                                             token=good)) == 200
            bad = TokenIssuer(issuer="https://dead.example").issue(sub="eve")
            assert call_asgi(app, asgi_scope("/orders/1", cert=material.client,
                                             token=bad)) == 503
            parsed = samples(scrape(server)[1])
        finally:
            gk.close()
    assert value(parsed, "endpointsec_jwks_fetches_total", issuer="https://live.example") == 1
    assert value(parsed, "endpointsec_jwks_fetch_failures_total",
                 issuer="https://live.example") == 0
    assert value(parsed, "endpointsec_jwks_keys", issuer="https://live.example") == 1
    assert value(parsed, "endpointsec_jwks_fetches_total", issuer="https://dead.example") == 1
    assert value(parsed, "endpointsec_jwks_fetch_failures_total",
                 issuer="https://dead.example") == 1
    assert value(parsed, "endpointsec_jwks_keys", issuer="https://dead.example") == 0
    assert value(parsed, "endpointsec_decisions_total", decision="deny", status="503",
                 reason="keys_unavailable") == 1


def test_only_metrics_path_is_served(server: int) -> None:
    assert scrape(server, "/")[0] == 404
    assert scrape(server, "/metrics/")[0] == 404
    assert scrape(server, "/orders")[0] == 404


def test_asgi_app_serves_metrics_only() -> None:
    app = m.asgi_app()

    async def get(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    status, body = asyncio.run(get("/metrics"))
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"endpointsec_decisions", "endpointsec_decision_duration_seconds"} <= names
    assert asyncio.run(get("/"))[0] == 404


def test_register_into_another_registry() -> None:
    registry = prometheus_client.CollectorRegistry()
    m.register(registry)
    text = prometheus_client.generate_latest(registry).decode()
    assert "endpointsec_decisions_total" in text or "# TYPE endpointsec_decisions counter" \
        in text


def test_no_metrics_without_the_setting(material: Material) -> None:
    from endpointsec.tokens.cache import VerifiedTokenCache

    gk = Gatekeeper.from_config(material.config())
    assert gk.observer is not None and gk.observer.metrics is None
    # Nothing wraps the caches' lookups.
    assert type(gk.token_verifier._cache) is VerifiedTokenCache  # type: ignore[union-attr]
    assert "_cache_get" not in vars(gk.verifier)


def test_counted_caches_still_invalidate(material: Material) -> None:
    """The counting wrapper reads the real token cache, which the key-set change
    callback (bound to the real cache) still empties."""
    gk = Gatekeeper.from_config(material.config(audit={"metrics": True}))
    verifier: Any = gk.token_verifier
    token = material.issuer.issue(sub="carol", roles=["reader"])
    principal = verifier.verify(token)
    assert verifier.verify(token) is principal
    verifier._cache._inner.drop_issuer(principal.issuer)
    assert verifier._cache.get(token) is None
    assert len(verifier._cache) == 0
