"""The Kademlia driver against real py-libp2p hosts on 127.0.0.1 (spec/dht.md section 6).

Peers that misbehave are real hosts whose kad handler was swapped for one
that never answers, resets, or answers wrongly; every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from hashlib import sha256
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.keys import peer_id_of
from node.p2p import EarlyStop, P2PHost, open_host
from node.p2p.dht import KAD_PROTOCOL, KadClient, PagedProviderStore, QueryFailed
from protocol.framing import encode_frame
from protocol.kademlia import PAGE_SIZE, Failure, distance

LOOP = "/ip4/127.0.0.1/tcp/0"


def raw_id(peer: P2PHost | str) -> bytes:
    return ID.from_base58(peer if isinstance(peer, str) else peer.peer_id).to_bytes()


def mh(name: bytes) -> bytes:
    """A kad key as sent on the wire: a sha2-256 multihash."""
    return b"\x12\x20" + sha256(name).digest()


class Net:
    """Hosts in one process, each stoppable on its own."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.hosts: list[P2PHost] = []
        self._stop: dict[str, tuple[trio.CancelScope, trio.Event]] = {}

    async def add(self, *, boot: P2PHost | None = None) -> P2PHost:
        seed = boot or (self.hosts[0] if self.hosts else None)
        host: P2PHost = await self.nursery.start(self._run, seed.listen_addrs[:1] if seed else [])
        self.hosts.append(host)
        return host

    async def _run(self, boot: list[str], *, task_status: Any) -> None:
        stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with open_host(Ed25519PrivateKey.generate(), [LOOP], bootstrap=boot) as h:
                    self._stop[h.peer_id] = (scope, stopped)
                    task_status.started(h)
                    await trio.sleep_forever()
        finally:
            stopped.set()

    async def stop(self, host: P2PHost) -> None:
        scope, stopped = self._stop[host.peer_id]
        scope.cancel()
        with trio.fail_after(10):
            await stopped.wait()


@asynccontextmanager
async def network(n: int) -> AsyncIterator[Net]:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        for _ in range(n):
            await net.add()
        yield net
        nursery.cancel_scope.cancel()


def serve_kad(host: P2PHost, handler: Callable[[Any], Awaitable[None]]) -> None:
    """Replace ``host``'s kad server by ``handler`` (gets the raw libp2p stream)."""
    host._host.set_stream_handler(TProtocol(KAD_PROTOCOL), handler)


async def silent(stream: Any) -> None:
    """Reads the request, never answers."""
    await stream.read()
    await trio.sleep_forever()


async def resetting(stream: Any) -> None:
    """Refuses at once, as py-libp2p does when its 12 inbound slots are taken."""
    await stream.reset()


# --------------------------------------------------------------------------- lookup


async def test_lookup_completes_past_a_silent_and_a_resetting_peer() -> None:
    async with network(4) as net:
        seed, provider, other, finder = net.hosts
        key = mh(b"lookup with bad peers")
        with trio.fail_after(20):
            assert (await provider.provide(key)).confirmed
        mute, refuser = await net.add(), await net.add()
        serve_kad(mute, silent)
        serve_kad(refuser, resetting)
        for bad in (mute, refuser):
            await finder.connect_multiaddr(bad.listen_addrs[0])  # now in its routing table
        with trio.fail_after(20):
            found = await finder.find_providers(key)
    assert [p for p, _ in found.providers] == [provider.peer_id]
    assert found.outcome == "complete"
    # the silent and the refusing peer did not count as answers
    assert {mute.peer_id, refuser.peer_id}.isdisjoint(found.closest)
    assert {seed.peer_id, provider.peer_id, other.peer_id} <= set(found.closest)
    assert finder.stats.failures.get("timeout", 0) >= 1
    assert finder.stats.failures.get("busy", 0) >= 2  # refused, asked once more, refused


async def test_early_stop_leaves_the_query_in_flight_to_finish_cleanly() -> None:
    """A lookup that ends (here: the caller has enough) does not cancel a query
    mid-stream: the server still gets a clean close, not a reset (spec §6.2 step 6)."""
    async with network(1) as net:
        finder, slow = await net.add(), await net.add()
        key = mh(b"nobody provides this")
        asked, release, ended = trio.Event(), trio.Event(), trio.Event()
        how: list[str] = []

        async def late(stream: Any) -> None:
            await stream.read()
            asked.set()
            await release.wait()
            answer = Message(type=Message.MessageType.GET_PROVIDERS, key=key)
            await stream.write(encode_frame(answer.SerializeToString()))
            try:
                how.append("closed" if await stream.read() == b"" else "data")
            except Exception as exc:  # noqa: BLE001 - py-libp2p reads a reset as an error
                how.append(type(exc).__name__)
            ended.set()

        serve_kad(slow, late)
        serve_kad(net.hosts[0], silent)  # the seed stays quiet too: only `slow` can answer
        enough = False
        early = EarlyStop(lambda: enough)
        result: list[Any] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: _collect(result, finder.find_providers(key, early_stop=early))
                )
                await asked.wait()
                enough = True
                early.nudge()
            assert result[0].outcome == "stopped"
            release.set()  # the query the lookup left behind gets its answer now
            await ended.wait()
    assert how in (["closed"], ["StreamEOF"])


async def _collect(out: list[Any], coro: Awaitable[Any]) -> None:
    out.append(await coro)


async def test_popular_key_is_answered_in_pages_and_paged_through() -> None:
    """A node holding 250 providers answers 100 at random per request; a
    finder that wants them all asks again until a page brings nothing new
    (which may leave a few unseen: spec/dht.md §6.5)."""
    async with network(2) as net:
        holder, finder = net.hosts
        key = mh(b"cpn:cpu")
        peers = [peer_id_of(Ed25519PrivateKey.generate()) for _ in range(250)]
        store = holder._dht.provider_store
        assert isinstance(store, PagedProviderStore)
        for p in peers:
            store.add_provider(key, PeerInfo(ID.from_base58(p), []))
        page1, page2 = store.get_providers(key), store.get_providers(key)
        assert len(page1) == len(page2) == PAGE_SIZE
        assert {str(i.peer_id) for i in page1} != {str(i.peer_id) for i in page2}
        assert {str(i.peer_id) for i in store.local(key)} == set(peers)
        with trio.fail_after(30):
            found = await finder.find_providers(key)
    got = {p for p, _ in found.providers}
    assert got <= set(peers) and len(got) > PAGE_SIZE  # more than one page's worth
    assert found.queried >= 3 and found.outcome == "complete"  # pages until one was dry


# --------------------------------------------------------------------------- provide


async def test_provide_reaches_the_k_closest_live_peers() -> None:
    async with network(8) as net:
        provider, others = net.hosts[0], net.hosts[1:]
        key = mh(b"provide to the closest")
        ranked = sorted(others, key=lambda h: distance(key, raw_id(h)))
        await net.stop(ranked[0])  # the closest peer is gone
        with trio.fail_after(30):
            report = await provider.provide(key, k=3)
        live = ranked[1:4]
        assert list(report.closest_peers) == [h.peer_id for h in live]
        assert (report.stored, report.closest, report.gave_up) == (3, 3, 0) and report.confirmed
        for h in live:
            assert provider.peer_id in h.local_providers(key)
        for h in ranked[4:]:
            assert provider.peer_id not in h.local_providers(key)
        assert provider.local_providers(key) == [provider.peer_id]  # its own record, held


async def test_holders_drop_when_closer_peers_join() -> None:
    """What re-announcing looks at (spec/dht.md §6.4): how many of the k closest
    peers known took the last announcement."""
    async with network(5) as net:
        provider = net.hosts[0]
        key = mh(b"holders")
        with trio.fail_after(30):
            report = await provider.provide(key, k=3)
        assert provider.holders(key, report, k=3) == (3, 3)
        known = [raw_id(h) for h in net.hosts[1:]]
        took = {raw_id(p) for p in report.closest_peers}
        for _ in range(6):  # some of them closer than a holder (but for a 3 % chance)
            late = await net.add(boot=provider)
            await provider.connect_multiaddr(late.listen_addrs[0])  # now in its routing table
            known.append(raw_id(late))
            view = sorted(known, key=lambda p: distance(key, p))[:3]
            assert provider.holders(key, report, k=3) == (len(took.intersection(view)), 3)


# --------------------------------------------------------------------------- one request


async def test_kad_client_names_what_went_wrong() -> None:
    async with network(3) as net:
        client, good, bad = net.hosts
        kad = KadClient(client._host)
        key = mh(b"errors")
        with trio.fail_after(10):
            answer = await kad.find_node(raw_id(good), key)
        assert raw_id(client) not in answer.closer and raw_id(good) not in answer.closer

        async def wrong_type(stream: Any) -> None:
            await stream.read()
            await stream.write(encode_frame(Message(type=Message.MessageType.PING).SerializeToString()))

        async def huge(stream: Any) -> None:
            await stream.read()
            await stream.write(b"\xff\xff\xff\xff\x0f")  # announces a 4 GiB answer

        async def truncated(stream: Any) -> None:
            await stream.read()
            await stream.write(b"\x20abc")  # says 32 bytes, sends 3, closes
            await stream.close()

        cases = [(wrong_type, Failure.INVALID), (huge, Failure.INVALID),
                 (truncated, Failure.BUSY), (resetting, Failure.BUSY)]  # fmt: skip
        for handler, reason in cases:
            serve_kad(bad, handler)
            with trio.fail_after(10), pytest.raises(QueryFailed) as err:
                await kad.find_node(raw_id(bad), key)
            assert err.value.reason is reason, handler.__name__
        bad._host.remove_stream_handler(TProtocol(KAD_PROTOCOL))
        with trio.fail_after(10), pytest.raises(QueryFailed) as err:
            await kad.find_node(raw_id(bad), key)  # protocol not served: negotiation fails
        assert err.value.reason is Failure.UNREACHABLE
        stranger = raw_id(peer_id_of(Ed25519PrivateKey.generate()))  # no address known
        with trio.fail_after(10), pytest.raises(QueryFailed) as err:
            await kad.add_provider(stranger, key)
        assert err.value.reason is Failure.UNREACHABLE
        with trio.fail_after(10):
            await kad.add_provider(raw_id(good), key)  # echoed = stored
        assert client.peer_id in good.local_providers(key)
