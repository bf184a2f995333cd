"""NAT traversal for one host: reachability, announced addresses, relays, hole punching.

:class:`NatService` is created with the host (before it listens) and runs
beside it.  It owns:

* **Reachability** (:attr:`NatService.reach`, a :class:`node.reach.Reachability`):
  AutoNAT with a real dial-back (:mod:`node.p2p.autonat`) asked of up to four
  directly connected peers in parallel (public ones when any peer reaches us
  from the internet), majority verdict; re-checked every
  :data:`RECHECK_S`, when more servers appear after a check with fewer than
  three answers, and when the public IP peers see us at changes.  Identify's
  observed addresses give the public IP and the NAT type (see
  :func:`node.reach.nat_type`).
* **Announced addresses**: ``host.get_addrs()`` (what identify, kad provider
  records and peer records spread) is replaced by :func:`node.reach.announce`
  over the live connections, so a private address never reaches a peer
  outside its network and a private node announces its relay circuits
  (``/ip4/R/tcp/P/p2p/RELAY/p2p-circuit/p2p/ME``, which py-libp2p's own
  ``get_addrs`` would mangle).  Identify is served from the same list (its
  fallback to raw listen addresses when the list is empty is closed off).
  Peers are told of changes by identify push; ``on_change`` callbacks (the
  advert) too.
* **kad mode**: a private node is a kad client (no kad handler: nobody should
  keep an undialable node in its routing table); public or unknown: server.
* **Relays** (:class:`RelayKeeper` in :mod:`node.p2p.keeper`): a public node
  offers circuit relay v2 (``[relay] enabled``); a private node holds slots on
  ``[relay] reservations`` relays and replaces one that goes away.
* **Hole punching** and the path of each connection (:mod:`node.p2p.paths`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.exceptions import BaseLibp2pError
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL
from libp2p.identity.identify.identify import identify_handler_for
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from node.addrs import split_peer
from node.p2p.autonat import AUTONAT_PROTOCOL, DialBackAutoNAT
from node.p2p.keeper import RelayKeeper
from node.p2p.paths import HolePunch, PathTracker, remote_ip
from node.p2p.relay import Relay
from node.reach import (
    DialBack,
    Observation,
    Path,
    Reachability,
    RelayPolicy,
    Scope,
    Status,
    addr_ip,
    addr_port,
    announce,
    audience_of,
    choose_servers,
    ip_scope,
    nat_type,
    public_ip,
    verdict,
)
from protocol.kademlia_core import jittered

log = logging.getLogger("cpn.p2p.nat")

__all__ = ["NatService", "RECHECK_S"]

RECHECK_S = 600.0  #: AutoNAT again after this long
#: ... scaled by a random factor in [0.75, 1.25] per check: every re-check is
#: a dial-back (a new connection and handshake) from up to four peers, and 60
#: daemons started together would otherwise all re-check in the same minute
RECHECK_JITTER = 0.25
TICK_S = 5.0  #: look at connections, identify's observations and the routing table this often
#: and redo the work (reachability, pruning kad clients, AutoNAT's due check)
#: when one of them changed, or at least this often: with 60 peers the work
#: costs milliseconds (multiaddr parsing per connection), so doing it every
#: TICK_S on every daemon was a visible part of an idle testnet's CPU
FULL_TICK_S = 60.0
MIN_RECHECK_GAP_S = 5.0  #: a check triggered by new servers waits at least this long
GOOD_SERVERS = 3  #: answers wanted before a verdict is left alone until RECHECK_S
KAD_PROTOCOL = "/ipfs/kad/1.0.0"


class _AnnounceView:
    """The host as identify sees it: both address lists are the announced one
    (py-libp2p's identify sends raw listen addresses when ``get_addrs`` is empty)."""

    def __init__(self, host: IHost) -> None:
        self._host = host

    def get_transport_addrs(self) -> list[Multiaddr]:
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class NatService:
    """Reachability, announced addresses, relays and hole punching for ``host``."""

    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        *,
        policy: RelayPolicy,
        bootstrap: Sequence[str],
        register_kad: Callable[[], None],
    ) -> None:
        self.host = host
        self.dht = dht
        self.me = str(host.get_id())
        self.relay_enabled = policy.enabled
        self._register_kad = register_kad
        self._bootstrap_ips = [ip for ip in (addr_ip(split_peer(a)[0]) for a in bootstrap) if ip]
        self.autonat = DialBackAutoNAT(host)
        self.relay = Relay(host, policy)
        self.punch = HolePunch(host)
        self.tracker = PathTracker(host, self.punch, lambda: self.status == "public")
        host.get_network().register_notifee(self.tracker)
        self.keeper = RelayKeeper(host, dht, want=policy.reservations, bootstrap=bootstrap,
                                  needs=self.needs_relays, changed=self._recompute)
        self.reach = Reachability()
        self.status: Status = "unknown"
        self._verified: tuple[str, ...] = ()
        self._checked_at: float | None = None
        self._recheck_s = RECHECK_S  #: this time (see RECHECK_JITTER)
        self._asked = 0
        self._checked_ip: str | None = None
        self.on_change: list[Callable[[Reachability], None]] = []
        self._wake = trio.Event()
        self._checked = trio.Event()  #: set (and replaced) after each AutoNAT check
        self._nursery: trio.Nursery | None = None
        self._pushing = False
        self._as_multiaddrs: tuple[tuple[str, ...], list[Multiaddr]] = ((), [])
        self.tracker.listeners.append(self._on_connection)
        # What every peer learns about us, from here on:
        host.get_addrs = self._libp2p_addrs  # type: ignore[method-assign]
        view = _AnnounceView(host)
        host.set_stream_handler(IDENTIFY_PROTOCOL, identify_handler_for(view))  # type: ignore[arg-type]
        self._view = view
        self._recompute()

    # ---- what others use

    def announced(self) -> list[str]:
        """Addresses peers should dial us at (no ``/p2p/<us>`` suffix)."""
        return list(self.reach.addrs)

    def path(self, peer: str) -> Path | None:
        return self.tracker.path(peer)

    def _libp2p_addrs(self) -> list[Multiaddr]:
        """``host.get_addrs()`` from now on (kad calls it for every message it sends)."""
        addrs = self.reach.addrs
        if self._as_multiaddrs[0] != addrs:
            me = Multiaddr(f"/p2p/{self.me}")
            self._as_multiaddrs = (addrs, [Multiaddr(a).encapsulate(me) for a in addrs])
        return list(self._as_multiaddrs[1])

    # ---- running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[NatService]:
        """Run the relay, DCUtR, reachability and relay-keeping tasks."""
        async with background_trio_service(self.relay), background_trio_service(self.punch):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._check_loop)
                nursery.start_soon(self.keeper.run)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
                    self._nursery = None

    async def settle(self) -> None:
        """Return once we know how peers can reach us: a verdict from the peers we
        are connected to (none: nothing to wait for) and, when private, a relay
        slot (the caller bounds the wait).  Adverts published after this carry
        the right addresses from the start."""
        self._wake.set()
        if self._checked_at is None and self._servers():
            await self._checked.wait()
        if self.needs_relays():
            self.keeper.wake()
        while self.needs_relays() and not self.keeper.held:
            await self.keeper.wait_round()  # bounded by the caller's timeout

    def _on_connection(self, peer: str, up: bool) -> None:
        self._recompute()  # at once: identify may answer on this connection next
        self._wake.set()
        self.keeper.connection_changed(peer, up)

    # ---- the state

    def _direct_peers(self) -> dict[ID, str]:
        """Peers with a direct connection (py-libp2p's peer IDs, as objects: decoding
        them back from text for :meth:`_servers` was a sixth of a daemon's CPU
        while AutoNAT ran) -> the remote IP of one of them."""
        out: dict[ID, str] = {}
        for pid, conns in list(self.host.get_network().connections.items()):
            for conn in conns:
                ip = remote_ip(conn)
                if ip is not None:
                    out[pid] = ip
                    break
        return out

    def _observations(self) -> list[Observation]:
        """Identify's observed addresses of our live direct connections."""
        mgr = getattr(self.host, "_observed_addr_manager", None)
        table = getattr(mgr, "_conn_observations", None) or {}
        out = []
        for _local, ext, _group, ref in list(table.values()):
            conn = ref()
            ip, port, local = addr_ip(ext), addr_port(ext), _local_address(conn)
            if conn is None or ip is None or port is None or local is None:
                continue
            out.append(Observation(observer=str(conn.muxed_conn.peer_id), observed_ip=ip,
                                   observed_port=port, local_ip=local[0], local_port=local[1]))
        return out

    def _listen(self) -> list[str]:
        return [str(a) for a in self.host.get_transport_addrs()]

    def _recompute(self) -> None:
        """Rebuild :attr:`reach` from what is known now; tell listeners of a change."""
        peers = self._direct_peers()
        obs = self._observations()
        audience = audience_of(list(peers.values()) + self._bootstrap_ips)
        observed = [o.observed_ip for o in obs]
        unchecked = self._checked_at is None
        direct, relays = announce(
            self._listen(), audience=audience, status=self.status, verified=self._verified,
            observed_ips=observed, relay_addrs=self.keeper.circuit_addrs(),
            keep=self.reach.direct_addrs if unchecked else (),
        )
        new = Reachability(
            status=self.status, public_ip=public_ip(obs, self._verified), nat_type=nat_type(obs),
            direct_addrs=direct, relay_addrs=relays, servers=self._asked,
        )
        old, self.reach = self.reach, new
        if new != old:
            if new.addrs != old.addrs:
                log.info("announcing %s", ", ".join(new.addrs) or "no address")
                self._push_identify()
            if (new.status, new.nat_type) != (old.status, old.nat_type):
                log.info("reachability %s (NAT %s, public IP %s)", new.status, new.nat_type,
                         new.public_ip or "unknown")
                self.keeper.wake()
            for fn in self.on_change:
                fn(new)

    def needs_relays(self) -> bool:
        """Private, or behind a NAT that AutoNAT has not ruled on yet."""
        if self.status == "private":
            return True
        return self.status == "unknown" and self.reach.nat_type in ("eim", "symmetric")

    def _push_identify(self) -> None:
        if self._nursery is None or self._pushing:
            return
        self._pushing = True

        async def push() -> None:
            try:
                await trio.sleep(0.2)  # one push for a burst of changes
                with trio.move_on_after(10):
                    await push_identify_to_peers(self._view)  # type: ignore[arg-type]
            except (BaseLibp2pError, OSError) as exc:
                log.debug("identify push failed: %r", exc)
            finally:
                self._pushing = False

        self._nursery.start_soon(push)

    # ---- AutoNAT

    async def _check_loop(self) -> None:
        seen, full_at = None, -math.inf
        while True:
            with trio.move_on_after(TICK_S):
                await self._wake.wait()
            woken = self._wake.is_set()
            self._wake = trio.Event()
            inputs, now = self._inputs(), time.monotonic()
            if not woken and inputs == seen and now - full_at < FULL_TICK_S:
                continue  # nothing it depends on changed: nothing to redo
            seen, full_at = inputs, now
            self._recompute()
            self._prune_clients()
            servers = self._servers()
            if self._check_due(servers):
                await self._check(servers)

    def _inputs(self) -> tuple[object, ...]:
        """A cheap fingerprint of what :meth:`_check_loop` works from: the
        connections (by identity), identify's observations, the routing table."""
        conns = frozenset(id(c) for cs in list(self.host.get_network().connections.values()) for c in cs)
        mgr = getattr(self.host, "_observed_addr_manager", None)
        table = getattr(mgr, "_conn_observations", None) or {}
        observed = frozenset((k, v[1]) for k, v in list(table.items()))
        # Sets: the routing table reorders its buckets on every kad request (most
        # recently seen last), which changes nothing here and must not count.
        return conns, observed, frozenset(self.dht.routing_table.get_peer_ids())

    def _prune_clients(self) -> None:
        """Drop kad clients from our routing table.  py-libp2p adds every peer
        that sends us a kad request (a private node in client mode too), hands
        it out as a closer peer and queries it in lookups and ADD_PROVIDER,
        all of which fail; identify tells us which peers do not serve kad."""
        store = self.host.get_peerstore()
        for pid in self.dht.routing_table.get_peer_ids():
            try:
                protocols = store.get_protocols(pid) or []
            except (BaseLibp2pError, KeyError, ValueError):
                continue
            if protocols and KAD_PROTOCOL not in protocols:
                self.dht.routing_table.remove_peer(pid)

    def _servers(self) -> list[str]:
        """AutoNAT servers among the direct peers that do not say they lack it."""
        store = self.host.get_peerstore()
        usable = {}
        for pid, ip in self._direct_peers().items():
            try:
                protocols = store.get_protocols(pid)
            except (BaseLibp2pError, KeyError, ValueError):
                protocols = []
            if not protocols or AUTONAT_PROTOCOL in protocols:
                usable[str(pid)] = ip
        return choose_servers(usable)

    def _check_due(self, servers: list[str]) -> bool:
        if not servers:
            return False
        if self._checked_at is None:
            return True
        since = time.monotonic() - self._checked_at
        if since >= self._recheck_s:
            return True
        if since < MIN_RECHECK_GAP_S:
            return False
        if self._asked < GOOD_SERVERS and len(servers) > self._asked:
            return True
        return self.reach.public_ip is not None and self.reach.public_ip != self._checked_ip

    def _candidates(self, servers_local: bool) -> list[str]:
        """Addresses to have dialled back: our listen addresses (a wildcard one at
        each IP peers see us at) and every observed IP at each listen port."""
        listen = self._listen()
        ports = {p for p in (addr_port(a) for a in listen) if p is not None}
        ips = {o.observed_ip for o in self._observations()}
        if servers_local:
            ips |= {"127.0.0.1"}
        out = [a for a in listen if addr_ip(a) not in ("0.0.0.0", "::")]
        out += [f"/ip4/{ip}/tcp/{p}" for ip in sorted(ips) if ":" not in ip for p in sorted(ports)]
        return list(dict.fromkeys(out))

    async def _check(self, servers: list[str]) -> None:
        peers = {str(p): ip for p, ip in self._direct_peers().items()}
        local = all(ip_scope(peers.get(s, "")) is Scope.LOOPBACK for s in servers)
        cands = self._candidates(local)
        answers: list[DialBack] = []

        async def ask(server: str) -> None:
            answers.append(await self.autonat.ask(server, cands))

        async with trio.open_nursery() as nursery:
            for s in servers:
                nursery.start_soon(ask, s)
        self._checked_at = time.monotonic()
        self._recheck_s = jittered(RECHECK_S, random.random, RECHECK_JITTER)
        self._checked_ip = self.reach.public_ip
        answered = [a for a in answers if a.ok is not None]
        self._asked = len(answered)
        status, verified = verdict(answers)
        log.debug("AutoNAT: %s from %s", status, [(a.server[-6:], a.ok) for a in answers])
        if status != "unknown" or not answered:
            self._set_status(status if answered else self.status, verified)
        self._recompute()
        self._checked.set()
        self._checked = trio.Event()

    def _set_status(self, status: Status, verified: tuple[str, ...]) -> None:
        self.status, self._verified = status, verified
        if status == "private" and self.dht.mode == DHTMode.SERVER:
            self.dht.mode = DHTMode.CLIENT
            self.host.remove_stream_handler(KAD_PROTOCOL)  # type: ignore[arg-type]
            log.info("kad client mode (not reachable)")
        elif status == "public" and self.dht.mode == DHTMode.CLIENT:
            self.dht.mode = DHTMode.SERVER
            self._register_kad()
            log.info("kad server mode")
        if status == "public" and not self.reach.addrs and self._nursery is not None:
            self._nursery.start_soon(self._rejoin)
        self.relay.offer(status == "public" and self.relay_enabled)

    async def _rejoin(self) -> None:
        """We were announcing no address until now: the peers we queried could not
        put us in their routing tables.  Once identify push has told them our
        address, query them again (a routing-table refresh) so they do."""
        await trio.sleep(1.0)
        with trio.move_on_after(30):
            try:
                await self.dht.refresh_routing_table()
            except (BaseLibp2pError, OSError) as exc:
                log.debug("routing table refresh failed: %r", exc)


def _local_address(conn: Any) -> tuple[str, int] | None:
    """The local (ip, port) of a direct connection's socket, through py-libp2p's layers."""
    obj, seen = conn, 0
    names = ("muxed_conn", "secured_conn", "conn", "read_writer", "read_write_closer", "stream",
             "socket")
    while obj is not None and seen < 10:
        seen += 1
        getsockname = getattr(obj, "getsockname", None)
        if callable(getsockname):
            try:
                ip, port = getsockname()[:2]
                return str(ip), int(port)
            except (OSError, ValueError, TypeError):
                return None
        obj = next((getattr(obj, n) for n in names if getattr(obj, n, None) is not None), None)
    return None
