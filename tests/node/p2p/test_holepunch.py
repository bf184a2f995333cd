"""How hole punching is driven (node/p2p/paths.py), with real libp2p hosts on 127.0.0.1.

Across real NATs, hole punching itself is tested in tests/node/p2p/test_nat_netns.py
and the data paths that ride on it in tests/node/transfer/test_datapath_netns.py.
Checked here: a hole punch starts as soon as a relayed-only connection opens
from the side that was dialled (py-libp2p's loop, which looks every 2 s, is
slowed to an hour), and a wait for the upgrade ends at its patience when no
punch is under way; the
plain dial before the DCUtR exchange tries only the addresses the peer
announces in its signed peer record, never whatever else the peerstore holds
(a stale NAT address that a router drops held the real punch back by 10 s).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record

from node.p2p import P2PHost, open_host, paths
from node.p2p.relay import dial_circuit, reserve
from node.reach import RelayPolicy

LOOP = "/ip4/127.0.0.1/tcp/0"


@asynccontextmanager
async def hosts(n: int) -> AsyncIterator[list[P2PHost]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_host(Ed25519PrivateKey.generate(), [LOOP]))
               for _ in range(n)]


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: a connection to it waits in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def dialled(trap: socket.socket) -> bool:
    try:
        conn, _ = trap.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_the_plain_dial_before_a_punch_tries_only_announced_addresses(trap: socket.socket) -> None:
    async with hosts(2) as (a, b):
        b_id = ID.from_base58(b.peer_id)
        stale = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{trap.getsockname()[1]}")
        a._host.get_peerstore().add_addrs(b_id, [stale], 600)
        # No signed record of b's yet: nothing announced, nothing dialled.
        assert paths.announced_addrs(a._host, b_id) == []
        assert await a.nat.punch._try_unilateral_upgrade(b_id) is False
        assert not dialled(trap)
        # Once b's signed record is known (identify brings it), the addresses it
        # announces are dialled, and still not the stale one.
        real = [multiaddr.Multiaddr(x.split("/p2p/")[0]) for x in b.listen_addrs]
        record = create_signed_peer_record(b_id, real, b._host.get_private_key())
        assert a._host.get_peerstore().consume_peer_record(record, 600)
        a._host.get_peerstore().add_addrs(b_id, [stale], 600)
        assert {str(x) for x in paths.announced_addrs(a._host, b_id)} == {str(x) for x in real}
        assert a.connection_path(b.peer_id) is None
        assert await a.nat.punch._try_unilateral_upgrade(b_id) is True
        assert a.connection_path(b.peer_id) == "direct"
        assert not dialled(trap)


@asynccontextmanager
async def relayed(punching: bool) -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    """A source connected to a target through a relay only (the target holds a
    slot on it); without ``punching``, neither does any hole punching."""
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(
            open_host(Ed25519PrivateKey.generate(), [LOOP], relay=RelayPolicy()))
        relay.nat.relay.offer(True)
        target = await stack.enter_async_context(
            open_host(Ed25519PrivateKey.generate(), [LOOP], bootstrap=relay.listen_addrs[:1]))
        source = await stack.enter_async_context(open_host(Ed25519PrivateKey.generate(), [LOOP]))
        if not punching:
            for host in (target, source):
                await host.nat.punch.manager.stop()
        await reserve(target._host, relay.peer_id)
        await dial_circuit(source._host, relay.listen_addrs[0].split("/p2p/")[0], relay.peer_id,
                           target.peer_id)
        yield source, target


async def test_a_punch_starts_when_a_relayed_connection_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "AUTO_DRIVE_S", 3600.0)  # py-libp2p's way would wait an hour
    async with relayed(punching=True) as (source, target):
        # The target, which was dialled, starts the punch (the source would wait an hour).
        with trio.fail_after(30):
            path = await source.wait_upgrade(target.peer_id, 30, 30)
        assert path not in (None, "relayed"), path


async def test_waiting_for_an_upgrade_with_no_punch_under_way_ends_at_its_patience() -> None:
    async with relayed(punching=False) as (source, target):
        assert await source.wait_upgrade(target.peer_id, 0, 30) == "relayed"
