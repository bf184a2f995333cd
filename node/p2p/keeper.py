"""A private node's relay slots: reserve on a few relays, renew, replace lost ones.

:class:`RelayKeeper` holds ``want`` reservations while the node needs them
(private, or behind a NAT AutoNAT has not ruled on yet): bootstrap nodes
first, then other public peers that speak the relay's HOP protocol (peers we
are connected to, then peers in the kad routing table; when none is left, a
DHT lookup finds more, at most every :data:`LOOKUP_GAP_S`).  Each slot is renewed
a quarter of its lifetime (at least a minute) before it expires; py-libp2p's
own refresher is not used (it spins when a relay's TTL is 30 s or less: here
no wait is shorter than :data:`MIN_SLEEP_S`).  A relay whose connection is
gone loses its slot at once (the reservation is only valid while connected)
and another relay is reserved; a relay that failed or refused us is not
asked again until its back-off ends (2 s, doubling per failure in a row, at
most 5 minutes: :class:`node.reach.RelayBook`).  Connections to held relays are protected
from py-libp2p's connection trimming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.exceptions import BaseLibp2pError
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.addrs import split_peer
from node.p2p.paths import remote_ip
from node.p2p.relay import HOP_PROTOCOL, RelayRefused, Reservation, reserve
from node.reach import (
    RelayBook,
    RelayChoice,
    Scope,
    addr_scope,
    choose_relays,
    circuit_addr,
    ip_scope,
    is_circuit,
)

log = logging.getLogger("cpn.p2p.relay")

__all__ = ["RelayKeeper", "MIN_SLEEP_S"]

MIN_SLEEP_S = 10.0  #: never renew or retry more often than this
MAX_SLEEP_S = 300.0
RETRY_S = 10.0  #: while fewer relays are held than wanted
DIAL_TIMEOUT = 5.0
MAX_ATTEMPTS = 4  #: relays tried per round
LOOKUP_GAP_S = 30.0  #: at most one DHT lookup for more relays this often
_TAG = "cpn-relay"


@dataclass(frozen=True)
class Held:
    reservation: Reservation
    reserved_at: float
    circuits: tuple[str, ...]  #: ``<relay addr>/p2p/<relay>/p2p-circuit``

    @property
    def renew_at(self) -> float:
        ttl = self.reservation.expires - self.reserved_at
        return self.reservation.expires - max(60.0, ttl / 4)


class RelayKeeper:
    """Reservations on ``want`` relays while ``needs()`` says so."""

    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        *,
        want: int,
        bootstrap: Sequence[str],
        needs: Callable[[], bool],
        changed: Callable[[], None],
    ) -> None:
        self.host = host
        self.dht = dht
        self.want = want
        self.held: dict[str, Held] = {}
        self.book = RelayBook()
        self._needs = needs
        self._changed = changed
        self._bootstrap: dict[str, str] = {}
        for a in bootstrap:
            transport, peer = split_peer(a)
            if peer and transport:
                self._bootstrap[peer] = transport
        self._wake = trio.Event()
        self._round = trio.Event()  #: set (and replaced) after each round of tending
        self._next_lookup = 0.0  #: monotonic time of the next DHT lookup for relays

    def circuit_addrs(self) -> list[str]:
        return [c for h in self.held.values() for c in h.circuits]

    def relays(self) -> list[str]:
        return list(self.held)

    def wake(self) -> None:
        self._wake.set()

    def connection_changed(self, peer: str, up: bool) -> None:
        if (not up and peer in self.held) or (up and len(self.held) < self.want and self._needs()):
            self._wake.set()

    async def wait_round(self) -> None:
        """Return after the next round of reserving and renewing (not hastening it)."""
        await self._round.wait()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self._sleep_s()):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._tend()
            self._round.set()
            self._round = trio.Event()

    def _sleep_s(self) -> float:
        if not self._needs():
            return MAX_SLEEP_S
        if len(self.held) < self.want:
            retry = self.book.next_retry(time.time())
            return RETRY_S if retry is None else min(RETRY_S, max(0.5, retry))
        due = min(h.renew_at for h in self.held.values()) - time.time()
        return min(MAX_SLEEP_S, max(MIN_SLEEP_S, due))

    def _connected(self, peer: str) -> bool:
        return bool(self.host.get_network().get_connections(ID.from_base58(peer)))

    async def _tend(self) -> None:
        changed = False
        if not self._needs():
            if self.held:
                for relay in list(self.held):
                    self._drop(relay)
                self._changed()
            return
        now = time.time()
        for relay, held in list(self.held.items()):
            if not self._connected(relay) or held.reservation.expires <= now:
                log.info("relay %s gone: its slot is lost", relay)
                self._drop(relay)
                self.book.failed(relay, now)
                changed = True
            elif held.renew_at <= now:
                changed |= await self._renew(relay)
        if len(self.held) < self.want:
            changed |= await self._reserve_more(now)
            if len(self.held) < self.want and time.monotonic() >= self._next_lookup:
                # Out of relays we know of: ask the DHT for more peers, then try again.
                self._next_lookup = time.monotonic() + LOOKUP_GAP_S
                with trio.move_on_after(DIAL_TIMEOUT * 2):
                    try:
                        await self.dht.refresh_routing_table()
                    except (BaseLibp2pError, OSError) as exc:
                        log.debug("routing table refresh failed: %r", exc)
                changed |= await self._reserve_more(time.time())
        if changed:
            self._changed()

    async def _reserve_more(self, now: float) -> bool:
        changed, tried = False, 0
        for relay in choose_relays(self._candidates(), holding=self.held, book=self.book,
                                   now=now, want=self.want):
            if len(self.held) >= self.want or tried >= MAX_ATTEMPTS:
                break
            tried += 1
            changed |= await self._attempt(relay)
        return changed

    def _drop(self, relay: str) -> None:
        self.held.pop(relay, None)
        self.host.get_network().unprotect(ID.from_base58(relay), _TAG)

    async def _renew(self, relay: str) -> bool:
        try:
            res = await reserve(self.host, relay)
        except (RelayRefused, BaseLibp2pError, OSError, trio.TooSlowError) as exc:
            log.info("relay %s did not renew our slot: %s", relay, exc or "timed out")
            self._drop(relay)
            self.book.failed(relay, time.time())
            return True
        old = self.held[relay]
        self.held[relay] = Held(res, time.time(), old.circuits)
        return False

    async def _attempt(self, relay: str) -> bool:
        rid = ID.from_base58(relay)
        try:
            if not self._connected(relay):
                addrs = [multiaddr.Multiaddr(self._bootstrap[relay])] if relay in self._bootstrap else []
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.host.connect(PeerInfo(rid, addrs))
            res = await reserve(self.host, relay)
        except (RelayRefused, BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
            log.info("no slot on relay %s: %s", relay, exc or "timed out")
            self.book.failed(relay, time.time())
            return False
        circuits = self._circuits_for(relay, res)
        if not circuits:
            log.info("relay %s sent no address we could announce", relay)
            self.book.failed(relay, time.time())
            return False
        self.book.succeeded(relay)
        self.held[relay] = Held(res, time.time(), circuits)
        self.host.get_network().protect(rid, _TAG)
        log.info("reserved a slot on relay %s until %d: %s", relay, res.expires, ", ".join(circuits))
        return True

    def _circuits_for(self, relay: str, res: Reservation) -> tuple[str, ...]:
        """Our circuit addresses through ``relay``: its public addresses as it sent
        them, else the address we reached it at."""
        transports = [split_peer(a)[0] for a in res.relay_addrs if not is_circuit(a)]
        public = [t for t in transports if addr_scope(t) is Scope.PUBLIC]
        if not public:
            for conn in self.host.get_network().get_connections(ID.from_base58(relay)):
                ip = remote_ip(conn)
                if ip is not None and ip_scope(ip) is Scope.PUBLIC:
                    public += [str(a) for a in conn.get_transport_addresses()
                               if addr_scope(str(a)) is Scope.PUBLIC]
            if relay in self._bootstrap:
                public.append(self._bootstrap[relay])
        return tuple(dict.fromkeys(circuit_addr(t, relay) for t in public))

    def _candidates(self) -> list[RelayChoice]:
        """Bootstrap nodes, then connected public peers that may speak HOP, then
        routing-table peers that may."""
        out = [RelayChoice(p, True) for p in self._bootstrap if p != str(self.host.get_id())]
        store = self.host.get_peerstore()

        def speaks_hop(pid: ID) -> bool:
            """Known to speak HOP, or not identified yet (a reservation will tell)."""
            try:
                protocols = store.get_protocols(pid) or []
            except (BaseLibp2pError, KeyError, ValueError):
                protocols = []
            return not protocols or str(HOP_PROTOCOL) in protocols

        for pid, conns in list(self.host.get_network().connections.items()):
            ips = [ip for ip in (remote_ip(c) for c in conns) if ip is not None]
            if any(ip_scope(ip) is Scope.PUBLIC for ip in ips) and speaks_hop(pid):
                out.append(RelayChoice(str(pid), False))
        for pid in self.dht.routing_table.get_peer_ids():
            if speaks_hop(pid):
                out.append(RelayChoice(str(pid), False))
        return out
