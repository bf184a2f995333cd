"""Kademlia's constants, failure reasons and key space (spec/dht.md section 6)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Final, TypeVar

__all__ = ["K", "ALPHA", "FIND_ALPHA", "PAGE_SIZE", "MAX_PAGES", "MAX_QUERIES", "MAX_LOOKUP_PROVIDERS", "SLOW_AFTER_S", "BUSY_RETRY_S", "MAX_PROVIDERS_PER_KEY", "PROVIDER_TTL_S", "PROVIDE_ATTEMPTS", "PROVIDE_BACKOFF_S", "PROVIDE_BACKOFF_MAX_S", "SEND_LIMIT", "SEND_WINDOW_S", "Failure", "Rand", "T", "kad_point", "distance", "common_prefix_len", "sample", "jittered"]

Rand = Callable[[], float]  #: a source of uniform floats in [0, 1), injected
T = TypeVar("T")

K: Final = 20  #: bucket size, replication factor, and size of the closest set a lookup completes
ALPHA: Final = 3  #: queries in flight per lookup (announcements, refreshes, upkeep: load-bound)
#: queries in flight per ``GET_PROVIDERS`` lookup of a find (a user waits: latency-bound; go-libp2p's default)
FIND_ALPHA: Final = 10
#: providers one GET_PROVIDERS answer carries at most (a fresh uniform sample when more are held)
PAGE_SIZE: Final = 100
MAX_PAGES: Final = 160  #: repeat queries one lookup makes for further pages
MAX_QUERIES: Final = 256  #: queries one lookup sends at most (closest set + pages)
MAX_LOOKUP_PROVIDERS: Final = 10_000  #: distinct providers one lookup remembers
#: a query unanswered this long stops counting against ``alpha`` (it may still answer)
SLOW_AFTER_S: Final = 1.0
BUSY_RETRY_S: Final = 1.0  #: a lookup asks a peer that said "busy" once more after this
#: provider records one node keeps per key: a class's live providers plus the
#: records of those that left within one re-announce interval (refresh order evicts)
MAX_PROVIDERS_PER_KEY: Final = 2048
#: provider record lifetime on CPN nodes: three re-announce intervals (libp2p's
#: 48 h suits its 22 h republish; CPN providers re-announce at least hourly)
PROVIDER_TTL_S: Final = 3 * 3600.0
PROVIDE_ATTEMPTS: Final = 4  #: ADD_PROVIDER tries per peer before another peer replaces it
PROVIDE_BACKOFF_S: Final = 1.0  #: first retry delay; doubles per attempt, jittered
PROVIDE_BACKOFF_MAX_S: Final = 60.0
SEND_LIMIT: Final = 8  #: ADD_PROVIDER messages one provider sends one receiver per window
SEND_WINDOW_S: Final = 11.0  #: (py-libp2p accepts 10 per peer per 10 s and drops the rest)


class Failure(enum.StrEnum):
    """Why a query got no usable answer (the driver maps its errors onto these)."""

    TIMEOUT = "timeout"  #: no answer within the driver's per-query timeout
    UNREACHABLE = "unreachable"  #: dial or protocol negotiation failed
    BUSY = "busy"  #: refused or reset by a live peer: rate limit, inbound stream limit
    INVALID = "invalid"  #: the answer broke the protocol (malformed, oversize)


# --------------------------------------------------------------------------- key space


def kad_point(data: bytes) -> int:
    """The 256-bit point of a peer ID or key: ``sha256(data)`` as a big-endian integer."""
    return int.from_bytes(sha256(data).digest(), "big")


def distance(key: bytes, peer_id: bytes) -> int:
    """XOR distance between a key (wire bytes) and a peer (peer ID bytes)."""
    return kad_point(key) ^ kad_point(peer_id)


def common_prefix_len(a: int, b: int) -> int:
    """Leading bits two 256-bit points share (256 when equal): the k-bucket index."""
    return 256 - (a ^ b).bit_length()


def sample(items: Sequence[T], cap: int, rand: Rand) -> list[T]:
    """A uniform random subset of ``cap`` items (all of them, in order, if there are fewer).

    Partial Fisher-Yates: every subset of size ``cap`` is equally likely, so
    which providers an answer names depends neither on when they announced
    nor on their IDs.
    """
    if cap < 0:
        raise ValueError("cap must be >= 0")
    if len(items) <= cap:
        return list(items)
    pool = list(items)
    n = len(pool)
    for i in range(cap):
        j = i + min(int(rand() * (n - i)), n - i - 1)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:cap]


def jittered(value: float, rand: Rand, jitter: float) -> float:
    """``value`` scaled by a uniform factor in [1 - jitter, 1 + jitter] (mean preserved)."""
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    return value * (1.0 + jitter * (2.0 * rand() - 1.0))
