"""The serving side of the transfer data plane (see :mod:`node.transfer.dataplane`).

:meth:`DataPlaneServer.issue` hands out single-use tickets for the control
plane to send; a connection presenting one is served the chunks it requests
of that blob: a complete blob sealed straight from a read-only mapping, a
partial blob's held chunks read with ``preadv``.
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

from node.transfer.blobstore import BlobStore
from node.transfer.blobtypes import BlobMeta
from node.transfer.dataplane import (
    DATA_CONTROL_LIMITS,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    SLOTS,
    ThreadSocket,
    leaf_error,
    shutdown_on_cancel,
)
from protocol.errors import ProtocolError
from protocol.transfer import (
    HEADER_SIZE,
    PREAMBLE_SIZE,
    TAG_SIZE,
    DataError,
    FrameOpener,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    decode_preamble,
    derive_keys,
    encode_header,
)

__all__ = ["DataPlaneServer", "TICKET_TTL"]

log = logging.getLogger("cpn.transfer.data")

TICKET_TTL = 60  #: seconds a ticket stays valid (single use)

_CONN_ERRORS = (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, OSError)


@dataclass
class _Grant:
    peer: str
    meta: BlobMeta
    secret: bytes
    expires_at: float
    #: for a partial blob: the chunks held now (asked per request); None: complete
    held: Callable[[], Collection[int]] | None = None


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
                async with shutdown_on_cancel(sock):
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
                    req = Request.decode(plain, DATA_CONTROL_LIMITS)
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
