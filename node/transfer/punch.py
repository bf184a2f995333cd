"""The ``punch`` data path: a birthday-paradox TCP punch across a symmetric NAT.

DCUtR cannot connect a symmetric NAT to a port-restricted EIM NAT (the
symmetric side's port for a new destination is random, so neither side can
aim at it).  Both sides then share only a relayed libp2p connection, and bulk
data crawls through the relay.  This module punches a raw TCP connection
instead (spec/transfer.md section 3.7, sans-IO parts in
:mod:`protocol.transfer_punch`): the symmetric side (*sprayer*) opens
SPRAY_SOCKETS connections to the EIM side's one mapped ``ip:port``; the EIM
side (*prober*) sends SYNs from that port to random ports of the sprayer's
public IP, PROBES_PER_ROUND per round; a probe that lands on one of the
sprayer's mapped ports is a TCP connection through both NATs.

The winning socket is handed to the data plane exactly like a TCP data
connection (holder: :meth:`DataPlaneServer.serve_socket`; fetcher: the
client's ``SourceFetch``), so the preamble, the ticket and the frame keys
authenticate it: a stray connection that happened to match is refused there.
The fetcher falls back to the next path of the ticket (the relayed stream)
when the punch fails: refused, or no connection found within PUNCH_S twice
(PUNCH_TRIES; one try misses about one time in a hundred).

Bounds (spec §3.7): a holder punches only for a peer holding a live ticket
that peer was issued, only while the peer's only connection is relayed, at
most one punch per peer at a time and :class:`PunchLimits` per minute, in
all as well as per peer; SYNs go only to the single public IP the peer
names (never a private or loopback one, never our own), at most MAX_PROBES
per punch.  Every socket of a punch is closed when it ends, except the
winner.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.p2p import FramedStream, P2PHost, StreamClosed
from node.reach import Scope, ip_scope
from node.transfer.dataplane_server import DataPlaneServer
from node.transfer.fetch import CONTROL_TIMEOUT
from node.transfer.guard import PeerLog
from protocol.envelope import open_envelope, seal
from protocol.errors import ProtocolError
from protocol.transfer import (
    CONTROL_LIMITS,
    MAX_CONTROL_FRAME,
    PROBE_ROUNDS,
    PROBES_PER_ROUND,
    PUNCH_PROTOCOL_ID,
    PUNCH_S,
    ROLE_PROBE,
    ROLE_SPRAY,
    ROUND_S,
    SPRAY_SOCKETS,
    PunchGo,
    PunchReply,
    PunchRequest,
    Ticket,
    TransferError,
    complementary,
    probe_ports,
    punch_role,
)
from protocol.wire import Message

__all__ = ["PunchService", "PunchFailed", "PunchLimits", "PunchGate", "racing", "Race"]

log = logging.getLogger("cpn.transfer.punch")

BUSY_RUNNING = "too many punches running"
#: tries of a punch whose race found no connection (fresh random ports each), before the relay
PUNCH_TRIES = 2

#: makes the unbound TCP/IPv4 sockets of a punch (tests: one in another network namespace)
SocketFactory = Callable[[], socket.socket]


def _tcp4() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class PunchFailed(ConnectionError):
    """No punched connection (the fetcher moves on to the ticket's next path)."""


@dataclass(frozen=True)
class PunchLimits:
    """How many punches run, per peer and in all (each holds up to ~400 sockets)."""

    per_peer: int = 1  #: at the same time, per peer
    total: int = 2  #: at the same time, in all (either role, either side)
    #: started in any 60 s, per peer (a job's fetch punches once per blob: layers, inputs, outputs)
    per_peer_per_min: int = 12
    total_per_min: int = 48  #: started in any 60 s, in all


class PunchGate:
    """Admission of punches under :class:`PunchLimits` (``now``: seconds, monotonic)."""

    def __init__(self, limits: PunchLimits | None = None, now: Callable[[], float] = trio.current_time) -> None:
        self.limits = limits or PunchLimits()
        self._now = now
        self._running: collections.Counter[str] = collections.Counter()
        self._started: dict[str, collections.deque[float]] = {}
        self._all: collections.deque[float] = collections.deque()
        self._ended = trio.Event()  #: set (and replaced) whenever a punch ends

    def refusal(self, peer: str) -> str | None:
        """Why a punch for ``peer`` cannot start now (None: it can)."""
        now, lim = self._now(), self.limits
        self._expire(now)
        if self._running[peer] >= lim.per_peer or sum(self._running.values()) >= lim.total:
            return BUSY_RUNNING
        if len(self._started.get(peer, ())) >= lim.per_peer_per_min or len(self._all) >= lim.total_per_min:
            return "too many punches this minute"
        return None

    @contextlib.contextmanager
    def hold(self, peer: str) -> Iterator[None]:
        """Run one punch for ``peer`` (raises ProtocolError ``busy`` if refused)."""
        why = self.refusal(peer)
        if why is not None:
            raise ProtocolError("busy", why)
        now = self._now()
        self._started.setdefault(peer, collections.deque()).append(now)
        self._all.append(now)
        self._running[peer] += 1
        try:
            yield
        finally:
            self._running[peer] -= 1
            if not self._running[peer]:
                del self._running[peer]
            self._ended.set()
            self._ended = trio.Event()

    @contextlib.asynccontextmanager
    async def turn(self, peer: str, patience: float) -> AsyncIterator[None]:
        """:meth:`hold` once fewer punches run than the limits allow, waiting at
        most ``patience`` seconds for that (a fetcher's parallel fetches from one
        holder take turns); the per-minute limits are not waited for."""
        with trio.move_on_after(patience):
            while self.refusal(peer) == BUSY_RUNNING:
                await self._ended.wait()
        with self.hold(peer):
            yield

    def _expire(self, now: float) -> None:
        while self._all and self._all[0] <= now - 60:
            self._all.popleft()
        for peer in list(self._started):
            times = self._started[peer]
            while times and times[0] <= now - 60:
                times.popleft()
            if not times:
                del self._started[peer]


class Race:
    """The connection attempts of one punch: the first to complete (with
    ``need_data``: the first on which the peer's first byte arrived) wins."""

    def __init__(self, nursery: trio.Nursery, make_socket: SocketFactory, need_data: bool) -> None:
        self._nursery = nursery
        self._make = make_socket
        self._need_data = need_data
        self.socks: set[trio.socket.SocketType] = set()  #: every socket still open
        self._connected: set[trio.socket.SocketType] = set()
        self._winners: list[trio.socket.SocketType] = []
        self.won = trio.Event()
        self.attempts = 0

    def bind_port(self) -> int:
        """Bind a socket to a free port (kept open for the race) and return it:
        the port every probe is sent from."""
        ts = self._open(0)
        port: int = ts.getsockname()[1]
        return port

    def _open(self, bind: int | None) -> trio.socket.SocketType:
        sock = self._make()
        try:
            if bind is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("0.0.0.0", bind))
            ts = trio.socket.from_stdlib_socket(sock)
        except BaseException:
            sock.close()
            raise
        self.socks.add(ts)
        return ts

    def dial(self, addr: tuple[str, int], bind: int | None = None) -> trio.socket.SocketType:
        """Start one connection attempt to ``addr`` (from port ``bind``)."""
        ts = self._open(bind)
        self.attempts += 1
        self._nursery.start_soon(self._connect, ts, addr)
        return ts

    async def _connect(self, ts: trio.socket.SocketType, addr: tuple[str, int]) -> None:
        try:
            await ts.connect(addr)
            self._connected.add(ts)
            if self._need_data:
                if not await ts.recv(1, socket.MSG_PEEK):
                    raise ConnectionResetError("closed before its first byte")
        except (OSError, trio.ClosedResourceError):
            self._drop(ts)
            return
        self._winners.append(ts)
        self.won.set()

    def abandon(self, socks: list[trio.socket.SocketType]) -> None:
        """Close those of ``socks`` still connecting (a round of probes is over)."""
        for ts in socks:
            if ts not in self._connected:
                self._drop(ts)

    def _drop(self, ts: trio.socket.SocketType) -> None:
        self.socks.discard(ts)
        self._connected.discard(ts)
        ts.close()

    def take(self) -> socket.socket:
        """The winner, as a blocking stdlib socket that the race no longer closes."""
        ts = self._winners[0]
        self.socks.discard(ts)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=ts.detach())
        sock.setblocking(True)
        return sock

    def close(self) -> None:
        for ts in list(self.socks):
            self._drop(ts)


@contextlib.asynccontextmanager
async def racing(make_socket: SocketFactory = _tcp4, *, need_data: bool = False) -> AsyncIterator[Race]:
    """A :class:`Race` whose attempts end, and whose sockets (but the one
    taken) are closed, when the block ends, however it ends.  What the block
    raises comes out as itself, not in an exception group (the attempts
    never raise)."""
    race: Race | None = None
    try:
        async with trio.open_nursery() as nursery:
            race = Race(nursery, make_socket, need_data)
            try:
                yield race
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as eg:  # noqa: B036 - the block's one exception, unwrapped
        if len(eg.exceptions) != 1:
            raise
        raise eg.exceptions[0] from None
    finally:
        if race is not None:
            race.close()


async def probe(race: Race, ip: str, port: int, rounds: int = PROBE_ROUNDS,
                per_round: int = PROBES_PER_ROUND) -> None:
    """The prober's rounds: SYNs from ``port`` to ``per_round`` fresh random ports
    of ``ip``, each round open ROUND_S; returns once one won or the rounds are done."""
    used: set[int] = set()
    for _ in range(rounds):
        ports = probe_ports(os.urandom(16), per_round, frozenset(used))
        used.update(ports)
        socks = [race.dial((ip, p), bind=port) for p in ports]
        with trio.move_on_after(ROUND_S):
            await race.won.wait()
        if race.won.is_set():
            return
        race.abandon(socks)


class PunchService:
    """Both sides of the ``punch`` path: the holder's stream handler
    (:meth:`serve`) and the fetcher's :meth:`open`."""

    def __init__(self, *, p2p: P2PHost, key: Ed25519PrivateKey, dataplane: DataPlaneServer,
                 enabled: bool = True, limits: PunchLimits | None = None,
                 make_socket: SocketFactory = _tcp4) -> None:
        self._p2p = p2p
        self._key = key
        self._dataplane = dataplane
        self.enabled = enabled
        self.gate = PunchGate(limits)
        self.make_socket = make_socket
        self.stats = {"punches": 0, "punches_won": 0, "punches_refused": 0}
        self.log = PeerLog(log)  #: a refusal is logged at most once a minute per peer

    def role(self) -> tuple[str, str] | None:
        """Our role and public IP, when we can take part in a punch at all."""
        if not self.enabled:
            return None
        reach = self._p2p.reachability
        role = punch_role(reach.nat_type, reach.status)
        ip = reach.public_ip
        if role is None or ip is None or ":" in ip or ip_scope(ip) is not Scope.PUBLIC:
            return None
        return role, ip

    def offered_to(self, peer: str) -> bool:
        """Whether a ticket for ``peer`` offers ``punch``: we could take part, and
        the only libp2p connection to ``peer`` is relayed."""
        return self.role() is not None and self._p2p.connection_path(peer) == "relayed"

    # ---- holder

    async def serve(self, stream: FramedStream) -> None:
        """The ``/cpn/transfer/punch`` handler.  Never raises."""
        peer = stream.remote_peer
        try:
            with trio.fail_after(CONTROL_TIMEOUT):
                raw = await stream.receive_frame(MAX_CONTROL_FRAME)
            req: PunchRequest = open_envelope(raw, expected=PunchRequest, signer=peer,
                                              limits=CONTROL_LIMITS).message
            mine = self._check(peer, req)
            with self.gate.hold(peer):
                self.stats["punches"] += 1
                sock = await self._hold_side(stream, peer, req, mine)
        except (StreamClosed, trio.TooSlowError):
            return
        except OSError as exc:  # our own sockets (out of file descriptors, say): no punch this time
            self.log.note(peer, "punch from %s failed here: %s", peer, exc)
            return
        except ProtocolError as exc:
            self.stats["punches_refused"] += 1
            self.log.note(peer, "punch from %s refused: %s", peer, exc, level=logging.INFO)
            with contextlib.suppress(StreamClosed, trio.TooSlowError):
                await self._send(stream, TransferError(reason=exc.reason, detail=exc.detail[:1024]))
            return
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.close()
        if sock is None:
            log.info("punch from %s: no connection", peer)
            return
        self.stats["punches_won"] += 1
        log.info("punch from %s: connected", peer)
        await self._dataplane.serve_socket(sock, f"punch:{peer}")

    def _check(self, peer: str, req: PunchRequest) -> tuple[str, str]:
        """The holder's checks, in order (spec §3.7); our role and public IP."""
        if self._dataplane.ticket_peer(req.ticket_id) != peer:
            raise ProtocolError("unauthorized", "no live ticket of yours has this id")
        mine = self.role()
        if mine is None or not complementary(mine[0], req.role):
            raise ProtocolError("punch_unavailable", f"no punch between {req.role} and this node")
        if self._p2p.connection_path(peer) != "relayed":
            raise ProtocolError("punch_unavailable", "a direct connection is open: use it")
        if ip_scope(req.ip) is not Scope.PUBLIC or req.ip == mine[1]:
            raise ProtocolError("bad_target", f"{req.ip} is not a public address of yours")
        return mine

    async def _hold_side(self, stream: FramedStream, peer: str, req: PunchRequest,
                         mine: tuple[str, str]) -> socket.socket | None:
        sock: socket.socket | None = None
        with trio.move_on_after(PUNCH_S):
            async with racing(self.make_socket, need_data=True) as race:
                role, ip = mine
                if role == ROLE_SPRAY:
                    for _ in range(SPRAY_SOCKETS):
                        race.dial((req.ip, req.port))
                    await self._send(stream, PunchReply(role=role, ip=ip, port=0))
                else:
                    port = race.bind_port()
                    await self._send(stream, PunchReply(role=role, ip=ip, port=port))
                    with trio.fail_after(CONTROL_TIMEOUT):
                        raw = await stream.receive_frame(MAX_CONTROL_FRAME)
                    open_envelope(raw, expected=PunchGo, signer=peer, limits=CONTROL_LIMITS)
                    await probe(race, req.ip, port)
                await race.won.wait()
                sock = race.take()
        return sock

    # ---- fetcher

    async def open(self, peer: str, ticket: Ticket) -> socket.socket:
        """A punched TCP connection to ``peer`` for ``ticket``, within PUNCH_S;
        raises :class:`PunchFailed` (whatever went wrong) otherwise."""
        mine = self.role()
        if mine is None:
            raise PunchFailed("this node takes no part in punches")
        for attempt in range(1, PUNCH_TRIES + 1):
            if self._p2p.connection_path(peer) != "relayed":
                raise PunchFailed("not (only) relayed any more")
            try:
                async with self.gate.turn(peer, PUNCH_S):
                    self.stats["punches"] += 1
                    sock = await self._fetch_side(peer, ticket, mine)
            except trio.TooSlowError as exc:  # no probe met a mapped port in time (odds ~1 %)
                log.info("punch to %s found no connection (try %d of %d)", peer, attempt, PUNCH_TRIES)
                if attempt < PUNCH_TRIES:
                    continue
                raise PunchFailed("no connection found in time") from exc
            except (ProtocolError, StreamClosed, OSError) as exc:  # refused, or broken: not retried
                log.info("punch to %s failed: %s: %s", peer, type(exc).__name__, exc)
                raise PunchFailed(f"{type(exc).__name__}: {exc}") from exc
            self.stats["punches_won"] += 1
            log.info("punched a TCP connection to %s", peer)
            return sock
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_side(self, peer: str, ticket: Ticket, mine: tuple[str, str]) -> socket.socket:
        role, ip = mine
        stream = await self._p2p.open_stream(peer, PUNCH_PROTOCOL_ID)
        try:
            with trio.fail_after(PUNCH_S):
                async with racing(self.make_socket) as race:
                    port = race.bind_port() if role == ROLE_PROBE else 0
                    await self._send(stream, PunchRequest(ticket_id=ticket.ticket_id, role=role, ip=ip, port=port))
                    raw = await stream.receive_frame(MAX_CONTROL_FRAME)
                    got = open_envelope(raw, expected=(PunchReply, TransferError), signer=peer,
                                        limits=CONTROL_LIMITS).message
                    assert isinstance(got, PunchReply | TransferError)
                    if isinstance(got, TransferError):
                        raise ProtocolError(got.reason, f"the holder refused: {got.detail}")
                    if not complementary(role, got.role):
                        raise ProtocolError("punch_unavailable", f"the holder is a {got.role} too")
                    if ip_scope(got.ip) is not Scope.PUBLIC or got.ip == ip:
                        raise ProtocolError("bad_target", f"{got.ip} is not a public address of the holder")
                    if role == ROLE_SPRAY:
                        for _ in range(SPRAY_SOCKETS):
                            race.dial((got.ip, got.port))
                        await self._send(stream, PunchGo(sockets=SPRAY_SOCKETS))
                    else:
                        await probe(race, got.ip, port)
                    await race.won.wait()
                    return race.take()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.close()

    async def _send(self, stream: FramedStream, msg: Message) -> None:
        with trio.fail_after(CONTROL_TIMEOUT):
            await stream.send_frame(seal(msg, self._key).raw)
