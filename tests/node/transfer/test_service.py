"""Transfer service end to end: real py-libp2p hosts and data-plane sockets on 127.0.0.1.

Senders that must die mid-blob, and receivers whose memory is measured, run
as separate processes (tests/support/transfer_peer.py)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.transfer import transfer_service

from node.keys import peer_id_of
from node.p2p import open_host
from node.transfer.blobstore import BlobMeta, QuotaExceeded
from node.transfer.service import TransferFailed, TransferRefused, TransferService
from protocol import cbor
from protocol.envelope import open_envelope, seal
from protocol.transfer import (
    HEADER_SIZE,
    ChunkRange,
    DataError,
    Direction,
    FrameOpener,
    FrameSealer,
    FrameType,
    GetChunkList,
    Request,
    TransferError,
    decode_header,
    derive_keys,
    encode_preamble,
)

ROOT = Path(__file__).resolve().parents[3]
PEER = ROOT / "tests" / "support" / "transfer_peer.py"
CS = 64 << 10


@asynccontextmanager
async def services(tmp: Path, n: int, **kw: object) -> AsyncIterator[list[TransferService]]:
    """n transfer services, each on its own libp2p host, all knowing each other's addresses."""
    out: list[TransferService] = []
    async with trio.open_nursery() as nursery:
        hosts = []
        for i in range(n):
            key = Ed25519PrivateKey.generate()
            cm = open_host(key, ["/ip4/127.0.0.1/tcp/0"])
            host = await _enter(nursery, cm)
            hosts.append(host)
            out.append(await _enter(nursery, transfer_service(host, key, tmp / f"n{i}", **kw)))
        for svc in out:
            for h in hosts:
                svc.addrs[h.peer_id] = h.listen_addrs
        yield out
        nursery.cancel_scope.cancel()


async def _enter(nursery: trio.Nursery, cm):  # type: ignore[no-untyped-def]
    """Run an async context manager in a nursery task; return what it yields."""

    async def hold(task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        async with cm as value:
            task_status.started(value)
            await trio.sleep_forever()

    return await nursery.start(hold)


def pid(svc: TransferService) -> str:
    return str(svc._p2p.peer_id)


async def put(svc: TransferService, data: bytes, chunk_size: int = CS) -> BlobMeta:
    assert svc.store is not None
    return await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, data, chunk_size=chunk_size))


async def test_fetch_verifies_and_reports_progress(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        data = os.urandom(40 * CS + 123)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        got = await b.fetch(meta, [pid(a)])
        assert got.digest == meta.digest
        assert b.store is not None and b.store.path_of(meta.digest).read_bytes() == data
        snap = b.progress[meta.digest].snapshot()
        assert snap["phase"] == "done" and snap["done_bytes"] == len(data)
        assert snap["sources"] == {pid(a): len(data)}
        assert b.stats["chunks_received"] == 41


async def test_corrupt_chunk_from_one_of_two_sources(tmp_path: Path) -> None:
    async with services(tmp_path, 3) as (good, bad, rx):
        data = os.urandom(200 * CS)
        meta = await put(good, data)
        await put(bad, data)
        assert bad.store is not None
        path = bad.store.path_of(meta.digest)  # the bad peer's disk rots: every chunk differs
        os.chmod(path, 0o644)
        fd = os.open(path, os.O_RDWR)
        for i in range(200):
            os.pwrite(fd, b"\xff\x00\xff", i * CS + 5)
        os.close(fd)
        for s in (good, bad):
            s.grant(pid(rx), meta.digest, Direction.FETCH)
        await rx.fetch(meta, [pid(good), pid(bad)])
        assert rx.store is not None and rx.store.path_of(meta.digest).read_bytes() == data
        assert rx.stats["corrupt_chunks"] >= 1  # detected ...
        assert rx.penalties.get(pid(bad), 0) >= 1 and pid(good) not in rx.penalties  # ... blamed
        prog = rx.progress[meta.digest]
        assert prog.penalised == [pid(bad)]
        assert prog.sources == {pid(good): len(data)}  # ... and refetched from the good source
        assert bad.dataplane is not None and bad.dataplane.stats["chunks_sent"] >= 1


async def test_dedup_of_a_shared_layer(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        layer = await put(a, os.urandom(8 * CS))
        a.grant(pid(b), layer.digest, Direction.FETCH)
        await b.fetch(layer, [pid(a)])  # image 1 brings the base layer
        assert a.dataplane is not None
        sent = a.dataplane.stats["chunks_sent"]
        await b.fetch(layer, [pid(a)])  # image 2 shares it: nothing moves
        assert b.stats["dedup_hits"] == 1 and b.stats["fetches"] == 1
        assert a.dataplane.stats["chunks_sent"] == sent
        a.revoke(pid(b))
        await b.fetch(layer, [pid(a)])  # a dedup needs no source at all


async def test_unauthorised_peer_is_refused(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(3 * CS))
        with pytest.raises(TransferFailed, match="unauthorized"):
            await b.fetch(meta, [pid(a)])
        stream = await b.open_stream(pid(a))
        with pytest.raises(TransferRefused) as exc:
            await b.ask(stream, GetChunkList(digest=meta.digest), GetChunkList)
        assert exc.value.reason == "unauthorized"
        assert b.store is not None and not b.store.has(meta.digest)
        a.grant(pid(b), meta.digest, Direction.FETCH)  # the node kept serving: now allowed
        await b.fetch(meta, [pid(a)])


async def test_malformed_and_oversized_control_requests(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        stream = await b.open_stream(pid(a))
        await stream.send_frame(cbor.encode({"not": "an envelope"}))
        err = open_envelope(await stream.receive_frame(1 << 20), expected=TransferError, signer=pid(a))
        assert err.message.reason == "malformed"

        stream = await b.open_stream(pid(a))
        await stream._stream.write(bytes([0x81, 0x80, 0x80, 0x04]))  # announces 8 MiB + 1
        err = open_envelope(await stream.receive_frame(1 << 20), expected=TransferError, signer=pid(a))
        assert err.message.reason == "oversize"

        stream = await b.open_stream(pid(a))  # a message of the wrong type
        await stream.send_frame(seal(TransferError(reason="x", detail=""), b._key).raw)
        err = open_envelope(await stream.receive_frame(1 << 20), expected=TransferError, signer=pid(a))
        assert err.message.reason == "unexpected_type"


async def _data_conn(svc: TransferService, meta: BlobMeta, peer: str):  # type: ignore[no-untyped-def]
    assert svc.dataplane is not None
    ticket = svc.dataplane.issue(peer, meta)
    stream = await trio.open_tcp_stream(ticket.host, ticket.port)
    c2s, s2c = derive_keys(ticket.secret, ticket.ticket_id)
    await stream.send_all(encode_preamble(ticket.ticket_id))
    return stream, FrameSealer(c2s), FrameOpener(s2c), ticket


async def _read_frame(stream: trio.SocketStream, opener: FrameOpener) -> tuple[FrameType, int, bytes]:
    buf = b""
    while len(buf) < HEADER_SIZE:
        buf += await stream.receive_some(HEADER_SIZE - len(buf))
    kind, index, length = decode_header(buf, from_server=True)
    body = b""
    while len(body) < length:
        body += await stream.receive_some(length - len(body))
    return kind, index, opener.open(buf, body)


async def test_data_plane_rejects_bad_requests_and_tickets(tmp_path: Path) -> None:
    async with services(tmp_path, 1) as (a,):
        meta = await put(a, os.urandom(4 * CS))
        # a request past the last chunk gets an ERROR frame naming the reason
        stream, sealer, opener, _ = await _data_conn(a, meta, "peer")
        await stream.send_all(b"".join(sealer.seal(FrameType.REQUEST, 0, Request(ranges=(ChunkRange(start=2, end=9),)).encode())))
        kind, _, body = await _read_frame(stream, opener)
        assert kind is FrameType.ERROR
        assert DataError.decode(body).reason == "bad_chunk_index"
        # a valid request is served, then END
        stream, sealer, opener, ticket = await _data_conn(a, meta, "peer")
        await stream.send_all(b"".join(sealer.seal(FrameType.REQUEST, 0, Request(ranges=(ChunkRange(start=1, end=2),)).encode())))
        kind, index, body = await _read_frame(stream, opener)
        assert (kind, index) == (FrameType.CHUNK, 1) and len(body) == CS
        assert (await _read_frame(stream, opener))[0] is FrameType.END
        # tickets are single use: replaying the preamble gets the connection closed
        replay = await trio.open_tcp_stream(ticket.host, ticket.port)
        await replay.send_all(encode_preamble(ticket.ticket_id))
        assert await replay.receive_some(100) == b""
        # an oversized frame header is refused before any body is read
        stream, sealer, opener, _ = await _data_conn(a, meta, "peer")
        await stream.send_all(bytes([1, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]))
        kind, _, body = await _read_frame(stream, opener)
        assert kind is FrameType.ERROR and DataError.decode(body).reason == "oversize"
        assert cbor.decode(body)["reason"] == "oversize"


async def test_upload_is_authorised_and_size_limited(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (submitter, provider):
        data = os.urandom(6 * CS)
        meta = await put(submitter, data)
        with pytest.raises(TransferRefused) as exc:
            await submitter.push(pid(provider), meta)
        assert exc.value.reason == "unauthorized"
        provider.grant(pid(submitter), meta.digest, Direction.UPLOAD, max_size=len(data) - 1)
        with pytest.raises(TransferRefused) as exc:
            await submitter.push(pid(provider), meta)
        assert exc.value.reason == "too_large"
        provider.grant(pid(submitter), meta.digest, Direction.UPLOAD, max_size=len(data))
        await submitter.push(pid(provider), meta)
        assert provider.store is not None and provider.store.path_of(meta.digest).read_bytes() == data
        assert not submitter.authorize(pid(provider), meta.digest, Direction.FETCH)  # grant was temporary


async def test_quota_exceeded_before_any_chunk_moves(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        assert b.store is not None
        b.store.quota = 4 * CS
        meta = await put(a, os.urandom(8 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)
        with pytest.raises(QuotaExceeded, match="quota is 262144 bytes"):
            await b.fetch(meta, [pid(a)])
        assert b.stats["chunks_received"] == 0
        assert a.dataplane is not None and a.dataplane.stats["chunks_sent"] == 0


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(PEER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _info(p: subprocess.Popen[str]) -> dict:
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, f"peer process exited (rc {p.poll()})"
    return json.loads(line)


async def test_resume_after_sender_killed_moves_only_missing_chunks(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = os.urandom(256 * CS)  # 16 MiB, 256 chunks
    blob.write_bytes(data)
    party = peer_id_of(Ed25519PrivateKey.generate())  # whom both fetches are for: a resume is per party
    async with services(tmp_path, 1) as (rx,):
        me = pid(rx)
        first = _spawn("serve", os.urandom(32).hex(), str(tmp_path / "s1"), str(blob), me)
        try:
            info = await trio.to_thread.run_sync(_info, first)
            rx.addrs[info["peer_id"]] = info["addrs"]
            meta = BlobMeta(info["digest"], info["size"], info["chunk_size"], info["chunk_root"])

            def kill_midway(prog) -> None:  # type: ignore[no-untyped-def]
                if prog.done_bytes >= 20 * CS and first.poll() is None:
                    os.kill(first.pid, signal.SIGKILL)
                    first.wait()

            rx.on_progress = kill_midway
            with pytest.raises(TransferFailed, match="kept"):
                await rx.fetch(meta, [info["peer_id"]], on_behalf_of=party)
        finally:
            first.kill()
            first.wait()
        rx.on_progress = None
        moved_first = rx.stats["chunks_received"]
        assert rx.store is not None
        held = rx.store.held_chunks(meta.digest)
        assert held is not None and held[1] is not None
        kept = len(held[1])
        assert 20 <= moved_first == kept < 256  # mid-blob; everything verified was kept

        second = _spawn("serve", os.urandom(32).hex(), str(tmp_path / "s2"), str(blob), me)
        try:
            info2 = await trio.to_thread.run_sync(_info, second)
            rx.addrs[info2["peer_id"]] = info2["addrs"]
            await rx.fetch(meta, [info2["peer_id"]], on_behalf_of=party)
        finally:
            assert second.stdin is not None
            second.stdin.close()
            second.wait()
        assert rx.stats["chunks_received"] - moved_first == 256 - kept  # only the missing chunks moved
        assert rx.store.path_of(meta.digest).read_bytes() == data


async def test_big_blob_with_bounded_receiver_memory(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    size = 200 << 20
    block = bytearray(os.urandom(1 << 20))
    fd = os.open(blob, os.O_WRONLY | os.O_CREAT, 0o600)
    for i in range(size >> 20):
        block[:4] = i.to_bytes(4, "big")  # distinct chunks, cheap to make
        os.write(fd, block)
    os.close(fd)
    seed_rx = os.urandom(32).hex()
    rx_id = peer_id_of(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_rx)))
    sender = _spawn("serve", os.urandom(32).hex(), str(tmp_path / "s"), str(blob), rx_id)
    try:
        info = await trio.to_thread.run_sync(_info, sender)
        blob.unlink()
        rx = _spawn("fetch", seed_rx, str(tmp_path / "r"), json.dumps([info]))
        res = await trio.to_thread.run_sync(_info, rx)
        rx.wait()
    finally:
        assert sender.stdin is not None
        sender.stdin.close()
        sender.wait()
    assert res["stored"] and res["stats"]["bytes_received"] == size + (256 << 10)  # + warm-up
    growth_mib = (res["peak_rss_kib"] - res["rss_before_kib"]) / 1024
    # a few chunk buffers, thread arenas and hash blocks: bounded, far below the blob
    assert growth_mib < 40, f"receiver RSS grew {growth_mib:.0f} MiB for a 200 MiB blob: {res}"


async def test_daemon_runs_the_service_with_config_and_progress_api(tmp_path: Path) -> None:
    from node.api.client import ApiClient
    from node.config import load_config
    from node.daemon import run_node

    cfg = load_config(None, {"node.data_dir": str(tmp_path / "d"), "node.listen": ["/ip4/127.0.0.1/tcp/0"],
                             "transfer.quota_mib": 64})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(functools.partial(run_node, cfg))
        svc: TransferService = node.transfer
        assert svc.store is not None and svc.store.quota == 64 << 20
        async with services(tmp_path, 1) as (src,):
            meta = await put(src, os.urandom(5 * CS))
            src.grant(node.peer_id, meta.digest, Direction.FETCH)
            svc.addrs[pid(src)] = src._p2p.listen_addrs
            await svc.fetch(meta, [pid(src)])
        client = ApiClient(tmp_path / "d")
        listing = await trio.to_thread.run_sync(client.get, "/v1/transfers")
        assert listing["stats"]["chunks_received"] == 5
        one = await trio.to_thread.run_sync(client.get, f"/v1/transfers/{meta.digest}")
        assert one["phase"] == "done" and one["done_bytes"] == 5 * CS and one["eta_s"] is None
        from node.cli.transfers import render

        assert "100.0%" in render(one) and "#" * 30 in render(one)  # the CLI's progress bar
        assert "cpn_transfer_bytes_received_total" in node.metrics.render()
        node.stop()


async def test_cancelled_fetch_keeps_verified_chunks_and_resumes(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        data = os.urandom(96 * CS)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        with trio.CancelScope() as scope:
            b.on_progress = lambda p: scope.cancel() if p.done_bytes >= 16 * CS else None
            await b.fetch(meta, [pid(a)])
        assert scope.cancelled_caught
        b.on_progress = None
        first = b.stats["chunks_received"]
        assert 16 <= first < 96 and b.progress[meta.digest].phase == "failed"
        await b.fetch(meta, [pid(a)])  # e.g. the job asks again after a restart
        assert b.stats["chunks_received"] == 96  # the first run's chunks did not move again
        assert b.store is not None and b.store.path_of(meta.digest).read_bytes() == data


async def test_fetch_many_pins_dedups_and_fetches_in_parallel(tmp_path: Path) -> None:
    async with services(tmp_path, 2) as (a, b):
        base_data = os.urandom(6 * CS)
        base = await put(a, base_data)
        await put(b, base_data)  # a shared base layer b already holds ...
        assert b.store is not None
        b.store.mark_public(base.digest)  # ... that its operator imported for everyone
        top = await put(a, os.urandom(9 * CS))
        cfg = await put(a, b'{"config": true}')
        assert b.store is not None
        for m in (base, top, cfg):
            a.grant(pid(b), m.digest, Direction.FETCH)
        got = await b.fetch_many([cfg, base, top, base], [pid(a)], owner="job-7")
        assert [m.digest for m in got] == [cfg.digest, base.digest, top.digest, base.digest]
        assert b.stats["fetches"] == 2 and b.stats["dedup_hits"] == 1  # base did not move
        assert all(b.store.pinned(m.digest) == ["job-7"] for m in (base, top, cfg))
        await trio.to_thread.run_sync(b.store.gc)
        assert all(b.store.has(m.digest) for m in (base, top, cfg))  # pinned: kept
        b.store.unpin("job-7")
        await trio.to_thread.run_sync(b.store.gc)
        assert not b.store.has(top.digest)


async def test_local_write_error_fails_clearly_keeps_verified_chunks_and_blames_no_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's disk fails under one chunk (ENOSPC): the fetch fails naming
    the error, the source is not penalised (not its fault), no chunk is recorded
    that was not written, and the next fetch moves only what is missing.

    The failing chunk ends a request, and the request's END is held back until
    that write has failed, so the failure is still in the receive pipeline when
    the batch is reported: the case where a report must not call it written."""
    import errno
    import threading

    from node.transfer import blobstore, dataplane

    async with services(tmp_path, 2) as (a, b):
        data = os.urandom(64 * CS)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        real_write = blobstore.PartialBlob.write_verified
        real_read = dataplane.ThreadSocket.read_frame
        failed: list[int] = []
        write_failed = threading.Event()
        seen_47 = threading.Event()

        def flaky(self: blobstore.PartialBlob, index: int, chunk: bytes | memoryview) -> None:
            if index == 47 and not failed:
                failed.append(index)
                write_failed.set()
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(self, index, chunk)

        def read_frame(self: dataplane.ThreadSocket, from_server: bool, *args: object, **kw: object) -> object:
            kind, header, body = real_read(self, from_server, *args, **kw)  # type: ignore[arg-type]
            if from_server and kind is FrameType.CHUNK and int.from_bytes(header[4:8], "big") == 47:
                seen_47.set()
            elif from_server and kind is FrameType.END and seen_47.is_set() and not failed:
                assert write_failed.wait(10)  # bounded: the writer thread gets to chunk 47 first
            return kind, header, body

        monkeypatch.setattr(blobstore.PartialBlob, "write_verified", flaky)
        monkeypatch.setattr(dataplane.ThreadSocket, "read_frame", read_frame)
        with pytest.raises(TransferFailed, match="No space left on device"):
            await b.fetch(meta, [pid(a)])
        assert failed == [47] and pid(a) not in b.penalties
        assert b.store is not None and not b.store.has(meta.digest)
        first = b.stats["chunks_received"]
        assert 0 < first < 64
        await b.fetch(meta, [pid(a)])
        assert b.stats["chunks_received"] == 64  # kept chunks did not move again, chunk 47 did
        assert b.store.path_of(meta.digest).read_bytes() == data


async def test_partial_holder_serves_only_the_chunks_it_holds(tmp_path: Path) -> None:
    """A peer that has part of a blob (an interrupted fetch) says which chunks in
    its Have bitmap and serves exactly those: a third peer fetching only from it
    gets those chunks (verified) and a clear failure for the rest, then finishes
    from a complete holder without moving them again.  A data-plane request for
    a chunk the partial holder lacks gets ERROR not_held."""
    async with services(tmp_path, 3) as (a, b, c):
        data = os.urandom(96 * CS)
        meta = await put(a, data)
        for holder in (a, b):
            holder.grant(pid(b), meta.digest, Direction.FETCH)
            holder.grant(pid(c), meta.digest, Direction.FETCH)
        with trio.CancelScope() as scope:
            b.on_progress = lambda p: scope.cancel() if p.done_bytes >= 16 * CS else None
            await b.fetch(meta, [pid(a)])
        assert b.store is not None and not b.store.has(meta.digest)
        held_b = b.store.held_chunks(meta.digest)
        assert held_b is not None and held_b[1] is not None
        held = set(held_b[1])
        assert 16 <= len(held) < 96

        with pytest.raises(TransferFailed, match="missing"):  # for a's job: a vouches for b
            await c.fetch(meta, [pid(b)], on_behalf_of=pid(a))  # b cannot provide the rest: a clear failure

        assert pid(b) not in c.penalties
        assert c.store is not None
        kept = c.store.held_chunks(meta.digest)
        assert kept is not None and kept[1] == held  # exactly what b holds, all verified
        assert c.progress[meta.digest].sources == {pid(b): len(held) * CS}
        await c.fetch(meta, [pid(a)])  # the same party: the kept chunks count
        assert c.stats["chunks_received"] == 96  # b's chunks did not move again
        assert c.store.path_of(meta.digest).read_bytes() == data

        # the data plane refuses a chunk the partial holder does not have
        lacking = min(set(range(96)) - held)
        bmeta = held_b[0]
        assert b.dataplane is not None
        ticket = b.dataplane.issue("peer", bmeta, held=lambda: held)
        stream = await trio.open_tcp_stream(ticket.host, ticket.port)
        c2s, s2c = derive_keys(ticket.secret, ticket.ticket_id)
        await stream.send_all(encode_preamble(ticket.ticket_id))
        req = Request(ranges=(ChunkRange(start=lacking, end=lacking + 1),)).encode()
        await stream.send_all(b"".join(FrameSealer(c2s).seal(FrameType.REQUEST, 0, req)))
        kind, _, body = await _read_frame(stream, FrameOpener(s2c))
        assert kind is FrameType.ERROR and DataError.decode(body).reason == "not_held"


async def test_owner_names_other_holders_and_grants_fetching_from_them(tmp_path: Path) -> None:
    """A blob's owner (a submitter) answers WhoHas with the peers it knows hold
    the blob (providers of its earlier jobs), each with a FetchGrant it signed;
    the fetcher presents the grant and fetches from the owner and the holder at
    once.  A holder accepts only grants naming it and the presenter, unexpired,
    signed by a peer that owns the blob there."""
    from protocol.transfer import FetchGrant, Present, WhoHas

    async with services(tmp_path, 4) as (owner, holder, fetcher, stranger):
        data = os.urandom(400 * CS)
        meta = await put(owner, data)
        owner.grant(pid(holder), meta.digest, Direction.FETCH)  # an earlier job ran on holder
        await holder.fetch(meta, [pid(owner)])  # for owner's job: owner delivered it there
        assert holder.store is not None and holder.store.suppliers(meta.digest) == [pid(owner)]
        ghost = peer_id_of(Ed25519PrivateKey.generate())  # a former provider, now offline
        owner.holders_of = lambda digest: (
            [(pid(holder), []), (ghost, ["/ip4/127.0.0.1/tcp/1"])] if digest == meta.digest else [])
        owner.grant(pid(fetcher), meta.digest, Direction.FETCH)  # the new job's provider

        await fetcher.fetch(meta, [pid(owner)], discover=True)
        assert ghost in fetcher.unreachable  # skipped, and not dialled again for a while
        assert fetcher.store is not None and fetcher.store.path_of(meta.digest).read_bytes() == data
        sources = fetcher.progress[meta.digest].sources
        assert set(sources) == {pid(owner), pid(holder)} and sum(sources.values()) == len(data)
        assert holder.dataplane is not None and holder.dataplane.stats["chunks_sent"] > 0

        # the holder refuses grants it must not honour; each refusal is clear
        now = int(holder.now())

        async def present(by: TransferService, signer: TransferService, **fields: object) -> str:
            g = {"digest": meta.digest, "grantee": pid(by), "holder": pid(holder), "expires_at": now + 60, **fields}
            stream = await by.open_stream(pid(holder))
            with pytest.raises(TransferRefused) as exc:
                await by.ask(stream, Present(grant=seal(FetchGrant(**g), signer._key).raw), Present)  # type: ignore[arg-type]
            return exc.value.reason

        holder.serve_granted = False  # the operator opted out: even a valid grant is refused
        assert await present(stranger, owner, grantee=pid(stranger)) == "unauthorized"
        holder.serve_granted = True
        assert await present(stranger, stranger) == "unauthorized"  # signed by a non-owner
        assert await present(stranger, owner, grantee=pid(fetcher)) == "unauthorized"  # names another peer
        assert await present(stranger, owner, holder=pid(fetcher)) == "unauthorized"  # another holder
        assert await present(stranger, owner, grantee=pid(stranger), expires_at=now - 1) == "expired"
        assert await present(stranger, owner, grantee=pid(stranger), expires_at=now + 7200) == "expired"
        # a stranger with no agreement gets no names from the owner
        stream = await stranger.open_stream(pid(owner))
        with pytest.raises(TransferRefused) as exc:
            await stranger.ask(stream, WhoHas(digests=(meta.digest,)), WhoHas)
        assert exc.value.reason == "unauthorized"
        with pytest.raises(TransferFailed, match="unauthorized"):
            await stranger.fetch(meta, [pid(holder)])  # no grant presented: the holder refuses


async def test_a_connection_with_nothing_to_fetch_ends_cleanly(tmp_path: Path) -> None:
    """A source given no chunk (an empty blob; or others took every chunk) still
    opens its data connection with the preamble before its STOP: the holder saw
    a bare STOP as "not a CPN transfer data connection" and logged it."""
    async with services(tmp_path, 2) as (a, b):
        meta = await put(a, b"")
        a.grant(pid(b), meta.digest, Direction.FETCH)
        got = await b.fetch(meta, [pid(a)])
        assert got.digest == meta.digest and got.size == 0
        with trio.fail_after(10):
            while a.dataplane.stats["connections"] == 0 or a.dataplane._conns:
                await a.dataplane.conn_ended.wait()
        assert a.dataplane.stats["rejected"] == 0 and a.dataplane.stats["errors"] == 0
