"""Hole punching (DCUtR) and the path each connection took.

:class:`HolePunch` is py-libp2p's DCUtR service on every node: it upgrades a
relayed connection to a direct one by itself (every 2 s it looks for peers
connected only through a relay): first by a plain dial of the peer's direct
addresses (the peer is dialable: a "reversed" connection), else by the
DCUtR exchange and a TCP simultaneous open (a "hole-punched" connection).
It marks the peers it is punching to so :class:`PathTracker` can tell the
two apart.

Two changes to py-libp2p's driving, both for a data transfer that starts
right after first contact through a relay (it waits for the upgrade, see
``P2PHost.wait_upgrade``): a hole punch starts as soon as a relayed-only
connection opens, from the side that was dialled (:meth:`HolePunch.kick`;
py-libp2p looked every 2 s, and one peer at a time, so a slow punch held up
every other), and the plain dial that comes first ("unilateral upgrade")
tries only the addresses the peer announces in its signed peer record, for
at most UNILATERAL_DIAL_S.
py-libp2p dialled every non-circuit address in the peerstore for up to 10 s:
a private peer's stale or predicted NAT address from an earlier hole punch,
which its router drops silently, held the real hole punch back by 10 s.

DCUtR predicts our dialable address from our *listen* port and binds its
dials to it; it reads both from ``host.get_addrs()``, which announces only
usable addresses (none, for a private node): it is given a view of the host
whose ``get_addrs`` is the real listen addresses (:class:`ListenView`).

:class:`PathTracker` (a network notifee) records, for each direct
connection, how it came about (a direct connection made while a relayed one
was open is ``reversed`` when it was an ordinary dial: we are public, or we
dialled an address the peer announces; else ``hole-punched``); ``path(peer)`` answers ``direct`` /
``hole-punched`` / ``reversed`` for the best direct connection, ``relayed``
when only circuits are open, None when not connected.  It also tells
listeners about connections opened and closed (reachability checks and
relay renewal wake on them).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from multiaddr import Multiaddr

from node.reach import Path

log = logging.getLogger("cpn.p2p.paths")

__all__ = ["HolePunch", "PathTracker", "ListenView", "is_relayed", "remote_ip", "announced_addrs"]

#: best first: what ``path(peer)`` reports when several connections are open
_RANK: dict[Path, int] = {"direct": 0, "hole-punched": 1, "reversed": 2, "relayed": 3}
AUTO_DRIVE_S = 2.0  #: how often peers connected through a relay only are looked for (as py-libp2p)
UNILATERAL_DIAL_S = 3.0  #: the plain dial of a peer's announced addresses before a DCUtR exchange
MAX_SESSIONS = 16  #: hole punches this node initiates at once (each: a stream and a few dials)


def is_relayed(conn: Any) -> bool:
    """A connection through a relay (py-libp2p marks it in two ways)."""
    try:
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses() or [])
    except Exception:  # noqa: BLE001 - a closing connection may raise anything
        return False


def announced_addrs(host: Any, peer: ID) -> list[Multiaddr]:
    """The addresses ``peer`` announces in its signed peer record (identify
    brings it); none when we hold no record, or a malformed one."""
    try:
        envelope = host.get_peerstore().get_peer_record(peer)
        return list(envelope.record().addrs) if envelope else []
    except Exception:  # noqa: BLE001 - a malformed record just means "not announced"
        return []


def _dialled(conn: Any) -> bool:
    """Whether we dialled ``conn`` (unknown: we did).  Of a relayed connection,
    the side that was dialled starts the hole punch (as the DCUtR spec has
    it): when both start at once, their simultaneous dials from the same
    listen ports collide and the first round fails (5 s lost, or more)."""
    try:
        return bool(conn.muxed_conn.is_initiator)
    except Exception:  # noqa: BLE001 - a closing connection may raise anything
        return True


_UNKNOWN = object()


def remote_ip(conn: Any) -> str | None:
    """The remote IP of a direct connection (None for a relayed or unknown one).

    Remembered on the connection once py-libp2p knows its path (a connection
    never changes path or peer address; an inbound relayed one reads as
    "unknown" until the relay protocol tags it): the NAT loop asks for
    every connection's, and turning each one's multiaddrs into text was a
    fifth of an idle daemon's CPU in a 60-node full mesh."""
    known = getattr(conn, "_cpn_remote_ip", _UNKNOWN)
    if known is not _UNKNOWN:
        return known  # type: ignore[return-value]
    ip: str | None = None
    if not is_relayed(conn):
        try:
            remote = conn.muxed_conn.get_remote_address()
        except Exception:  # noqa: BLE001
            return None
        ip = str(remote[0]) if remote else None
    if _path_known(conn):
        conn._cpn_remote_ip = ip
    return ip


def _path_known(conn: Any) -> bool:
    """py-libp2p has told direct from relayed (an inbound relayed connection is
    "unknown" until the relay protocol tags it)."""
    try:
        return conn.get_connection_type() in (ConnectionType.DIRECT, ConnectionType.RELAYED)
    except Exception:  # noqa: BLE001 - a closing connection may raise anything
        return False



class ListenView:
    """The host as DCUtR must see it: ``get_addrs`` = our real listen addresses."""

    def __init__(self, host: IHost) -> None:
        self._host = host

    def get_addrs(self) -> list[Multiaddr]:
        me = Multiaddr(f"/p2p/{self._host.get_id()}")
        return [a.encapsulate(me) for a in self._host.get_transport_addrs()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class HolePunch(DCUtRProtocol):
    """DCUtR that remembers which peers it is punching to right now."""

    def __init__(self, host: IHost) -> None:
        super().__init__(ListenView(host))  # type: ignore[arg-type]  # duck-typed host
        host._dcutr_protocol = self  # type: ignore[attr-defined]  # disconnect hook
        self.punching: Counter[ID] = Counter()
        self.tries: Counter[ID] = Counter()  #: hole punches (either role) that ended, per peer
        self.listeners: list[Callable[[str, bool], None]] = []  #: (peer, direct) after a punch
        #: id(open relayed connection) -> its peer (kept by :class:`PathTracker`)
        self.relayed: dict[int, ID] = {}
        self._any_relayed = trio.Event()  #: set when :attr:`relayed` gains an entry
        #: hole punch sessions under way with each peer, either role (:meth:`under_way`)
        self.sessions: Counter[ID] = Counter()
        #: told (peer) when a session (or a kicked task) ends, whatever its outcome
        self.session_listeners: list[Callable[[str], None]] = []
        self._driving: set[ID] = set()  #: peers an initiating task of ours is running for
        self._limit = trio.CapacityLimiter(MAX_SESSIONS)

    def under_way(self, peer: str) -> bool:
        """Whether a hole punch with ``peer`` is under way (we initiated it, or
        it did) or about to start (:meth:`kick`)."""
        pid = ID.from_base58(peer)
        return pid in self._driving or self.sessions.get(pid, 0) > 0

    def kick(self, peer_id: ID) -> None:
        """Start a hole punch to ``peer_id`` now, in the service's nursery (a
        relayed-only connection to it just opened).  Nothing when one of ours
        is running already, its attempts are spent, or the service is not
        running."""
        if self._nursery is None or peer_id in self._driving:
            return
        if peer_id in self._direct_connections:
            return
        if self._hole_punch_attempts.get(peer_id, 0) >= MAX_HOLE_PUNCH_ATTEMPTS:
            return
        self._driving.add(peer_id)
        self._nursery.start_soon(self._drive, peer_id)

    async def _drive(self, peer_id: ID) -> None:
        try:
            async with self._limit:
                if peer_id in self.relayed.values():  # still relayed only?
                    await self.initiate_hole_punch(peer_id)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - best effort, as py-libp2p's loop
            log.debug("hole punch to %s: %r", peer_id, exc)
        finally:
            self._driving.discard(peer_id)
            self._tell_ended(peer_id)

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        async with self._session(peer_id):
            return await super().initiate_hole_punch(peer_id)

    async def _handle_dcutr_stream(self, stream: INetStream) -> None:
        try:
            peer_id = stream.muxed_conn.peer_id
        except Exception:  # noqa: BLE001 - a closing stream: py-libp2p's handler copes
            await super()._handle_dcutr_stream(stream)
            return
        async with self._session(peer_id):
            await super()._handle_dcutr_stream(stream)

    @asynccontextmanager
    async def _session(self, peer_id: ID) -> AsyncIterator[None]:
        self.sessions[peer_id] += 1
        try:
            yield
        finally:
            self.sessions[peer_id] -= 1
            if self.sessions[peer_id] <= 0:
                del self.sessions[peer_id]
            self._tell_ended(peer_id)

    def _tell_ended(self, peer_id: ID) -> None:
        for fn in self.session_listeners:
            fn(str(peer_id))

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        """A plain dial before the DCUtR exchange (its step 0), to the direct
        addresses ``peer_id`` announces in its signed peer record only (a
        private peer announces none: nothing to try), for UNILATERAL_DIAL_S."""
        addrs = [a for a in announced_addrs(self.host, peer_id) if "/p2p-circuit" not in str(a)]
        if not addrs:
            return False
        with trio.move_on_after(UNILATERAL_DIAL_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(self._dial_peer, peer_id, addr)
        return await self._verify_direct_connection(peer_id)

    async def _auto_drive_loop(self) -> None:
        """py-libp2p's loop: every :data:`AUTO_DRIVE_S`, start a hole punch to
        each peer connected through a relay only (a peer that never initiates
        would otherwise wait forever).  It found them by turning every
        connection's addresses into strings every 2 s; with 60 peers that was
        a large part of an idle daemon's CPU.  This one reads the relayed
        connections :class:`PathTracker` saw open (usually none), and runs
        each peer's punch in a task of its own (py-libp2p awaited them one
        after another).  It retries: a first punch starts at once
        (:meth:`kick`, from :class:`PathTracker`).  With no relayed connection
        it sleeps until one opens: a public node's loop never wakes."""
        while True:
            while not self.relayed:
                self._any_relayed = trio.Event()
                await self._any_relayed.wait()
            await trio.sleep(AUTO_DRIVE_S)
            for peer_id in list(dict.fromkeys(self.relayed.values())):
                if peer_id not in self._in_progress:
                    self.kick(peer_id)

    def add_relayed(self, conn: object, peer: ID) -> None:
        """A relayed connection to ``peer`` opened (:class:`PathTracker`)."""
        self.relayed[id(conn)] = peer
        self._any_relayed.set()

    def on_peer_disconnected(self, peer_id: ID) -> None:
        super().on_peer_disconnected(peer_id)
        self.tries.pop(peer_id, None)  # bounded by the peers connected now

    async def _perform_hole_punch(
        self, peer_id: ID, addrs: list[Multiaddr], as_responder: bool = False
    ) -> bool:
        self.punching[peer_id] += 1
        ok = False
        try:
            ok = await super()._perform_hole_punch(peer_id, addrs, as_responder)
        finally:
            self.punching[peer_id] -= 1
            if self.punching[peer_id] <= 0:
                del self.punching[peer_id]
            self.tries[peer_id] += 1
            for fn in self.listeners:
                fn(str(peer_id), ok)
        log.info("hole punch to %s %s", peer_id, "succeeded" if ok else "failed")
        return ok


class PathTracker(INotifee):
    """How each open connection was made; wakes listeners on connection changes."""

    def __init__(self, host: IHost, punch: HolePunch, is_public: Callable[[], bool]) -> None:
        self._host = host
        self._network = host.get_network()
        self._punch = punch
        self._is_public = is_public
        self._kinds: dict[int, Path] = {}  #: id(direct connection) -> how it came about
        self.listeners: list[Callable[[str, bool], None]] = []  #: (peer, connected)

    def path(self, peer: str) -> Path | None:
        conns = self._network.get_connections(ID.from_base58(peer))
        best: Path | None = None
        for conn in conns:
            kind: Path = "relayed" if is_relayed(conn) else self._kinds.get(id(conn), "direct")
            if best is None or _RANK[kind] < _RANK[best]:
                best = kind
        return best

    def paths(self) -> dict[str, Path]:
        out = {}
        for pid in list(self._network.connections):
            p = self.path(str(pid))
            if p is not None:
                out[str(pid)] = p
        return out

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if is_relayed(conn):
            self._punch.add_relayed(conn, peer)
            if not _dialled(conn) and all(is_relayed(c) for c in network.get_connections(peer)):
                self._punch.kick(peer)  # relayed only: try for a direct connection now
        else:
            others = [c for c in network.get_connections(peer) if c is not conn]
            if not any(is_relayed(c) for c in others):
                kind: Path = "direct"
            elif self._punch.punching.get(peer) and not self._plain_dial(peer, conn):
                kind = "hole-punched"
            else:
                kind = "reversed"
            self._kinds[id(conn)] = kind
            if kind != "direct":
                log.info("direct connection to %s (%s)", peer, kind)
        self._tell(str(peer), True)

    def _plain_dial(self, peer: ID, conn: INetConn) -> bool:
        """During a DCUtR session, was this connection an ordinary dial (we are
        public and were dialled, or we dialled an address the peer announces in
        its signed peer record: DCUtR's predicted addresses are not in it)?"""
        if self._is_public():
            return True
        announced = {str(a) for a in announced_addrs(self._host, peer)}
        try:
            return any(str(a) in announced for a in conn.get_transport_addresses())
        except Exception:  # noqa: BLE001 - a closing connection may raise anything
            return False

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._kinds.pop(id(conn), None)
        self._punch.relayed.pop(id(conn), None)
        self._tell(str(conn.muxed_conn.peer_id), False)

    def _tell(self, peer: str, up: bool) -> None:
        for fn in self.listeners:
            fn(peer, up)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None
