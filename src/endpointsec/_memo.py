"""A memo bounded in entries *and* bytes, for pure functions of request bytes.

Used where a server or proxy hands over the same bytes on every request of a connection
(a PEM chain, a forwarded-certificate header), for verified chains and for the policy
engine's views. The oldest entries go first; reads take no lock. A caller whose entries
expire checks that on a hit and :meth:`Memo.discard` s the stale entry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``max_entries`` entries whose keys add up to at most ``max_bytes``."""

    __slots__ = ("_bytes", "_items", "_lock", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int = 1024, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: dict[K, tuple[V, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        try:
            entry = self._items.get(key)
        except TypeError:  # an unhashable part: not remembered
            return None
        return None if entry is None else entry[0]

    def put(self, key: K, value: V, *, size: int) -> None:
        """Remember ``value``; ``size`` is the key's size in bytes (an entry larger than
        a quarter of the budget is not kept)."""
        if size > self.max_bytes // 4 or self.max_entries <= 0:
            return
        with self._lock:
            items = self._items
            try:
                old = items.pop(key, None)
            except TypeError:
                return
            if old is not None:
                self._bytes -= old[1]
            while items and (len(items) >= self.max_entries
                             or self._bytes + size > self.max_bytes):
                _, (_, dropped) = _pop_oldest(items)
                self._bytes -= dropped
            items[key] = (value, size)
            self._bytes += size

    def discard(self, key: K, value: V) -> None:
        """Forget ``key`` if it still holds ``value`` (not a newer entry)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0] is value:
                del self._items[key]
                self._bytes -= entry[1]

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    @property
    def bytes(self) -> int:
        """The size of the keys held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _pop_oldest(items: dict[K, tuple[V, int]]) -> tuple[K, tuple[V, int]]:
    key = next(iter(items))
    return key, items.pop(key)
