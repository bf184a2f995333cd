"""Kademlia glue: record validators, the kad server's provider store and stream cap, our own kad RPCs.

py-libp2p's kad client calls (``_get_providers_from_peer_with_closers``,
``_query_peer_for_closest``, ``_send_add_provider``) swallow every exception
and return an empty answer, so a dead peer reads as one that knows nothing and
a rate-limited ``ADD_PROVIDER`` reads as stored.  :class:`KadClient` speaks the
same wire protocol (one request, one answer, on a fresh stream) and says what
went wrong as a :class:`protocol.kademlia.Failure`, which is what the sans-IO
lookup and provide (spec/dht.md section 6) need to decide.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.exceptions import StreamFailure
from libp2p.io.exceptions import IncompleteReadError
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.records.validator import Validator

from node.p2p.lazy import NegotiationFailed, exchange, open_raw
from node.p2p.tuning import SEEN_RECORDS, consume_signed_record
from protocol.errors import ProtocolError
from protocol.kademlia import MAX_PROVIDERS_PER_KEY, Failure, ProviderRecords
from protocol.kademlia_core import PROVIDER_TTL_S, jittered

log = logging.getLogger("cpn.p2p")

__all__ = [
    "RecordValidator",
    "ValidatorAdapter",
    "LookupResult",
    "ProvideReport",
    "HostStats",
    "Answer",
    "addr_strings",
    "QueryFailed",
    "KadClient",
    "PagedProviderStore",
    "CpnKadDHT",
    "dht_key",
    "capped_kad_handler",
    "QUERY_TIMEOUT",
    "TABLE_UPDATE_S",
    "KAD_PROTOCOL",
]

QUERY_TIMEOUT = 2.0  #: one kad request and its answer, dial included (spec/dht.md §6.2)
#: longest an inbound kad stream may stay open (see :func:`capped_kad_handler`)
KAD_INBOUND_STREAM_S = 15.0
KAD_PROTOCOL = "/ipfs/kad/1.0.0"
MAINTENANCE_S = 600.0  #: routing table refresh and record expiry (see :class:`CpnKadDHT`)
#: every wait for it is scaled by a random factor in [0.75, 1.25]: 60 daemons
#: started together otherwise all ran their self-lookup in the same ~30 s, ten
#: minutes later (both cores saturated, finds slow, connections replaced)
MAINTENANCE_JITTER = 0.25
TABLE_UPDATE_S = 2.0  #: adding a peer to the routing table (a full bucket pings its oldest)
ADDR_TTL = 3600  #: peerstore lifetime of addresses learnt from kad answers (as py-libp2p)
SELF_RECORD_S = 30.0  #: our signed peer record and addresses are re-read this often
MAX_ADDRS = 16  #: addresses taken per peer from one answer
MAX_PEER_ID = 128  #: longest peer ID accepted from an answer (Ed25519 IDs are 38 bytes)


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
    """Providers found for one key, and what the lookup cost."""

    providers: list[tuple[str, list[str]]]  #: (peer ID, multiaddrs), in order of arrival
    hops: int  #: depth of the first answer naming a provider (0: held locally or none)
    rounds: int  #: depth of the closest set (hops to the k closest peers that answered)
    queried: int  #: queries sent
    outcome: str = ""  #: "complete", "stopped" (early stop or deadline), "max_queries"
    failures: int = 0  #: queries that failed
    closest: list[str] = field(default_factory=list)  #: the k closest peers that answered


@dataclass(frozen=True)
class ProvideReport:
    """How one provide went (spec/dht.md §6.3)."""

    closest: int  #: the k closest peers the lookup found
    stored: int  #: of those, how many acknowledged the record
    gave_up: int  #: peers that failed every attempt
    messages: int  #: FIND_NODE + ADD_PROVIDER sent
    confirmed: bool  #: at least half of the closest hold the record
    closest_peers: tuple[str, ...] = ()  #: the closest set found (peer IDs), closest first


@dataclass
class HostStats:
    lookups: int = 0
    lookup_errors: int = 0  #: failed queries, all reasons (see ``failures``)
    queries: int = 0  #: kad requests sent
    served: int = 0  #: kad streams served (requests other peers sent us)
    failures: dict[str, int] = field(default_factory=dict)  #: by :class:`Failure`
    provides: int = 0
    provides_confirmed: int = 0
    rejected_records: dict[str, int] = field(default_factory=dict)


def dht_key(key: bytes) -> bytes:
    """kad keys for CIDs are the CID's multihash (what go/js/py implementations use).

    A binary CIDv1 is ``0x01 <codec varint> <multihash>``; raw codec 0x55 is one
    byte.  Anything else is passed through as-is (already a multihash).
    """
    if len(key) > 2 and key[0] == 0x01 and key[1] < 0x80:
        return key[2:]
    return key


# --------------------------------------------------------------------------- server side


def capped_kad_handler(dht: KadDHT, stats: HostStats) -> Callable[[Any], Awaitable[None]]:
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
        stats.served += 1
        with trio.move_on_after(KAD_INBOUND_STREAM_S) as scope:
            await dht.handle_stream(stream)
        if scope.cancelled_caught:
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except BaseLibp2pError:
                    pass
        # py-libp2p adds the client to the routing table *before* reading its
        # request, when its addresses are often not known yet (they arrive in
        # the request's signed peer record), so a seed node's table stayed
        # empty and newcomers learnt nothing from it.  Now they are known.
        with trio.move_on_after(TABLE_UPDATE_S):
            await dht.routing_table.add_peer(stream.muxed_conn.peer_id, skip_server_mode_check=True)

    return handle


class CpnKadDHT(KadDHT):
    """py-libp2p's ``KadDHT`` with our upkeep in place of its maintenance loop.

    Its loop runs at start-up and every 10 minutes: a routing table refresh
    with its own lookups (a self-lookup and one per non-empty bucket, 10
    queries in flight, cancelled mid-stream), and a republish of values we put
    through a ``FIND_NODE`` lookup that py-libp2p nodes refuse for our keys.
    At start-up that doubled every node's kad traffic; settled, it cost a
    60-node testnet some 15 requests a second.  Ours waits
    :data:`MAINTENANCE_S` (+-:data:`MAINTENANCE_JITTER`), runs :attr:`refresh` (the host's complete
    self-lookup, :meth:`node.p2p.routing.KadRouting.bootstrap`), and drops
    expired records.  Providers and adverts are re-announced by their owner.
    """

    refresh: Callable[[], Awaitable[object]] | None = None

    async def _run_main_loop(self) -> None:
        while self.manager.is_running:
            await trio.sleep(jittered(MAINTENANCE_S, random.random, MAINTENANCE_JITTER))
            try:
                if self.refresh is not None:
                    await self.refresh()
                self.value_store.cleanup_expired()
                self.provider_store.cleanup_expired()
            except Exception:  # upkeep is best effort, as py-libp2p's own loop is
                log.warning("DHT upkeep failed", exc_info=True)


class PagedProviderStore(ProviderStore):
    """py-libp2p's provider store backed by :class:`protocol.kademlia.ProviderRecords`.

    py-libp2p's own store keeps the first 20 providers of a key for 48 h and
    answers ``GET_PROVIDERS`` with all of them.  This one keeps
    :data:`~protocol.kademlia.MAX_PROVIDERS_PER_KEY` per key (a full key
    evicts the record announced longest ago), expires records
    :data:`~protocol.kademlia.PROVIDER_TTL_S` after their last announcement,
    and answers with a fresh uniform sample of at most 100 (spec/dht.md §6.5):
    py-libp2p's ``GET_PROVIDERS`` handler calls :meth:`get_providers`, so
    that is the page; our own reads use :meth:`local`.  One peer can add at
    most one record per second (py-libp2p's ``ADD_PROVIDER`` rate limit), so
    it holds at most ``PROVIDER_TTL_S`` records here.
    """

    def __init__(
        self,
        host: Any,
        peer_routing: Any,
        *,
        clock: Callable[[], float] = trio.current_time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(host, peer_routing)
        self.records: ProviderRecords[PeerInfo] = ProviderRecords(
            max_per_key=MAX_PROVIDERS_PER_KEY, ttl=PROVIDER_TTL_S
        )
        self._clock = clock
        self._rand = rand

    def add_provider(self, key: bytes, provider: PeerInfo) -> None:
        if provider is None or not provider.peer_id:
            return
        self.records.add(bytes(key), provider.peer_id.to_bytes(), provider, self._clock())

    def get_providers(self, key: bytes) -> list[PeerInfo]:
        """What our ``GET_PROVIDERS`` answer carries: a random page."""
        return [info for _, info in self.records.answer(bytes(key), self._clock(), self._rand)]

    def local(self, key: bytes) -> list[PeerInfo]:
        """Every unexpired record held for ``key`` (no network)."""
        return [info for _, info in self.records.get(bytes(key), self._clock())]

    def cleanup_expired(self) -> None:
        now = self._clock()
        for key in self.records.keys():
            self.records.get(key, now)  # drops what expired, and empty keys

    def get_provided_keys(self, peer_id: ID) -> list[bytes]:
        mine = peer_id.to_bytes()
        now = self._clock()
        return [k for k in self.records.keys() if any(p == mine for p, _ in self.records.get(k, now))]

    def size(self) -> int:
        return sum(self.records.count(k) for k in self.records.keys())


# --------------------------------------------------------------------------- client side


class QueryFailed(Exception):
    """A kad request got no usable answer; ``reason`` is what the lookup is told."""

    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


@dataclass
class Answer:
    """One kad answer: closer peers and providers (peer ID bytes, multiaddrs)."""

    closer: list[bytes] = field(default_factory=list)
    providers: list[tuple[bytes, list[bytes]]] = field(default_factory=list)  #: addrs as sent


#: the dial, the security or muxer upgrade, or multistream-select failed
_CONNECT_ERRORS = (SwarmException, StreamFailure, BaseLibp2pError, OSError)
#: a reset or a close before the full answer: py-libp2p's 12-stream limiter or
#: its ADD_PROVIDER rate limit (it resets), or a peer shutting down
_BUSY_ERRORS = (IncompleteReadError, BaseLibp2pError, EOFError)


class KadClient:
    """Our kad requests: build, send, read one bounded answer, and judge it.

    Every call raises :class:`QueryFailed` with the :class:`Failure` that
    fits: the dial or protocol negotiation failed (``UNREACHABLE``), the
    peer reset or closed the stream before a full answer (``BUSY``: py-libp2p
    does that when its inbound limit or ``ADD_PROVIDER`` rate limit is hit),
    the answer broke the protocol (``INVALID``).  Timeouts are the caller's
    (``trio.fail_after`` around the call, dial included), as is ``TIMEOUT``.
    Addresses of the peers an answer names go to the peerstore (as
    py-libp2p does), so the lookup can dial them.
    """

    def __init__(self, host: Any) -> None:
        self._host = host
        self._me = host.get_id()
        self._self_at = -math.inf
        self._envelope = b""
        self._local: Any = None  #: the peerstore's local record ``_envelope`` was made from
        self._my_addrs: list[bytes] = []
        #: peer -> (addresses an answer named, when they went to the peerstore)
        self._seen_addrs: dict[bytes, tuple[tuple[bytes, ...], float]] = {}

    async def find_node(self, peer: bytes, key: bytes) -> Answer:
        msg = self._request(Message.MessageType.FIND_NODE, key)
        return self._answer(ID(peer), await self._rpc(ID(peer), msg, msg.type))

    async def get_providers(self, peer: bytes, key: bytes) -> Answer:
        msg = self._request(Message.MessageType.GET_PROVIDERS, key)
        return self._answer(ID(peer), await self._rpc(ID(peer), msg, msg.type))

    async def add_provider(self, peer: bytes, key: bytes) -> None:
        """Ask ``peer`` to store us as a provider of ``key``; returns once it echoed.

        py-libp2p's server echoes the request after it stored the record (the
        libp2p kad spec asks for the echo); its own client never reads it, so a
        rate-limited request reads as sent.  We wait for it: echo = stored.
        """
        msg = self._request(Message.MessageType.ADD_PROVIDER, key)
        prov = msg.providerPeers.add()
        prov.id = self._me.to_bytes()
        prov.addrs.extend(self._my_addrs)
        prov.signedRecord = msg.senderRecord
        resp = await self._rpc(ID(peer), msg, msg.type)
        if resp.key != key:
            raise QueryFailed(Failure.INVALID, "ADD_PROVIDER echo names another key")

    async def put_value(self, peer: bytes, key: bytes, record: Any) -> None:
        """Ask ``peer`` to store ``record`` (a signed kad ``Record``) under ``key``;
        returns once it acknowledged (py-libp2p echoes only what it validated and stored)."""
        msg = self._request(Message.MessageType.PUT_VALUE, key)
        msg.record.CopyFrom(record)
        msg.record.ClearField("timeReceived")  # the receiver sets it
        resp = await self._rpc(ID(peer), msg, msg.type)
        if resp.key != key:
            raise QueryFailed(Failure.INVALID, "PUT_VALUE acknowledgement names another key")

    # ---- internals

    def _request(self, kind: Any, key: bytes) -> Message:
        msg = Message()
        msg.type = kind
        msg.key = key
        now = trio.current_time()
        # Both cost a walk over the host's addresses, hence the cache; but once a
        # newer record of ours was issued (our announced addresses changed: NAT
        # traversal, a relay slot; identify push carries it), peers reject an
        # older one (a lower seq) and drop the request: send the newest at once.
        local = self._host.get_peerstore().get_local_record()
        if now >= self._self_at + SELF_RECORD_S or local is not self._local:
            self._envelope, _ = env_to_send_in_RPC(self._host)
            self._local = self._host.get_peerstore().get_local_record()
            self._my_addrs = [a.to_bytes() for a in self._host.get_addrs()]
            self._self_at = now
        msg.senderRecord = self._envelope
        return msg

    def _consume(self, msg: Any, peer: ID | None) -> bool:
        """The signed peer record of an answer (``peer``: its sender) or of a
        peer it names, verified once per :data:`~node.p2p.tuning.SEEN_RECORD_S`
        (:func:`node.p2p.tuning.consume_signed_record`)."""
        return consume_signed_record(msg, self._host, peer)

    async def _rpc(self, peer: ID, msg: Message, expect: Any) -> Message:
        """One request and its answer on a fresh stream, in one round trip
        (multistream-select pipelined: :func:`node.p2p.lazy.exchange`)."""
        try:
            stream = await open_raw(self._host.get_network(), peer)
        except _CONNECT_ERRORS as exc:
            raise QueryFailed(Failure.UNREACHABLE, str(exc) or type(exc).__name__) from None
        try:
            raw = await exchange(stream, KAD_PROTOCOL, msg.SerializeToString(), MAX_DHT_MESSAGE_SIZE)
        except NegotiationFailed as exc:
            raise QueryFailed(Failure.UNREACHABLE, str(exc)) from None
        except ProtocolError as exc:
            raise QueryFailed(Failure.INVALID, str(exc)) from None
        except _BUSY_ERRORS as exc:
            raise QueryFailed(Failure.BUSY, str(exc) or type(exc).__name__) from None
        resp = Message()
        try:
            resp.ParseFromString(raw)
        except DecodeError as exc:
            raise QueryFailed(Failure.INVALID, f"undecodable answer: {exc}") from None
        if resp.type != expect:
            raise QueryFailed(Failure.INVALID, f"answer of type {resp.type}, asked {expect}")
        if not self._consume(resp, peer):
            raise QueryFailed(Failure.INVALID, "bad signed peer record")
        return resp

    def _answer(self, peer: ID, resp: Message) -> Answer:
        out = Answer()
        for p in resp.closerPeers:
            pid = self._peer(p)
            if pid is not None and pid != peer:
                out.closer.append(pid.to_bytes())
        for p in resp.providerPeers:  # addresses parsed only for new ones (addr_strings)
            pid = self._peer(p, remember=False)
            if pid is not None:
                out.providers.append((pid.to_bytes(), [bytes(a) for a in p.addrs[:MAX_ADDRS]]))
        return out

    def _peer(self, p: Any, *, remember: bool = True) -> ID | None:
        """A peer named in an answer, or None if malformed; with ``remember``
        its addresses go to the peerstore (the lookup may dial it)."""
        if not p.id or len(p.id) > MAX_PEER_ID or not self._consume(p, None):
            return None
        pid = ID(p.id)
        if pid == self._me or not remember:
            return pid
        raw = tuple(bytes(a) for a in p.addrs[:MAX_ADDRS])
        now = trio.current_time()
        seen = self._seen_addrs.get(p.id)
        if seen is not None and seen[0] == raw and now < seen[1] + ADDR_TTL / 2:
            return pid  # in the peerstore already: parsing them again cost ~2 ms per answer
        addrs = _multiaddrs(raw)
        if addrs:
            self._host.get_peerstore().add_addrs(pid, addrs, ADDR_TTL)
        if len(self._seen_addrs) >= SEEN_RECORDS:
            self._seen_addrs.pop(next(iter(self._seen_addrs)))
        self._seen_addrs[bytes(p.id)] = (raw, now)
        return pid


def _multiaddrs(raws: Any) -> list[Any]:
    out = []
    for raw in raws:
        try:
            out.append(multiaddr.Multiaddr(raw))
        except Exception:  # py-multiaddr raises assorted errors on bad bytes
            continue
    return out


def addr_strings(raws: list[bytes]) -> list[str]:
    """Binary multiaddrs from a kad answer as strings (malformed ones left out)."""
    return [str(a) for a in _multiaddrs(raws)]
