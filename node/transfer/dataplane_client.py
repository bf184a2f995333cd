"""The fetching side of the transfer data plane (see :mod:`node.transfer.dataplane`).

:func:`fetch_from_source` connects to one source with its ticket and runs a
:class:`SourceFetch`: the event-loop side keeps WINDOW requests outstanding
and reports landed chunks to the shared :class:`FetchState`; its
:class:`ReceivePipeline` receives, decrypts, verifies and writes them in
worker threads.  The fetch engine (:mod:`node.transfer.fetch`) runs one per
source of a blob.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import mmap
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from node.p2p import FramedStream
from node.transfer.blobtypes import CorruptChunk
from node.transfer.datapath import PUNCHED, bridge
from node.transfer.dataplane import (
    BATCH,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    OPENERS,
    SLOTS,
    WINDOW,
    ThreadSocket,
    shutdown_on_cancel,
)
from node.transfer.partial import Receiving
from protocol.errors import ProtocolError
from protocol.transfer import (
    DATA_BODY_LIMITS,
    PATH_PUNCH,
    PATH_STREAM,
    PATH_TCP,
    TAG_SIZE,
    ChunkScheduler,
    DataError,
    FrameOpener,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    check_empty_body,
    derive_keys,
    encode_preamble,
    ranges_of,
    usable_paths,
)

__all__ = ["FetchState", "SourceBanned", "fetch_from_source", "SourceFetch", "ReceivePipeline",
           "DataStreamOpener", "PunchOpener", "TCP_FIRST_S"]

#: opens a data stream to the source; returns it and the path label of its libp2p connection
DataStreamOpener = Callable[[], Awaitable[tuple[FramedStream, str]]]
#: punches a TCP connection to the source (raises OSError when the punch fails)
PunchOpener = Callable[[], Awaitable[socket.socket]]


class SourceBanned(Exception):
    """This source sent too many corrupt chunks; the fetch continues without it."""


@dataclass
class FetchState:
    """Shared by the per-source fetchers of one blob (event-loop side only)."""

    partial: Receiving
    scheduler: ChunkScheduler
    changed: trio.Event
    on_chunk: Callable[[str, int, int], None]  #: (source, index, nbytes) after a verified write
    on_corrupt: Callable[[str, int], None]
    #: worker threads of the fetching side (its own, not trio's default limiter)
    limiter: trio.CapacityLimiter | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


#: seconds for the TCP connect when a ``stream`` path can follow (a NAT drops the SYN silently)
TCP_FIRST_S = 2.0


async def fetch_from_source(state: FetchState, source: str, ticket: Ticket,
                            open_data_stream: DataStreamOpener | None = None,
                            on_path: Callable[[str], None] | None = None,
                            open_punched: PunchOpener | None = None) -> None:
    """Fetch chunks the scheduler assigns to ``source`` until none remain.

    Tries the ticket's paths in its order (spec/transfer.md section 3.1):
    ``tcp`` connects to ``host:port`` (TCP_FIRST_S when a stream can follow),
    ``stream`` opens the data protocol on the libp2p connection with
    ``open_data_stream`` (which returns the stream and the path label of the
    libp2p connection), ``punch`` asks ``open_punched`` for a punched TCP
    connection (node/transfer/punch.py; it raises OSError when the punch
    fails, and the next path is tried).  ``on_path`` gets the label of the
    path used: ``direct`` for TCP, ``punched-tcp`` for a punched one.
    Returns normally when the blob is complete or nothing more can come from
    this source; raises on connection or protocol failure (the caller returns
    this source's chunks to the pool).
    """
    known = [p for p in usable_paths(ticket.paths)
             if p == PATH_TCP or (p == PATH_STREAM and open_data_stream is not None)
             or (p == PATH_PUNCH and open_punched is not None)]
    if not known:
        raise ProtocolError("no_usable_path", f"no path of {list(ticket.paths)} can be used here")
    problems: list[str] = []
    for i, path in enumerate(known):
        more = i + 1 < len(known)
        if path in (PATH_TCP, PATH_PUNCH):  # a TCP socket of our own: connected, or punched
            try:
                if path == PATH_PUNCH:
                    assert open_punched is not None
                    where, label = "punch", PUNCHED
                    raw = await open_punched()
                else:
                    where, label = f"tcp {ticket.host}:{ticket.port}", "direct"
                    raw = await trio.to_thread.run_sync(
                        functools.partial(socket.create_connection, (ticket.host, ticket.port),
                                          timeout=TCP_FIRST_S if more else HANDSHAKE_TIMEOUT),
                        limiter=state.limiter)
            except OSError as exc:
                if not more:
                    raise
                problems.append(f"{where}: {exc}")
                continue
            if on_path is not None:
                on_path(label)
            with raw:
                await _run_on(raw, state, source, ticket)
            return
        assert open_data_stream is not None
        stream, label = await open_data_stream()
        if on_path is not None:
            on_path(label)
        ours, theirs = socket.socketpair()
        with theirs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge, stream, ours)
                try:
                    await _run_on(theirs, state, source, ticket)
                finally:
                    with contextlib.suppress(OSError):
                        theirs.shutdown(socket.SHUT_RDWR)
        return
    raise OSError("; ".join(problems))  # pragma: no cover - the last path raises or returns


async def _run_on(raw: socket.socket, state: FetchState, source: str, ticket: Ticket) -> None:
    conn = ThreadSocket(raw, IDLE_TIMEOUT)
    async with shutdown_on_cancel(raw):
        await SourceFetch(conn, state, source, ticket).run()


#: A verified chunk's write, queued on the writer thread.
_Write = concurrent.futures.Future[None]
#: A received chunk being opened: its write, or None if it was corrupt (nothing written).
_Job = concurrent.futures.Future[_Write | None]


class ReceivePipeline:
    """The receiving half of one data connection, run from worker threads.

    A pipeline over a ring of SLOTS buffer pairs: the calling worker thread
    receives frames (:meth:`run_batch`); OPENERS opener threads decrypt and
    verify them (chunks verify independently thanks to the chained chunk
    list, so they run in parallel, each with its own AES-GCM context); one
    writer thread writes the verified chunk.  Plaintext buffers are
    page-aligned (mmap) so the store can write them with O_DIRECT, bypassing
    the page cache.  Only one thread at a time calls :meth:`run_batch`.
    """

    def __init__(self, conn: ThreadSocket, partial: Receiving, opener: FrameOpener, s2c: bytes) -> None:
        self.conn = conn
        self.partial = partial
        self.opener = opener  #: control frames, and the nonce of every frame in arrival order
        self.s2c = s2c
        self.chunk_size = chunk_size = partial.meta.chunk_size
        self.cipher = [memoryview(bytearray(chunk_size + TAG_SIZE)) for _ in range(SLOTS)]
        self.plains = [memoryview(mmap.mmap(-1, chunk_size)) for _ in range(SLOTS)]
        self.jobs: list[_Job | None] = [None] * SLOTS  #: the chunk in each slot's buffers
        self.carry: list[tuple[int, int, _Job]] = []  #: received chunks still being opened/written
        self.ring = 0  #: next slot; persists across batches so the pipeline never drains between them
        self.arrived: set[int] = set()  #: CHUNK indexes received since the last END
        self.openers = concurrent.futures.ThreadPoolExecutor(OPENERS, thread_name_prefix="cpn-chunk-opener")
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cpn-chunk-writer")
        self._local = threading.local()  #: each opener thread's own FrameOpener

    def shutdown(self) -> None:
        """Wait for the opener and writer threads to finish and stop them."""
        self.openers.shutdown(wait=True)
        self.writer.shutdown(wait=True)

    def open_chunk(self, slot: int, index: int, nonce: bytes, header: bytes, body: memoryview) -> _Write | None:
        """Opener thread: decrypt and verify; hand a verified chunk to the writer.
        Returns its write, or None if the chunk is corrupt (nothing written)."""
        plain = self.plains[slot][: len(body) - TAG_SIZE]
        mine = getattr(self._local, "opener", None)
        if mine is None:
            mine = self._local.opener = FrameOpener(self.s2c)
        mine.open_into(nonce, header, body, plain)  # a bad tag raises: not the ticket's peer
        try:
            self.partial.verify_chunk(index, plain)
        except CorruptChunk:
            return None
        return self.writer.submit(self.partial.write_verified, index, plain)

    def settle(self, slot: int) -> None:
        """Wait until the slot's chunk is opened and written (its buffers are free)."""
        job, self.jobs[slot] = self.jobs[slot], None
        if job is not None and (write := job.result()) is not None:
            write.result()

    def settle_all(self) -> None:
        first: BaseException | None = None
        for slot in range(SLOTS):
            try:
                self.settle(slot)
            except BaseException as exc:  # noqa: BLE001 - re-raised below after all slots are free
                first = first or exc
        if first is not None:
            raise first

    @staticmethod
    def landed(job: _Job) -> bool:
        """The chunk's pipeline is over: opened and either refused or written."""
        if not job.done():
            return False
        if job.exception() is not None or (write := job.result()) is None:
            return True
        return write.done()

    def run_batch(self, sends: list[bytes], drain: bool) -> tuple[list[tuple[int, int, bool]], set[int]]:
        """Worker thread: send queued requests, then read frames up to the next
        END, passing every chunk down the pipeline.  Returns (index, bytes,
        verified) for every chunk whose pipeline is over (a failed open or write
        raises here), so nothing is reported written that is not; chunks still
        in the pipeline are reported by a later call.  With ``drain`` (no
        further request outstanding) it first waits for all of them.  Also
        returns the indexes of the CHUNK frames that arrived before the END."""
        conn = self.conn
        for frame in sends:
            conn.send_all(frame)
        self.arrived = set()
        ok = False
        try:
            self._receive_until_end()
            ok = True
        finally:
            if drain or not ok:
                self.settle_all()
        return self._landed_chunks(), self.arrived

    def _receive_until_end(self) -> None:
        conn, opener, cipher, max_body = self.conn, self.opener, self.cipher, self.chunk_size + TAG_SIZE
        n = self.partial.n
        while True:  # ends at END or ERROR; every read is bounded by the socket timeout
            ring = self.ring
            self.settle(ring)  # the ring wrapped: this slot's previous chunk must be done
            kind, header, body = conn.read_frame(True, max_body, into=cipher[ring])
            if kind is FrameType.CHUNK:
                index = int.from_bytes(header[4:8], "big")
                if index >= n:
                    raise ProtocolError("bad_chunk_index", f"CHUNK {index} of a blob with {n} chunks")
                self.arrived.add(index)
                # nonces are taken here, in arrival order; opening may lag behind
                job = self.openers.submit(self.open_chunk, ring, index, opener.next_nonce(), header, body)
                self.jobs[ring] = job
                self.carry.append((index, len(body) - TAG_SIZE, job))
                self.ring = (ring + 1) % SLOTS
                continue
            text = opener.open(header, body)
            if kind is FrameType.ERROR:
                err = DataError.decode(text, DATA_BODY_LIMITS)
                raise ProtocolError(err.reason, f"sender refused: {err.detail}")
            check_empty_body(kind, text)
            return  # END

    def _landed_chunks(self) -> list[tuple[int, int, bool]]:
        """(index, bytes, verified) of the carried chunks whose pipeline is over;
        the others stay carried."""
        done: list[tuple[int, int, _Job]] = []
        waiting: list[tuple[int, int, _Job]] = []
        for c in self.carry:  # one landed() per chunk: it may land while we look
            (done if self.landed(c[2]) else waiting).append(c)
        self.carry[:] = waiting
        out = []
        for index, length, job in done:
            write = job.result()  # raises if opening failed (a bad tag)
            if write is not None:
                write.result()  # raises if the write failed: never report such a chunk written
            out.append((index, length, write is not None))
        return out


class SourceFetch:
    """One source's share of a fetch, on one data connection (event-loop side).

    Keeps WINDOW requests outstanding, each of BATCH chunks the scheduler
    assigned to this source; a :class:`ReceivePipeline` receives, verifies and
    writes them in worker threads, and its results are reported back to the
    scheduler and the :class:`FetchState` here, on the event loop.
    """

    def __init__(self, conn: ThreadSocket, state: FetchState, source: str, ticket: Ticket) -> None:
        self.conn = conn
        self.state = state
        self.source = source
        c2s, s2c = derive_keys(ticket.secret, ticket.ticket_id)
        self.sealer = FrameSealer(c2s)
        self.pipeline = ReceivePipeline(conn, state.partial, FrameOpener(s2c), s2c)
        self.preamble = encode_preamble(ticket.ticket_id)
        self.to_send: list[bytes] = [self.preamble]  #: frames for the next batch
        #: the chunks of each request sent (or queued) whose END has not arrived, oldest first
        self.requests: collections.deque[list[int]] = collections.deque()

    @property
    def outstanding(self) -> int:
        return len(self.requests)

    def queue_requests(self) -> None:
        sched = self.state.scheduler
        while self.outstanding < WINDOW and (batch := sched.assign(self.source, BATCH)):
            header, ct = self.sealer.seal(FrameType.REQUEST, 0, Request(ranges=ranges_of(batch)).encode())
            self.to_send.append(header + ct)
            self.requests.append(batch)

    async def run(self) -> None:
        self.queue_requests()
        limiter = self.state.limiter
        try:
            while await self._wait_for_work():
                sends, self.to_send = self.to_send, []
                results, arrived = await trio.to_thread.run_sync(
                    self.pipeline.run_batch, sends, self.outstanding == 1, limiter=limiter)
                batch = self.requests.popleft()  # END completes the oldest request
                self._report(results)
                self._check_complete(batch, arrived)
                self.queue_requests()
        finally:
            self.pipeline.shutdown()
        header, ct = self.sealer.seal(FrameType.STOP, 0, b"")
        stop = header + ct
        if self.to_send and self.to_send[0] is self.preamble:  # nothing was sent: a STOP needs its preamble
            stop = self.preamble + stop
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(self.conn.send_all, stop, limiter=limiter)

    def _check_complete(self, batch: list[int], arrived: set[int]) -> None:
        """An END came before some chunks of its request: they return to the pool
        and this source has failed (a conforming server never does this)."""
        missing = [i for i in batch if i not in arrived]
        if missing:
            self.state.scheduler.release(self.source, missing)
            self.state.notify()
            raise ProtocolError("missing_chunks", f"END without chunk {missing[0]} "
                                f"({len(missing)} of {len(batch)} requested)")

    async def _wait_for_work(self) -> bool:
        """True when a request is outstanding.  Idle, wait for chunks to return
        to the pool (another source failed or sent a corrupt chunk); False when
        the blob is complete or nothing more can come from this source."""
        sched = self.state.scheduler
        while not self.outstanding:
            self.queue_requests()
            if self.outstanding or sched.complete or sched.stuck() or not any(
                st.in_flight for st in sched.sources.values()
            ):
                break
            await self.state.changed.wait()
        return self.outstanding > 0

    def _report(self, results: list[tuple[int, int, bool]]) -> None:
        """Record landed chunks; raise SourceBanned once this source sent too many corrupt ones."""
        state, sched, source = self.state, self.state.scheduler, self.source
        banned = False
        for index, nbytes, ok in results:
            if ok:
                state.partial.mark_written(index)
                sched.received(source, index)
                state.on_chunk(source, index, nbytes)
            else:
                banned = sched.corrupt(source, index) or banned
                state.on_corrupt(source, index)
        state.notify()
        if banned:
            raise SourceBanned(f"{source} sent corrupt chunks")
