"""The fetch engine: one blob from many peers into the blob store.

:meth:`node.transfer.service.TransferService.fetch` runs one :class:`BlobFetch`
per blob (and shares it with concurrent callers).  The steps, each a method:

1. *ask*: every source is asked what it holds (``Want`` -> ``Have``); with
   ``discover``, the first source (the blob's owner) names other holders
   and vouches for us with a FetchGrant each (``WhoHas`` -> ``Holders``,
   then ``Present`` -> ``Have`` to each holder);
2. *chunk list*: taken from one source and checked against the signed chunk
   root (a bad list penalises its sender and the next source is asked);
3. *begin*: the blob store resumes the partial blob (kept chunks are
   verified again) or reserves room for a new one;
4. *tickets*: one data-plane ticket per usable source;
5. *run sources*: one data connection per source in parallel
   (:mod:`node.transfer.dataplane_client`) over a shared
   :class:`~protocol.transfer.ChunkScheduler`; a corrupt chunk penalises its
   sender and is fetched elsewhere; durable checkpoints run beside them;
6. *finish*: the store publishes the blob, whose last chunk's check was the
   whole-blob digest check.

What a fetch uses of its service (streams, penalties, progress callbacks) is
the :class:`FetchHost` protocol, so this module does not import the service.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from node.p2p import FramedStream, StreamClosed
from node.transfer.blobstore import BlobStore
from node.transfer.blobtypes import BlobLike, BlobMeta, BlobStoreError, CorruptBlob
from node.transfer.dataplane import leaf_error
from node.transfer.dataplane_client import FetchState, SourceBanned, fetch_from_source
from node.transfer.partial import Receiving
from protocol.chunks import chunk_count
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError
from protocol.transfer import (
    CONTROL_LIMITS,
    ChunkList,
    ChunkListAssembler,
    ChunkScheduler,
    FetchGrant,
    Have,
    HolderEntry,
    Holders,
    Present,
    Ticket,
    TicketRequest,
    Want,
    WhoHas,
)
from protocol.wire import Message

__all__ = ["BlobFetch", "FetchHost", "Progress", "TransferFailed", "TransferRefused", "CONTROL_TIMEOUT"]

CONTROL_TIMEOUT = 30.0  #: seconds for one control request and its answer
CHECKPOINT_EVERY = 64  #: chunks between durable bitmap checkpoints
HOLDER_TIMEOUT = 2.0  #: seconds to reach a named holder before fetching without it
HOLDER_RETRY_AFTER = 600.0  #: seconds an unreachable holder is not tried again
DISCOVER_MIN_BYTES = 4 << 20  #: smaller blobs are fetched from the given sources only
SOURCE_RETRIES = 3  #: a source's data connection is retried this often in a row without progress
RETRY_DELAY_S = 0.5  #: times the failures in a row: the wait before a source is retried

#: a source failing in one of these ways is dropped; the fetch goes on with the others
_SOURCE_ERRORS = (SourceBanned, ProtocolError, OSError, trio.BrokenResourceError,
                  trio.ClosedResourceError, trio.TooSlowError, BlobStoreError, StreamClosed)
#: a data connection failing in one of these ways is retried (the network, not the peer's data)
_RETRY_ERRORS = (ConnectionError, TimeoutError, StreamClosed, trio.BrokenResourceError,
                 trio.ClosedResourceError)
#: a control request failing in one of these ways leaves that peer out
_ASK_ERRORS = (ProtocolError, StreamClosed, trio.TooSlowError)


class TransferFailed(Exception):
    """A fetch could not complete (what is verified stays for resume)."""


class TransferRefused(TransferFailed):
    """The remote peer answered with a TransferError."""

    def __init__(self, peer: str, reason: str, detail: str) -> None:
        self.peer, self.reason, self.detail = peer, reason, detail
        super().__init__(f"{peer} refused: {reason}: {detail}")


@dataclass
class Progress:
    """One blob transfer as the API reports it (rates from the trio clock)."""

    digest: str
    total_bytes: int
    direction: str = "fetch"
    phase: str = "starting"  #: starting, chunk-list, transfer, verify, done, failed, deduplicated
    done_bytes: int = 0  #: verified bytes held, including those resumed
    moved_bytes: int = 0  #: bytes received in this run
    started: float = field(default_factory=trio.current_time)
    finished: float | None = None
    sources: dict[str, int] = field(default_factory=dict)  #: verified bytes per peer
    #: the data path each source's last data connection took: direct (TCP to its data
    #: port, or a libp2p stream on a direct connection), reversed, hole-punched, relayed
    paths: dict[str, str] = field(default_factory=dict)
    first_byte: float | None = None  #: trio time of the first verified chunk of this run
    penalised: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def path(self) -> str | None:
        """The data path of this transfer: the one path all sources took, else ``mixed``."""
        kinds = set(self.paths.values())
        return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def state(self) -> str:
        """The phase, with ``relayed, slow`` while data runs through a relay."""
        if self.phase == "transfer" and "relayed" in self.paths.values():
            return "transfer (relayed, slow)"
        return self.phase

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        end = self.finished if self.finished is not None else (trio.current_time() if now is None else now)
        elapsed = max(end - self.started, 1e-9)
        rate = self.moved_bytes / elapsed
        left = self.total_bytes - self.done_bytes
        return {
            "digest": self.digest,
            "direction": self.direction,
            "phase": self.phase,
            "total_bytes": self.total_bytes,
            "done_bytes": self.done_bytes,
            "moved_bytes": self.moved_bytes,
            "rate_bytes_per_s": int(rate),
            "eta_s": None if rate <= 0 or self.finished is not None else round(left / rate, 1),
            "elapsed_s": round(elapsed, 3),
            "sources": dict(self.sources),
            "paths": dict(self.paths),
            "path": self.path,
            "state": self.state,
            "first_byte_s": None if self.first_byte is None else round(self.first_byte - self.started, 3),
            "penalised": list(self.penalised),
            "error": self.error,
        }


class FetchHost(Protocol):
    """What a fetch uses of its transfer service
    (:class:`~node.transfer.service.TransferService` implements it)."""

    store: BlobStore
    stats: dict[str, int]  #: counters the service exports as metrics
    penalties: dict[str, int]  #: peer -> penalties; sources are tried least penalised first
    addrs: dict[str, list[str]]  #: known multiaddrs of peers, used when dialling
    unreachable: dict[str, float]  #: holder -> when to try it again (unix seconds)
    on_progress: Callable[[Progress], None] | None
    fetch_limiter: trio.CapacityLimiter  #: worker threads of data connections we open

    @property
    def peer_id(self) -> str:
        """Our own peer ID (the grantee a FetchGrant must name)."""

    def now(self) -> float:
        """Unix seconds (grant expiry, holder retry)."""

    def penalise(self, peer: str, why: str) -> None: ...

    async def open_stream(self, peer: str) -> FramedStream:
        """A new control stream to ``peer``."""

    async def open_data_stream(self, peer: str) -> tuple[FramedStream, str]:
        """A data-plane stream to ``peer`` and the path of the libp2p connection
        it runs on (``direct``, ``reversed``, ``hole-punched``, ``relayed``)."""

    async def wait_unrelayed(self, peer: str) -> None:
        """Return once a non-relayed libp2p connection to ``peer`` is open."""

    async def open_punched(self, peer: str, ticket: Ticket) -> socket.socket:
        """A punched TCP connection to ``peer`` for ``ticket`` (the ``punch``
        path); raises OSError when the punch fails."""

    async def ask(self, stream: FramedStream, msg: Message, expected: type[Message]) -> Any:
        """Send ``msg``; return the signed answer of type ``expected`` or
        raise :class:`TransferRefused`."""


class BlobFetch:
    """One fetch of one blob from ``sources`` (see the module docstring)."""

    def __init__(self, host: FetchHost, blob: BlobLike, sources: Sequence[str], prog: Progress, *,
                 discover: bool = False, party: str | None = None, proof: bool = False) -> None:
        self.host = host
        self.blob = blob
        self.digest = blob.digest
        self.sources = sources
        self.prog = prog
        self.discover = discover
        self.party = party  #: the peer the blob is fetched for (resumes only its own chunks)
        #: the store holds the blob already: verify every chunk from the sources, write nothing
        self.proof = proof
        #: sources (and discovered holders), least penalised first
        self.ordered = sorted(dict.fromkeys(sources), key=lambda p: host.penalties.get(p, 0))
        self.streams: dict[str, FramedStream] = {}  #: open control streams (closed after the tickets)
        self.haves: dict[str, set[int] | None] = {}  #: chunks each peer holds; None: all of them
        self.errors: list[str] = []  #: why peers were left out, for the TransferFailed message

    async def run(self) -> BlobMeta:
        """Fetch the blob; raise :class:`TransferFailed` (verified chunks kept for resume)."""
        partial, sched, tickets = await self._prepare()
        self.prog.phase = "transfer"
        try:
            await self._run_sources(partial, sched, tickets)
        except BaseException:  # cancelled or failed: keep what is verified for resume
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(partial.close)
            raise
        if not sched.complete:
            await trio.to_thread.run_sync(partial.close)
            raise TransferFailed(
                f"{self.digest}: {len(sched.missing())} of {sched.n} chunks missing (kept "
                f"{len(partial.written)} for resume); " + "; ".join(self.errors)
            )
        self.prog.phase = "verify"
        try:
            return await trio.to_thread.run_sync(partial.finish)
        except (CorruptBlob, BlobStoreError) as exc:
            raise TransferFailed(str(exc)) from None

    async def _prepare(self) -> tuple[Receiving, ChunkScheduler, dict[str, Ticket]]:
        """Steps 1-4 on the control streams, which are closed at the end."""
        partial: Receiving | None = None
        try:
            async with trio.open_nursery() as nursery:
                for peer in self.ordered:
                    nursery.start_soon(self._ask_have, peer)
            if (self.discover and self.sources and self.blob.size >= DISCOVER_MIN_BYTES
                    and self.sources[0] in self.haves):
                self.ordered += await self._discover_holders(self.sources[0])
            usable = [p for p in self.ordered if p in self.haves]
            if not usable:
                raise TransferFailed(f"no source holds {self.digest}: "
                                     + "; ".join(self.errors or ["none asked"]))
            self.prog.phase = "chunk-list"
            hashes = await self._chunk_list(usable)
            partial = await self._begin(hashes)
            sched = ChunkScheduler(chunk_count(self.blob.size, self.blob.chunk_size), done=partial.written)
            tickets = await self._tickets(usable, sched)
            return partial, sched, tickets
        except BaseException:
            if partial is not None:  # keep what is verified for resume
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(partial.close)
            raise
        finally:
            for s in self.streams.values():
                with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_TIMEOUT):
                    await s.close()

    async def _ask_have(self, peer: str) -> None:
        blob = self.blob
        try:
            stream = await self.host.open_stream(peer)
            self.streams[peer] = stream
            have: Have = await self.host.ask(stream, Want(digests=(self.digest,)), Have)
            for e in have.blobs:
                if e.digest == self.digest and (e.size, e.chunk_size) == (blob.size, blob.chunk_size):
                    self.haves[peer] = None if e.complete else e.indexes()
        except (TransferFailed, *_ASK_ERRORS) as exc:
            self.errors.append(f"{peer}: {exc}")

    async def _chunk_list(self, usable: list[str]) -> list[bytes]:
        """The first chunk list (in ``usable`` order) that matches the signed root,
        every page of it from that one peer (spec/transfer.md section 2.5); peers
        that fail are removed from ``usable``, a wrong page or list is penalised."""
        blob = self.blob
        for peer in list(usable):
            try:
                asm = ChunkListAssembler(digest=self.digest, size=blob.size, chunk_size=blob.chunk_size,
                                         root=blob.chunk_root)
                while (req := asm.request()) is not None:  # at most 32 pages: each adds entries or raises
                    page: ChunkList = await self.host.ask(self.streams[peer], req, ChunkList)
                    asm.add(page)
                return asm.hashes
            except ProtocolError as exc:
                self.host.penalise(peer, f"bad chunk list: {exc}")
                self.prog.penalised.append(peer)
                usable.remove(peer)
            except (TransferFailed, StreamClosed, trio.TooSlowError) as exc:
                self.errors.append(f"{peer}: {exc}")
                usable.remove(peer)
        raise TransferFailed(f"no valid chunk list for {self.digest}: " + "; ".join(self.errors))

    async def _begin(self, hashes: list[bytes]) -> Receiving:
        store = self.host.store
        try:  # begin also re-verifies chunks kept from an interrupted transfer
            if self.proof:
                partial: Receiving = await trio.to_thread.run_sync(store.begin_proof, self.blob, hashes)
            else:
                partial = await trio.to_thread.run_sync(
                    functools.partial(store.begin, self.blob, hashes, party=self.party))
        except CorruptBlob as exc:  # the BlobRef itself is inconsistent: no peer is at fault
            raise TransferFailed(str(exc)) from None
        self.prog.done_bytes = sum(_chunk_len(self.blob, i) for i in partial.written)
        return partial

    async def _tickets(self, usable: list[str], sched: ChunkScheduler) -> dict[str, Ticket]:
        """A data-plane ticket from each usable source, each added to ``sched``."""
        tickets: dict[str, Ticket] = {}
        for peer in usable:
            try:
                tickets[peer] = await self.host.ask(self.streams[peer], TicketRequest(digest=self.digest), Ticket)
                sched.add_source(peer, self.haves[peer])
            except (TransferFailed, *_ASK_ERRORS) as exc:
                self.errors.append(f"{peer}: {exc}")
        return tickets

    # ---- discovery of other holders

    async def _discover_holders(self, owner: str) -> list[str]:
        """Ask ``owner`` who else holds the blob; present its grants to them.
        Returns the holders that answered with a usable Have (added to
        ``streams`` and ``haves``).  Never fails the fetch."""
        try:  # on a stream of its own: a refusal closes the stream it arrives on
            with trio.fail_after(CONTROL_TIMEOUT):
                stream = await self.host.open_stream(owner)
            try:
                answer: Holders = await self.host.ask(stream, WhoHas(digests=(self.digest,)), Holders)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_TIMEOUT):
                    await stream.close()
        except (TransferFailed, *_ASK_ERRORS, OSError) as exc:
            self.errors.append(f"{owner}: who-has: {exc}")
            return []
        found: list[str] = []
        async with trio.open_nursery() as nursery:
            for entry in answer.holders:
                nursery.start_soon(self._present, owner, entry, found)
        return found

    async def _present(self, owner: str, entry: HolderEntry, found: list[str]) -> None:
        """Show ``owner``'s grant to the holder it names; on a Have, add the
        holder to ``found``."""
        host, holder = self.host, "?"
        try:
            g: FetchGrant = open_envelope(entry.grant, expected=FetchGrant, signer=owner,
                                          limits=CONTROL_LIMITS).message
            holder = g.holder
            if g.digest != self.digest or g.grantee != host.peer_id or holder in self.streams:
                return
            if host.unreachable.get(holder, 0.0) > host.now():
                return
            if entry.addrs and holder not in host.addrs:
                host.addrs[holder] = list(entry.addrs)
            try:
                with trio.fail_after(HOLDER_TIMEOUT):
                    s = await host.open_stream(holder)
            except (StreamClosed, trio.TooSlowError, OSError):
                host.unreachable[holder] = host.now() + HOLDER_RETRY_AFTER
                raise
            self.streams[holder] = s
            have: Have = await host.ask(s, Present(grant=entry.grant), Have)
            for e in have.blobs:
                if e.digest == self.digest:
                    self.haves[holder] = None if e.complete else e.indexes()
                    found.append(holder)
        except (TransferFailed, *_ASK_ERRORS, OSError) as exc:
            self.errors.append(f"{holder}: {exc}")

    # ---- the data connections

    async def _run_sources(self, partial: Receiving, sched: ChunkScheduler, tickets: dict[str, Ticket]) -> None:
        state = FetchState(partial=partial, scheduler=sched, changed=trio.Event(),
                           on_chunk=self._on_chunk, on_corrupt=self._on_corrupt,
                           limiter=self.host.fetch_limiter)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._checkpointer, state)
            async with trio.open_nursery() as inner:
                for peer, ticket in tickets.items():
                    inner.start_soon(self._run_source, state, peer, ticket)
            outer.cancel_scope.cancel()

    def _on_chunk(self, source: str, index: int, nbytes: int) -> None:
        stats, prog = self.host.stats, self.prog
        stats["chunks_received"] += 1
        stats["bytes_received"] += nbytes
        prog.done_bytes += nbytes
        prog.moved_bytes += nbytes
        if prog.first_byte is None:
            prog.first_byte = trio.current_time()
        prog.sources[source] = prog.sources.get(source, 0) + nbytes
        if self.host.on_progress is not None:
            self.host.on_progress(prog)

    def _on_corrupt(self, source: str, index: int) -> None:
        self.host.stats["corrupt_chunks"] += 1
        self.host.penalise(source, f"corrupt chunk {index} of {self.digest}")
        if source not in self.prog.penalised:
            self.prog.penalised.append(source)

    async def _run_source(self, state: FetchState, peer: str, ticket: Ticket) -> None:
        """One source's data connection.  A network failure (a reset stream: a
        relay's limit, a connection replaced by a hole-punched one) is retried
        with a fresh ticket, on whatever path is open then, up to
        SOURCE_RETRIES times in a row without progress; a protocol violation
        or corrupt data drops the source for this fetch."""
        failures = 0
        try:
            while True:
                before = self.prog.sources.get(peer, 0)
                try:
                    await self._fetch_source(state, peer, ticket)
                    return
                except _SOURCE_ERRORS as exc:
                    self.errors.append(f"{peer}: {exc}")
                    if isinstance(exc, ProtocolError):  # it broke the protocol (not a network failure)
                        self.host.penalise(peer, str(exc))
                        return
                    if not isinstance(exc, _RETRY_ERRORS):  # corrupt data, our own disk
                        return
                failures = 1 if self.prog.sources.get(peer, 0) > before else failures + 1
                if failures > SOURCE_RETRIES or state.scheduler.complete:
                    return
                state.scheduler.source_failed(peer)  # its in-flight chunks return to the pool
                state.notify()
                await trio.sleep(RETRY_DELAY_S * failures)
                fresh = await self._new_ticket(peer)
                if fresh is None:
                    return
                ticket = fresh
                state.scheduler.add_source(peer, self.haves.get(peer))
        finally:
            state.scheduler.source_failed(peer)
            state.notify()

    async def _fetch_source(self, state: FetchState, peer: str, ticket: Ticket) -> None:
        """One data connection to ``peer``.  While it runs through a relay, a direct
        connection that opens meanwhile (a late hole punch) ends it with a
        ConnectionError, so the caller resumes on the direct one."""
        relayed = trio.Event()
        upgraded = False

        def on_path(label: str) -> None:
            self.prog.paths[peer] = label
            key = f"path_{label.replace('-', '_')}"
            self.host.stats[key] = self.host.stats.get(key, 0) + 1
            if label == "relayed":
                relayed.set()

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal upgraded
            await relayed.wait()
            await self.host.wait_unrelayed(peer)
            upgraded = True
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                await fetch_from_source(state, peer, ticket,
                                        functools.partial(self.host.open_data_stream, peer), on_path,
                                        functools.partial(self.host.open_punched, peer, ticket))
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as eg:  # noqa: B036 - a source's failure is unwrapped, handled by the caller
            leaf = leaf_error(eg)
            if not isinstance(leaf, _SOURCE_ERRORS):
                raise
            raise leaf from None
        if upgraded:
            raise ConnectionError("a direct connection opened: resuming on it")

    async def _new_ticket(self, peer: str) -> Ticket | None:
        """A fresh ticket from ``peer`` on a new control stream (None if it cannot be had)."""
        try:
            with trio.fail_after(CONTROL_TIMEOUT):
                stream = await self.host.open_stream(peer)
            try:
                ticket: Ticket = await self.host.ask(stream, TicketRequest(digest=self.digest), Ticket)
                return ticket
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CONTROL_TIMEOUT):
                    await stream.close()
        except (TransferFailed, *_ASK_ERRORS, OSError) as exc:
            self.errors.append(f"{peer}: new ticket: {exc}")
            return None

    @staticmethod
    async def _checkpointer(state: FetchState) -> None:
        """Durable checkpoints of the chunks written, off the receive path."""
        partial = state.partial
        last = len(partial.written)
        while True:
            await state.changed.wait()
            if len(partial.written) - last >= CHECKPOINT_EVERY:
                last = len(partial.written)
                await trio.to_thread.run_sync(partial.checkpoint, set(partial.written))


def _chunk_len(blob: BlobLike, index: int) -> int:
    return min(blob.chunk_size, blob.size - index * blob.chunk_size)
