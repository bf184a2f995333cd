"""Misbehaving peers on the transfer protocol (spec/transfer.md revision 3 and
issue 12), against real transfer services on 127.0.0.1.

A *misbehaving source* is a real TransferService whose data plane sends the
wrong frames (its ``_send_chunks`` replaced for that instance); the fetching
side must fail that source clearly, never hang, and finish from an honest
one.  A *crashing request* is an unexpected exception inside a server entry
point: the requester gets an answer, the server logs it (at most one line a
minute per peer) and keeps serving.
"""

from __future__ import annotations

import functools
import os
import types
from pathlib import Path
from typing import Any

import pytest
import trio
from support.transfer import transfer_services

from node.transfer.blobstore import BlobMeta
from node.transfer.service import TransferFailed, TransferRefused, TransferService
from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.transfer import (
    HEADER_SIZE,
    TAG_SIZE,
    ChunkRange,
    DataError,
    Direction,
    FrameOpener,
    FrameSealer,
    FrameType,
    Have,
    Request,
    Ticket,
    TicketRequest,
    Want,
    decode_header,
    derive_keys,
    encode_header,
    encode_preamble,
)

pytestmark = pytest.mark.adversarial

CS = 64 << 10
BOUND = 60  #: seconds any single wait may take before the test fails instead of hanging


def pid(svc: TransferService) -> str:
    return svc.peer_id


async def put(svc: TransferService, data: bytes, chunk_size: int = CS) -> BlobMeta:
    return await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, data, chunk_size=chunk_size))


def _frame(sealer: FrameSealer, kind: FrameType, index: int, body: bytes) -> bytes:
    header = encode_header(kind, index, len(body) + TAG_SIZE)
    return header + sealer.seal_with(sealer.next_nonce(), header, body)


def misbehave(svc: TransferService, frames_for: Any) -> None:
    """Make ``svc``'s data plane answer every REQUEST with ``frames_for(sealer, meta, request)``."""

    async def send(self: Any, conn: Any, sealer: FrameSealer, blob: Any, fd: int, meta: BlobMeta,
                   requests: Any) -> None:
        async for item in requests:
            if isinstance(item, DataError):
                return
            data = b"".join(frames_for(sealer, meta, item))
            await trio.to_thread.run_sync(conn.send_all, data)

    svc.dataplane._send_chunks = types.MethodType(send, svc.dataplane)  # type: ignore[method-assign]


async def test_a_blob_of_more_than_4096_chunks_moves_in_chunk_list_pages(tmp_path: Path) -> None:
    """The chunk list travels in pages of 4096 entries (GetChunkList start/count,
    ChunkListAssembler); before revision 3 was implemented, a list over 4096
    entries broke the ChunkList rules and such a blob could not be fetched."""
    async with transfer_services(tmp_path, 2) as (a, b):
        data = os.urandom(4100 * 4096 + 7)  # 4101 chunks of 4 KiB
        meta = await put(a, data, chunk_size=4096)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        with trio.fail_after(BOUND):
            await b.fetch(meta, [pid(a)])
        assert b.store.path_of(meta.digest).read_bytes() == data
        assert b.store.chunk_list(meta.digest) == chunk_hashes(data, 4096)


async def test_end_before_the_chunks_fails_the_source_not_the_fetch(tmp_path: Path) -> None:
    """A source that answers every REQUEST with a bare END (no chunks): the
    client returns those chunks to the pool at END and drops the source, so
    the fetch finishes from the honest source (before: it waited forever)."""
    async with transfer_services(tmp_path, 3) as (honest, evil, rx):
        data, other = os.urandom(256 * CS), os.urandom(8 * CS)  # enough chunks for both sources
        meta, alone = await put(honest, data), await put(evil, other)
        await put(evil, data)
        for s in (honest, evil):
            s.grant(pid(rx), meta.digest, Direction.FETCH)
        evil.grant(pid(rx), alone.digest, Direction.FETCH)
        misbehave(evil, lambda sealer, meta, req: [_frame(sealer, FrameType.END, 0, b"")])
        with trio.fail_after(BOUND):
            await rx.fetch(meta, [pid(honest), pid(evil)])
        assert rx.store.path_of(meta.digest).read_bytes() == data
        assert pid(evil) in rx.penalties and pid(honest) not in rx.penalties
        with trio.fail_after(BOUND), pytest.raises(TransferFailed, match="missing_chunks"):
            await rx.fetch(alone, [pid(evil)])  # the misbehaving source alone: a clear failure


@pytest.mark.parametrize("case", ["index-past-the-end", "end-with-a-body"])
async def test_bad_frames_from_a_source_fail_it_clearly(tmp_path: Path, case: str) -> None:
    """A CHUNK whose index is >= n is ``bad_chunk_index`` (checked before it is
    opened); an END with a body is ``bad_frame`` (check_empty_body)."""

    def frames(sealer: FrameSealer, meta: BlobMeta, req: Request) -> list[bytes]:
        n = (meta.size + meta.chunk_size - 1) // meta.chunk_size
        if case == "index-past-the-end":
            return [_frame(sealer, FrameType.CHUNK, n, os.urandom(meta.chunk_size))]
        return [_frame(sealer, FrameType.END, 0, b"surprise")]

    reason = "bad_chunk_index" if case == "index-past-the-end" else "bad_frame"
    async with transfer_services(tmp_path, 2) as (evil, rx):
        meta = await put(evil, os.urandom(8 * CS))
        evil.grant(pid(rx), meta.digest, Direction.FETCH)
        misbehave(evil, frames)
        with trio.fail_after(BOUND), pytest.raises(TransferFailed, match=reason):
            await rx.fetch(meta, [pid(evil)])
        assert pid(evil) in rx.penalties


async def _connect(ticket: Ticket) -> tuple[trio.SocketStream, FrameSealer, FrameOpener]:
    stream = await trio.open_tcp_stream(ticket.host, ticket.port)
    c2s, s2c = derive_keys(ticket.secret, ticket.ticket_id)
    await stream.send_all(encode_preamble(ticket.ticket_id))
    return stream, FrameSealer(c2s), FrameOpener(s2c)


async def _read_frame(stream: trio.SocketStream, opener: FrameOpener) -> tuple[FrameType, bytes]:
    buf = b""
    with trio.fail_after(BOUND):
        while len(buf) < HEADER_SIZE:
            buf += await stream.receive_some(HEADER_SIZE - len(buf))
        kind, _, length = decode_header(buf, from_server=True)
        body = b""
        while len(body) < length:
            body += await stream.receive_some(length - len(body))
    return kind, opener.open(buf, body)


async def test_stop_with_a_body_gets_error_bad_frame(tmp_path: Path) -> None:
    """The server answers what came before, then ERROR bad_frame for a STOP with a body."""
    async with transfer_services(tmp_path, 1) as (a,):
        meta = await put(a, os.urandom(4 * CS))
        stream, sealer, opener = await _connect(a.dataplane.issue("peer", meta))
        req = Request(ranges=(ChunkRange(start=0, end=1),)).encode()
        await stream.send_all(_frame(sealer, FrameType.REQUEST, 0, req) + _frame(sealer, FrameType.STOP, 0, b"x"))
        assert (await _read_frame(stream, opener))[0] is FrameType.CHUNK
        assert (await _read_frame(stream, opener))[0] is FrameType.END
        kind, body = await _read_frame(stream, opener)
        assert kind is FrameType.ERROR and DataError.decode(body).reason == "bad_frame"


async def test_have_lists_at_most_32_partial_blobs(tmp_path: Path) -> None:
    """A Want naming 40 blobs the responder holds in part gets a valid Have with
    32 partial entries (the rest left out), not a broken answer."""
    async with transfer_services(tmp_path, 2) as (a, b):
        digests = []
        for _ in range(40):
            data = os.urandom(2 * CS)
            hashes = chunk_hashes(data, CS)
            meta = BlobMeta(digest_of(data), len(data), CS, chunk_root(hashes))
            p = a.store.begin(meta, hashes)
            p.write_chunk(0, data[:CS])
            p.mark_written(0)
            p.close()
            a.grant(pid(b), meta.digest, Direction.FETCH)
            digests.append(meta.digest)
        stream = await b.open_stream(pid(a))
        have: Have = await b.ask(stream, Want(digests=tuple(digests)), Have)
        assert len(have.blobs) == 32 and not any(e.complete for e in have.blobs)
        assert {e.digest for e in have.blobs} <= set(digests)


async def test_a_crashing_control_request_is_answered_and_the_node_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while answering a request becomes TransferError
    ``internal_error``; the next request is served."""
    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(4 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)

        def broken(digest: str) -> Any:
            raise RuntimeError("disk on fire")

        with monkeypatch.context() as m:
            m.setattr(a.store, "held_chunks", broken)
            stream = await b.open_stream(pid(a))
            with pytest.raises(TransferRefused) as exc:
                await b.ask(stream, TicketRequest(digest=meta.digest), Ticket)
            assert exc.value.reason == "internal_error"
            stream = await b.open_stream(pid(a))
            with pytest.raises(TransferRefused):
                await b.ask(stream, TicketRequest(digest=meta.digest), Ticket)
        assert a.log.lines == 1 and a.log.suppressed == 1  # one line per peer and minute
        with trio.fail_after(BOUND):
            await b.fetch(meta, [pid(a)])
        assert b.store.has(meta.digest)


async def test_a_crashing_data_connection_leaves_the_accept_loop_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception on one data connection ends that connection only:
    the accept loop logs it (rate-limited per address) and serves the next."""
    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(4 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)

        def broken(digest: str) -> Any:
            raise RuntimeError("unexpected")

        with monkeypatch.context() as m:
            m.setattr(a.store, "open_for_serving", broken)
            for _ in range(2):
                stream, sealer, _ = await _connect(a.dataplane.issue("peer", meta))
                req = Request(ranges=(ChunkRange(start=0, end=1),)).encode()
                await stream.send_all(_frame(sealer, FrameType.REQUEST, 0, req))
                with trio.fail_after(BOUND):
                    assert await stream.receive_some(1) == b""  # dropped, nothing sent
        with trio.fail_after(BOUND):  # the same server, the next connection: served
            await b.fetch(meta, [pid(a)])
        assert b.store.has(meta.digest)
        assert a.dataplane.stats["errors"] == 2
        assert a.dataplane.log.lines == 1 and a.dataplane.log.suppressed == 1
