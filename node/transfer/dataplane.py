"""The transfer data plane: a direct TCP connection carrying AEAD-sealed chunk frames.

Why not libp2p for bulk data: a py-libp2p Noise+yamux stream moves ~100 MiB/s
on these machines, raw trio TCP >1 GiB/s.  Admission and keys come from a
:class:`~protocol.transfer.Ticket` issued over the signed, Noise-encrypted
control stream, so this connection needs no handshake of its own: the client
names the ticket in a plaintext preamble and proves it holds the secret with
its first sealed frame (spec/transfer.md, "Security").

Three modules: this one holds the connection itself (:class:`ThreadSocket`,
frame reading) and the tuning below; :mod:`node.transfer.dataplane_server`
serves chunks; :mod:`node.transfer.dataplane_client` fetches them from one
source.

The hot loops run in worker threads, one request (16 chunks) per thread call,
so the event loop pays one switch per request rather than several per chunk.
Each side is a pipeline of threads over a ring of SLOTS chunk buffers: the
server (``DataPlaneServer``) reads + seals in one thread while another
sends; the client (``SourceFetch`` on the event loop, its
``ReceivePipeline`` in threads) receives in one thread, decrypts +
verifies in OPENERS others, and writes (O_DIRECT, see
node/transfer/partial.py) in a last one.
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

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from protocol.transfer import HEADER_SIZE, MAX_BODY, FrameType, decode_header

__all__ = [
    "ThreadSocket",
    "LoopSocket",
    "DataLimits",
    "shutdown_on_cancel",
    "leaf_error",
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "BATCH",
    "WINDOW",
    "SLOTS",
    "OPENERS",
]

HANDSHAKE_TIMEOUT = 10.0  #: seconds a client waits for the TCP connection
IDLE_TIMEOUT = 60.0  #: seconds without a frame before a connection is dropped
BATCH = 16  #: chunks per Request frame
WINDOW = 3  #: Request frames outstanding per source (keeps the pipe full)
SLOTS = 12  #: chunk buffers per connection and side, in a ring (received/sealed, in work, being written)
#: threads decrypting + verifying chunks per connection (the receiver's heaviest stage)
OPENERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class DataLimits:
    """What one data plane lets connections and peers hold ([transfer] data_* keys).

    Every resource a connection can make the server hold is bounded here: a
    socket and a task per connection (``conns``, ``conns_per_addr``), before
    admission for at most ``handshake_s``; worker threads only while a
    request's frames are being sent (``threads`` in all, at most
    ``conns_per_peer`` per peer), each frame leaving within ``stall_s``;
    unused tickets (``tickets_per_peer``, the oldest dropped first).
    """

    handshake_s: float = 5.0  #: seconds for the preamble and the first (authenticating) frame
    idle_s: float = IDLE_TIMEOUT  #: seconds without a frame from an admitted client
    stall_s: float = 20.0  #: seconds one frame may take to leave (a reader slower than that is dropped)
    conns: int = 512  #: open data connections in all
    conns_per_addr: int = 32  #: open data connections per source IP address
    conns_per_peer: int = 8  #: admitted data connections per peer ID (below ``threads``)
    tickets_per_peer: int = 64  #: unused tickets per peer ID
    threads: int = 32  #: worker threads serving chunks (the fetching side has as many of its own)


def leaf_error(eg: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, skipping cancellations."""
    while isinstance(eg, BaseExceptionGroup):
        real = [e for e in eg.exceptions if not isinstance(e, trio.Cancelled)]
        eg = (real or list(eg.exceptions))[0]
    return eg


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


class LoopSocket:
    """A non-blocking socket read on the event loop and written from worker threads.

    The server reads small frames (the preamble, REQUEST, STOP) here, so a
    connection that sends nothing holds no thread; it sends chunk frames from
    a worker thread with :meth:`send_all`, which waits for room with ``poll``
    and gives up when a frame has not left within ``stall_s``.
    """

    def __init__(self, sock: socket.socket, stall_s: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.stall_s = stall_s

    async def receive_exactly(self, n: int) -> bytes:
        """Event loop: exactly ``n`` bytes (ConnectionError if the peer closes first)."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock.fileno())
                continue
            if k == 0:
                raise ConnectionError("connection closed" + (" mid-frame" if got else ""))
            got += k
        return bytes(buf)

    async def read_frame(self, from_server: bool) -> tuple[FrameType, bytes, bytes]:
        """Event loop: a header (checked before the body is read), then its body;
        only non-CHUNK frames (at most MAX_CONTROL_BODY) come this way."""
        header = await self.receive_exactly(HEADER_SIZE)
        kind, _, length = decode_header(header, from_server=from_server, max_body=MAX_BODY)
        return kind, header, await self.receive_exactly(length)

    def send_all(self, data: bytes | memoryview) -> None:
        """Worker thread: send ``data`` (one frame); TimeoutError if it has not
        left within ``stall_s`` (the peer stopped reading)."""
        view = memoryview(data).cast("B")
        deadline = time.monotonic() + self.stall_s
        poller: select.poll | None = None
        while view:
            try:
                view = view[self.sock.send(view):]
                continue
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the peer read nothing for {self.stall_s:g} s")
            if poller is None:
                poller = select.poll()
                poller.register(self.sock.fileno(), select.POLLOUT)
            poller.poll(max(1, int(left * 1000)))

    def send_nowait(self, data: bytes) -> None:
        """Event loop: a small frame into an empty send buffer, or nothing if there is no room."""
        with contextlib.suppress(OSError):
            self.sock.send(data)

    def close(self) -> None:
        """Event loop: close the socket (no thread may still use it)."""
        trio.lowlevel.notify_closing(self.sock.fileno())
        self.sock.close()


@asynccontextmanager
async def shutdown_on_cancel(sock: socket.socket) -> AsyncIterator[None]:
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
