"""Key sources: static keys, and remote JWKS / OIDC discovery with a shared cache.

Every fetch runs on **one background event loop thread** per verifier, with
``httpx.AsyncClient``. ASGI requests await it through :func:`asyncio.wrap_future` (the
app's event loop is never blocked); WSGI threads wait on the same future. Because all
fetches happen on that one loop, single-flight is simple: concurrent callers (threads
or coroutines, any event loop) join the fetch in flight.

Behaviour of a remote source (all times from :class:`IssuerConfig`):

* first use: fetch and wait; failure with no keys at all is :class:`KeySetUnavailable`
  (503), and for ``jwks_cooldown`` seconds after a failed fetch requests get that 503
  at once instead of fetching again;
* keys older than ``jwks_ttl``: still used, a refresh starts in the background;
* a ``kid`` not in the set: one fetch (waited for) at most every ``jwks_cooldown``
  seconds, then 401 if the kid is still unknown;
* a failing endpoint (error, 5xx, timeout, garbage, too big, a key-set policy
  violation, a redirect to another origin): the last good keys keep being used until
  ``jwks_ttl + jwks_max_stale`` after they were fetched; after that, 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

from endpointsec.errors import ConfigurationError, KeySetUnavailable, TokenError
from endpointsec.tokens.config import IssuerConfig, _check_url
from endpointsec.tokens.keys import (
    KeySet,
    KeySetError,
    VerificationKey,
    key_set_from_jwks,
    key_set_from_pem,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["BackgroundLoop", "KeySource", "RemoteKeySource", "StaticKeySource",
           "build_key_source"]

logger = logging.getLogger("endpointsec.tokens")

_MAX_REDIRECTS = 3


class KeySource(Protocol):
    """Where an issuer's verification keys come from."""

    def resolve(self, kid: str | None, alg: str) -> VerificationKey: ...

    async def aresolve(self, kid: str | None, alg: str) -> VerificationKey: ...


def _not_found(kid: str | None, alg: str) -> TokenError:
    if kid is None:
        return TokenError(f"token has no 'kid' and no single key fits {alg!r}")
    return TokenError(f"no key with kid {kid[:64]!r} for this issuer")


class StaticKeySource:
    """Keys from configuration (a PEM public key or a local JWK set)."""

    def __init__(self, *, keys: KeySet) -> None:
        self.keys = keys

    def resolve(self, kid: str | None, alg: str) -> VerificationKey:
        key = self.keys.find(kid, alg)
        if key is None:
            raise _not_found(kid, alg)
        return key

    async def aresolve(self, kid: str | None, alg: str) -> VerificationKey:
        return self.resolve(kid, alg)


class BackgroundLoop:
    """An event loop on a daemon thread, started on first use, stopped by :meth:`close`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        """Run ``coro`` on the background loop."""
        with self._lock:
            if self._closed:
                coro.close()
                raise KeySetUnavailable("the token verifier is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="endpointsec-jwks",
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self, *, timeout: float = 5.0) -> None:
        """Cancel pending fetches and stop the thread."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def _shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(_shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


class RemoteKeySource:
    """A JWKS URL (or an OIDC discovery URL naming one), cached and refreshed."""

    def __init__(
        self,
        *,
        config: IssuerConfig,
        loop: BackgroundLoop,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._bg = loop
        self._on_change = on_change
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt = float("-inf")
        #: When the last finished fetch started.
        self._completed_from = float("-inf")
        self._error: str | None = None
        self._jwks_uri: str | None = config.jwks_url
        self._inflight: asyncio.Future[None] | None = None
        self._bg_pending = False
        self._tls: ssl.SSLContext | bool = True
        if config.jwks_ca_file is not None:
            try:
                self._tls = ssl.create_default_context(cafile=str(config.jwks_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load a CA bundle: {exc}",
                    key=f"tokens.issuers[{config.issuer!r}].jwks_ca_file") from exc
        #: Number of fetch attempts, and of failed ones (for tests and metrics).
        self.fetch_count = 0
        self.failure_count = 0

    # -- the decision shared by the sync and async paths --------------------------------

    def _usable(self, now: float) -> KeySet | None:
        ks = self._keys
        if ks is not None and now - self._fetched_at <= (self.config.jwks_ttl
                                                         + self.config.jwks_max_stale):
            return ks
        return None

    def usable_until(self) -> float | None:
        """The instant (on this source's monotonic clock) after which the keys fetched
        so far may no longer be used; ``None`` before the first fetch. A token verified
        with them may be remembered until then, not longer."""
        if self._keys is None:
            return None
        return self._fetched_at + self.config.jwks_ttl + self.config.jwks_max_stale

    def _lookup(self, kid: str | None, alg: str) -> tuple[VerificationKey | None, bool, float]:
        """``(key, must_fetch, now)``; raises when the kid is unknown within the cooldown."""
        now = self._clock()
        ks = self._usable(now)
        if ks is None:
            if self._error is not None and now - self._last_attempt < self.config.jwks_cooldown:
                # Failed moments ago: answer 503 at once instead of hammering the endpoint.
                raise KeySetUnavailable(
                    f"no usable keys for issuer {self.config.issuer!r}: {self._error}")
            return None, True, now
        if now - self._fetched_at > self.config.jwks_ttl:
            self._refresh_in_background(now)
        key = ks.find(kid, alg)
        if key is not None:
            return key, False, now
        if now - self._last_attempt >= self.config.jwks_cooldown:
            return None, True, now
        raise _not_found(kid, alg)

    def _after_fetch(self, kid: str | None, alg: str) -> VerificationKey:
        ks = self._usable(self._clock())
        if ks is None:
            raise KeySetUnavailable(
                f"no usable keys for issuer {self.config.issuer!r}: {self._error or 'none'}")
        key = ks.find(kid, alg)
        if key is None:
            raise _not_found(kid, alg)
        return key

    def resolve(self, kid: str | None, alg: str) -> VerificationKey:
        """The key for ``kid`` (may wait for a fetch; for threads)."""
        key, must_fetch, looked_at = self._lookup(kid, alg)
        if key is not None:
            return key
        if must_fetch:
            future = self._bg.submit(self._fetch_shared(looked_at, (kid, alg)))
            try:
                future.result(timeout=self.config.jwks_timeout + 2.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                future.cancel()
        return self._after_fetch(kid, alg)

    async def aresolve(self, kid: str | None, alg: str) -> VerificationKey:
        """The key for ``kid`` (may await a fetch; never blocks the event loop)."""
        key, must_fetch, looked_at = self._lookup(kid, alg)
        if key is not None:
            return key
        if must_fetch:
            future = self._bg.submit(self._fetch_shared(looked_at, (kid, alg)))
            try:
                await asyncio.wait_for(asyncio.wrap_future(future),
                                       self.config.jwks_timeout + 2.0)
            except (TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError):
                if not future.done():
                    future.cancel()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        return self._after_fetch(kid, alg)

    def prefetch(self) -> None:
        """Start fetching the key set in the background, if none is held yet."""
        if self._keys is None:
            self._refresh_in_background(self._clock())

    def _refresh_in_background(self, now: float) -> None:
        if self._bg_pending or now - self._last_attempt < self.config.jwks_cooldown:
            return
        self._bg_pending = True
        try:
            future = self._bg.submit(self._fetch_shared(now))
        except KeySetUnavailable:
            self._bg_pending = False
            return
        future.add_done_callback(lambda _f: setattr(self, "_bg_pending", False))

    # -- on the background loop ---------------------------------------------------------

    async def _fetch_shared(self, requested_at: float,
                            want: tuple[str | None, str] | None = None) -> None:
        # Joins the fetch in flight. One that started before the caller looked (a
        # background refresh) cannot hold a key published since: if it brought no key
        # for ``want`` (kid, alg), one more fetch follows (shared as well).
        while self._completed_from < requested_at:
            inflight = self._inflight
            joined = inflight is not None and not inflight.done()
            if inflight is None or not joined:
                inflight = asyncio.ensure_future(self._fetch_once())
                self._inflight = inflight

                def _clear(f: asyncio.Future[None]) -> None:
                    if self._inflight is f:
                        self._inflight = None

                inflight.add_done_callback(_clear)
            await asyncio.shield(inflight)
            if not joined or want is None or self._error is not None:
                return
            ks = self._usable(self._clock())
            if ks is not None and ks.find(*want) is not None:
                return

    async def _fetch_once(self) -> None:
        started = self._last_attempt = self._clock()
        import httpx  # only issuers with a key URL need it (and it is heavy to import)

        self.fetch_count += 1
        try:
            async with asyncio.timeout(self.config.jwks_timeout):
                ks = await self._download()
        except (KeySetError, ConfigurationError) as exc:
            self._failed(str(exc))
        except TimeoutError:
            self._failed(f"fetch timed out after {self.config.jwks_timeout}s")
        except httpx.HTTPError as exc:
            detail = str(exc)[:200]
            self._failed(f"fetch failed: {type(exc).__name__}" + (f": {detail}" if detail
                                                                   else ""))
        except Exception as exc:  # fail closed on anything unexpected, never crash
            self._failed(f"fetch failed unexpectedly: {type(exc).__name__}")
        else:
            old = self._keys
            self._keys, self._fetched_at, self._error = ks, self._clock(), None
            if old is not None and old.fingerprint != ks.fingerprint:
                logger.info("issuer %r: key set changed", self.config.issuer)
                if self._on_change is not None:
                    self._on_change(self.config.issuer)
        finally:
            self._completed_from = started

    def _failed(self, message: str) -> None:
        self._error = message
        self.failure_count += 1
        url = self._jwks_uri or self.config.discovery_url
        if self._jwks_uri is not None and self.config.discovery_url is not None:
            self._jwks_uri = None  # discover again next time
        logger.warning("issuer %r: key set fetch from %s failed: %s", self.config.issuer,
                       url, message)

    async def _download(self) -> KeySet:
        import httpx

        cfg = self.config
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, verify=self._tls,
                                     timeout=cfg.jwks_timeout) as client:
            if self._jwks_uri is None:
                if cfg.discovery_url is None:  # pragma: no cover - config guarantees one
                    raise KeySetError("no key URL")
                doc = await self._get_json(client, cfg.discovery_url, "discovery document")
                if not isinstance(doc, dict) or doc.get("issuer") != cfg.issuer:
                    raise KeySetError("discovery document 'issuer' does not match the "
                                      "configured issuer (OIDC Discovery §4.3)")
                uri = doc.get("jwks_uri")
                if not isinstance(uri, str):
                    raise KeySetError("discovery document has no 'jwks_uri'")
                try:
                    _check_url(uri, allow_http=cfg.allow_http, key="jwks_uri")
                except ConfigurationError as exc:
                    raise KeySetError(f"discovery document: {exc}") from exc
                self._jwks_uri = uri
            data = await self._get_json(client, self._jwks_uri, "key set")
        return key_set_from_jwks(data, min_rsa_bits=cfg.min_rsa_bits,
                                 max_keys=cfg.jwks_max_keys, allow_symmetric=False,
                                 what=f"key set of {cfg.issuer!r}")

    async def _get_json(self, client: httpx.AsyncClient, url: str, what: str) -> Any:
        limit = self.config.jwks_max_bytes
        for _ in range(_MAX_REDIRECTS + 1):
            async with client.stream("GET", url, headers={"accept": "application/json"}) \
                    as resp:
                if resp.is_redirect:
                    location = resp.headers.get("location", "")
                    target = urljoin(url, location)
                    if _origin(target) != _origin(url):
                        raise KeySetError(f"{what}: redirect to another origin refused")
                    url = target
                    continue
                if resp.status_code != 200:
                    raise KeySetError(f"{what}: HTTP {resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise KeySetError(f"{what}: response larger than {limit} bytes")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise KeySetError(f"{what}: response larger than {limit} bytes")
            try:
                return json.loads(bytes(body))
            except (ValueError, RecursionError) as exc:
                raise KeySetError(f"{what}: response is not JSON") from exc
        raise KeySetError(f"{what}: too many redirects")


def build_key_source(config: IssuerConfig, *, loop: BackgroundLoop,
                     on_change: Callable[[str], None] | None = None,
                     clock: Callable[[], float] = time.monotonic) -> KeySource:
    """The key source an issuer configuration names (static ones are loaded now)."""
    key = f"tokens.issuers[{config.issuer!r}]"
    if config.public_key is not None:
        try:
            pem = config.public_key.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read: {exc.strerror}",
                                     key=f"{key}.public_key") from exc
        return StaticKeySource(keys=key_set_from_pem(pem, min_rsa_bits=config.min_rsa_bits,
                                                     what=f"{key}.public_key"))
    if config.jwks_file is not None:
        try:
            data = json.loads(config.jwks_file.read_bytes())
            keys = key_set_from_jwks(data, min_rsa_bits=config.min_rsa_bits,
                                     max_keys=config.jwks_max_keys, allow_symmetric=True,
                                     what=f"{key}.jwks_file")
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read a JWK set: {exc}",
                                     key=f"{key}.jwks_file") from exc
        except KeySetError as exc:
            raise ConfigurationError(str(exc), key=f"{key}.jwks_file") from exc
        return StaticKeySource(keys=keys)
    return RemoteKeySource(config=config, loop=loop, on_change=on_change, clock=clock)
