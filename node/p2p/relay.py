"""Circuit relay v2: the relay service of a public node, and a private node's client side.

**Relay (hop) service**: :class:`Relay` is py-libp2p's ``CircuitV2Protocol``
with what 0.8.1 lacks for an open network:

* two circuits to one target no longer kill each other (py-libp2p keys its
  active circuits by peer ID and, when one ends, closes whatever the other
  stored there): each circuit cleans up exactly its own two streams;
* a bandwidth limit (py-libp2p's ``HopConfig`` rates are declared and used
  nowhere): a token bucket per circuit direction and one for the relay;
* caps on concurrent circuits, in total and per peer (as source or target),
  and on concurrent HOP streams per peer;
* a reservation is for the requesting peer only (py-libp2p lets a peer name
  any peer ID in RESERVE and so fill the relay with slots for others), and a
  reservation whose peer has disconnected no longer occupies a slot;
* an idle circuit ends at its duration limit (py-libp2p checks it only when
  data flows).

Every node also runs the STOP side (it accepts circuits relayed to it).  The
HOP handler is registered only while :meth:`Relay.offer` is on (the node is
public and ``[relay] enabled``).

**Client side**: :func:`reserve` asks a relay for a slot (one RESERVE round
trip: no CLIENT-role transport, which would reserve again on every dial,
and no refresher task with py-libp2p's hot loop at short TTLs; renewal is
:class:`node.p2p.nat.RelayKeeper`'s job), and :func:`dial_circuit` opens a
relayed connection to a peer through a relay (registered in the swarm like
any connection, so ``new_stream`` uses it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol import _is_relayed_stream as _relayed
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits, RelayResourceManager
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.constants import MAX_READ_LEN

from node.reach import RelayPolicy, TokenBucket

log = logging.getLogger("cpn.p2p.relay")

__all__ = [
    "limits_of",
    "Relay",
    "RelayRefused",
    "Reservation",
    "reserve",
    "dial_circuit",
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
]

RELAY_TIMEOUT = 10.0  #: one RESERVE or CONNECT round trip with a relay
MAX_HOP_STREAMS_PER_PEER = 8  #: concurrent HOP streams one peer may hold open


def limits_of(policy: RelayPolicy) -> RelayLimits:
    """py-libp2p's limits for ``policy`` (circuit data, duration, slots, TTL)."""
    return RelayLimits(
        duration=policy.circuit_duration_s,
        data=policy.circuit_bytes,
        max_circuit_conns=policy.max_circuits_per_peer,
        max_reservations=policy.max_reservations,
        reservation_ttl=policy.reservation_ttl_s,
    )


class _Reservations(RelayResourceManager):
    """Reservations whose peer disconnected give their slot back at once."""

    def can_accept_reservation(self, peer_id: ID) -> bool:
        for other in list(self._reservations):
            if other != peer_id and not self._is_peer_connected(other):
                del self._reservations[other]
        return super().can_accept_reservation(peer_id)


class Relay(CircuitV2Protocol):
    """py-libp2p's circuit relay v2 protocol with the fixes and limits above."""

    def __init__(self, host: IHost, policy: RelayPolicy) -> None:
        super().__init__(host, limits=limits_of(policy), allow_hop=False)
        self.policy = policy
        self.resource_manager = _Reservations(self.limits, host)
        self._total = TokenBucket(policy.total_rate, max(policy.total_rate / 4, 1 << 16),
                                  time.monotonic())
        self._circuits: dict[str, int] = {}  #: peer -> circuits it is part of
        self._hop_streams: dict[str, int] = {}
        self.circuits_total = 0  #: circuits open now
        self.listeners: list[Callable[[int], None]] = []  #: told the count when a circuit ends
        self.offering = False

    def offer(self, on: bool) -> None:
        """Serve (or stop serving) the HOP protocol: be a relay for others."""
        if on and not self.offering:
            self.host.set_stream_handler(HOP_PROTOCOL, self._handle_hop_stream)
            log.info("offering circuit relay v2 (%d reservations, %d MiB per circuit)",
                     self.policy.max_reservations, self.policy.circuit_bytes >> 20)
        elif not on and self.offering:
            self.host.remove_stream_handler(HOP_PROTOCOL)
            log.info("no longer offering circuit relay")
        self.offering = on

    def reservations(self) -> int:
        return sum(1 for p in list(self.resource_manager._reservations)
                   if self.resource_manager.get_reservation(p) is not None)

    async def _handle_hop_stream(self, stream: INetStream) -> None:
        """One HOP message per stream (RESERVE, or CONNECT and then the circuit),
        as go and rust relays do.  py-libp2p's handler loops for more messages
        until a read fails and logs every clean close at ERROR."""
        peer = str(stream.muxed_conn.peer_id)
        if self._hop_streams.get(peer, 0) >= MAX_HOP_STREAMS_PER_PEER or _relayed(stream):
            await _reset(stream)  # nothing over a relayed connection (spec)
            return
        self._hop_streams[peer] = self._hop_streams.get(peer, 0) + 1
        try:
            try:
                with trio.fail_after(RELAY_TIMEOUT):
                    msg = await read_delimited_msg(stream, HopMessage)
            except (BaseLibp2pError, OSError, ValueError, trio.TooSlowError, DecodeError) as exc:
                log.debug("HOP stream from %s: %r", peer, exc)
                await _reset(stream)
                return
            if msg.type == HopMessage.RESERVE:
                await self._handle_reserve(stream, msg)
                await self._close_stream(stream)
            elif msg.type == HopMessage.CONNECT:
                await self._handle_connect(stream, msg)
            else:
                await self._send_status(stream, StatusCode.MALFORMED_MESSAGE, "expected RESERVE or CONNECT")
                await _reset(stream)
        finally:
            _decrement(self._hop_streams, peer)

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        # A slot is for the peer asking, whatever peer ID the message names.
        if msg.HasField("peer"):
            msg.ClearField("peer")
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        source = str(stream.muxed_conn.peer_id)
        try:
            target = str(ID(msg.peer.id))
        except (ValueError, BaseLibp2pError):
            await self._send_status(stream, StatusCode.MALFORMED_MESSAGE, "bad target peer ID")
            await _reset(stream)
            return
        cap = self.policy.max_circuits_per_peer
        if (self.circuits_total >= self.policy.max_circuits or self._circuits.get(source, 0) >= cap
                or self._circuits.get(target, 0) >= cap):
            await self._send_status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "too many circuits")
            await _reset(stream)
            return
        self.circuits_total += 1
        for p in {source, target}:
            self._circuits[p] = self._circuits.get(p, 0) + 1
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.circuits_total -= 1
            for p in {source, target}:
                _decrement(self._circuits, p)
            for key, (src, _dst) in list(self._active_relays.items()):
                if src is stream:  # only this circuit's entries (py-libp2p keys them by peer)
                    del self._active_relays[key]
            for fn in self.listeners:
                fn(self.circuits_total)

    async def _relay_data(
        self,
        src_stream: INetStream,
        dst_stream: INetStream,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        """Copy one direction of a circuit within its data, time and rate limits.

        Ends (closing this circuit's two streams, never another's) at EOF, on a
        stream error, at the circuit's duration, or when its data budget (shared
        by both directions) is spent (then both streams are reset).
        """
        bucket = TokenBucket(self.policy.circuit_rate, max(self.policy.circuit_rate / 4, 1 << 16),
                             time.monotonic())
        until = trio.current_time() + (deadline - time.monotonic()) if deadline else float("inf")
        over = False
        try:
            with trio.move_on_at(until):
                while True:
                    data = await src_stream.read(MAX_READ_LEN)
                    if not data:
                        break
                    if circuit_data_limit is not None:
                        if len(data) > circuit_data_limit[0]:
                            over = True
                            break
                        circuit_data_limit[0] -= len(data)
                    now = time.monotonic()
                    wait = max(bucket.take(len(data), now), self._total.take(len(data), now))
                    if wait > 0:
                        await trio.sleep(wait)
                    with trio.fail_after(self.write_timeout):
                        await dst_stream.write(data)
        except (BaseLibp2pError, OSError, EOFError, trio.TooSlowError) as exc:
            log.debug("circuit for %s ended: %r", peer_id, exc)
        finally:
            with trio.CancelScope(shield=True):
                if over or trio.current_time() >= until:
                    log.info("circuit for %s reset: %s", peer_id,
                             "data limit" if over else "duration limit")
                    await _reset(src_stream)
                    await _reset(dst_stream)
                else:
                    await self._close_stream(dst_stream)
                    await self._close_stream(src_stream)


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


async def _reset(stream: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except (BaseLibp2pError, OSError):
            pass


# --------------------------------------------------------------------------- client side


class RelayRefused(Exception):
    """The relay answered with a status other than OK (the message names it)."""


@dataclass(frozen=True)
class Reservation:
    """A slot on a relay: valid until ``expires`` (unix seconds)."""

    relay: str
    expires: int
    relay_addrs: tuple[str, ...]  #: the relay's own addresses (``.../p2p/<relay>``), as it sent them


def _status(resp: HopMessage) -> StatusCode:
    try:
        return StatusCode(resp.status) if resp.HasField("status") else StatusCode.OK
    except ValueError:
        return StatusCode.MALFORMED_MESSAGE


async def reserve(host: IHost, relay: str) -> Reservation:
    """Reserve a slot on ``relay`` (already connected).  Raises :class:`RelayRefused`,
    ``trio.TooSlowError`` or a libp2p/OS error."""
    rid = ID.from_base58(relay)
    with trio.fail_after(RELAY_TIMEOUT):
        stream = await host.new_stream(rid, [HOP_PROTOCOL])
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            resp = await read_delimited_msg(stream, HopMessage)
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except (BaseLibp2pError, OSError):
                    pass
    status = _status(resp)
    if status != StatusCode.OK or not resp.HasField("reservation"):
        raise RelayRefused(f"relay {relay} refused the reservation: {status.name}")
    addrs = []
    for raw in resp.reservation.addrs[:16]:
        try:
            addrs.append(str(multiaddr.Multiaddr(bytes(raw))))
        except Exception:  # noqa: BLE001 - py-multiaddr raises several unrelated types
            continue
    return Reservation(relay=relay, expires=int(resp.reservation.expire), relay_addrs=tuple(addrs))


async def dial_circuit(host: IHost, relay_transport: str, relay: str, target: str) -> None:
    """Open a relayed connection to ``target`` through ``relay`` (dialled at
    ``relay_transport`` if not connected).  Raises :class:`RelayRefused`,
    ``trio.TooSlowError`` or a libp2p/OS error."""
    rid, tid = ID.from_base58(relay), ID.from_base58(target)
    with trio.fail_after(RELAY_TIMEOUT):
        if not host.get_network().get_connections(rid):
            await host.connect(PeerInfo(rid, [multiaddr.Multiaddr(relay_transport)]))
        stream = await host.new_stream(rid, [HOP_PROTOCOL])
        try:
            msg = HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=tid.to_bytes()))
            await write_delimited_msg(stream, msg)
            resp = await read_delimited_msg(stream, HopMessage)
            status = _status(resp)
            if status != StatusCode.OK:
                raise RelayRefused(f"relay {relay} cannot connect us to {target}: {status.name}")
            circuit = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{target}")
            raw = RawConnection(stream=stream, initiator=True,
                                connection_type=ConnectionType.RELAYED, addresses=[circuit])
            await host.upgrade_outbound_connection(raw, tid)
        except BaseException:
            await _reset(stream)
            raise
