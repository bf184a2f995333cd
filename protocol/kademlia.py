"""Kademlia lookup and provide as pure state machines (sans-IO, in the h11 style).

Nothing here sends, sleeps or draws random numbers: the driver (the daemon's
libp2p adapter, or ``bench/dht_sim.py``'s simulated network) asks what to send
next, sends it, and feeds back what came of it.  Time (``now``) and randomness
(``rand``, a ``() -> float`` in [0, 1)) are parameters, so tests and the
simulator run the same code deterministically.

* :class:`Lookup`: one iterative ``FIND_NODE`` / ``GET_PROVIDERS`` lookup.
  ``next_queries(now)`` names the peers to ask (at most ``alpha`` in flight);
  ``on_response(peer, closer, providers)`` / ``on_failure(peer, reason, now)``
  feed the outcome; new providers are returned as they arrive, deduplicated.
  It ends when the ``k`` closest peers to the key that did not fail have all
  answered (spec/dht.md §6.2) -- never on a "quiet round" or on agreeing
  answers -- or when the caller calls :meth:`Lookup.stop` (deadline, enough
  providers).  For popular keys it then *pages*: answers are capped at
  :data:`PAGE_SIZE` random providers, so peers that returned a full page are
  asked again while that still brings new providers (§6.5).
* :class:`Provide`: a ``FIND_NODE`` lookup for the k closest, then
  ``ADD_PROVIDER`` to each, retried with back-off when it fails or is refused
  (rate limit), replaced by the next closest peer when it keeps failing;
  :meth:`Provide.result` says which of the k closest hold the record.
* :class:`SendBudget`: the per-receiver ``ADD_PROVIDER`` rate a provider keeps
  to (py-libp2p drops more than 10 per peer per 10 s).
* :class:`ReprovideSchedule`: when to announce again, jittered so a network
  started at once does not re-announce at once.
* :class:`ProviderRecords`: the records one DHT node holds, bounded per key,
  and the random page it answers with.

Keys and distance are those of libp2p kad (go, js and py-libp2p alike): a
peer's point in the key space is ``sha256(peer ID bytes)``, a key's point is
``sha256(key bytes as sent on the wire)`` -- for a CID, its multihash -- and
distance is their XOR as a 256-bit integer (py-libp2p
``routing_table.peer_id_to_key`` and ``find_local_closest_peers``).
"""

from __future__ import annotations

from .kademlia_core import (
    ALPHA,
    FIND_ALPHA,
    MAX_PROVIDERS_PER_KEY,
    PAGE_SIZE,
    Failure,
    K,
    common_prefix_len,
    distance,
    jittered,
    kad_point,
    sample,
)
from .kademlia_lookup import Lookup, LookupStats
from .kademlia_provide import Op, Provide, ProvideResult, ReprovideSchedule, Request, SendBudget
from .kademlia_records import ProviderRecords

__all__ = [
    "K",
    "ALPHA",
    "FIND_ALPHA",
    "PAGE_SIZE",
    "MAX_PROVIDERS_PER_KEY",
    "Failure",
    "Lookup",
    "LookupStats",
    "Op",
    "Request",
    "Provide",
    "ProvideResult",
    "SendBudget",
    "ReprovideSchedule",
    "ProviderRecords",
    "kad_point",
    "distance",
    "common_prefix_len",
    "sample",
    "jittered",
]
