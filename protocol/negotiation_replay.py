"""Offer replay protection (spec/negotiation.md section 6): the replay cache.

A provider remembers every offer it accepted for checking until the offer
expires, keyed per submitter (:func:`replay_key`), so a replayed offer is
refused even in a fresh :class:`~protocol.negotiation_state.Negotiation`
object; with a persistent cache (the node's SQLite store), even after a
restart.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Protocol

from .errors import ProtocolError

__all__ = ["ReplayCache", "MemoryReplayCache", "replay_key"]


class ReplayCache(Protocol):
    """Remembers offers until they expire, so none is acted on twice.

    ``remember`` returns False when ``key`` was already seen (a replay) and
    True when it is new (and records it until ``expires_at``).  The in-memory
    :class:`MemoryReplayCache` is pure; the node's SQLite store implements the
    same interface so a restart forgets nothing.
    """

    def remember(self, key: bytes, expires_at: int, now: int) -> bool: ...


def replay_key(submitter: str, negotiation_id: bytes) -> bytes:
    """Cache key of an offer: per submitter, so one peer cannot block another's IDs."""
    return sha256(b"cpn/negotiation/replay\0" + submitter.encode() + b"\0" + negotiation_id).digest()


class MemoryReplayCache:
    """A bounded in-memory :class:`ReplayCache`.

    When full of unexpired entries it refuses new offers (``ProtocolError
    ('busy')``) rather than forget one early: forgetting would reopen a replay
    window, refusing only delays honest submitters.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: bytes, expires_at: int, now: int) -> bool:
        seen = self._entries.get(key)
        if seen is not None and seen >= now:
            return False
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v >= now}
            if len(self._entries) >= self.max_entries:
                raise ProtocolError("busy", "replay cache full; try again later")
        self._entries[key] = expires_at
        return True
