"""The one adapter between CPN and py-libp2p (the only module that imports libp2p).

Everything py-libp2p-specific is handled here once, so the rest of the node
sees a small, typed surface (peer IDs are ``str``, addresses are ``str``
multiaddrs, streams are :class:`FramedStream`):

* **Noise only.**  py-libp2p offers ``/noise``, ``/tls``, ``/secio`` and
  ``/plaintext`` by default; with plaintext a peer could claim a peer ID whose
  key it does not hold.  We configure Noise as the sole security transport.
* **yamux**, and ``max_connections_per_peer=1`` (the default config waits on a
  ~250 ms happy-eyeballs timer for every dial).
* **kad-dht** in server mode on the standard ``/ipfs/kad/1.0.0`` protocol with
  ``strict_validation=True`` and our own namespace validators, so a stock
  libp2p (e.g. js-libp2p) can find our providers while nobody can store
  arbitrary values through us.
* **Framing.**  A remote ``reset()`` reads as ``StreamEOF`` in py-libp2p, the
  same as a clean close, so every message is length-prefixed
  (:class:`FramedStream`) and a truncated frame is an error, not a message.
* **Logs.**  The ``libp2p`` logger does not propagate; we forward it into
  ``cpn.libp2p`` and demote its noisy per-close warnings to DEBUG.

Callers put a ``trio.fail_after`` around every network call (no keepalive: a
frozen peer otherwise hangs a stream for minutes).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Protocol

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey as LibEd25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.kad_dht import provider_store as _provider_store
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from node.addrs import split_peer, with_peer
from node.keys import seed_of
from node.logs import route_library_logs
from protocol.errors import ProtocolError
from protocol.framing import decode_frame_prefix, encode_frame

__all__ = [
    "StreamClosed",
    "PeerUnreachable",
    "FramedStream",
    "P2PHost",
    "RecordValidator",
    "LookupResult",
    "open_host",
    "DIAL_TIMEOUT",
    "KAD_PROTOCOL",
]

log = logging.getLogger("cpn.p2p")

# py-libp2p's yamux sends a WINDOW_UPDATE frame after *every* read by default
# (``PY_YAMUX_RELEASE_ON_READ=1``): one extra Noise-encrypted write per
# message, ~20 % of a find's CPU in a profile.  With it off, yamux credits the
# window go-yamux style (batched at half the window), which every other
# implementation expects; bulk streams keep a full window.  The variable is
# read on every call, so setting it here (before any host runs) is enough; an
# operator's explicit setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

#: Provider records one node keeps per key.  py-libp2p 0.8.1 keeps only the
#: first k = 20 (``provider_store.BUCKET_SIZE``) and ignores later providers,
#: so a general identifier with more providers than that (``cpn:cpu`` on a
#: 50-node testnet) lost providers at random: no node held them all and a
#: lookup saw 41 of 50.  go-libp2p-kad-dht has no such limit.  The bound still
#: protects memory (records are only accepted from the provider itself).
MAX_PROVIDERS_PER_KEY = 1000
setattr(_provider_store, "BUCKET_SIZE", MAX_PROVIDERS_PER_KEY)  # noqa: B010 - a module constant, not exported

DIAL_TIMEOUT = 5.0  #: seconds for one dial (TCP + Noise + yamux)
QUERY_TIMEOUT = 2.0  #: one GET_PROVIDERS query within a lookup
PING_TIMEOUT = 0.5  #: one muxer-level ping (a miss falls back to a full request)
ALPHA = 3  #: peers asked in parallel per lookup round (kad's alpha)
QUORUM = 3  #: identical answers from this many closest peers settle a lookup
#: longest an inbound kad stream may stay open (see :func:`_capped_kad_handler`)
KAD_INBOUND_STREAM_S = 15.0
KAD_PROTOCOL = "/ipfs/kad/1.0.0"
K = 20  #: kad bucket size: how many closest peers a lookup must hear from


class StreamClosed(Exception):
    """The stream ended (closed, reset, or the connection died) before a whole frame."""


class PeerUnreachable(StreamClosed):
    """Dialling the peer, or negotiating the protocol with it, failed."""



# --------------------------------------------------------------------------- keys


def to_libp2p_keypair(key: Ed25519PrivateKey) -> KeyPair:
    """The libp2p ``KeyPair`` of the node's identity key."""
    lib = LibEd25519PrivateKey.from_bytes(seed_of(key))
    return KeyPair(lib, lib.get_public_key())


def from_libp2p_keypair(pair: KeyPair) -> Ed25519PrivateKey:
    """Inverse of :func:`to_libp2p_keypair`."""
    raw = pair.private_key.to_bytes()
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


# --------------------------------------------------------------------------- framing



class FramedStream:
    """A libp2p stream carrying uvarint-length-prefixed frames.

    Framing exists because py-libp2p reports a remote reset as a plain EOF:
    without a length, a half-received message would look complete.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.remote_peer: str = str(stream.muxed_conn.peer_id)
        self.protocol: str = str(stream.get_protocol() or "")

    async def send_frame(self, data: bytes) -> None:
        """Send one frame.  Raises :class:`StreamClosed` if the stream is gone."""
        try:
            await self._stream.write(encode_frame(data))
        except BaseLibp2pError as exc:
            raise StreamClosed(f"write failed: {exc}") from None

    async def _fill(self) -> None:
        try:
            chunk = await self._stream.read(65536)
        except BaseLibp2pError as exc:  # StreamEOF, StreamReset, muxer errors
            raise StreamClosed(str(exc) or type(exc).__name__) from None
        if not chunk:
            raise StreamClosed("end of stream")
        self._buf += chunk

    async def receive_frame(self, max_size: int) -> bytes:
        """Receive one frame of at most ``max_size`` bytes (spec/README.md, "Frames").

        Raises :class:`StreamClosed` at end of stream (also mid-frame) and the
        prefix's ``ProtocolError`` (``oversize``, ``malformed``) before reading
        a byte of the body.
        """
        while (head := decode_frame_prefix(self._buf, max_size)) is None:
            await self._fill()
        n, i = head
        while len(self._buf) < i + n:
            await self._fill()
        frame = bytes(self._buf[i : i + n])
        del self._buf[: i + n]
        return frame

    async def close(self) -> None:
        """Half-close our side (the peer reads end-of-stream)."""
        try:
            await self._stream.close()
        except BaseLibp2pError:
            pass

    async def reset(self) -> None:
        """Abort the stream in both directions."""
        try:
            await self._stream.reset()
        except BaseLibp2pError:
            pass


StreamHandler = Callable[[FramedStream], Awaitable[None]]


# --------------------------------------------------------------------------- DHT glue


class RecordValidator(Protocol):
    """A DHT namespace validator (pure: no IO).  Raise ``ProtocolError`` to reject."""

    def validate(self, key: str, value: bytes) -> None: ...

    def select(self, key: str, values: list[bytes]) -> int: ...


class _ValidatorAdapter(Validator):
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


def _xor_distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(sha256(a).digest(), "big") ^ int.from_bytes(sha256(b).digest(), "big")


@dataclass
class HostStats:
    lookups: int = 0
    lookup_errors: int = 0
    rejected_records: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- host


class P2PHost:
    """A running libp2p host with a kad-dht; create with :func:`open_host`."""

    def __init__(self, host: Any, dht: KadDHT) -> None:
        self._host = host
        self._dht = dht
        self.peer_id: str = str(host.get_id())
        self.stats = HostStats()

    # ---- identity and addresses

    @property
    def listen_addrs(self) -> list[str]:
        """Our dialable multiaddrs, each ending in ``/p2p/<peer id>``."""
        return [with_peer(str(a), self.peer_id) for a in self._host.get_addrs()]

    def advertised_addrs(self) -> list[str]:
        """The addresses other peers should dial us at (no ``/p2p/`` suffix), for adverts."""
        return list(dict.fromkeys(split_peer(a)[0] for a in self.listen_addrs))

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self._host.get_connected_peers()]

    def routing_table_size(self) -> int:
        return int(self._dht.get_routing_table_size())

    def value_store_size(self) -> int:
        return int(self._dht.get_value_store_size())

    # ---- streams

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id``; ``handler`` gets a :class:`FramedStream`.

        A handler that raises ``ProtocolError`` or :class:`StreamClosed` gets its
        stream reset and the error logged; other streams are unaffected.
        """

        async def wrapped(raw: Any) -> None:
            stream = FramedStream(raw)
            try:
                await handler(stream)
                await stream.close()  # idempotent; a handler may have closed already
            except (ProtocolError, StreamClosed) as exc:
                log.info("%s from %s: %s", protocol_id, stream.remote_peer, exc)
                await stream.reset()
            except trio.TooSlowError:
                log.info("%s from %s: timed out", protocol_id, stream.remote_peer)
                await stream.reset()

        self._host.set_stream_handler(TProtocol(protocol_id), wrapped)

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Dial ``peer_id`` at ``addrs`` (no-op if already connected)."""
        info = PeerInfo(
            ID.from_base58(peer_id), [multiaddr.Multiaddr(split_peer(a)[0]) for a in addrs]
        )
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)
        except (BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            raise PeerUnreachable(f"cannot connect to {peer_id}: {exc}") from None

    async def connect_multiaddr(self, addr: str) -> str:
        """Dial a full ``.../p2p/<id>`` multiaddr; add it to the DHT; return the peer ID."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)
        except (BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            raise PeerUnreachable(f"cannot connect to {addr}: {exc}") from None
        await self._dht.add_peer(info.peer_id)
        return str(info.peer_id)

    async def open_stream(
        self, peer_id: str, protocol_id: str, addrs: Sequence[str] | None = None
    ) -> FramedStream:
        """Open a framed stream to ``peer_id`` speaking ``protocol_id``.

        ``addrs`` (multiaddrs) are added to the peerstore first, for peers known
        from an advert rather than from the DHT.
        """
        pid = ID.from_base58(peer_id)
        if addrs:
            self._host.get_peerstore().add_addrs(
                pid, [multiaddr.Multiaddr(split_peer(a)[0]) for a in addrs], 3600
            )
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                raw = await self._host.new_stream(pid, [TProtocol(protocol_id)])
        except (BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            raise PeerUnreachable(f"cannot open {protocol_id} to {peer_id}: {exc}") from None
        return FramedStream(raw)

    # ---- DHT

    async def bootstrap(self) -> None:
        """Refresh the routing table (a self-lookup through the known peers)."""
        with trio.move_on_after(30):
            await self._dht.refresh_routing_table()

    async def provide(self, key: bytes) -> bool:
        """Announce ourselves as a provider of ``key`` (a binary CID or multihash)."""
        return bool(await self._dht.provider_store.provide(_dht_key(key)))

    async def find_providers(
        self,
        key: bytes,
        *,
        count: int = 20,
        alpha: int = ALPHA,
        on_found: Callable[[str, list[str]], None] | None = None,
    ) -> LookupResult:
        """Iterative GET_PROVIDERS lookup that always asks the network.

        py-libp2p's own ``find_providers`` answers from the local provider cache
        whenever it holds *any* provider for the key (records live 48 h), so a
        node that looked once would never see new providers.  This lookup also
        counts hops for the benchmark.  Providers are *candidates* only: the
        caller must verify each one's advert.  ``on_found(peer, addrs)`` is
        called for each new provider as soon as it is known, so the caller can
        start verifying while the lookup goes on.
        """
        mh = _dht_key(key)
        store = self._dht.provider_store
        self.stats.lookups += 1
        found: dict[str, list[str]] = {}

        def add(peer: str, addrs: list[str]) -> None:
            if peer not in found:
                found[peer] = addrs
                if on_found is not None:
                    on_found(peer, addrs)

        for info in store.get_providers(mh):  # what we hold ourselves (incl. our own)
            add(str(info.peer_id), [str(a) for a in info.addrs])
        me = self._host.get_id()
        known: set[ID] = set(self._dht.routing_table.find_local_closest_peers(mh, K)) - {me}
        asked: set[ID] = set()
        hops = 0

        def dist(p: ID) -> int:
            return _xor_distance(mh, p.to_bytes())

        async def ask(peer: ID, closer_out: list[ID], answers: list[frozenset[str]]) -> None:
            try:
                with trio.move_on_after(QUERY_TIMEOUT):
                    provs, closer = await store._get_providers_from_peer_with_closers(peer, mh)
                    for info in provs:
                        add(str(info.peer_id), [str(a) for a in info.addrs])
                    closer_out.extend(closer)
                    answers.append(frozenset(str(i.peer_id) for i in provs))
            except (BaseLibp2pError, OSError, ValueError) as exc:
                self.stats.lookup_errors += 1
                log.debug("GET_PROVIDERS to %s failed: %s", peer, exc)

        # Kademlia with early termination.  Each round asks the ``alpha`` closest
        # peers not yet asked, in parallel, and waits for all of them: a query
        # cancelled mid-stream never closes it, and py-libp2p's server then
        # holds one of its 12 inbound handler slots until the connection dies.  Stop when ``count`` providers are
        # known; when QUORUM peers of a round returned the same non-empty
        # provider set (the records are replicated on the closest peers: asking
        # more would only repeat them); when a round after the first added no
        # provider; or when the k closest known peers have all been asked.
        # Provider records sit on the k closest peers *as each provider saw the
        # network*, so while the network is still growing closest peers disagree
        # and the lookup goes on.
        found_at_hop: int | None = 0 if found else None
        while len(found) < count:
            closest_k = sorted(known, key=dist)[:K]
            batch = [p for p in closest_k if p not in asked][:alpha]
            if not batch:
                break
            hops += 1
            before = len(found)
            closer: list[ID] = []
            answers: list[frozenset[str]] = []
            asked.update(batch)
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer, closer, answers)
            known.update(p for p in closer if p != me)
            if found_at_hop is None and len(found) > before:
                found_at_hop = hops
            if _agreed(answers):
                break
            if found_at_hop is not None and len(found) == before and hops > 1:
                break  # providers known and a further round added none: settled
        return LookupResult(
            providers=list(found.items())[:count],
            hops=found_at_hop or 0,
            rounds=hops,
            queried=len(asked),
        )

    async def ping(self, peer_id: str) -> float | None:
        """Round trip (seconds) of a yamux ping on the open connection to ``peer_id``.

        A muxer ping is one frame each way (no stream, no protocol
        negotiation), so it is the cheapest proof that the peer's process is
        alive and answering.  Returns ``None`` when there is no open yamux
        connection to ping (the caller then does a full request, which dials);
        raises :class:`PeerUnreachable` when the peer does not answer within
        :data:`PING_TIMEOUT`.  py-libp2p has no public ping-on-connection call,
        so this uses its yamux internals, and falls back to ``None`` if they change.
        """
        conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        muxed = getattr(conns[0], "muxed_conn", None) if conns else None
        if not isinstance(muxed, Yamux) or not hasattr(muxed, "_ping_event"):
            return None
        if muxed.event_shutting_down.is_set():
            return None
        # The ACK handler sets ``_ping_event`` for any ping answer; the muxer's
        # own RTT loop shares it, and either answer proves the peer is alive.
        muxed._ping_id = (muxed._ping_id + 1) & 0xFFFFFFFF
        event = muxed._ping_event = trio.Event()
        header = struct.pack(
            _yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_PING, _yamux.FLAG_SYN, 0, muxed._ping_id
        )
        t0 = trio.current_time()
        try:
            with trio.fail_after(PING_TIMEOUT):
                await muxed._write_frame(header)
                muxed._ping_sent_time = trio.current_time()
                # If the RTT loop swaps in a new event meanwhile, the answer sets
                # that one: check both, in short slices.
                while not (event.is_set() or muxed._ping_event.is_set()):
                    with trio.move_on_after(0.05):
                        await event.wait()
        except (BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            raise PeerUnreachable(f"ping to {peer_id} failed: {exc or 'timed out'}") from None
        return trio.current_time() - t0

    async def put_value(self, key: str, value: bytes) -> None:
        """Validate and store ``value`` under ``key`` locally and at the closest peers."""
        await self._dht.put_value(key, value)

    async def get_value(self, key: str) -> bytes | None:
        """Best value for ``key`` (validated by the namespace validator on receipt)."""
        return await self._dht.get_value(key)

    def local_value(self, key: str) -> bytes | None:
        """The value for ``key`` in our own DHT store, if any (no network).

        Values were validated when stored; callers validate again at their own
        ``now`` (a stored advert may have expired since).
        """
        rec = self._dht.value_store.get(key.encode())
        value = getattr(rec, "value", None)
        return bytes(value) if value else None

    def remove_local_value(self, key: str) -> None:
        self._dht.value_store.remove(key.encode())


def _agreed(answers: list[frozenset[str]]) -> bool:
    """QUORUM answers in, all naming the same non-empty set of providers."""
    return len(answers) >= QUORUM and bool(answers[0]) and all(a == answers[0] for a in answers)


def _dht_key(key: bytes) -> bytes:
    """kad keys for CIDs are the CID's multihash (what go/js/py implementations use).

    A binary CIDv1 is ``0x01 <codec varint> <multihash>``; raw codec 0x55 is one
    byte.  Anything else is passed through as-is (already a multihash).
    """
    if len(key) > 2 and key[0] == 0x01 and key[1] < 0x80:
        return key[2:]
    return key


def _capped_kad_handler(dht: KadDHT) -> Callable[[Any], Awaitable[None]]:
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


@asynccontextmanager
async def open_host(
    key: Ed25519PrivateKey,
    listen: Sequence[str],
    *,
    validators: Mapping[str, RecordValidator] | None = None,
    bootstrap: Sequence[str] = (),
) -> AsyncIterator[P2PHost]:
    """Run a Noise-only, yamux, kad-dht (server mode) host until the block exits.

    ``validators`` maps DHT namespaces (``"cpn-advert"`` for ``/cpn-advert/...``)
    to :class:`RecordValidator`; with ``strict_validation`` every other
    namespace is refused.  ``bootstrap`` multiaddrs are dialled best-effort:
    an unreachable bootstrap peer is logged, not fatal.
    """
    route_library_logs()
    keypair = to_libp2p_keypair(key)
    noise = NoiseTransport(
        libp2p_keypair=keypair, noise_privkey=create_x25519_key_pair().private_key
    )
    host = new_host(
        key_pair=keypair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        # One connection per peer (no happy-eyeballs wait); auto-connect rarely, so
        # the DHT, not a background dialer, decides whom we talk to.
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, dial_timeout=DIAL_TIMEOUT, auto_connect_interval=300.0
        ),
        listen_addrs=[multiaddr.Multiaddr(a) for a in listen],
    )
    stats_holder: list[P2PHost] = []

    def on_reject(reason: str) -> None:
        if stats_holder:
            r = stats_holder[0].stats.rejected_records
            r[reason] = r.get(reason, 0) + 1

    ns = NamespacedValidator(
        {name: _ValidatorAdapter(v, on_reject) for name, v in (validators or {}).items()},
        strict_validation=True,
    )
    dht = KadDHT(host, DHTMode.SERVER, validator=ns, validator_changed=True, strict_validation=True)
    host.set_stream_handler(TProtocol(KAD_PROTOCOL), _capped_kad_handler(dht))
    async with host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in listen]):
        async with background_trio_service(dht):
            p2p = P2PHost(host, dht)
            stats_holder.append(p2p)
            for addr in bootstrap:
                try:
                    await p2p.connect_multiaddr(addr)
                except PeerUnreachable as exc:
                    log.warning("bootstrap peer unreachable: %s", exc)
            if bootstrap:
                await p2p.bootstrap()
            yield p2p
