"""The provider records one DHT node holds, bounded per key, answered in random pages."""

from __future__ import annotations

from typing import Generic

from .kademlia_core import (
    MAX_PROVIDERS_PER_KEY,
    PAGE_SIZE,
    PROVIDER_TTL_S,
    Rand,
    T,
    sample,
)

__all__ = ["ProviderRecords"]


class _Held(Generic[T]):
    """One key's records: refresh order (for expiry and eviction) plus a dense
    list (for an O(page) random sample)."""

    __slots__ = ("order", "items", "pos")

    def __init__(self) -> None:
        self.order: dict[bytes, tuple[float, T]] = {}  # oldest refresh first: (expires_at, info)
        self.items: list[bytes] = []
        self.pos: dict[bytes, int] = {}

    def append(self, provider: bytes, expires_at: float, info: T) -> None:
        self.order[provider] = (expires_at, info)
        self.pos[provider] = len(self.items)
        self.items.append(provider)

    def remove(self, provider: bytes) -> None:
        del self.order[provider]
        i = self.pos.pop(provider)
        last = self.items.pop()
        if last != provider:
            self.items[i] = last
            self.pos[last] = i

    def expire(self, now: float) -> None:
        order = self.order
        while order:
            first = next(iter(order))
            if order[first][0] > now:
                break
            self.remove(first)


class ProviderRecords(Generic[T]):
    """Provider records one DHT node holds: ``key -> provider -> info`` with expiry.

    At most ``max_per_key`` providers per key.  When a key is full, a new or
    re-announced provider replaces the one refreshed longest ago -- not "first
    come, kept forever", which would make late providers of a popular key
    unfindable and keep departed ones.  Records expire ``ttl`` after their
    last announcement.  :meth:`answer` returns a fresh uniform sample of at
    most ``page`` providers (spec/dht.md §6.5), in O(page) time.
    """

    def __init__(
        self,
        *,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
        ttl: float = PROVIDER_TTL_S,
        max_keys: int = 100_000,
    ) -> None:
        if max_per_key < 1 or ttl <= 0 or max_keys < 1:
            raise ValueError("max_per_key, ttl and max_keys must be positive")
        self.max_per_key = max_per_key
        self.ttl = ttl
        self.max_keys = max_keys
        self._keys: dict[bytes, _Held[T]] = {}

    def add(self, key: bytes, provider: bytes, info: T, now: float) -> bool:
        """Store or refresh a record; False when the node holds ``max_keys`` other keys."""
        held = self._keys.get(key)
        if held is None:
            if len(self._keys) >= self.max_keys:
                return False
            held = self._keys[key] = _Held()
        if provider in held.order:
            del held.order[provider]  # re-insert at the end: the newest refresh
            held.order[provider] = (now + self.ttl, info)
            return True
        held.expire(now)
        while len(held.items) >= self.max_per_key:
            held.remove(next(iter(held.order)))
        held.append(provider, now + self.ttl, info)
        return True

    def _live(self, key: bytes, now: float) -> _Held[T] | None:
        held = self._keys.get(key)
        if held is None:
            return None
        held.expire(now)
        if not held.items:
            del self._keys[key]
            return None
        return held

    def get(self, key: bytes, now: float) -> list[tuple[bytes, T]]:
        """All unexpired ``(provider, info)`` for ``key``, oldest refresh first."""
        held = self._live(key, now)
        return [] if held is None else [(p, info) for p, (_, info) in held.order.items()]

    def answer(
        self, key: bytes, now: float, rand: Rand, page: int = PAGE_SIZE
    ) -> list[tuple[bytes, T]]:
        """What a ``GET_PROVIDERS`` answer carries: a uniform sample of at most ``page``."""
        held = self._live(key, now)
        if held is None:
            return []
        items, n = held.items, len(held.items)
        if n <= page or 2 * page > n:
            chosen = sample(items, page, rand)
        else:  # distinct uniform indices by rejection: O(page), uniform over subsets
            picked: set[int] = set()
            while len(picked) < page:
                picked.add(min(int(rand() * n), n - 1))
            chosen = [items[i] for i in picked]
        return [(p, held.order[p][1]) for p in chosen]

    def count(self, key: bytes) -> int:
        held = self._keys.get(key)
        return 0 if held is None else len(held.items)

    def keys(self) -> list[bytes]:
        return list(self._keys)
