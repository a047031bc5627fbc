"""A key-set endpoint that fails, served by a real HTTP server, under the ASGI middleware
served by uvicorn over real mutual TLS.

Expectations: never an allow without a verified signature; the last good keys are used
while the endpoint fails (up to ``jwks_ttl + jwks_max_stale``); 503 where no key is
known; a log line that names what failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from faults_support import (
    AUDIENCE,
    FaultsPki,
    JWKSEndpoint,
    RotatingIssuer,
    bearer,
    client,
    mtls_server,
    wait_for,
    whoami,
)

from endpointsec import ASGIMiddleware, Config

pytestmark = pytest.mark.slow

#: What the ``endpointsec.tokens`` log line says for each failure.
FAILURES = {
    "down": "fetch failed: ConnectError",
    "500": "key set: HTTP 500",
    "html": "key set: response is not JSON",
    "redirect-away": "redirect to another origin refused",
    "slow": "fetch timed out after 0.5s",
    "reset": "fetch failed: RemoteProtocolError",
}


def make_app(pki: FaultsPki, endpoint: JWKSEndpoint, policy: Path, *,
             max_stale: float = 3600.0, timeout: float = 0.5) -> ASGIMiddleware:
    config = Config.from_mapping({
        "identity": {"sources": ["asgi-tls"], "trust_bundles": [str(pki.bundle)],
                     "require_spiffe": True},
        "tokens": {"issuers": [{
            "issuer": endpoint.issuer.issuer, "audiences": [AUDIENCE],
            "algorithms": ["ES256"], "jwks_url": endpoint.url, "allow_http": True,
            "jwks_timeout": timeout, "jwks_ttl": 1, "jwks_cooldown": 0,
            "jwks_max_stale": max_stale,
        }]},
        "policy": {"policy": str(policy)},
        "defaults": {"mtls": "required", "token": "required"},
    })
    return ASGIMiddleware(whoami, config=config)


def status(http: httpx.Client, url: str, token: str) -> int:
    return http.get(f"{url}/orders/1", headers=bearer(token)).status_code


def failures_logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "endpointsec.tokens" and r.levelno >= logging.WARNING
            and text in r.getMessage()]


@pytest.mark.parametrize("mode", list(FAILURES))
def test_no_keys_at_all_is_503_never_an_allow(
        mode: str, pki: FaultsPki, issuer: RotatingIssuer, endpoint: JWKSEndpoint,
        policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    endpoint.set_mode(mode)
    token = issuer.token(sub="alice")
    with mtls_server(make_app(pki, endpoint, policy_file), pki) as url, client(pki) as http:
        for _ in range(3):
            r = http.get(f"{url}/orders/1", headers=bearer(token))
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert token not in r.text and "keys" not in r.text
        # A forged token gets no further than a valid one.
        assert status(http, url, issuer.forged(sub="mallory")) == 503
    assert failures_logged(caplog, FAILURES[mode]), [r.getMessage() for r in caplog.records]
    assert issuer.issuer in failures_logged(caplog, FAILURES[mode])[0]


def test_same_origin_redirect_is_followed(pki: FaultsPki, issuer: RotatingIssuer,
                                          endpoint: JWKSEndpoint, policy_file: Path) -> None:
    endpoint.set_mode("redirect-same")
    with mtls_server(make_app(pki, endpoint, policy_file), pki) as url, client(pki) as http:
        assert status(http, url, issuer.token(sub="alice")) == 200
        assert status(http, url, issuer.forged(sub="mallory")) == 401


@pytest.mark.parametrize("mode", list(FAILURES))
def test_failing_endpoint_keeps_the_last_good_keys_then_fails_closed(
        mode: str, pki: FaultsPki, issuer: RotatingIssuer, endpoint: JWKSEndpoint,
        policy_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ttl 1 s, max stale 1 s: after a failed fetch is logged the known key still
    verifies new tokens, until 2 s after the last good fetch; then 503, and never an
    allow again while the endpoint fails. A key published after the failure began is
    unknown (401 while the old keys are usable); a forged token is never allowed; the
    endpoint's recovery brings 200 back. Each token is new, so that no verified-token
    cache answers."""
    kid = issuer.signing_kid
    app = make_app(pki, endpoint, policy_file, max_stale=1.0)
    with mtls_server(app, pki) as url, client(pki) as http:
        assert status(http, url, issuer.token(sub="alice", kid=kid)) == 200
        started = time.monotonic()
        endpoint.set_mode(mode)
        issuer.rotate()  # published, but the endpoint cannot deliver it
        seen: Counter[tuple[str, int]] = Counter()
        kept_after_failure = went_stale = False
        n = 0
        while time.monotonic() - started < 3.5:
            n += 1
            failed_before = bool(failures_logged(caplog, FAILURES[mode]))
            s = status(http, url, issuer.token(sub=f"alice-{n}", kid=kid))
            seen["known", s] += 1
            if s == 503:
                went_stale = True
            else:
                assert not went_stale, "an allow after the keys went stale"
                kept_after_failure |= s == 200 and failed_before
            seen["unknown", status(http, url, issuer.token(sub=f"bob-{n}"))] += 1
            seen["forged", status(http, url, issuer.forged(sub="mallory"))] += 1
            seen["forged", status(http, url, issuer.forged(sub="eve", kid=kid))] += 1
            time.sleep(0.02)
        assert set(seen) <= {("known", 200), ("known", 503), ("unknown", 401),
                             ("unknown", 503), ("forged", 401), ("forged", 503)}, seen
        assert kept_after_failure, seen  # the last good keys outlived a failed fetch
        assert went_stale, seen          # ... but not past ttl + max stale
        endpoint.set_mode("ok")
        wait_for(lambda: status(http, url, issuer.token(sub="carol", kid=kid)) == 200,
                 what="recovery")
        assert status(http, url, issuer.token(sub="dave")) == 200  # the new key too
        assert status(http, url, issuer.forged(sub="mallory")) == 401


def test_cached_token_is_not_allowed_after_the_keys_went_stale(
        pki: FaultsPki, issuer: RotatingIssuer, endpoint: JWKSEndpoint,
        policy_file: Path) -> None:
    token = issuer.token(sub="alice")
    app = make_app(pki, endpoint, policy_file, max_stale=1.0)
    with mtls_server(app, pki) as url, client(pki) as http:
        assert status(http, url, token) == 200
        endpoint.set_mode("down")
        time.sleep(2.5)  # past ttl (1 s) + max stale (1 s)
        assert status(http, url, issuer.token(sub="bob")) == 503
        assert status(http, url, token) == 503


def test_key_published_during_a_refresh_is_found(
        pki: FaultsPki, issuer: RotatingIssuer, endpoint: JWKSEndpoint,
        policy_file: Path) -> None:
    """A background refresh is on its way back with the old key set when the issuer
    publishes a key and a token signed with it arrives: that token must be checked
    against a fetch that started after it was seen, not against the refresh that was
    already in flight (which cannot hold the new key)."""
    endpoint.slow_seconds = 1.0
    app = make_app(pki, endpoint, policy_file, timeout=3.0)
    with mtls_server(app, pki) as url, client(pki) as http:
        assert status(http, url, issuer.token(sub="alice")) == 200
        endpoint.set_mode("slow")
        time.sleep(1.2)  # past jwks_ttl: the next lookup starts a background refresh
        assert status(http, url, issuer.token(sub="bob")) == 200  # old keys, no wait
        wait_for(lambda: endpoint.hits >= 2, what="the refresh to reach the endpoint")
        issuer.rotate()  # the refresh in flight answers with the key set before this
        endpoint.set_mode("ok")
        assert status(http, url, issuer.token(sub="carol")) == 200


def test_key_rotation_under_load(pki: FaultsPki, issuer: RotatingIssuer,
                                 endpoint: JWKSEndpoint, policy_file: Path) -> None:
    """Four keep-alive clients send tokens of every published key while the issuer
    rotates: new tokens are signed with a key the server has not fetched yet (one
    fetch, shared), old keys are retired once no token of theirs is in use. Every valid
    token is allowed, every forged one refused, nothing else."""
    pool_lock = threading.Lock()
    pool: dict[str, list[str]] = {issuer.signing_kid: [issuer.token(sub=f"user-{i}")
                                                       for i in range(20)]}
    stop = threading.Event()
    results: Counter[str] = Counter()
    errors: list[BaseException] = []

    def load(url: str, n: int) -> None:
        try:
            with client(pki) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    if i % 10 == 0:
                        expected, token = 401, issuer.forged(sub=f"mallory-{n}")
                    else:
                        with pool_lock:
                            tokens = [t for ts in pool.values() for t in ts]
                        expected, token = 200, tokens[(i * 7 + n) % len(tokens)]
                    got = status(http, url, token)
                    results[f"{expected}->{got}"] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    app = make_app(pki, endpoint, policy_file)
    with mtls_server(app, pki) as url:
        threads = [threading.Thread(target=load, args=(url, n)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(6):
                time.sleep(0.5)
                kid = issuer.rotate()
                with pool_lock:
                    pool[kid] = [issuer.token(sub=f"user-{kid}-{i}") for i in range(20)]
                    retiring = [k for k in pool if k not in issuer.kids[:3]]
                    for k in retiring:
                        del pool[k]
                time.sleep(0.2)  # requests in flight with those tokens finish
                for k in retiring:
                    issuer.retire(k)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    assert not errors, errors
    assert set(results) == {"200->200", "401->401"}, results
    assert results["200->200"] > 100, results
