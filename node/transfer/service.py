"""The transfer service: serve blobs to authorised peers and fetch blobs from many.

Control plane on libp2p (``/cpn/transfer/0.1.0``, signed envelopes, one
request and one answer per frame); bulk data on the direct data plane
(:mod:`node.transfer.dataplane`) admitted by a ticket from that control stream.
``TransferFailed``, ``TransferRefused`` and ``Progress`` are defined with the
fetch engine (node/transfer/fetch.py) and exported here too.

* **Authorisation** is default deny: a peer may fetch a blob or upload one only
  if an authoriser says so.  The negotiation engine drives this through
  :meth:`TransferService.grant` (agreement parties, agreed sizes) or its own
  hook added with :meth:`TransferService.add_authorizer`.
* **Fetch** (:meth:`TransferService.fetch`): dedup first (a stored blob is never
  fetched), one fetch per blob however many callers wait for it; the fetch
  engine (:class:`node.transfer.fetch.BlobFetch`) asks every source what it
  holds, takes the chunk list from one and checks it against the signed
  root, resumes the partial blob (only missing chunks move) and runs one
  data connection per source in parallel; a corrupt chunk penalises its
  sender and is fetched elsewhere.
* **Upload** is an invitation to pull (``Offer``): the receiver checks the
  agreement and size, then fetches from the uploader like any other blob, so
  there is exactly one verified receive path.
* **Who may use a stored blob** (spec/transfer.md section 1.1): a fetch is
  on behalf of a party (``on_behalf_of``, by default its first source); a
  stored blob is reused only if that party delivered it here before or it
  is public, otherwise the party must deliver it again (every chunk
  verified, nothing written: a proof of possession).  A digest alone never
  opens a blob.
* Every request on ``/cpn/transfer`` ends in an answer or a ``TransferError``
  whatever it raises (``internal_error`` for our own failures, logged at most
  once a minute per peer); the data plane's accept loop does the same.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.config import TransferSection
from node.metrics import Metrics
from node.p2p import FramedStream, P2PHost, StreamClosed
from node.transfer.blobstore import BlobStore
from node.transfer.blobtypes import BlobLike, BlobMeta, BlobStoreError, QuotaExceeded
from node.transfer.datapath import data_path_label, offer_tcp
from node.transfer.dataplane import DataLimits
from node.transfer.dataplane_server import DataPlaneServer
from node.transfer.fetch import (
    CONTROL_TIMEOUT,
    BlobFetch,
    Progress,
    TransferFailed,
    TransferRefused,
)
from node.transfer.guard import PeerLog
from node.transfer.punch import PunchService
from protocol.chunks import chunk_count
from protocol.envelope import open_envelope, seal
from protocol.errors import ProtocolError
from protocol.transfer import (
    CONTROL_LIMITS,
    DATA_PROTOCOL_ID,
    MAX_CONTROL_FRAME,
    MAX_GRANT_TTL,
    MAX_PARTIAL,
    PATH_PUNCH,
    PATH_STREAM,
    PATH_TCP,
    PROTOCOL_ID,
    PUNCH_PROTOCOL_ID,
    Direction,
    FetchGrant,
    GetChunkList,
    Have,
    HaveEntry,
    HolderEntry,
    Holders,
    Offer,
    OfferResult,
    Present,
    Ticket,
    TicketRequest,
    TransferError,
    Want,
    WhoHas,
    bitmap_from_indexes,
    chunk_list_page,
)
from protocol.wire import Message

__all__ = ["TransferService", "TransferFailed", "TransferRefused", "Progress", "Authorizer"]

log = logging.getLogger("cpn.transfer")

UPLOAD_TIMEOUT = 3600.0  #: seconds an uploader waits for the receiver to pull
GRANT_TTL = 600  #: seconds a FetchGrant we sign stays valid
MAX_GRANTS = 16  #: holders named in one answer to WhoHas
PENALTY_SKIP = 3  #: penalties after which a peer is used only as a last resort
SWEEP_EVERY_S = 600.0  #: seconds between sweeps of idle unpinned blobs
LOCAL_GRACE_S = 600.0  #: an unpinned blob only this node produced is swept after this long unused
UPGRADE_WAIT_S = 4.0  #: seconds a data stream waits for a relayed connection to be hole punched
UPGRADE_LIMIT_S = 10.0  #: ... and on while a hole punch is under way (two of its 5 s rounds)

Authorizer = Callable[[str, str, Direction], bool]
T = TypeVar("T")


def _fit_have(entries: list[HaveEntry]) -> tuple[HaveEntry, ...]:
    """A Have within its rules (spec/transfer.md section 2.4): every complete
    entry, and at most MAX_PARTIAL partial ones (the initiator may ask again)."""
    partial = {id(e) for e in [e for e in entries if not e.complete][:MAX_PARTIAL]}
    return tuple(e for e in entries if e.complete or id(e) in partial)


def data_limits(config: TransferSection) -> DataLimits:
    """The data plane's bounds from ``[transfer]`` (validated when it was loaded)."""
    return DataLimits(
        handshake_s=config.data_handshake_s, stall_s=config.data_stall_s, conns=config.data_conns,
        conns_per_addr=config.data_conns_per_addr, conns_per_peer=config.data_conns_per_peer,
        tickets_per_peer=config.tickets_per_peer, threads=config.data_threads,
    )


class TransferService:
    """Serves ``/cpn/transfer`` and the data plane; fetches blobs for the rest of the node."""

    def __init__(
        self,
        *,
        p2p: P2PHost,
        key: Ed25519PrivateKey,
        store: BlobStore,
        config: TransferSection | None = None,
        metrics: Metrics | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        config = config or TransferSection()
        self._p2p = p2p
        self._key = key
        self.store = store
        self.host = config.data_host
        #: serve cached blobs to peers holding the owner's FetchGrant ([transfer] serve_granted)
        self.serve_granted = config.serve_granted
        self.now = now  #: unix seconds (grant expiry)
        self._authorizers: list[Authorizer] = []
        self._grants: dict[tuple[str, str, Direction], int | None] = {}
        self.penalties: dict[str, int] = {}
        self.progress: dict[str, Progress] = {}
        self._fetching: dict[str, trio.Event] = {}
        #: called with the Progress after every verified chunk (tests, CLI progress bars)
        self.on_progress: Callable[[Progress], None] | None = None
        #: known multiaddrs of peers (from adverts or agreements), used when dialling
        self.addrs: dict[str, list[str]] = {}
        self.stats = {"chunks_received": 0, "bytes_received": 0, "corrupt_chunks": 0,
                      "dedup_hits": 0, "refused": 0, "fetches": 0, "proofs": 0, "errors": 0,
                      "path_direct": 0, "path_reversed": 0, "path_hole_punched": 0, "path_relayed": 0,
                      "path_punched_tcp": 0}
        limits = data_limits(config)
        self.dataplane = DataPlaneServer(store, host=self.host, limits=limits)
        #: the ``punch`` path, both sides ([transfer] punch)
        self.punch = PunchService(p2p=p2p, key=key, dataplane=self.dataplane, enabled=config.punch)
        #: worker threads of the data connections we open (not trio's default limiter)
        self.fetch_limiter = trio.CapacityLimiter(limits.threads)
        #: blob-store lookups for control requests and fetches (SQLite, files), off the event loop
        self.store_limiter = trio.CapacityLimiter(4)
        self.cache_idle_s = config.cache_idle_s  #: sweep: unpinned cached blobs unused this long go
        self.log = PeerLog(log)
        #: owner side: other peers known to hold a blob, ``digest -> [(peer, addrs)]``
        #: (the job runner registers the providers of its finished jobs)
        self.holders_of: Callable[[str], list[tuple[str, list[str]]]] = lambda digest: []
        self._delegated: dict[tuple[str, str], float] = {}  #: (grantee, digest) -> expires_at
        self.unreachable: dict[str, float] = {}  #: holder -> when to try it again
        self._register_metrics(metrics or Metrics())

    @property
    def peer_id(self) -> str:
        return str(self._p2p.peer_id)

    # ---- lifecycle

    async def run(self, *, task_status: TaskStatus[TransferService] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the data plane and the control protocol until cancelled.

        The blob store belongs to the caller, who closes it after this returns.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dataplane.run)
            self._p2p.set_stream_handler(PROTOCOL_ID, self._handle)
            self._p2p.set_stream_handler(DATA_PROTOCOL_ID, self.dataplane.serve_stream)
            self._p2p.set_stream_handler(PUNCH_PROTOCOL_ID, self.punch.serve)
            nursery.start_soon(self._sweeper)
            task_status.started(self)

    async def _sweeper(self) -> None:
        """Every SWEEP_EVERY_S: delete unpinned blobs unused for ``cache_idle_s``
        (those only this node produced: LOCAL_GRACE_S)."""
        while True:
            await trio.sleep(SWEEP_EVERY_S)
            try:
                freed = await trio.to_thread.run_sync(
                    functools.partial(self.store.sweep, idle_s=self.cache_idle_s, local_idle_s=LOCAL_GRACE_S))
            except (OSError, BlobStoreError) as exc:
                log.warning("blob store sweep failed: %s", exc)
                continue
            if freed:
                log.info("blob store sweep freed %d bytes", freed)

    # ---- authorisation

    def add_authorizer(self, fn: Authorizer) -> None:
        """``fn(peer_id, digest, direction) -> bool``; any True admits (default deny)."""
        self._authorizers.append(fn)

    def grant(self, peer: str, digest: str, direction: Direction, *, max_size: int | None = None) -> None:
        """Let ``peer`` fetch ``digest`` from us, or upload it to us (at most ``max_size`` bytes)."""
        self._grants[(peer, digest, direction)] = max_size

    def revoke(self, peer: str, digest: str | None = None) -> None:
        for k in [k for k in self._grants if k[0] == peer and (digest is None or k[1] == digest)]:
            del self._grants[k]

    def authorize(self, peer: str, digest: str, direction: Direction) -> bool:
        if (peer, digest, direction) in self._grants:
            return True
        if direction is Direction.FETCH and self._delegated.get((peer, digest), 0) > self.now():
            return True
        return any(fn(peer, digest, direction) for fn in self._authorizers)

    def _upload_limit(self, peer: str, digest: str) -> int | None:
        return self._grants.get((peer, digest, Direction.UPLOAD))

    # ---- serving (control plane)

    async def _handle(self, stream: FramedStream) -> None:
        """The ``/cpn/transfer`` handler: requests in order, one answer each.
        Whatever a request raises ends in a TransferError and the stream's close
        (our own failures as ``internal_error``, logged at most once a minute per
        peer); nothing escapes into the host."""
        peer = stream.remote_peer
        while True:  # one request per turn; each read waits at most CONTROL_TIMEOUT
            try:
                # a silent initiator: TooSlowError, and the host's wrapper resets the stream (section 2.1)
                with trio.fail_after(CONTROL_TIMEOUT):
                    raw = await stream.receive_frame(MAX_CONTROL_FRAME)
                signed = open_envelope(raw, expected=(Want, GetChunkList, TicketRequest, Offer, WhoHas, Present),
                                       signer=peer, limits=CONTROL_LIMITS)
            except StreamClosed:
                return
            except ProtocolError as exc:
                await self._refuse_request(stream, exc)
                return
            try:
                reply = await self._answer(peer, signed.message)
            except StreamClosed:
                return
            except ProtocolError as exc:
                await self._refuse_request(stream, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a request must never take the node down
                self.stats["errors"] += 1
                self.log.note(peer, "transfer request from %s failed here: %s: %s", peer, type(exc).__name__, exc)
                await self._refuse(stream, TransferError(reason="internal_error", detail=type(exc).__name__))
                return
            try:
                await self._send(stream, reply)
            except (StreamClosed, trio.TooSlowError):
                return

    async def _refuse_request(self, stream: FramedStream, exc: ProtocolError) -> None:
        """A request that broke the protocol: counted, logged, answered with its reason."""
        self.stats["refused"] += 1
        log.info("transfer request from %s refused: %s", stream.remote_peer, exc)
        await self._refuse(stream, TransferError(reason=exc.reason, detail=exc.detail[:1024]))

    async def _refuse(self, stream: FramedStream, err: TransferError) -> None:
        """Send ``err`` and close our side (spec/transfer.md section 2.1), as far
        as the peer still listens."""
        try:
            await self._send(stream, err)
        except (StreamClosed, trio.TooSlowError):
            pass
        with trio.move_on_after(CONTROL_TIMEOUT):
            await stream.close()

    async def _send(self, stream: FramedStream, msg: Message) -> None:
        with trio.fail_after(CONTROL_TIMEOUT):
            await stream.send_frame(seal(msg, self._key).raw)

    async def _answer(self, peer: str, msg: Message) -> Message:
        if isinstance(msg, Want):
            allowed = [d for d in msg.digests if self.authorize(peer, d, Direction.FETCH)]
            if not allowed:
                raise ProtocolError("unauthorized", "no agreement lets you fetch these blobs")
            entries = await self._blocking(lambda: [e for d in allowed if (e := self._have_entry(d)) is not None])
            return Have(blobs=_fit_have(entries))
        if isinstance(msg, Offer):
            return await self._accept_offer(peer, msg)
        if isinstance(msg, WhoHas):
            return self._who_has(peer, msg)
        if isinstance(msg, Present):
            return await self._present(peer, msg)
        assert isinstance(msg, GetChunkList | TicketRequest)
        digest = msg.digest
        if not self.authorize(peer, digest, Direction.FETCH):
            raise ProtocolError("unauthorized", f"no agreement lets you fetch {digest}")
        held = await self._blocking(self.store.held_chunks, digest)
        if held is None or (held[1] is not None and not held[1]):
            raise ProtocolError("not_found", f"{digest} is not stored here")
        m, chunks = held
        if isinstance(msg, GetChunkList):
            hashes = await self._blocking(self.store.chunk_list, digest)
            return chunk_list_page(msg, size=m.size, chunk_size=m.chunk_size, hashes=hashes)
        await self._blocking(self.store.touch, digest)
        # a partial blob: serve what it holds when each request arrives
        held_now = None if chunks is None else functools.partial(self._held_now, digest)
        return self.dataplane.issue(peer, m, held=held_now, paths=self.paths_for(peer))

    def paths_for(self, peer: str) -> tuple[str, ...]:
        """The data paths a ticket for ``peer`` offers (spec/transfer.md section 3.1):
        the data port first where ``peer`` can reach it, else a punched TCP
        connection where the only libp2p connection is relayed and we can take
        part in a punch (section 3.7); the libp2p stream always."""
        if offer_tcp(self._p2p.reachability.status, self.host, self._p2p.peer_ip(peer)):
            return (PATH_TCP, PATH_STREAM)
        if self.punch.offered_to(peer):
            return (PATH_PUNCH, PATH_STREAM)
        return (PATH_STREAM,)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Blob-store work (SQLite, files) in a worker thread of the store's limiter,
        never on the event loop."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.store_limiter)

    def _held_now(self, digest: str) -> Collection[int]:
        held = self.store.held_chunks(digest)
        if held is None:
            return ()
        m, chunks = held
        return range(chunk_count(m.size, m.chunk_size)) if chunks is None else chunks

    def _who_has(self, peer: str, msg: WhoHas) -> Holders:
        """As a blob's owner: name other holders of blobs ``peer`` may fetch from
        us, each with a FetchGrant that lets ``peer`` fetch it from them."""
        allowed = [d for d in msg.digests if self.authorize(peer, d, Direction.FETCH)]
        if not allowed:
            raise ProtocolError("unauthorized", "no agreement lets you fetch these blobs")
        me = self.peer_id
        expires = int(self.now()) + GRANT_TTL
        entries: list[HolderEntry] = []
        for d in allowed:
            for holder, addrs in self.holders_of(d):
                if holder in (peer, me) or len(entries) >= MAX_GRANTS:
                    continue
                grant = seal(FetchGrant(digest=d, grantee=peer, holder=holder, expires_at=expires), self._key)
                entries.append(HolderEntry(grant=grant.raw, addrs=tuple(a for a in addrs[:8] if 0 < len(a) <= 256)))
        return Holders(holders=tuple(entries))

    async def _present(self, peer: str, msg: Present) -> Have:
        """As a holder: accept a FetchGrant naming us and ``peer`` from an owner of the
        blob, then answer what we hold of it."""
        if not self.serve_granted:
            raise ProtocolError("unauthorized", "this node does not serve granted fetches (serve_granted = false)")
        signed = open_envelope(msg.grant, expected=FetchGrant, limits=CONTROL_LIMITS)
        g: FetchGrant = signed.message
        now = self.now()
        if g.grantee != peer:
            raise ProtocolError("unauthorized", "the grant names another peer")
        if g.holder != self.peer_id:
            raise ProtocolError("unauthorized", "the grant names another holder")
        if not now < g.expires_at <= now + MAX_GRANT_TTL:
            raise ProtocolError("expired", "the grant has expired (or expires too far ahead)")
        owns = self.authorize(signed.signer, g.digest, Direction.FETCH) or await self._blocking(
            self.store.usable_by, g.digest, signed.signer)
        if not owns:
            raise ProtocolError("unauthorized", f"{signed.signer} cannot grant {g.digest} here")
        self._delegated[(peer, g.digest)] = float(g.expires_at)
        for key in [k for k, t in self._delegated.items() if t <= now]:
            del self._delegated[key]
        entry = await self._blocking(self._have_entry, g.digest)
        return Have(blobs=() if entry is None else (entry,))

    def _have_entry(self, digest: str) -> HaveEntry | None:
        """What we hold of ``digest`` for a Have: all of it, the verified chunks of
        a partial blob, or None."""
        held = self.store.held_chunks(digest)
        if held is None or (held[1] is not None and not held[1]):
            return None
        m, chunks = held
        if chunks is None:
            return HaveEntry(digest=digest, size=m.size, chunk_size=m.chunk_size, complete=True, bitmap=b"")
        return HaveEntry(digest=digest, size=m.size, chunk_size=m.chunk_size, complete=False,
                         bitmap=bitmap_from_indexes(chunks, chunk_count(m.size, m.chunk_size)))

    async def _accept_offer(self, peer: str, offer: Offer) -> Message:
        """An upload: pull the blob from ``peer``, on its behalf (a blob we hold
        already is verified from it again unless it delivered it before)."""
        if not self.authorize(peer, offer.digest, Direction.UPLOAD):
            raise ProtocolError("unauthorized", f"no agreed job takes an upload of {offer.digest}")
        limit = self._upload_limit(peer, offer.digest)
        if limit is not None and offer.size > limit:
            raise ProtocolError("too_large", f"{offer.size} bytes offered, {limit} agreed")
        meta = BlobMeta(digest=offer.digest, size=offer.size, chunk_size=offer.chunk_size,
                        chunk_root=offer.chunk_root)
        try:
            await self.fetch(meta, [peer], on_behalf_of=peer)
        except QuotaExceeded as exc:
            raise ProtocolError("quota_exceeded", str(exc)) from None
        except TransferFailed as exc:
            raise ProtocolError("upload_failed", str(exc)) from None
        return OfferResult(digest=offer.digest, stored=True)

    # ---- client side

    async def ask(self, stream: FramedStream, msg: Message, expected: type[Message],
                   wait_s: float = CONTROL_TIMEOUT) -> Any:
        """Send ``msg`` on a control stream; return the signed answer of type
        ``expected``, or raise :class:`TransferRefused` if the peer refused."""
        await self._send(stream, msg)
        with trio.fail_after(wait_s):
            raw = await stream.receive_frame(MAX_CONTROL_FRAME)
        got = open_envelope(raw, expected=(expected, TransferError), signer=stream.remote_peer,
                            limits=CONTROL_LIMITS).message
        if isinstance(got, TransferError):
            raise TransferRefused(stream.remote_peer, got.reason, got.detail)
        return got

    def penalise(self, peer: str, why: str) -> None:
        self.penalties[peer] = self.penalties.get(peer, 0) + 1
        log.warning("penalised %s: %s", peer, why)

    async def push(self, peer: str, blob: BlobLike) -> None:
        """Upload ``blob`` to ``peer``: offer it, let the peer pull it, wait until stored."""
        self.grant(peer, blob.digest, Direction.FETCH)
        try:
            stream = await self.open_stream(peer)
            try:
                offer = Offer(digest=blob.digest, size=blob.size, chunk_size=blob.chunk_size,
                              chunk_root=blob.chunk_root)
                await self.ask(stream, offer, OfferResult, wait_s=UPLOAD_TIMEOUT)
            finally:
                await stream.close()
        finally:
            self.revoke(peer, blob.digest)

    async def open_stream(self, peer: str) -> FramedStream:
        """A new ``/cpn/transfer`` control stream to ``peer`` (dialled at its known addrs)."""
        stream: FramedStream = await self._p2p.open_stream(peer, PROTOCOL_ID, self.addrs.get(peer))
        return stream

    async def open_data_stream(self, peer: str) -> tuple[FramedStream, str]:
        """A ``/cpn/transfer/data`` stream to ``peer`` and the path of the libp2p
        connection it runs on (:func:`node.transfer.datapath.data_path_label`)."""
        p2p, addrs = self._p2p, self.addrs.get(peer)
        await p2p.connect(peer, addrs or ())
        if p2p.connection_path(peer) == "relayed" and p2p.reachability.nat_type != "symmetric":
            # a fresh relayed connection is often upgraded by DCUtR within a second or two
            # (its hole punch starts when it opens): bulk data had better wait for it than
            # crawl through the relay, and see out a punch under way
            await p2p.wait_upgrade(peer, UPGRADE_WAIT_S, UPGRADE_LIMIT_S)
        stream: FramedStream = await p2p.open_stream(peer, DATA_PROTOCOL_ID, addrs)
        return stream, data_path_label(p2p.connection_path(peer))

    async def wait_unrelayed(self, peer: str) -> None:
        """Return once a non-relayed connection to ``peer`` is open."""
        await self._p2p.wait_unrelayed(peer)

    async def open_punched(self, peer: str, ticket: Ticket) -> socket.socket:
        """A punched TCP connection to ``peer`` (:class:`~node.transfer.punch.PunchService`)."""
        return await self.punch.open(peer, ticket)

    async def fetch(self, blob: BlobLike, sources: Sequence[str], *, discover: bool = False,
                    on_behalf_of: str | None = None) -> BlobMeta:
        """Fetch ``blob`` from ``sources`` (peer IDs) into the store; return it.

        The fetch is for a party: ``on_behalf_of``, else the first source (the
        blob's owner, e.g. a job's submitter), else this node (no sources).  A
        stored blob is returned at once only if that party may use it here
        (:meth:`BlobStore.usable_by`: it delivered the blob before, or the blob
        is public); otherwise the party delivers it again, every chunk verified
        against its chunk list and nothing written (a proof that it holds the
        blob).  A completed fetch records the party as a supplier.  Every
        source must be one the party vouches for (its own node, or holders its
        grants name).

        With ``discover``, the first source is taken as the blob's owner and
        asked which other peers hold it (WhoHas); those it vouches for with a
        FetchGrant become extra sources (a holder that cannot be reached in
        HOLDER_TIMEOUT is skipped).

        Raises :class:`TransferFailed` (verified chunks are kept for a later
        resume), :class:`~node.transfer.blobtypes.QuotaExceeded` before moving any byte
        if it cannot fit.
        """
        digest = blob.digest
        party = on_behalf_of if on_behalf_of is not None else (sources[0] if sources else None)
        while digest in self._fetching:  # one fetch per blob at a time; others wait, then look again
            await self._fetching[digest].wait()
        proof, reusable = await self._blocking(self._reusable, digest, party)
        if reusable is not None:
            self.stats["dedup_hits"] += 1
            self.progress.setdefault(digest, Progress(digest, blob.size, phase="deduplicated",
                                                      done_bytes=blob.size))
            return reusable
        done = self._fetching[digest] = trio.Event()
        prog = self.progress[digest] = Progress(digest, blob.size)
        self.stats["proofs" if proof else "fetches"] += 1
        try:
            meta = await BlobFetch(self, blob, sources, prog, discover=discover, party=party, proof=proof).run()
            if party is not None:
                await self._blocking(self.store.add_supplier, digest, party)
        except BaseException as exc:
            prog.phase, prog.error, prog.finished = "failed", str(exc) or type(exc).__name__, trio.current_time()
            raise
        finally:
            del self._fetching[digest]
            done.set()
        prog.phase, prog.finished = "done", trio.current_time()
        return meta

    def _reusable(self, digest: str, party: str | None) -> tuple[bool, BlobMeta | None]:
        """Blocking: (is ``digest`` stored, its meta if ``party`` may use it as it is)."""
        if not self.store.has(digest):
            return False, None
        if not self.store.usable_by(digest, party):
            return True, None
        self.store.touch(digest)
        return True, self.store.meta(digest)

    async def fetch_many(self, blobs: Sequence[BlobLike], sources: Sequence[str], *,
                         owner: str | None = None, parallel: int = 4) -> list[BlobMeta]:
        """Fetch every blob of a job (image layers, config, manifest, inputs).

        With ``owner`` (e.g. the job ID) each blob is pinned first, so garbage
        collection cannot remove it while the job needs it; the caller unpins
        with ``store.unpin(owner)``.  Blobs already stored move no bytes.
        Raises the first failure after the others finished or failed.
        """
        unique = list({b.digest: b for b in blobs}.values())
        if owner is not None:
            for b in unique:
                self.store.pin(b.digest, owner)
        limit = trio.Semaphore(parallel)
        results: dict[str, BlobMeta] = {}
        failures: list[BaseException] = []

        async def one(b: BlobLike) -> None:
            async with limit:
                try:
                    results[b.digest] = await self.fetch(b, sources)
                except (TransferFailed, BlobStoreError) as exc:
                    failures.append(exc)

        async with trio.open_nursery() as nursery:
            for b in unique:
                nursery.start_soon(one, b)
        if failures:
            raise failures[0]
        return [results[b.digest] for b in blobs]

    # ---- API and metrics

    def _register_metrics(self, metrics: Metrics) -> None:
        for key, help_ in (("chunks_received", "Verified chunks received"),
                           ("bytes_received", "Verified bytes received"),
                           ("corrupt_chunks", "Chunks that failed verification"),
                           ("dedup_hits", "Fetches skipped because the blob was stored"),
                           ("path_direct", "Data connections direct (TCP to the data port, or a direct libp2p one)"),
                           ("path_reversed", "Data streams on a reversed libp2p connection"),
                           ("path_hole_punched", "Data streams on a hole-punched libp2p connection"),
                           ("path_punched_tcp", "Data connections punched through a symmetric NAT (punch path)"),
                           ("path_relayed", "Data streams through a relay (slow)")):
            metrics.gauge(f"cpn_transfer_{key}_total", help_, functools.partial(self.stats.__getitem__, key))
        for key, help_ in (("punches", "TCP punches started (the punch path, either side)"),
                           ("punches_won", "TCP punches that gave a connection"),
                           ("punches_refused", "Punch requests refused (limits, roles, targets)")):
            metrics.gauge(f"cpn_transfer_{key}_total", help_, functools.partial(self.punch.stats.__getitem__, key))
