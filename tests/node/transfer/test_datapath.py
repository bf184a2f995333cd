"""The data plane's paths (spec/transfer.md section 3.1) between real libp2p hosts on 127.0.0.1:
the ``stream`` path, the tcp -> stream fallback, a reset stream resumed, the per-peer stream cap."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from support.transfer import transfer_services

from node.config import TransferSection
from node.p2p import FramedStream, StreamClosed
from node.transfer.blobtypes import BlobMeta
from node.transfer.datapath import offer_tcp
from node.transfer.fetch import Progress
from node.transfer.service import TransferService
from protocol.transfer import DATA_PROTOCOL_ID, Direction

CS = 4096


def pid(svc: TransferService) -> str:
    return svc.peer_id


async def put(svc: TransferService, data: bytes) -> BlobMeta:
    return await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, data, chunk_size=CS))


def test_offer_tcp_rules() -> None:
    # a loopback data port: only to a fetcher on this host
    assert offer_tcp("public", "127.0.0.1", "127.0.0.1")
    assert not offer_tcp("public", "127.0.0.1", "198.51.100.7")
    # a fetcher in our own private network, whatever AutoNAT says
    assert offer_tcp("private", "192.168.1.2", "192.168.1.9")
    # a private holder to a fetcher outside, or reached only through a relay: stream only
    assert not offer_tcp("private", "192.168.1.2", "198.51.100.7")
    assert not offer_tcp("private", "203.0.113.2", None)
    # public, or not known yet: the fetcher tries the port briefly
    assert offer_tcp("public", "198.51.100.2", None)
    assert offer_tcp("unknown", "198.51.100.2", "198.51.100.7")


async def test_progress_shows_relayed_slow() -> None:
    p = Progress("sha256:" + "0" * 64, 10, phase="transfer")
    p.paths = {"a": "hole-punched"}
    assert p.snapshot()["state"] == "transfer" and p.path == "hole-punched"
    p.paths["b"] = "relayed"
    snap = p.snapshot()
    assert snap["state"] == "transfer (relayed, slow)" and snap["path"] == "mixed"
    assert snap["paths"] == {"a": "hole-punched", "b": "relayed"}


def _only(svc: TransferService, *paths: str) -> None:
    svc.paths_for = lambda peer: paths  # type: ignore[method-assign]


async def test_fetch_over_the_stream_path_verifies_the_blob(tmp_path: Path) -> None:
    async with transfer_services(tmp_path, 2) as (a, b):
        data = os.urandom(40 * CS + 123)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        _only(a, "stream")
        await b.fetch(meta, [pid(a)])
        assert b.store.path_of(meta.digest).read_bytes() == data
        snap = b.progress[meta.digest].snapshot()
        assert snap["paths"] == {pid(a): "direct"} and snap["state"] == "done"
        assert a.dataplane.stats["streams"] == 1
        assert b.stats["path_direct"] == 1 and b.stats["chunks_received"] == 41


async def test_unreachable_data_port_falls_back_to_the_stream(tmp_path: Path) -> None:
    async with transfer_services(tmp_path, 2) as (a, b):
        data = os.urandom(20 * CS)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        _only(a, "tcp", "stream")
        with socket.socket() as closed:  # a port nobody listens on: the connect is refused
            closed.bind(("127.0.0.1", 0))
            a.dataplane.port = closed.getsockname()[1]
            await b.fetch(meta, [pid(a)])
        assert b.store.path_of(meta.digest).read_bytes() == data
        assert a.dataplane.stats["streams"] == 1 and a.dataplane.stats["connections"] == 1


class _CutStream:
    """A server-side data stream that is reset after ``limit`` bytes were sent."""

    def __init__(self, inner: FramedStream, limit: int) -> None:
        self.inner, self.limit, self.sent = inner, limit, 0
        self.remote_peer = inner.remote_peer

    async def receive_some(self, n: int) -> bytes:
        return await self.inner.receive_some(n)

    async def send_raw(self, data: bytes) -> None:
        if self.sent + len(data) > self.limit:
            await self.inner.reset()
            raise StreamClosed("cut by the test")
        self.sent += len(data)
        await self.inner.send_raw(data)

    async def close(self) -> None:
        await self.inner.close()

    async def reset(self) -> None:
        await self.inner.reset()


async def test_a_stream_reset_mid_transfer_resumes_on_a_new_stream(tmp_path: Path) -> None:
    async with transfer_services(tmp_path, 2) as (a, b):
        data = os.urandom(200 * CS)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        _only(a, "stream")
        served: list[int] = []

        async def handler(stream: FramedStream) -> None:
            served.append(1)
            wrapped: Any = _CutStream(stream, 80 * CS) if len(served) == 1 else stream
            await a.dataplane.serve_stream(wrapped)

        a._p2p.set_stream_handler(DATA_PROTOCOL_ID, handler)
        await b.fetch(meta, [pid(a)])
        assert b.store.path_of(meta.digest).read_bytes() == data
        assert len(served) == 2  # the reset stream, then a fresh one with a new ticket
        # chunks verified before the reset were kept: each chunk was received once
        assert b.stats["chunks_received"] == 200
        assert a.penalties == {} and b.penalties == {}


async def test_data_streams_per_peer_are_capped(tmp_path: Path) -> None:
    config = TransferSection(data_conns_per_peer=1)
    async with transfer_services(tmp_path, 2, config=config) as (a, b):
        entered = [trio.Event(), trio.Event()]

        async def handler(stream: FramedStream) -> None:
            entered[0 if not entered[0].is_set() else 1].set()
            await a.dataplane.serve_stream(stream)

        a._p2p.set_stream_handler(DATA_PROTOCOL_ID, handler)
        first = await b._p2p.open_stream(pid(a), DATA_PROTOCOL_ID, a._p2p.listen_addrs)
        await entered[0].wait()  # the first stream holds the peer's one slot (in its handshake)
        with trio.fail_after(10):  # refused: reset before (or right after) the protocol's ack
            try:
                second = await b._p2p.open_stream(pid(a), DATA_PROTOCOL_ID)
            except StreamClosed:
                pass
            else:
                assert await second.receive_some(64) == b""
        assert a.dataplane.stats["refused_busy"] == 1 and a.dataplane.stats["streams"] == 1
        await first.reset()


@pytest.mark.parametrize("paths", [("quic-punch",)])
async def test_a_ticket_without_a_known_path_fails_the_source(tmp_path: Path, paths: tuple[str, ...]) -> None:
    from node.transfer.fetch import TransferFailed

    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(4 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)
        _only(a, *paths)
        with pytest.raises(TransferFailed, match="no_usable_path"):
            await b.fetch(meta, [pid(a)])
