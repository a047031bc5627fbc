"""The verified-token cache: a repeated token costs a dict lookup, not a signature check.

Keyed by the token string itself (already bounded by ``max_token_bytes``); an entry
never outlives the token's ``exp``; the cache is bounded (oldest entries are evicted
first) and every entry of an issuer is dropped when that issuer's keys change, so a
key removed from a JWKS stops verifying cached tokens at the next refresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from endpointsec.facts import RequestPrincipal

__all__ = ["VerifiedTokenCache"]


class VerifiedTokenCache:
    """Bounded map ``token -> (expires_at, principal)``; reads take no lock."""

    __slots__ = ("_clock", "_data", "_generations", "_lock", "max_size")

    def __init__(self, *, max_size: int, clock: Callable[[], float] = time.time) -> None:
        self.max_size = max_size
        self._clock = clock
        self._data: dict[str, tuple[float, RequestPrincipal]] = {}
        #: Per issuer: how many times its keys changed (see :meth:`generation`).
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()

    def generation(self, issuer: str) -> int:
        """The issuer's key generation: read it *before* looking up the key, and give it
        to :meth:`put`. A token verified with a key looked up before a key-set change is
        not remembered (the change may have removed that key)."""
        return self._generations.get(issuer, 0)

    def get(self, token: str) -> RequestPrincipal | None:
        """The cached principal, if the token was verified and has not expired."""
        entry = self._data.get(token)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    def put(self, token: str, principal: RequestPrincipal, *, expires_at: float,
            generation: int | None = None) -> None:
        """Remember a verified token until ``expires_at`` (its ``exp``); not at all when
        ``generation`` (:meth:`generation` before the key lookup) is no longer current."""
        if self.max_size <= 0:
            return
        with self._lock:
            if generation is not None and \
                    self._generations.get(principal.issuer, 0) != generation:
                return
            data = self._data
            if token not in data:
                # Oldest first: insertion order is close to expiry order.
                while len(data) >= self.max_size:
                    del data[next(iter(data))]
            data[token] = (expires_at, principal)

    def drop_issuer(self, issuer: str) -> None:
        """Forget every token of ``issuer`` (its keys changed)."""
        with self._lock:
            self._generations[issuer] = self._generations.get(issuer, 0) + 1
            self._data = {k: v for k, v in self._data.items() if v[1].issuer != issuer}

    def clear(self) -> None:
        with self._lock:
            self._data = {}

    def __len__(self) -> int:
        return len(self._data)
