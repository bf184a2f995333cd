"""The circuit relay of node/p2p/relay.py with real libp2p hosts on 127.0.0.1.

A relay R, a target T holding a slot on it, and sources dialling T through R
(``dial_circuit``: circuits even though loopback would allow direct dials).
Checked: streams work over a relayed connection; two circuits to one target
are independent (py-libp2p 0.8.1 closed the second when the first ended);
a circuit is reset when its data budget is spent; a relay refuses a CONNECT
to a peer without a slot, and slots beyond its limit (a renewal is not a new
slot).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from node.p2p import FramedStream, P2PHost, PeerUnreachable, StreamClosed, open_host
from node.p2p.relay import RelayRefused, dial_circuit, reserve
from node.reach import RelayPolicy

LOOP = "/ip4/127.0.0.1/tcp/0"
ECHO = "/test/echo/1"


async def echo(stream: FramedStream) -> None:
    while True:
        frame = await stream.receive_frame(1 << 20)
        if not frame:
            return
        await stream.send_frame(frame)


@asynccontextmanager
async def lab(n_sources: int, policy: RelayPolicy) -> AsyncIterator[tuple[P2PHost, P2PHost, list[P2PHost]]]:
    """A relay, a target connected to it, sources knowing nobody.  DCUtR is
    stopped on the target and the sources: on loopback it would upgrade every
    circuit to a direct connection within seconds (tests/node/p2p/test_nat_netns.py
    covers that across real NATs)."""
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(
            open_host(Ed25519PrivateKey.generate(), [LOOP], relay=policy))
        relay.nat.relay.offer(True)  # as AutoNAT would once others verify it
        target = await stack.enter_async_context(
            open_host(Ed25519PrivateKey.generate(), [LOOP], bootstrap=relay.listen_addrs[:1]))
        target.set_stream_handler(ECHO, echo)
        sources = [await stack.enter_async_context(
            open_host(Ed25519PrivateKey.generate(), [LOOP])) for _ in range(n_sources)]
        for host in (target, *sources):
            await host.nat.punch.manager.stop()
        yield relay, target, sources


def relay_transport(relay: P2PHost) -> str:
    return relay.listen_addrs[0].split("/p2p/")[0]


async def round_trip(src: P2PHost, target: P2PHost, data: bytes) -> bytes:
    stream = await src.open_stream(target.peer_id, ECHO)
    try:
        with trio.fail_after(10):
            await stream.send_frame(data)
            return await stream.receive_frame(1 << 20)
    finally:
        await stream.close()


async def test_two_circuits_to_one_target_are_independent() -> None:
    async with lab(2, RelayPolicy()) as (relay, target, (a, b)):
        await reserve(target._host, relay.peer_id)
        for src in (a, b):
            await dial_circuit(src._host, relay_transport(relay), relay.peer_id, target.peer_id)
            assert src.connection_path(target.peer_id) == "relayed"
            assert await round_trip(src, target, b"hello") == b"hello"
        assert relay.nat.relay.circuits_total == 2
        one_left = trio.Event()
        relay.nat.relay.listeners.append(lambda n: one_left.set() if n == 1 else None)
        await a._host.disconnect(ID.from_base58(target.peer_id))  # the first circuit ends
        with trio.fail_after(10):
            await one_left.wait()  # and the relay has cleaned it up
        assert b.connection_path(target.peer_id) == "relayed"
        assert await round_trip(b, target, b"still here") == b"still here"


async def test_a_circuit_is_reset_when_its_data_budget_is_spent() -> None:
    async with lab(1, RelayPolicy(circuit_bytes=256 << 10)) as (relay, target, (a,)):
        await reserve(target._host, relay.peer_id)
        await dial_circuit(a._host, relay_transport(relay), relay.peer_id, target.peer_id)
        assert await round_trip(a, target, b"x" * 1000) == b"x" * 1000
        with pytest.raises((StreamClosed, PeerUnreachable)):
            for _ in range(8):  # 8 x 64 KiB each way: far over 256 KiB
                assert await round_trip(a, target, b"y" * (64 << 10)) == b"y" * (64 << 10)


async def test_no_slot_no_circuit() -> None:
    async with lab(1, RelayPolicy()) as (relay, target, (a,)):
        none_left = trio.Event()
        relay.nat.relay.listeners.append(lambda n: none_left.set() if n == 0 else None)
        with pytest.raises(RelayRefused, match="NO_RESERVATION"):
            await dial_circuit(a._host, relay_transport(relay), relay.peer_id, target.peer_id)
        with trio.fail_after(10):
            await none_left.wait()  # the refused circuit holds nothing at the relay
        assert a.connection_path(target.peer_id) is None


async def test_relay_refuses_reservations_beyond_its_limit() -> None:
    async with lab(2, RelayPolicy(max_reservations=1)) as (relay, target, (a, b)):
        first = await reserve(target._host, relay.peer_id)
        assert first.relay == relay.peer_id and first.relay_addrs
        assert relay.nat.relay.reservations() == 1
        await a.connect(relay.peer_id, [relay_transport(relay)])
        with pytest.raises(RelayRefused, match="RESOURCE_LIMIT_EXCEEDED"):
            await reserve(a._host, relay.peer_id)
        again = await reserve(target._host, relay.peer_id)  # a renewal is not a new slot
        assert again.expires >= first.expires
