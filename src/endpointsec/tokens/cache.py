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

    __slots__ = ("_clock", "_data", "_lock", "max_size")

    def __init__(self, *, max_size: int, clock: Callable[[], float] = time.time) -> None:
        self.max_size = max_size
        self._clock = clock
        self._data: dict[str, tuple[float, RequestPrincipal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> RequestPrincipal | None:
        """The cached principal, if the token was verified and has not expired."""
        entry = self._data.get(token)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    def put(self, token: str, principal: RequestPrincipal, *, expires_at: float) -> None:
        """Remember a verified token until ``expires_at`` (its ``exp``)."""
        if self.max_size <= 0:
            return
        with self._lock:
            data = self._data
            if token not in data:
                # Oldest first: insertion order is close to expiry order.
                while len(data) >= self.max_size:
                    del data[next(iter(data))]
            data[token] = (expires_at, principal)

    def drop_issuer(self, issuer: str) -> None:
        """Forget every token of ``issuer`` (its keys changed)."""
        with self._lock:
            self._data = {k: v for k, v in self._data.items() if v[1].issuer != issuer}

    def clear(self) -> None:
        with self._lock:
            self._data = {}

    def __len__(self) -> int:
        return len(self._data)
