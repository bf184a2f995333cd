"""The transfer data plane: a direct TCP connection carrying AEAD-sealed chunk frames.

Why not libp2p for bulk data: a py-libp2p Noise+yamux stream moves ~100 MiB/s
on these machines, raw trio TCP >1 GiB/s.  Admission and keys come from a
:class:`~protocol.transfer.Ticket` issued over the signed, Noise-encrypted
control stream, so this connection needs no handshake of its own: the client
names the ticket in a plaintext preamble and proves it holds the secret with
its first sealed frame (spec/transfer.md, "Security").

The hot loops run in worker threads, one request (16 chunks) per thread call,
so the event loop pays one switch per request rather than several per chunk.
Each side is a pipeline of threads over a ring of SLOTS chunk buffers: the
server reads + seals in one thread while another sends; the client receives
in one thread, decrypts + verifies in a second, and writes (O_DIRECT, see
node/blobstore.py) in a third.
AES-GCM, SHA-256 and the socket and file calls release the GIL, so the stages
run on different cores.  Requests are pipelined (WINDOW outstanding per
source) so the pipe never drains while the event loop does bookkeeping.
Memory is SLOTS ciphertext and SLOTS plaintext chunk buffers per connection
and side (24 MiB for 1 MiB chunks), independent of the blob size.  Twelve
slots rather than six absorb the O_DIRECT write latency: +10-30 % at 1 GiB.

Measured (docs/benchmarks.md, "Transfer"): one SHA-256 pass per chunk
(~0.6 ms/MiB at SHA-NI speed) is the largest cost; the chained chunk list
(protocol/chunks.py) makes it also the whole-blob check, so there is no
second pass.  Writing through the page cache used to add 1-4 ms/MiB more.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import logging
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from node.transfer.blobstore import BlobMeta, BlobStore, CorruptChunk, PartialBlob
from protocol import cbor
from protocol.errors import ProtocolError
from protocol.transfer import (
    HEADER_SIZE,
    MAX_BODY,
    PREAMBLE_SIZE,
    TAG_SIZE,
    ChunkScheduler,
    DataError,
    FrameOpener,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    decode_header,
    decode_preamble,
    derive_keys,
    encode_header,
    encode_preamble,
    ranges_of,
)

__all__ = ["DataPlaneServer", "SourceBanned", "fetch_from_source", "FetchState", "leaf_error"]

log = logging.getLogger("cpn.transfer.data")

HANDSHAKE_TIMEOUT = 10.0  #: seconds for the preamble and first request
IDLE_TIMEOUT = 60.0  #: seconds without a frame before a connection is dropped
TICKET_TTL = 60  #: seconds a ticket stays valid (single use)
BATCH = 16  #: chunks per Request frame
WINDOW = 3  #: Request frames outstanding per source (keeps the pipe full)
SLOTS = 12  #: chunk buffers per connection and side, in a ring (received/sealed, in work, being written)
#: threads decrypting + verifying chunks per connection (the receiver's heaviest stage)
OPENERS = max(1, min(4, os.cpu_count() or 1))
#: Memory per connection: SLOTS ciphertext and SLOTS plaintext chunk buffers on each side.
_CONTROL_LIMITS = cbor.Limits(max_size=64 << 10, max_depth=8, max_items=2048)


_CONN_ERRORS = (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, OSError)


def leaf_error(eg: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, skipping cancellations."""
    while isinstance(eg, BaseExceptionGroup):
        real = [e for e in eg.exceptions if not isinstance(e, trio.Cancelled)]
        eg = (real or list(eg.exceptions))[0]
    return eg


class SourceBanned(Exception):
    """This source sent too many corrupt chunks; the fetch continues without it."""


@dataclass
class _Grant:
    peer: str
    meta: BlobMeta
    secret: bytes
    expires_at: float
    #: for a partial blob: the chunks held now (asked per request); None: complete
    held: Callable[[], Collection[int]] | None = None


# --------------------------------------------------------------------------- server


class DataPlaneServer:
    """Serves chunks of stored blobs (complete, or the held chunks of a partial one)
    to holders of tickets issued by :meth:`issue`."""

    def __init__(self, store: BlobStore, *, host: str = "127.0.0.1", port: int = 0,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.host = host
        self.port = port
        self._now = now
        self._tickets: dict[bytes, _Grant] = {}
        self.stats = {"connections": 0, "rejected": 0, "chunks_sent": 0, "bytes_sent": 0}

    def issue(self, peer: str, meta: BlobMeta, held: Callable[[], Collection[int]] | None = None) -> Ticket:
        """A single-use ticket for ``peer`` to fetch chunks of ``meta`` (caller
        authorised it); ``held`` for a partial blob: which chunks may be served."""
        now = self._now()
        for tid in [t for t, g in self._tickets.items() if g.expires_at < now]:
            del self._tickets[tid]
        tid, secret = os.urandom(16), os.urandom(32)
        self._tickets[tid] = _Grant(peer, meta, secret, now + TICKET_TTL, held)
        return Ticket(ticket_id=tid, secret=secret, digest=meta.digest, host=self.host,
                      port=self.port, expires_at=int(now + TICKET_TTL))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started((self.host, self.port))
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.stats["connections"] += 1
        # The connection leaves trio: a blocking socket driven from worker
        # threads moves a whole chunk per system call with the GIL released.
        sock = socket.socket(fileno=stream.socket.detach())
        with sock:
            try:
                async with _shutdown_on_cancel(sock):
                    await self._serve_inner(ThreadSocket(sock, HANDSHAKE_TIMEOUT))
            except BaseExceptionGroup as eg:
                exc = leaf_error(eg)
                if not isinstance(exc, _CONN_ERRORS):
                    raise
                log.info("data connection dropped: %s", exc)
            except _CONN_ERRORS as exc:
                log.info("data connection dropped: %s", exc)

    async def _serve_inner(self, conn: ThreadSocket) -> None:
        pre = memoryview(bytearray(PREAMBLE_SIZE))
        await trio.to_thread.run_sync(conn.recv_exactly, pre)
        tid = decode_preamble(bytes(pre))
        grant = self._tickets.pop(tid, None)
        if grant is None or grant.expires_at < self._now():
            self.stats["rejected"] += 1
            raise ProtocolError("bad_ticket", "unknown, used or expired ticket")
        c2s, s2c = derive_keys(grant.secret, tid)
        opener, sealer = FrameOpener(c2s), FrameSealer(s2c)
        meta = grant.meta
        fd, complete = await trio.to_thread.run_sync(self.store.open_for_serving, meta.digest)
        held = None if complete else grant.held  # completed since the ticket: serve it whole
        # Complete blobs are immutable (read-only, replaced only by rename), so
        # the sealer can encrypt straight from a read-only mapping of the page
        # cache: no read() copy.  A partial blob is still being written (by
        # O_DIRECT, which bypasses any mapping), so its held chunks are read
        # with preadv.  An empty blob has no chunks to map.
        mapped = mmap.mmap(fd, meta.size, prot=mmap.PROT_READ) if meta.size and held is None else None
        if mapped is not None:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        try:
            send_req, recv_req = trio.open_memory_channel[Request | DataError](16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_requests, conn, opener, meta, held, send_req)
                await self._send_chunks(conn, sealer, mapped, fd, meta, recv_req)
                nursery.cancel_scope.cancel()
        finally:
            if mapped is not None:
                with contextlib.suppress(BufferError):  # a view still referenced (a traceback): GC unmaps it
                    mapped.close()
            os.close(fd)

    async def _read_requests(self, conn: ThreadSocket, opener: FrameOpener, meta: BlobMeta,
                             held: Callable[[], Collection[int]] | None,
                             out: trio.MemorySendChannel[Request | DataError]) -> None:
        n = (meta.size + meta.chunk_size - 1) // meta.chunk_size
        first = True
        async with out:
            while True:
                try:
                    kind, header, body = await trio.to_thread.run_sync(conn.read_frame, False)
                except ConnectionError:
                    return
                except ProtocolError as exc:
                    await out.send(DataError(reason=exc.reason, detail=exc.detail))
                    return
                plain = opener.open(header, body)  # a bad tag: not the ticket holder, drop
                if first:
                    conn.set_timeout(IDLE_TIMEOUT)
                    first = False
                if kind is FrameType.STOP:
                    return
                try:
                    req = Request.decode(plain, _CONTROL_LIMITS)
                    if any(r.end > n for r in req.ranges):
                        raise ProtocolError("bad_chunk_index", f"blob has {n} chunks")
                    if held is not None:
                        have = held()
                        missing = [i for i in req.indexes() if i not in have]
                        if missing:
                            raise ProtocolError("not_held", f"chunk {missing[0]} is not held here yet"
                                                f" ({len(missing)} of the request)")
                except ProtocolError as exc:
                    await out.send(DataError(reason=exc.reason, detail=exc.detail))
                    return
                await out.send(req)

    async def _send_chunks(self, conn: ThreadSocket, sealer: FrameSealer, blob: mmap.mmap | None, fd: int,
                           meta: BlobMeta,
                           requests: trio.MemoryReceiveChannel[Request | DataError]) -> None:
        """Serve requests in order.  A whole request runs in one worker thread
        that sends frames while a sealer thread seals the next ones straight
        from the mapped blob (SLOTS frame buffers in a ring), so AES-GCM and
        the socket copy use different cores."""
        frames = [memoryview(bytearray(HEADER_SIZE + meta.chunk_size + TAG_SIZE)) for _ in range(SLOTS)]
        view_of_blob = memoryview(blob) if blob is not None else None
        # without a mapping (a partial blob): read into per-slot buffers
        chunks = [memoryview(bytearray(meta.chunk_size)) for _ in range(SLOTS)] if blob is None and meta.size else []

        def control(kind: FrameType, body: bytes) -> bytes:
            header = encode_header(kind, 0, len(body) + TAG_SIZE)
            return header + sealer.seal_with(sealer.next_nonce(), header, body)

        def seal_chunk(slot: int, index: int, nonce: bytes) -> memoryview:
            """Sealer thread: read chunk ``index`` and seal it into frame buffer ``slot``."""
            start = index * meta.chunk_size
            length = min(meta.chunk_size, meta.size - start)
            if view_of_blob is not None:
                data = view_of_blob[start : start + length]
            else:
                data = chunks[slot][:length]
                if os.preadv(fd, [data], start) != length:
                    raise OSError(f"short read of chunk {index} of {meta.digest}")
            if len(data) != length:
                raise OSError(f"short read of chunk {index} of {meta.digest}")
            header = encode_header(FrameType.CHUNK, index, length + TAG_SIZE)
            view = frames[slot]
            view[:HEADER_SIZE] = header
            end = HEADER_SIZE + length + TAG_SIZE
            sealer.seal_into(nonce, header, data, view[HEADER_SIZE:end])
            return view[:end]

        def send_batch(pool: concurrent.futures.ThreadPoolExecutor, indexes: list[int]) -> int:
            sent = 0
            pending: collections.deque[concurrent.futures.Future[memoryview]] = collections.deque()
            try:
                for k, index in enumerate(indexes):
                    if len(pending) == SLOTS:  # the oldest slot must be sent before it is refilled
                        frame = pending.popleft().result()
                        conn.send_all(frame)
                        sent += len(frame) - HEADER_SIZE - TAG_SIZE
                    # nonces are taken here, in send order; sealing may run ahead
                    pending.append(pool.submit(seal_chunk, k % SLOTS, index, sealer.next_nonce()))
                while pending:
                    frame = pending.popleft().result()
                    conn.send_all(frame)
                    sent += len(frame) - HEADER_SIZE - TAG_SIZE
            finally:
                for fut in pending:  # never leave the sealer writing into a buffer we drop
                    with contextlib.suppress(Exception):
                        fut.result()
            conn.send_all(control(FrameType.END, b""))
            return sent

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cpn-chunk-sealer") as pool:
            async for item in requests:
                if isinstance(item, DataError):
                    await trio.to_thread.run_sync(conn.send_all, control(FrameType.ERROR, item.encode()))
                    return
                indexes = item.indexes()
                sent = await trio.to_thread.run_sync(send_batch, pool, indexes)
                self.stats["chunks_sent"] += len(indexes)
                self.stats["bytes_sent"] += sent


class ThreadSocket:
    """A blocking socket used only from worker threads.

    Blocking calls with ``MSG_WAITALL`` move a whole frame per system call
    with the GIL released; a non-blocking socket would wake the thread (and
    re-take the GIL, queueing behind the event loop) every few KiB.
    ``SO_RCVTIMEO``/``SO_SNDTIMEO`` bound every call.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.set_timeout(timeout)

    def set_timeout(self, seconds: float) -> None:
        tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def recv_exactly(self, view: memoryview) -> None:
        while view:
            try:
                n = self.sock.recv_into(view, len(view), socket.MSG_WAITALL)
            except BlockingIOError:
                raise TimeoutError("no data on the data connection in time") from None
            if n == 0:
                raise ConnectionError("connection closed mid-frame")
            view = view[n:]

    def send_all(self, data: bytes | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except BlockingIOError:
            raise TimeoutError("the peer stopped reading") from None

    def read_frame(self, from_server: bool, max_body: int = MAX_BODY,
                   into: memoryview | None = None) -> tuple[FrameType, bytes, memoryview]:
        """Header (checked before the body is read), then the body."""
        hdr = bytearray(HEADER_SIZE)
        self.recv_exactly(memoryview(hdr))
        header = bytes(hdr)
        kind, _, length = decode_header(header, from_server=from_server, max_body=max_body)
        target = into if into is not None and kind is FrameType.CHUNK else memoryview(bytearray(length))
        body = target[:length]
        self.recv_exactly(body)
        return kind, header, body


@asynccontextmanager
async def _shutdown_on_cancel(sock: socket.socket) -> AsyncIterator[None]:
    """Worker threads blocked on ``sock`` cannot be cancelled; shutting the
    socket down wakes them, so cancelling the enclosing scope still ends the
    connection promptly."""

    async def watch(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        yield
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- client


@dataclass
class FetchState:
    """Shared by the per-source fetchers of one blob (event-loop side only)."""

    partial: PartialBlob
    scheduler: ChunkScheduler
    changed: trio.Event
    on_chunk: Callable[[str, int, int], None]  #: (source, index, nbytes) after a verified write
    on_corrupt: Callable[[str, int], None]

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def fetch_from_source(state: FetchState, source: str, ticket: Ticket) -> None:
    """Fetch chunks the scheduler assigns to ``source`` until none remain.

    Returns normally when the blob is complete or nothing more can come from
    this source; raises on connection or protocol failure (the caller returns
    this source's chunks to the pool).
    """
    raw = await trio.to_thread.run_sync(
        functools.partial(socket.create_connection, (ticket.host, ticket.port), timeout=HANDSHAKE_TIMEOUT)
    )
    with raw:
        conn = ThreadSocket(raw, IDLE_TIMEOUT)
        async with _shutdown_on_cancel(raw):
            await _fetch_on(conn, state, source, ticket)


async def _fetch_on(conn: ThreadSocket, state: FetchState, source: str, ticket: Ticket) -> None:
    sched, partial = state.scheduler, state.partial
    chunk_size = partial.meta.chunk_size
    c2s, s2c = derive_keys(ticket.secret, ticket.ticket_id)
    sealer, opener = FrameSealer(c2s), FrameOpener(s2c)
    to_send: list[bytes] = [encode_preamble(ticket.ticket_id)]
    outstanding = 0

    def queue_requests() -> None:
        nonlocal outstanding
        while outstanding < WINDOW and (batch := sched.assign(source, BATCH)):
            header, ct = sealer.seal(FrameType.REQUEST, 0, Request(ranges=ranges_of(batch)).encode())
            to_send.append(header + ct)
            outstanding += 1

    # Pipeline over a ring of SLOTS buffer pairs: this worker thread receives
    # frames; opener threads decrypt and verify them; a writer thread
    # writes the verified chunk.  Plaintext buffers are page-aligned (mmap) so the
    # store can write them with O_DIRECT, bypassing the page cache.
    cipher = [memoryview(bytearray(chunk_size + TAG_SIZE)) for _ in range(SLOTS)]
    plains = [memoryview(mmap.mmap(-1, chunk_size)) for _ in range(SLOTS)]
    Write = concurrent.futures.Future[None]
    jobs: list[concurrent.futures.Future[Write | None] | None] = [None] * SLOTS
    # Chunks verify independently (chained chunk list), so OPENERS threads
    # decrypt + verify in parallel; each has its own AES-GCM context.
    opener_pool = concurrent.futures.ThreadPoolExecutor(OPENERS, thread_name_prefix="cpn-chunk-opener")
    local = threading.local()
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cpn-chunk-writer")

    def open_chunk(slot: int, index: int, nonce: bytes, header: bytes, body: memoryview) -> Write | None:
        """Opener thread: decrypt and verify; hand a verified chunk to the writer.
        Returns its write, or None if the chunk is corrupt (nothing written)."""
        plain = plains[slot][: len(body) - TAG_SIZE]
        mine = getattr(local, "opener", None)
        if mine is None:
            mine = local.opener = FrameOpener(s2c)
        mine.open_into(nonce, header, body, plain)  # a bad tag raises: not the ticket's peer
        try:
            partial.verify_chunk(index, plain)
        except CorruptChunk:
            return None
        return writer.submit(partial.write_verified, index, plain)

    def settle(slot: int) -> None:
        """Wait until the slot's chunk is opened and written (its buffers are free)."""
        job, jobs[slot] = jobs[slot], None
        if job is not None and (write := job.result()) is not None:
            write.result()

    def settle_all() -> None:
        first: BaseException | None = None
        for slot in range(SLOTS):
            try:
                settle(slot)
            except BaseException as exc:  # noqa: BLE001 - re-raised below after all slots are free
                first = first or exc
        if first is not None:
            raise first

    Job = concurrent.futures.Future[Write | None]
    carry: list[tuple[int, int, Job]] = []  #: received chunks still being opened/written
    ring = 0  #: next slot; persists across batches so the pipeline never drains between them

    def landed(job: Job) -> bool:
        """The chunk's pipeline is over: opened and either refused or written."""
        if not job.done():
            return False
        if job.exception() is not None or (write := job.result()) is None:
            return True
        return write.done()

    def run_batch(sends: list[bytes], drain: bool) -> list[tuple[int, int, bool]]:
        """Worker thread: send queued requests, then read frames up to the next
        END, passing every chunk down the pipeline.  Returns (index, bytes,
        verified) for every chunk whose pipeline is over (a failed open or write
        raises here), so nothing is reported written that is not; chunks still
        in the pipeline are reported by a later call.  With ``drain`` (no
        further request outstanding) it first waits for all of them."""
        nonlocal ring
        for frame in sends:
            conn.send_all(frame)
        ok = False
        try:
            while True:
                settle(ring)  # the ring wrapped: this slot's previous chunk must be done
                kind, header, body = conn.read_frame(True, chunk_size + TAG_SIZE, into=cipher[ring])
                if kind is FrameType.CHUNK:
                    index = int.from_bytes(header[4:8], "big")
                    # nonces are taken here, in arrival order; opening may lag behind
                    job = opener_pool.submit(open_chunk, ring, index, opener.next_nonce(), header, body)
                    jobs[ring] = job
                    carry.append((index, len(body) - TAG_SIZE, job))
                    ring = (ring + 1) % SLOTS
                    continue
                text = opener.open(header, body)
                if kind is FrameType.ERROR:
                    err = DataError.decode(text, _CONTROL_LIMITS)
                    raise ProtocolError(err.reason, f"sender refused: {err.detail}")
                break  # END
            ok = True
        finally:
            if drain or not ok:
                settle_all()
        done: list[tuple[int, int, Job]] = []
        waiting: list[tuple[int, int, Job]] = []
        for c in carry:  # one landed() per chunk: it may land while we look
            (done if landed(c[2]) else waiting).append(c)
        carry[:] = waiting
        out = []
        for index, length, job in done:
            write = job.result()  # raises if opening failed (a bad tag)
            if write is not None:
                write.result()  # raises if the write failed: never report such a chunk written
            out.append((index, length, write is not None))
        return out

    queue_requests()
    try:
        while True:
            if outstanding == 0:
                # Idle: wait for chunks to return to the pool (another source failed
                # or sent a corrupt chunk) or for the blob to complete.
                while True:
                    queue_requests()
                    if outstanding or sched.complete or sched.stuck() or not any(
                        st.in_flight for st in sched.sources.values()
                    ):
                        break
                    await state.changed.wait()
                if outstanding == 0:
                    break
            sends, to_send = to_send, []
            results = await trio.to_thread.run_sync(run_batch, sends, outstanding == 1)
            outstanding -= 1
            banned = False
            for index, nbytes, ok in results:
                if ok:
                    partial.mark_written(index)
                    sched.received(source, index)
                    state.on_chunk(source, index, nbytes)
                else:
                    banned = sched.corrupt(source, index) or banned
                    state.on_corrupt(source, index)
            state.notify()
            if banned:
                raise SourceBanned(f"{source} sent corrupt chunks")
            queue_requests()
    finally:
        opener_pool.shutdown(wait=True)
        writer.shutdown(wait=True)
    header, ct = sealer.seal(FrameType.STOP, 0, b"")
    with contextlib.suppress(OSError):
        await trio.to_thread.run_sync(conn.send_all, header + ct)
