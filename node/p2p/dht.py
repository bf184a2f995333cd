"""Kademlia DHT glue: our record validators, the capped kad handler, provider lookups."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Protocol

import trio
from libp2p.exceptions import BaseLibp2pError
from libp2p.kad_dht import provider_store as _provider_store
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.records.validator import Validator

from protocol.errors import ProtocolError

log = logging.getLogger("cpn.p2p")

__all__ = [
    "RecordValidator",
    "ValidatorAdapter",
    "LookupResult",
    "HostStats",
    "xor_distance",
    "agreed",
    "dht_key",
    "capped_kad_handler",
    "K",
    "ALPHA",
    "QUORUM",
    "QUERY_TIMEOUT",
    "KAD_PROTOCOL",
]

#: Provider records one node keeps per key.  py-libp2p 0.8.1 keeps only the
#: first k = 20 (``provider_store.BUCKET_SIZE``) and ignores later providers,
#: so a general identifier with more providers than that (``cpn:cpu`` on a
#: 50-node testnet) lost providers at random: no node held them all and a
#: lookup saw 41 of 50.  go-libp2p-kad-dht has no such limit.  The bound still
#: protects memory (records are only accepted from the provider itself).
MAX_PROVIDERS_PER_KEY = 1000
setattr(_provider_store, "BUCKET_SIZE", MAX_PROVIDERS_PER_KEY)  # noqa: B010 - a module constant, not exported

QUERY_TIMEOUT = 2.0  #: one GET_PROVIDERS query within a lookup
ALPHA = 3  #: peers asked in parallel per lookup round (kad's alpha)
QUORUM = 3  #: identical answers from this many closest peers settle a lookup
#: longest an inbound kad stream may stay open (see :func:`capped_kad_handler`)
KAD_INBOUND_STREAM_S = 15.0
KAD_PROTOCOL = "/ipfs/kad/1.0.0"
K = 20  #: kad bucket size: how many closest peers a lookup must hear from



class RecordValidator(Protocol):
    """A DHT namespace validator (pure: no IO).  Raise ``ProtocolError`` to reject."""

    def validate(self, key: str, value: bytes) -> None: ...

    def select(self, key: str, values: list[bytes]) -> int: ...


class ValidatorAdapter(Validator):
    """Adapts a :class:`RecordValidator` to py-libp2p's ``Validator`` class.

    py-libp2p treats any exception from ``validate`` as a rejection; we raise
    ``ValueError`` so its logs carry our reason.
    """

    def __init__(self, inner: RecordValidator, on_reject: Callable[[str], None]) -> None:
        self.inner = inner
        self.on_reject = on_reject

    def validate(self, key: str, value: bytes) -> None:
        try:
            self.inner.validate(key, value)
        except ProtocolError as exc:
            self.on_reject(exc.reason)
            raise ValueError(f"rejected record {key}: {exc}") from None

    def select(self, key: str, values: list[bytes]) -> int:
        return self.inner.select(key, values)


@dataclass
class LookupResult:
    """Providers found for one key, with how many hops the lookup took."""

    providers: list[tuple[str, list[str]]]  #: (peer ID, multiaddrs)
    hops: int  #: rounds of queries until the providers were found (0 = local)
    rounds: int  #: rounds of queries made in all
    queried: int  #: peers asked


def xor_distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(sha256(a).digest(), "big") ^ int.from_bytes(sha256(b).digest(), "big")


@dataclass
class HostStats:
    lookups: int = 0
    lookup_errors: int = 0
    rejected_records: dict[str, int] = field(default_factory=dict)



def agreed(answers: list[frozenset[str]]) -> bool:
    """QUORUM answers in, all naming the same non-empty set of providers."""
    return len(answers) >= QUORUM and bool(answers[0]) and all(a == answers[0] for a in answers)


def dht_key(key: bytes) -> bytes:
    """kad keys for CIDs are the CID's multihash (what go/js/py implementations use).

    A binary CIDv1 is ``0x01 <codec varint> <multihash>``; raw codec 0x55 is one
    byte.  Anything else is passed through as-is (already a multihash).
    """
    if len(key) > 2 and key[0] == 0x01 and key[1] < 0x80:
        return key[2:]
    return key


def capped_kad_handler(dht: KadDHT) -> Callable[[Any], Awaitable[None]]:
    """py-libp2p's kad handler, reset after :data:`KAD_INBOUND_STREAM_S`.

    The stock handler reads messages until the client closes the stream, with
    no timeout, under a limiter of 12 concurrent inbound streams; when the
    limiter is full it resets every new kad stream.  A client whose query was
    cancelled (a timeout, a finished lookup) never closes its stream, so a
    seed node that every newcomer queried ended up with all 12 slots held
    forever and answered no kad query again.  Capping each inbound stream's
    life frees the slot; a client that reuses kad streams just reopens one.
    """

    async def handle(stream: Any) -> None:
        with trio.move_on_after(KAD_INBOUND_STREAM_S) as scope:
            await dht.handle_stream(stream)
        if scope.cancelled_caught:
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except BaseLibp2pError:
                    pass

    return handle

