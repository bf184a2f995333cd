"""The serving side of the transfer data plane (see :mod:`node.transfer.dataplane`).

:meth:`DataPlaneServer.issue` hands out single-use tickets for the control
plane to send; a connection presenting one is served the chunks it requests
of that blob: a complete blob sealed straight from a read-only mapping, a
partial blob's held chunks read with ``preadv``.

What a connection can make the server hold is bounded (:class:`DataLimits`):
the preamble, the first frame and every later request are read on the event
loop with a timeout, so a silent connection holds a socket and a task, never
a thread; connections are capped in all, per source address and, once
admitted, per peer; worker threads (the server's own limiter, not trio's
default one that the blob store and execution share) are held only while a
request's frames are sent, and a frame that cannot leave within
``stall_s`` drops the connection.  A ticket is consumed only by a
connection whose first frame authenticates under its secret, so a thief
who saw a ``ticket_id`` cannot burn the holder's ticket.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import trio

from node.p2p import FramedStream
from node.transfer.blobstore import BlobStore
from node.transfer.blobtypes import BlobMeta, BlobStoreError
from node.transfer.datapath import bridge
from node.transfer.dataplane import (
    SLOTS,
    DataLimits,
    LoopSocket,
    leaf_error,
    shutdown_on_cancel,
)
from node.transfer.guard import PeerLog
from protocol.chunks import chunk_count
from protocol.errors import ProtocolError
from protocol.transfer import (
    HEADER_SIZE,
    PATH_STREAM,
    PATH_TCP,
    PREAMBLE_SIZE,
    TAG_SIZE,
    DataError,
    FrameOpener,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    check_empty_body,
    check_ticket,
    decode_preamble,
    derive_keys,
    encode_header,
    parse_request,
)

__all__ = ["DataPlaneServer", "TICKET_TTL"]

log = logging.getLogger("cpn.transfer.data")

TICKET_TTL = 60  #: seconds a ticket stays valid (single use)

#: what a connection's failure looks like; logged at INFO, anything else at WARNING
_CONN_ERRORS = (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, OSError, BlobStoreError)


@dataclass
class _Grant:
    peer: str
    meta: BlobMeta
    secret: bytes
    expires_at: float
    #: for a partial blob: the chunks held now (asked per request); None: complete
    held: Callable[[], Collection[int]] | None = None


def _control(sealer: FrameSealer, kind: FrameType, body: bytes) -> bytes:
    """A sealed END or ERROR frame (the next nonce of ``sealer``)."""
    header = encode_header(kind, 0, len(body) + TAG_SIZE)
    return header + sealer.seal_with(sealer.next_nonce(), header, body)


@dataclass
class _Admitted:
    """An admitted connection: its peer, blob, keys and the first (authenticated) frame."""

    grant: _Grant
    opener: FrameOpener
    sealer: FrameSealer
    first: tuple[FrameType, bytes]  #: the first frame's type and plaintext


class DataPlaneServer:
    """Serves chunks of stored blobs (complete, or the held chunks of a partial one)
    to holders of tickets issued by :meth:`issue`."""

    def __init__(self, store: BlobStore, *, host: str = "127.0.0.1", port: int = 0,
                 now: Callable[[], float] = time.time, limits: DataLimits | None = None) -> None:
        self.store = store
        self.host = host
        self.port = port
        self._now = now
        self.limits = limits = limits or DataLimits()
        self._tickets: dict[bytes, _Grant] = {}
        self._conns = 0
        self._per_addr: collections.Counter[str] = collections.Counter()
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._streams_per_peer: collections.Counter[str] = collections.Counter()
        #: worker threads that send chunks: the data plane's own, not trio's default limiter
        self.limiter = trio.CapacityLimiter(limits.threads)
        self.log = PeerLog(log)
        self.stats = {"connections": 0, "rejected": 0, "chunks_sent": 0, "bytes_sent": 0,
                      "refused_busy": 0, "errors": 0, "streams": 0}
        self.conn_ended = trio.Event()  #: set (and replaced) whenever a data connection ends

    def issue(self, peer: str, meta: BlobMeta, held: Callable[[], Collection[int]] | None = None,
              paths: tuple[str, ...] = (PATH_TCP, PATH_STREAM)) -> Ticket:
        """A single-use ticket for ``peer`` to fetch chunks of ``meta`` (caller
        authorised it); ``held`` for a partial blob: which chunks may be served.
        A peer holds at most ``tickets_per_peer`` unused tickets: the oldest goes."""
        now = self._now()
        for tid in [t for t, g in self._tickets.items() if g.expires_at < now]:
            del self._tickets[tid]
        mine = [t for t, g in self._tickets.items() if g.peer == peer]
        for tid in mine[: max(0, len(mine) - self.limits.tickets_per_peer + 1)]:
            del self._tickets[tid]
        tid, secret = os.urandom(16), os.urandom(32)
        self._tickets[tid] = _Grant(peer, meta, secret, now + TICKET_TTL, held)
        return Ticket(ticket_id=tid, secret=secret, digest=meta.digest, host=self.host,
                      port=self.port, expires_at=int(now + TICKET_TTL), paths=paths)

    def ticket_peer(self, ticket_id: bytes) -> str | None:
        """The peer a live (unused, unexpired) ticket was issued to (None: no such ticket)."""
        grant = self._tickets.get(ticket_id)
        return grant.peer if grant is not None and grant.expires_at >= self._now() else None

    @property
    def open_connections(self) -> int:
        """Data connections open now (admitted or still in their handshake)."""
        return self._conns

    def tickets_of(self, peer: str) -> int:
        """Unused tickets ``peer`` holds (tests, metrics)."""
        return sum(1 for g in self._tickets.values() if g.peer == peer)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started((self.host, self.port))
        await trio.serve_listeners(self._serve, listeners)

    # ---- one connection

    async def _serve(self, stream: trio.SocketStream) -> None:
        """The accept loop's handler (the connection leaves trio's stream: small
        frames are read on the event loop, chunk frames sent from worker threads)."""
        addr = "?"
        try:
            addr = str(stream.socket.getpeername()[0])
        except OSError:
            pass
        await self.serve_socket(socket.socket(fileno=stream.socket.detach()), addr)

    async def serve_stream(self, stream: FramedStream) -> None:
        """The ``/cpn/transfer/data`` stream handler: the same bytes as a TCP data
        connection, through a socket pair (:func:`node.transfer.datapath.bridge`).
        At most ``conns_per_peer`` data streams per peer, counted before admission;
        the source "address" of a stream is its peer.  Never raises."""
        peer = stream.remote_peer
        if self._streams_per_peer[peer] >= self.limits.conns_per_peer:
            self.stats["refused_busy"] += 1
            self.log.note(peer, "data stream from %s refused: too many open", peer)
            await stream.reset()
            return
        self._streams_per_peer[peer] += 1
        self.stats["streams"] += 1
        ours, theirs = socket.socketpair()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge, stream, ours)
                await self.serve_socket(theirs, f"p2p:{peer}")
        finally:
            ours.close()
            self._streams_per_peer[peer] -= 1
            if not self._streams_per_peer[peer]:
                del self._streams_per_peer[peer]

    async def serve_socket(self, sock: socket.socket, addr: str) -> None:
        """One data connection (a TCP socket, or a socket pair's end for a stream):
        whatever it does or raises ends here (logged, at most one line per source
        address and minute); the socket is closed."""
        self.stats["connections"] += 1
        if self._conns >= self.limits.conns or self._per_addr[addr] >= self.limits.conns_per_addr:
            self.stats["refused_busy"] += 1
            self.log.note(addr, "data connection from %s refused: too many open", addr)
            sock.close()
            return
        self._conns += 1
        self._per_addr[addr] += 1
        try:
            conn = LoopSocket(sock, self.limits.stall_s)
            try:
                await self._serve_conn(conn, addr)
            finally:
                conn.close()
        except BaseExceptionGroup as eg:  # noqa: B036 - a nursery's errors, unwrapped below
            if eg.subgroup(lambda e: not isinstance(e, Exception)) is not None:
                raise  # a cancellation (shutdown) or KeyboardInterrupt is not the connection's doing
            self._failed(addr, leaf_error(eg))
        except Exception as exc:  # noqa: BLE001 - the accept loop must survive any connection
            self._failed(addr, exc)
        finally:
            self._conns -= 1
            self._per_addr[addr] -= 1
            if not self._per_addr[addr]:
                del self._per_addr[addr]
            self.conn_ended.set()
            self.conn_ended = trio.Event()

    def _failed(self, addr: str, exc: BaseException) -> None:
        if isinstance(exc, _CONN_ERRORS):
            log.info("data connection from %s dropped: %s", addr, exc)
            return
        self.stats["errors"] += 1
        self.log.note(addr, "data connection from %s failed: %s: %s", addr, type(exc).__name__, exc)

    async def _admit(self, conn: LoopSocket) -> _Admitted:
        """The preamble and the first frame, on the event loop, within ``handshake_s``.

        The ticket is looked up but consumed only once the first frame opens
        under its key: a connection without the secret leaves it for its holder."""
        with trio.fail_after(self.limits.handshake_s):
            try:
                pre = await conn.receive_exactly(PREAMBLE_SIZE)
            except ConnectionError:
                raise ProtocolError("bad_preamble", "the connection ended inside the preamble") from None
            tid = decode_preamble(pre)
            grant = self._tickets.get(tid)
            check_ticket(grant.expires_at if grant is not None else None, self._now())
            assert grant is not None
            c2s, s2c = derive_keys(grant.secret, tid)
            opener, sealer = FrameOpener(c2s), FrameSealer(s2c)
            try:
                kind, header, body = await conn.read_frame(False)
            except ProtocolError as exc:  # a bad first header: ERROR (readable only with the secret)
                conn.send_nowait(_control(sealer, FrameType.ERROR, DataError.of(exc).encode()))
                raise
            plain = opener.open(header, body)  # a bad tag: not the ticket holder; the ticket stays
        if self._tickets.get(tid) is not grant:
            raise ProtocolError("bad_ticket", "the ticket was used by another connection meanwhile")
        if self._per_peer[grant.peer] >= self.limits.conns_per_peer:
            self.stats["refused_busy"] += 1
            raise ProtocolError("busy", f"{grant.peer} has {self.limits.conns_per_peer} data connections open")
        del self._tickets[tid]
        return _Admitted(grant, opener, sealer, (kind, plain))

    async def _serve_conn(self, conn: LoopSocket, addr: str) -> None:
        try:
            admitted = await self._admit(conn)
        except ProtocolError:
            self.stats["rejected"] += 1
            raise
        peer = admitted.grant.peer
        self._per_peer[peer] += 1
        try:
            async with shutdown_on_cancel(conn.sock):
                await self._serve_blob(conn, admitted)
        finally:
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]

    async def _serve_blob(self, conn: LoopSocket, admitted: _Admitted) -> None:
        meta = admitted.grant.meta
        fd, complete = await trio.to_thread.run_sync(self.store.open_for_serving, meta.digest,
                                                     limiter=self.limiter)
        held = None if complete else admitted.grant.held  # completed since the ticket: serve it whole
        mapped: mmap.mmap | None = None
        try:
            # Complete blobs are immutable (read-only, replaced only by rename), so
            # the sealer can encrypt straight from a read-only mapping of the page
            # cache: no read() copy.  A partial blob is still being written (by
            # O_DIRECT, which bypasses any mapping), so its held chunks are read
            # with preadv.  An empty blob has no chunks to map.
            if meta.size and held is None:
                mapped = mmap.mmap(fd, meta.size, prot=mmap.PROT_READ)
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            send_req, recv_req = trio.open_memory_channel[Request | DataError](16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_requests, conn, admitted, held, send_req)
                await self._send_chunks(conn, admitted.sealer, mapped, fd, meta, recv_req)
                nursery.cancel_scope.cancel()
        finally:
            if mapped is not None:
                with contextlib.suppress(BufferError):  # a view still referenced (a traceback): GC unmaps it
                    mapped.close()
            os.close(fd)

    async def _read_requests(self, conn: LoopSocket, admitted: _Admitted,
                             held: Callable[[], Collection[int]] | None,
                             out: trio.MemorySendChannel[Request | DataError]) -> None:
        """Event loop: REQUEST frames, checked in the spec's order (the first
        already authenticated by :meth:`_admit`); a refusal becomes one ERROR."""
        meta = admitted.grant.meta
        n = chunk_count(meta.size, meta.chunk_size)
        kind, plain = admitted.first
        async with out:
            while True:  # ends with the connection: at most idle_s per frame
                try:
                    check_empty_body(kind, plain)
                    if kind is FrameType.STOP:
                        return
                    have = None if held is None else await trio.to_thread.run_sync(held, limiter=self.limiter)
                    req = parse_request(plain, n_chunks=n, held=have)
                except ProtocolError as exc:
                    await out.send(DataError.of(exc))
                    return
                await out.send(req)
                try:
                    with trio.fail_after(self.limits.idle_s):
                        kind, header, body = await conn.read_frame(False)
                except ConnectionError:
                    return  # the client closed its side: finish what was asked
                except ProtocolError as exc:  # a bad header (bad_frame, oversize)
                    await out.send(DataError.of(exc))
                    return
                plain = admitted.opener.open(header, body)  # a bad tag: drop the connection

    async def _send_chunks(self, conn: LoopSocket, sealer: FrameSealer, blob: mmap.mmap | None, fd: int,
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
            return _control(sealer, kind, body)

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
                    await trio.to_thread.run_sync(conn.send_all, control(FrameType.ERROR, item.encode()),
                                                  limiter=self.limiter)
                    return
                indexes = item.indexes()
                sent = await trio.to_thread.run_sync(send_batch, pool, indexes, limiter=self.limiter)
                self.stats["chunks_sent"] += len(indexes)
                self.stats["bytes_sent"] += sent
