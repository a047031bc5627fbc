"""Remote key sets against a real HTTP server on 127.0.0.1: rotation, unknown kid,
single-flight, stale-if-error, failures (500, hang, garbage, oversized, redirects)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tokens_helpers import ISSUER, JWKSServer, Signer, issuer_config

from endpointsec.errors import KeySetUnavailable, TokenError
from endpointsec.tokens import JWTVerifier
from endpointsec.tokens.jwks import RemoteKeySource


class Clock:
    """A monotonic clock the test moves by hand (key-set ages only)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _remote(make_verifier: Any, server: JWKSServer, clock: Clock | None = None,
            **kw: Any) -> JWTVerifier:
    opts: dict[str, Any] = {"jwks_url": server.url, "allow_http": True, "jwks_ttl": 60.0,
                            "jwks_cooldown": 10.0, "jwks_max_stale": 100.0,
                            "jwks_timeout": 2.0}
    extra: dict[str, Any] = {"monotonic": clock} if clock is not None else {}
    if "cache_size" in kw:
        extra["cache_size"] = kw.pop("cache_size")
    opts.update(kw)
    v: JWTVerifier = make_verifier(issuer_config(**opts), **extra)
    return v


def _source(v: JWTVerifier) -> RemoteKeySource:
    source = v.key_source(ISSUER)
    assert isinstance(source, RemoteKeySource)
    return source


def test_first_fetch_and_cached_keys(make_verifier: Any, jwks_server: JWKSServer,
                                     rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server)
    assert v.verify(rsa_key.sign(jti="1")).subject == "user-1"
    assert v.verify(rsa_key.sign(jti="2")).subject == "user-1"
    assert jwks_server.jwks_hits() == 1


def test_async_fetch(make_verifier: Any, jwks_server: JWKSServer, rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server)

    async def main() -> None:
        # The event loop keeps running while the key set is fetched.
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        p = await v.averify(rsa_key.sign())
        t.cancel()
        assert p.subject == "user-1"
        assert ticks > 1

    asyncio.run(main())


def test_rotation_unknown_kid_triggers_one_refetch(make_verifier: Any,
                                                   jwks_server: JWKSServer,
                                                   rsa_key: Signer, rsa_key2: Signer) -> None:
    clock = Clock()
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server, clock)
    old_token = rsa_key.sign()
    v.verify(old_token)
    assert len(v._cache) == 1
    # The issuer rotates: new key published; the old one removed.
    jwks_server.keys = [rsa_key2.public_jwk()]
    clock.now += 11  # past the cooldown
    assert v.verify(rsa_key2.sign()).subject == "user-1"
    assert jwks_server.jwks_hits() == 2
    # The key set changed: cached tokens of the issuer were dropped ...
    assert v._cache.get(old_token) is None
    # ... and the old key no longer verifies.
    with pytest.raises(TokenError, match="kid"):
        v.verify(old_token)


def test_unknown_kid_refetch_at_most_once_per_cooldown(make_verifier: Any,
                                                       jwks_server: JWKSServer,
                                                       rsa_key: Signer,
                                                       rsa_key2: Signer) -> None:
    clock = Clock()
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server, clock)
    v.verify(rsa_key.sign())
    clock.now += 11
    for i in range(5):
        with pytest.raises(TokenError, match="kid"):
            v.verify(rsa_key2.sign(jti=str(i)))
    assert jwks_server.jwks_hits() == 2  # the first fetch + one refetch in the cooldown
    clock.now += 11
    with pytest.raises(TokenError, match="kid"):
        v.verify(rsa_key2.sign(jti="x"))
    assert jwks_server.jwks_hits() == 3


def test_single_flight_threads_and_coroutines(make_verifier: Any, jwks_server: JWKSServer,
                                              rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    jwks_server.mode = "slow-ok"
    v = _remote(make_verifier, jwks_server)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results.append(v.verify(rsa_key.sign(jti=f"t{i}")).subject)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]

    async def coroutines() -> list[str]:
        ps = await asyncio.gather(*(v.averify(rsa_key.sign(jti=f"a{i}")) for i in range(8)))
        return [p.subject for p in ps]

    for t in threads:
        t.start()
    subjects = asyncio.run(coroutines())
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 8 and subjects == ["user-1"] * 8
    assert jwks_server.jwks_hits() == 1


def test_background_refresh_after_ttl(make_verifier: Any, jwks_server: JWKSServer,
                                      rsa_key: Signer, rsa_key2: Signer) -> None:
    clock = Clock()
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server, clock)
    v.verify(rsa_key.sign(jti="1"))
    jwks_server.keys = [rsa_key.public_jwk(), rsa_key2.public_jwk()]
    clock.now += 61  # past the TTL: the old keys still answer, a refresh starts
    assert v.verify(rsa_key.sign(jti="2")).subject == "user-1"
    _wait_for(lambda: jwks_server.jwks_hits() == 2 and _source(v)._inflight is None)
    assert _source(v)._keys is not None and "rsa-2" in _source(v)._keys.by_kid


def _wait_for(cond: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["500", "garbage", "oversized", "oversized-chunked",
                                  "redirect-other-host", "weak-key"])
def test_failure_with_no_keys_is_503(make_verifier: Any, jwks_server: JWKSServer,
                                     rsa_key: Signer, mode: str) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    jwks_server.mode = mode
    v = _remote(make_verifier, jwks_server)
    with pytest.raises(KeySetUnavailable) as exc:
        v.verify(rsa_key.sign())
    assert exc.value.status_code == 503
    expected = {"500": "HTTP 500", "garbage": "not JSON", "oversized": "larger than",
                "oversized-chunked": "larger than", "redirect-other-host": "another origin",
                "weak-key": "below 2048"}[mode]
    assert expected in str(exc.value)


def test_hanging_endpoint_times_out(make_verifier: Any, jwks_server: JWKSServer,
                                    rsa_key: Signer) -> None:
    jwks_server.mode = "hang"
    v = _remote(make_verifier, jwks_server, jwks_timeout=0.3)
    with pytest.raises(KeySetUnavailable, match="timed out"):
        v.verify(rsa_key.sign())
    jwks_server.release.set()


def test_hanging_endpoint_async(make_verifier: Any, jwks_server: JWKSServer,
                                rsa_key: Signer) -> None:
    jwks_server.mode = "hang"
    v = _remote(make_verifier, jwks_server, jwks_timeout=0.3)
    with pytest.raises(KeySetUnavailable, match="timed out"):
        asyncio.run(v.averify(rsa_key.sign()))
    jwks_server.release.set()


def test_same_host_redirect_is_followed(make_verifier: Any, jwks_server: JWKSServer,
                                        rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    jwks_server.mode = "redirect-same-host"
    v = _remote(make_verifier, jwks_server)
    assert v.verify(rsa_key.sign()).subject == "user-1"
    assert "/moved" in jwks_server.paths


def test_stale_if_error_then_503_after_max_stale(make_verifier: Any,
                                                 jwks_server: JWKSServer,
                                                 rsa_key: Signer) -> None:
    clock = Clock()
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server, clock, cache_size=0)
    v.verify(rsa_key.sign())
    jwks_server.mode = "500"
    clock.now += 61  # stale: refresh fails in the background, old keys still used
    assert v.verify(rsa_key.sign()).subject == "user-1"
    _wait_for(lambda: jwks_server.jwks_hits() == 2 and _source(v)._inflight is None)
    assert "HTTP 500" in (_source(v)._error or "")
    clock.now += 50  # still within ttl + max_stale (and another background attempt)
    assert v.verify(rsa_key.sign()).subject == "user-1"
    _wait_for(lambda: jwks_server.jwks_hits() == 3 and _source(v)._inflight is None
              and not _source(v)._bg_pending)
    clock.now += 60  # beyond ttl + max_stale: no usable key any more
    with pytest.raises(KeySetUnavailable, match="HTTP 500"):
        v.verify(rsa_key.sign())
    hits = jwks_server.jwks_hits()
    # Within the cooldown after a failure: 503 at once, no new fetch.
    with pytest.raises(KeySetUnavailable):
        v.verify(rsa_key.sign())
    assert jwks_server.jwks_hits() == hits
    # The endpoint recovers: after the cooldown the next request fetches and succeeds.
    jwks_server.mode = "ok"
    clock.now += 11
    assert v.verify(rsa_key.sign()).subject == "user-1"


def test_discovery(make_verifier: Any, jwks_server: JWKSServer, ec_key: Signer) -> None:
    jwks_server.keys = [ec_key.public_jwk()]
    v = make_verifier(issuer_config(discovery_url=jwks_server.discovery_url, allow_http=True,
                                    algorithms=("ES256",)))
    assert v.verify(ec_key.sign()).subject == "user-1"
    assert jwks_server.paths == ["/.well-known/openid-configuration", "/jwks"]


def test_discovery_issuer_mismatch(make_verifier: Any, jwks_server: JWKSServer,
                                   ec_key: Signer) -> None:
    jwks_server.keys = [ec_key.public_jwk()]
    jwks_server.issuer = "https://other.example"
    v = make_verifier(issuer_config(discovery_url=jwks_server.discovery_url, allow_http=True,
                                    algorithms=("ES256",)))
    with pytest.raises(KeySetUnavailable, match="issuer"):
        v.verify(ec_key.sign())


def test_closed_verifier_refuses_to_fetch(make_verifier: Any, jwks_server: JWKSServer,
                                          rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server)
    v.close()
    with pytest.raises(KeySetUnavailable, match="closed"):
        v.verify(rsa_key.sign())


def test_https_endpoint_with_private_ca(make_verifier: Any, tmp_path: Any,
                                        rsa_key: Signer) -> None:
    """The production path: https, verified against a configured CA bundle."""
    import ssl

    from tokens_helpers import serve

    from endpointsec.testing.pki import CertificateAuthority

    ca = CertificateAuthority.create()
    cert_path, key_path = ca.issue_server(hostnames=("127.0.0.1",)).write(tmp_path, "server")
    bundle = ca.write_bundle(tmp_path / "ca.pem")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    state = JWKSServer(keys=[rsa_key.public_jwk()])
    with serve(state, tls):
        trusted = make_verifier(issuer_config(jwks_url=state.url, jwks_ca_file=bundle))
        assert trusted.verify(rsa_key.sign()).subject == "user-1"
        # Without the CA bundle the server certificate does not verify: no keys, 503.
        untrusted = make_verifier(issuer_config(jwks_url=state.url, jwks_timeout=2.0))
        with pytest.raises(KeySetUnavailable, match="ConnectError"):
            untrusted.verify(rsa_key.sign())


def test_prefetch_fetches_in_background(make_verifier: Any, jwks_server: JWKSServer,
                                        rsa_key: Signer) -> None:
    jwks_server.keys = [rsa_key.public_jwk()]
    v = _remote(make_verifier, jwks_server)
    v.prefetch()
    _wait_for(lambda: _source(v)._keys is not None)
    v.prefetch()  # keys held: nothing more to do
    assert v.verify(rsa_key.sign()).subject == "user-1"
    assert jwks_server.jwks_hits() == 1
