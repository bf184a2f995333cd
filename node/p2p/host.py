"""The libp2p host: Noise, yamux, kad-dht, and the calls the node makes on it."""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.exceptions import StreamFailure
from libp2p.kad_dht.kad_dht import DHTMode
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from node.addrs import split_peer, with_peer
from node.logs import route_library_logs
from node.p2p.dht import (
    KAD_PROTOCOL,
    CpnKadDHT,
    HostStats,
    LookupResult,
    PagedProviderStore,
    ProvideReport,
    RecordValidator,
    ValidatorAdapter,
    capped_kad_handler,
    dht_key,
)
from node.p2p.guards import install as install_stream_guards
from node.p2p.keys import to_libp2p_keypair
from node.p2p.lazy import NegotiationFailed, exchange, open_raw
from node.p2p.nat import NatService
from node.p2p.paths import remote_ip
from node.p2p.relay import RelayRefused, dial_circuit
from node.p2p.routing import EarlyStop, KadRouting
from node.p2p.streams import FramedStream, PeerUnreachable, StreamClosed, StreamHandler
from node.p2p.tuning import install as install_tuning
from node.reach import Path, Reachability, RelayPolicy, split_circuit
from protocol.errors import ProtocolError
from protocol.kademlia import ALPHA, K

log = logging.getLogger("cpn.p2p")

__all__ = ["P2PHost", "open_host", "DIAL_TIMEOUT", "PING_TIMEOUT"]

DIAL_TIMEOUT = 5.0  #: seconds for one dial (TCP + Noise + yamux)
DIRECT_FIRST_S = 2.0  #: a direct dial's share when a relay circuit can be tried next
MAX_REMEMBERED = 4096  #: peers whose circuit addresses we keep for later dials
SETTLE_TIMEOUT = 15.0  #: longest start-up wait for the reachability verdict and a relay slot
PING_TIMEOUT = 0.5  #: one muxer-level ping (a miss falls back to a full request)

# py-libp2p tuned: fewer frames per request, window updates at half (node/p2p/tuning.py).
install_tuning()

# A peer's stream must never end the node (node/p2p/guards.py).
install_stream_guards()


class _Wake:
    """A listener (on :class:`~node.p2p.paths.PathTracker` or hole-punch session
    lists) that wakes :meth:`wait` whenever ``peer`` is named."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._event = trio.Event()

    def __call__(self, peer: str, *_: object) -> None:
        if peer == self.peer:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


@contextmanager
def _woken_by(peer: str, *lists: list[Callable[..., None]]) -> Iterator[_Wake]:
    """A :class:`_Wake` for ``peer`` on each of ``lists`` while the block runs."""
    wake = _Wake(peer)
    for listeners in lists:
        listeners.append(wake)
    try:
        yield wake
    finally:
        for listeners in lists:
            listeners.remove(wake)


class P2PHost:
    """A running libp2p host with a kad-dht; create with :func:`open_host`."""

    def __init__(
        self, host: Any, dht: CpnKadDHT, nat: NatService, nursery: trio.Nursery,
        stats: HostStats | None = None,
    ) -> None:
        self._host = host
        self._dht = dht
        self.nat = nat
        self.peer_id: str = str(host.get_id())
        self.stats = stats if stats is not None else HostStats()
        self._circuits: dict[str, list[str]] = {}  #: peer -> circuit addrs we were given
        #: lookups and provides (spec/dht.md §6); their requests run in ``nursery``,
        #: which lives as long as the host, so no lookup cancels a query mid-stream
        self._routing = KadRouting(host, dht, nursery, self.stats)
        dht.refresh = self._routing.bootstrap  # its periodic upkeep

    # ---- identity and addresses

    @property
    def listen_addrs(self) -> list[str]:
        """The multiaddrs we listen on, each ending in ``/p2p/<peer id>``."""
        return [with_peer(str(a), self.peer_id) for a in self._host.get_transport_addrs()]

    def advertised_addrs(self) -> list[str]:
        """The addresses other peers can dial us at (no ``/p2p/`` suffix), for adverts:
        what :class:`~node.reach.Reachability` announces (never a loopback or private
        address to peers outside that network; relay circuits when private)."""
        return self.nat.announced()

    @property
    def reachability(self) -> Reachability:
        """Public / private / unknown, public IP, NAT type, announced addresses."""
        return self.nat.reach

    def on_addrs_changed(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever the addresses we announce change (reachability
        verdict, relays gained or lost): whoever publishes them re-publishes."""
        last = [self.nat.reach.addrs]

        def changed(reach: Reachability) -> None:
            if reach.addrs != last[0]:
                last[0] = reach.addrs
                fn()

        self.nat.on_change.append(changed)

    def connection_paths(self) -> dict[str, Path]:
        """:meth:`connection_path` of every connected peer."""
        return self.nat.tracker.paths()

    def connection_path(self, peer_id: str) -> Path | None:
        """How we are connected to ``peer_id`` now: ``direct``, ``hole-punched``,
        ``reversed``, ``relayed``; None when not connected."""
        return self.nat.path(peer_id)

    async def wait_unrelayed(self, peer_id: str) -> Path:
        """Return once a non-relayed connection to ``peer_id`` is open (a DCUtR hole
        punch, or the private side dialled us): its path.  Callers bound the wait."""
        with _woken_by(peer_id, self.nat.tracker.listeners) as wake:
            while (path := self.connection_path(peer_id)) in (None, "relayed"):
                await wake.wait()
            assert path is not None
            return path

    async def wait_upgrade(self, peer_id: str, patience: float, limit: float) -> Path | None:
        """Wait for a relayed connection to ``peer_id`` to be upgraded: up to
        ``patience`` seconds, and on while a hole punch with it is under way,
        up to ``limit`` in all.  The path then (unchanged: ``relayed``)."""
        punch = self.nat.punch
        with _woken_by(peer_id, self.nat.tracker.listeners, punch.session_listeners) as wake:
            start = trio.current_time()
            with trio.move_on_after(limit):
                while self.connection_path(peer_id) == "relayed":
                    patient = trio.current_time() < start + patience
                    if not patient and not punch.under_way(peer_id):
                        break
                    with trio.move_on_at(start + patience if patient else math.inf):
                        await wake.wait()
            return self.connection_path(peer_id)

    def peer_ip(self, peer_id: str) -> str | None:
        """The remote IP of a direct connection to ``peer_id`` as we see it (None when
        only relayed, or not connected): whether the peer is in our own network."""
        try:
            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        except (BaseLibp2pError, ValueError):
            return None
        for conn in conns or ():
            if (ip := remote_ip(conn)) is not None:
                return ip
        return None

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
        """Dial ``peer_id`` at ``addrs`` (no-op if already connected); circuit
        addresses (``.../p2p/<relay>/p2p-circuit``) are dialled through the relay
        when no direct address works."""
        await self._dial(ID.from_base58(peer_id), addrs)

    async def _dial(self, pid: ID, addrs: Sequence[str]) -> None:
        """Connect unless connected: direct addresses first (given or known),
        then the relays of the circuit addresses given (or given before)."""
        if self._live_connections(pid):
            return
        self._drop_dead_connections(pid)
        peer = str(pid)
        direct = [split_peer(a)[0] for a in addrs if split_circuit(a) is None]
        circuits = [a for a in addrs if split_circuit(a) is not None]
        if circuits:
            self._circuits.pop(peer, None)
            self._circuits[peer] = circuits[:8]
            while len(self._circuits) > MAX_REMEMBERED:
                self._circuits.pop(next(iter(self._circuits)))
        circuits = circuits or self._circuits.get(peer, [])
        try:
            known = [a for a in self._host.get_peerstore().addrs(pid) if "/p2p-circuit" not in str(a)]
        except (BaseLibp2pError, KeyError):  # a peer the peerstore has never heard of
            known = []
        problems: list[str] = []
        if direct or known:
            try:
                # With a relay to fall back on, a direct address gets a short try.
                with trio.fail_after(DIRECT_FIRST_S if circuits else DIAL_TIMEOUT):
                    await self._host.connect(PeerInfo(pid, [multiaddr.Multiaddr(a) for a in direct]))
                return
            except (BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
                problems.append(f"direct: {exc or 'timed out'}")
        for addr in circuits:
            relay_transport, relay, _target = split_circuit(addr) or ("", "", None)
            try:
                await dial_circuit(self._host, relay_transport, relay, peer)
                return
            except (RelayRefused, BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
                problems.append(f"via {relay}: {exc or 'timed out'}")
        raise PeerUnreachable(f"cannot connect to {peer}: {'; '.join(problems) or 'no address'}")

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
        raw = await self._new_stream(pid, addrs, protocol_id, lambda: self._host.new_stream(pid, [TProtocol(protocol_id)]))
        return FramedStream(raw)

    async def request(
        self, peer_id: str, protocol_id: str, payload: bytes, max_answer: int,
        addrs: Sequence[str] | None = None,
    ) -> bytes:
        """One frame to ``peer_id`` over ``protocol_id``, its one answer frame back,
        in one round trip (:func:`node.p2p.lazy.exchange`; ``addrs`` as for
        :meth:`open_stream`).  Raises :class:`PeerUnreachable` (no connection,
        or the protocol refused), :class:`StreamClosed` (closed or reset before
        the whole answer) and the frame prefix's ``ProtocolError``."""
        pid = ID.from_base58(peer_id)
        raw = await self._new_stream(pid, addrs, protocol_id, lambda: open_raw(self._host.get_network(), pid))
        try:
            return await exchange(raw, protocol_id, payload, max_answer)
        except NegotiationFailed as exc:
            raise PeerUnreachable(f"{protocol_id} to {peer_id}: {exc}") from None
        except (BaseLibp2pError, EOFError) as exc:  # IncompleteReadError is one
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    async def _new_stream(
        self, pid: ID, addrs: Sequence[str] | None, protocol_id: str, new: Callable[[], Any]
    ) -> Any:
        """Dial ``pid`` if need be, then ``new()`` a stream on the connection."""
        direct = [a for a in addrs or () if split_circuit(a) is None]
        if direct and not self._live_connections(pid):  # (parsing them costs, and only a dial needs them)
            self._host.get_peerstore().add_addrs(
                pid, [multiaddr.Multiaddr(split_peer(a)[0]) for a in direct], 3600
            )
        await self._dial(pid, addrs or ())
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                try:
                    return await new()
                except (SwarmException, StreamFailure) as exc:
                    # No stream on the connection we hold: it died without the
                    # swarm noticing (py-libp2p then neither dials nor opens a
                    # stream until it prunes it), or the new stream's very first
                    # write failed (the session under it is gone).  Drop it,
                    # dial afresh, once.  (A resource-manager stream limit, or a
                    # protocol the peer refuses, is not a dead connection.)
                    if not _connection_gone(exc):
                        raise
                    log.debug("stream to %s failed on a held connection (%s); redialling", pid, exc)
                    await self._host.get_network().close_peer(pid)
                    self._drop_dead_connections(pid, every=True)
                    await self._dial(pid, addrs or ())
                    return await new()
        except (BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            raise PeerUnreachable(f"cannot open {protocol_id} to {pid}: {exc}") from None

    def _live_connections(self, pid: ID) -> list[Any]:
        """Connections to ``pid`` that can still carry streams."""
        return [c for c in self._host.get_network().get_connections(pid) if not _dead(c)]

    def _drop_dead_connections(self, pid: ID, *, every: bool = False) -> None:
        """Forget closed connections to ``pid`` the swarm still lists (all of
        them with ``every``): while one is listed py-libp2p neither dials the
        peer nor opens a stream to it ("No valid connections available")."""
        net = self._host.get_network()
        for conn in net.get_connections(pid):
            if every or _dead(conn):
                net.remove_conn(conn)

    # ---- DHT

    async def bootstrap(self) -> int:
        """Fill the routing table (a complete lookup of our own ID); returns the
        number of closest peers that answered."""
        return await self._routing.bootstrap()

    def hold_own_record(self, key: bytes) -> None:
        """Hold our own provider record for ``key`` (a binary CID or multihash)
        locally, at once and without network traffic: whoever asks this node
        for ``key`` is told about it before any announcement went out."""
        self._routing.hold_own_record(key)

    async def provide(self, key: bytes, *, k: int = K) -> ProvideReport:
        """Announce ourselves as a provider of ``key`` (a binary CID or multihash)
        at the k closest peers, with retries, and say how many hold it
        (spec/dht.md §6.3).  Sends go through this host's one ``ADD_PROVIDER``
        budget, shared by all provides.  ``k`` other than 20 is for tests."""
        return await self._routing.provide(key, k=k)

    def holders(self, key: bytes, last: ProvideReport, *, k: int = K) -> tuple[int, int]:
        """``(held, closest)``: how many of the ``k`` peers closest to ``key`` that
        this node knows of now took the record at ``last`` (an earlier
        provide of ``key``), and how many such peers there are."""
        return self._routing.holders(key, last, k=k)

    def local_providers(self, key: bytes) -> list[str]:
        """Peer IDs of the provider records for ``key`` this node holds (no network)."""
        return [str(i.peer_id) for i in self._routing.store.local(dht_key(key))]

    async def find_providers(
        self,
        key: bytes,
        *,
        count: int | None = None,
        alpha: int = ALPHA,
        on_found: Callable[[str, list[str]], None] | None = None,
        early_stop: EarlyStop | None = None,
    ) -> LookupResult:
        """Iterative ``GET_PROVIDERS`` lookup that always asks the network (spec/dht.md §6.2).

        It runs until the k closest live peers to the key have answered (then
        pages through popular keys), ``count`` providers are known, the
        caller's ``early_stop`` says enough, or the caller cancels it.
        Providers are *candidates* only: the caller must verify each one's
        advert.  ``on_found(peer, addrs)`` is called for each new provider as
        soon as it is known (those this node holds first), so the caller can
        verify while the lookup goes on; ``early_stop.nudge()`` then makes the
        lookup re-check ``early_stop.enough()`` at once.
        """
        return await self._routing.find_providers(
            key, count=count, alpha=alpha, on_found=on_found, early_stop=early_stop
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

    async def put_value(self, key: str, value: bytes) -> int:
        """Validate and store ``value`` under ``key`` here and at the k closest peers
        our routing table holds; returns how many of them acknowledged.

        py-libp2p's ``put_value`` first runs a ``FIND_NODE`` lookup for the key,
        which py-libp2p nodes refuse for keys over 50 bytes that are not
        multihashes (``/cpn-advert/<peer id>`` is 64): some 20 requests wasted
        on every advert refresh, before it stores at the peers it knew anyway
        (spec/dht.md §5, "Known limitation").  This stores at those directly.
        The local checks are py-libp2p's: the namespace's validator (raises
        ``ValueError``, or py-libp2p's error for an unknown namespace) and no
        replacing a newer value.
        """
        dht = self._dht
        assert dht.validator is not None
        dht.validator.validate(key, value)
        raw_key = key.encode()
        old = dht.value_store.get(raw_key)
        if old is not None and old.value != value and dht.validator.select(key, [value, old.value]):
            raise ValueError("refusing to replace a newer value with an older one")
        dht.value_store.put(raw_key, value)
        record, _ = dht.value_store.store[raw_key]  # signed with our key by py-libp2p
        return await self._routing.put_value(raw_key, record)

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



def _connection_gone(exc: Exception) -> bool:
    """Whether ``new_stream`` failed because the connection under it is gone
    (worth one redial), not because of a limit or a refused protocol."""
    if isinstance(exc, SwarmException):
        return "limit" not in str(exc).lower()
    return "handshake write failed" in str(exc.__cause__ or "")


def _dead(conn: Any) -> bool:
    """A swarm connection that is closed, or whose yamux session is shutting down."""
    muxed = getattr(conn, "muxed_conn", None)
    shutting = getattr(muxed, "event_shutting_down", None)
    return bool(getattr(conn, "is_closed", False)) or (shutting is not None and shutting.is_set())


@asynccontextmanager
async def open_host(
    key: Ed25519PrivateKey,
    listen: Sequence[str],
    *,
    validators: Mapping[str, RecordValidator] | None = None,
    bootstrap: Sequence[str] = (),
    relay: RelayPolicy | None = None,
) -> AsyncIterator[P2PHost]:
    """Run a Noise-only, yamux, kad-dht (server mode) host until the block exits.

    ``validators`` maps DHT namespaces (``"cpn-advert"`` for ``/cpn-advert/...``)
    to :class:`RecordValidator`; with ``strict_validation`` every other
    namespace is refused.  ``bootstrap`` multiaddrs are dialled best-effort:
    an unreachable bootstrap peer is logged, not fatal.  ``relay``: the
    ``[relay]`` settings (:class:`~node.p2p.nat.NatService` runs reachability,
    relays and hole punching beside the host).
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
        {name: ValidatorAdapter(v, on_reject) for name, v in (validators or {}).items()},
        strict_validation=True,
    )
    dht = CpnKadDHT(host, DHTMode.SERVER, validator=ns, validator_changed=True, strict_validation=True)
    dht.provider_store = PagedProviderStore(host, dht.peer_routing)  # pages, 2048/key, 3 h
    stats = HostStats()
    host.set_stream_handler(TProtocol(KAD_PROTOCOL), capped_kad_handler(dht, stats))
    nat = NatService(host, dht, policy=relay or RelayPolicy(), bootstrap=bootstrap,
                     register_kad=lambda: host.set_stream_handler(
                         TProtocol(KAD_PROTOCOL), capped_kad_handler(dht, stats)))
    async with host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in listen]):
        async with background_trio_service(dht), nat.running(), trio.open_nursery() as kad_requests:
            p2p = P2PHost(host, dht, nat, kad_requests, stats)
            stats_holder.append(p2p)
            for addr in bootstrap:
                try:
                    await p2p.connect_multiaddr(addr)
                except PeerUnreachable as exc:
                    log.warning("bootstrap peer unreachable: %s", exc)
            if bootstrap:
                await p2p.bootstrap()
            with trio.move_on_after(SETTLE_TIMEOUT):
                await nat.settle()  # how peers reach us, before anything is advertised
            yield p2p
            kad_requests.cancel_scope.cancel()  # the host closes: requests still out end now
