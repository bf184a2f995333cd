"""Hole punching (DCUtR) and the path each connection took.

:class:`HolePunch` is py-libp2p's DCUtR service on every node: it upgrades a
relayed connection to a direct one by itself (every 2 s it looks for peers
connected only through a relay): first by a plain dial of the peer's direct
addresses (the peer is dialable: a "reversed" connection), else by the
DCUtR exchange and a TCP simultaneous open (a "hole-punched" connection).
It marks the peers it is punching to so :class:`PathTracker` can tell the
two apart.

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
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from multiaddr import Multiaddr

from node.reach import Path

log = logging.getLogger("cpn.p2p.paths")

__all__ = ["HolePunch", "PathTracker", "ListenView", "is_relayed", "remote_ip"]

#: best first: what ``path(peer)`` reports when several connections are open
_RANK: dict[Path, int] = {"direct": 0, "hole-punched": 1, "reversed": 2, "relayed": 3}
AUTO_DRIVE_S = 2.0  #: how often peers connected through a relay only are looked for (as py-libp2p)


def is_relayed(conn: Any) -> bool:
    """A connection through a relay (py-libp2p marks it in two ways)."""
    try:
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses() or [])
    except Exception:  # noqa: BLE001 - a closing connection may raise anything
        return False


def remote_ip(conn: Any) -> str | None:
    """The remote IP of a direct connection (None for a relayed or unknown one)."""
    if is_relayed(conn):
        return None
    try:
        remote = conn.muxed_conn.get_remote_address()
    except Exception:  # noqa: BLE001
        return None
    return str(remote[0]) if remote else None


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

    async def _auto_drive_loop(self) -> None:
        """py-libp2p's loop: every :data:`AUTO_DRIVE_S`, start a hole punch to
        each peer connected through a relay only (a peer that never initiates
        would otherwise wait forever).  It found them by turning every
        connection's addresses into strings every 2 s; with 60 peers that was
        a large part of an idle daemon's CPU.  This one reads the relayed
        connections :class:`PathTracker` saw open (usually none)."""
        while True:
            await trio.sleep(AUTO_DRIVE_S)
            for peer_id in list(dict.fromkeys(self.relayed.values())):
                if peer_id in self._in_progress or peer_id in self._direct_connections:
                    continue
                if self._hole_punch_attempts.get(peer_id, 0) >= MAX_HOLE_PUNCH_ATTEMPTS:
                    continue
                try:
                    await self.initiate_hole_punch(peer_id)
                except trio.Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - best effort, as py-libp2p's loop
                    log.debug("hole punch to %s: %r", peer_id, exc)

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
            self._punch.relayed[id(conn)] = peer
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
        try:
            envelope = self._host.get_peerstore().get_peer_record(peer)
            announced = {str(a) for a in envelope.record().addrs} if envelope else set()
            return any(str(a) in announced for a in conn.get_transport_addresses())
        except Exception:  # noqa: BLE001 - a malformed record just means "not announced"
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
