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
    """Bounded map ``token -> (expires_at, principal)``; reads take no lock.

    Bounded in entries (``max_size``) and in bytes (``max_bytes``, counting each token
    twice: the string and the claims decoded from it); the oldest entries go first, and
    expired entries at the old end are reclaimed on every insertion.
    """

    __slots__ = ("_bytes", "_clock", "_data", "_lock", "max_bytes", "max_size")

    def __init__(self, *, max_size: int, clock: Callable[[], float] = time.time,
                 max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_size = max_size
        self.max_bytes = max_bytes
        self._clock = clock
        self._data: dict[str, tuple[float, RequestPrincipal]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, token: str) -> RequestPrincipal | None:
        """The cached principal, if the token was verified and has not expired."""
        entry = self._data.get(token)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    def put(self, token: str, principal: RequestPrincipal, *, expires_at: float) -> None:
        """Remember a verified token until ``expires_at`` (its ``exp``)."""
        size = 2 * len(token)
        if self.max_size <= 0 or size > self.max_bytes // 4:
            return
        now = self._clock()
        with self._lock:
            data = self._data
            old = data.pop(token, None)
            if old is not None:
                self._bytes -= 2 * len(token)
            # Oldest first (insertion order is close to expiry order): whatever is full
            # or already expired at the old end goes.
            while data:
                first = next(iter(data))
                if (len(data) < self.max_size and self._bytes + size <= self.max_bytes
                        and data[first][0] > now):
                    break
                del data[first]
                self._bytes -= 2 * len(first)
            data[token] = (expires_at, principal)
            self._bytes += size

    @property
    def bytes(self) -> int:
        """The bytes counted for the tokens held."""
        return self._bytes

    def drop_issuer(self, issuer: str) -> None:
        """Forget every token of ``issuer`` (its keys changed)."""
        with self._lock:
            self._data = {k: v for k, v in self._data.items() if v[1].issuer != issuer}
            self._bytes = sum(2 * len(k) for k in self._data)

    def clear(self) -> None:
        with self._lock:
            self._data = {}
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)
