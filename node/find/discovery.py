"""Discovery: advertise this node's compute, and find other nodes' (spec/dht.md).

Three DHT-level facts make a provider findable:

1. **Provider records** under the CID of every compute identifier the node
   advertises (standard kad ``ADD_PROVIDER``, so stock libp2p nodes can find
   us), re-announced every ``discovery.reprovide_interval_s``.
2. **The signed advert** as a DHT value under ``/cpn-advert/<peer id>``.
   Every node validates it on store *and* on fetch with
   :func:`protocol.advert.open_record` at the current time (signature, signer
   = named peer, unexpired, sane lifetime) and keeps the highest ``seq``.
3. **The advert served directly** over ``/cpn/advert/0.1.0``; fetching it is
   also the finder's reachability and round-trip check.

py-libp2p keeps provider records for 48 h, so a provider record only nominates
a *candidate*: the finder returns a provider only if a current advert from it
verifies and is unexpired now.  On shutdown a signed tombstone (same ``seq``,
which outranks the advert) replaces the advert in the DHT and is what the
protocol handler serves while the node stops.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.config import ConfigError
from node.p2p import P2PHost, PeerUnreachable, StreamClosed
from protocol import cbor
from protocol.advert import (
    MAX_RECORD_SIZE,
    Advert,
    FreeCapacity,
    Price,
    Tombstone,
    open_record,
    refresh_due,
    select_raw,
)
from protocol.envelope import Signed, seal
from protocol.errors import ProtocolError
from protocol.identifiers import advertised_ids, cid_string, dht_key, lookup_ids, memory_tier
from protocol.jobspec import Resources
from protocol.matching import Explanation, Offer, evaluate, explain, rank

__all__ = [
    "ADVERT_PROTOCOL",
    "ADVERT_NAMESPACE",
    "advert_key",
    "AdvertValidator",
    "AdvertiseService",
    "Finder",
    "FindResult",
    "fetch_advert",
]

log = logging.getLogger("cpn.discovery")

ADVERT_PROTOCOL = "/cpn/advert/0.1.0"
ADVERT_NAMESPACE = "cpn-advert"
FETCH_TIMEOUT = 3.0  #: serving one advert request; default for one direct fetch
#: a finder's attempts at one direct fetch (dial + request + answer): a short
#: first try and one retry, so a stalled stream or busy peer costs 0.5 s, not 3
FIND_FETCH_TIMEOUTS = (0.5, 1.5)
DHT_TIMEOUT = 10.0  #: one DHT put/provide round
DHT_FALLBACK_TIMEOUT = 1.0  #: DHT advert lookup for a provider that did not answer
#: how long an advert this finder fetched itself is trusted for its *free
#: capacity* (with a fresh ping for reachability); copies in our DHT store are
#: trusted for as long as they are valid, as providers re-store on every change
CACHE_TRUST_S = 10
CACHE_MAX = 4096  #: adverts a finder remembers
CLEANUP_TIMEOUT = 3.0  #: publishing the tombstone at shutdown
MAX_REQUEST = 64  #: bytes in an advert request frame
FETCH_CONCURRENCY = 32
MIN_PROVIDERS = 20  #: providers a lookup collects at least (kad's k)
SEQ_FILE = "advert.seq"
CAPACITY_DEBOUNCE_S = 0.5  #: coalesce a burst of capacity changes into one advert
ATTACH_POLL_S = 1.0  #: how often to look for the scheduler until it exists
#: ADD_PROVIDER rate limit of py-libp2p receivers: 10 per peer per 10 s (we stay under it)
PROVIDE_BURST = 8
PROVIDE_WINDOW_S = 11.0


def advert_key(peer_id: str) -> str:
    """The DHT key of ``peer_id``'s advert: ``/cpn-advert/<peer id>``."""
    return f"/{ADVERT_NAMESPACE}/{peer_id}"


def _peer_of_key(key: str) -> str:
    prefix = f"/{ADVERT_NAMESPACE}/"
    if not key.startswith(prefix) or "/" in key[len(prefix) :]:
        raise ProtocolError("bad_key", f"{key!r} is not /{ADVERT_NAMESPACE}/<peer id>")
    return key[len(prefix) :]


class AdvertValidator:
    """DHT validator for ``/cpn-advert/<peer>``: runs on every store and fetch.

    ``validate`` accepts only a record that :func:`open_record` accepts *now*
    for the peer the key names; ``select`` keeps the newest valid one.
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock

    def validate(self, key: str, value: bytes) -> None:
        open_record(value, self.clock(), peer_id=_peer_of_key(key))

    def select(self, key: str, values: list[bytes]) -> int:
        try:
            return select_raw(values, self.clock(), peer_id=_peer_of_key(key))
        except ProtocolError:
            return 0


# --------------------------------------------------------------------------- direct fetch


def _answer(record: bytes | None, error: str | None = None) -> bytes:
    return cbor.encode({"record": record} if record is not None else {"error": error or ""})


async def fetch_advert(
    p2p: P2PHost, peer_id: str, addrs: list[str], now: int, *, limit_s: float = FETCH_TIMEOUT
) -> tuple[Signed[Advert] | Signed[Tombstone], int]:
    """Fetch and verify ``peer_id``'s current record directly; return it and the RTT (ms).

    Raises :class:`PeerUnreachable`/:class:`StreamClosed` if the peer cannot
    be reached, ``trio.TooSlowError`` after ``limit_s`` seconds, and
    :class:`ProtocolError` for an invalid answer (forged, wrong signer,
    expired, malformed).
    """
    with trio.fail_after(limit_s):
        stream = await p2p.open_stream(peer_id, ADVERT_PROTOCOL, addrs)
        try:
            t0 = time.perf_counter()
            await stream.send_frame(b"")
            frame = await stream.receive_frame(MAX_RECORD_SIZE + 64)
            rtt_ms = max(0, round((time.perf_counter() - t0) * 1000))
        finally:
            await stream.close()
    answer = cbor.decode(
        frame, cbor.Limits(max_size=MAX_RECORD_SIZE + 64, max_depth=2, max_items=2)
    )
    if not isinstance(answer, dict) or len(answer) != 1:
        raise ProtocolError("malformed", "advert answer must be {record} or {error}")
    if "error" in answer:
        raise ProtocolError("refused", f"peer answered error {answer['error']!r}")
    raw = answer.get("record")
    if not isinstance(raw, bytes):
        raise ProtocolError("malformed", "advert answer record must be bytes")
    return open_record(raw, now, peer_id=peer_id), rtt_ms


# --------------------------------------------------------------------------- advertise


class AdvertiseService:
    """Probe, then keep a fresh signed advert in the DHT until shutdown."""

    def __init__(self) -> None:
        self.current: Signed[Advert] | Signed[Tombstone] | None = None
        self.seq = 0
        self.finder: Finder | None = None
        self.published: Any = None
        self.ids: list[str] = []
        self.report: Any = None
        self.publications = 0  #: adverts published after the first (tests wait on it)
        self._probe: Callable[[], Awaitable[Any]] | None = None
        self._hooked: Any = None
        self._capacity_changed = trio.Event()
        self._ids_changed = trio.Event()
        self._published = trio.Event()

    def dht_validators(self, clock: Callable[[], int]) -> dict[str, Any]:
        return {ADVERT_NAMESPACE: AdvertValidator(clock)}

    async def run(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = node.config.discovery
        finder = self.finder = Finder(
            node.p2p, node.clock, self_record=lambda: self.current, metrics=node.metrics
        )
        self.published = node.metrics.counter(
            "cpn_adverts_published_total", "Signed records this node published, by type"
        )
        _register_routes(node, self, finder)
        node.p2p.set_stream_handler(ADVERT_PROTOCOL, self._serve)
        if not cfg.enabled:
            task_status.started()
            return
        from node.find.probe import make_backend, probe

        try:
            backend = make_backend(cfg.fake_gpus or None, seed=node.peer_id)
        except ValueError as exc:
            raise ConfigError(f"discovery.fake_gpus: {exc}") from None
        # The execution service (started earlier) sets the capability its
        # self-test proved; without it the advert says "none".
        cap = getattr(node, "container_capability", None)
        if cfg.fake_gpus and cap is not None and cap.gpu_cdi:
            # fake GPUs have no device nodes: never claim they pass into containers
            node.container_capability = dataclasses.replace(cap, gpu_cdi=False)
        self._probe = lambda: probe(
            node.data_dir, backend=backend, container=getattr(node, "container_capability", None)
        )
        self._adopt(node, await self._probe())
        self.seq = _next_seq(node.data_dir, node.clock())
        self._publish_local(node, self.ids, self.report)
        await self._publish_dht(node)
        await self._provide(node, self.ids)
        task_status.started()
        log.info("advertising %d identifiers (seq %d)", len(self.ids), self.seq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._provide_loop, node)
                await self._refresh_loop(node)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                await self._withdraw(node)

    def _adopt(self, node: Any, report: Any) -> bool:
        """Take a probe report as the node's resources; True if the identifiers changed."""
        self.report = report
        node.resources = report.resource_set()
        sched = getattr(node, "scheduler", None)
        if sched is not None:  # never place a job on a GPU that is no longer there
            sched.resources = node.resources
        ids = advertised_ids(node.resources)
        changed = ids != self.ids
        self.ids = ids
        node.advertised = [{"id": i, "cid": cid_string(i)} for i in ids]
        return changed

    def _attach(self, node: Any) -> bool:
        """Hook the scheduler's change callback once it exists (True when hooked).

        The negotiation service creates ``node.negotiate.scheduler`` after discovery has
        started, so the refresh loop looks for it until it appears.
        """
        sched = getattr(node, "scheduler", None)
        if sched is None:
            return False
        if self._hooked is not sched:
            sched.on_change.append(lambda: self._capacity_changed.set())
            self._hooked = sched
            self._capacity_changed.set()  # publish what it holds already
        return True

    async def _refresh_loop(self, node: Any) -> None:
        """Publish a fresh advert half-way through each lifetime (re-probing the
        host first) and, debounced, whenever the scheduler's free capacity changes."""
        while True:
            assert self.current is not None and isinstance(self.current.message, Advert)
            wait = refresh_due(self.current.message) - node.clock()
            if not self._attach(node):
                wait = min(wait, ATTACH_POLL_S)
            with trio.move_on_after(max(0.0, wait)):
                await self._capacity_changed.wait()
            if self._capacity_changed.is_set():
                await trio.sleep(CAPACITY_DEBOUNCE_S)  # one advert for a burst of changes
                self._capacity_changed = trio.Event()
                await self.republish(node, reprobe=False)
            elif node.clock() >= refresh_due(self.current.message):
                await self.republish(node, reprobe=True)

    async def republish(self, node: Any, *, reprobe: bool) -> None:
        """Sign and publish a new advert (higher ``seq``) with the free capacity now.

        ``reprobe`` re-reads the hardware first (memory, disk, GPUs come and
        go); new identifiers are announced at once.
        """
        if reprobe:
            if self._adopt(node, await self._probe()):
                self._ids_changed.set()
        self.seq = _next_seq(node.data_dir, node.clock())
        self._publish_local(node, self.ids, self.report)
        await self._publish_dht(node)
        self.publications += 1
        self._published.set()
        self._published = trio.Event()

    async def wait_publications(self, count: int) -> None:
        """Return once ``count`` adverts were published after the first (stored
        in the DHT as far as it goes): lets tests wait for a change, not sleep."""
        while self.publications < count:
            await self._published.wait()

    async def _provide_loop(self, node: Any) -> None:
        """Re-announce provider records, often at first and then rarely.

        Provider records go to the closest peers known *at announce time*:
        peers that joined later and are closer hold none, a node that started
        first announced to nobody, and an announcement sent while a peer was
        overloaded is lost.  So the gap starts at :data:`PROVIDE_WINDOW_S` and
        doubles up to ``reprovide_interval_s``; a routing table that grew by
        10 % (once per window) or a change of identifiers re-announces at once.
        """
        cfg = node.config.discovery
        gap = PROVIDE_WINDOW_S
        provided_at_size = node.p2p.routing_table_size()
        next_provide = trio.current_time() + gap
        while True:
            with trio.move_on_after(min(PROVIDE_WINDOW_S, next_provide - trio.current_time())):
                await self._ids_changed.wait()
            size = node.p2p.routing_table_size()
            grew = size >= provided_at_size + max(1, provided_at_size // 10)
            if self._ids_changed.is_set() or grew or trio.current_time() >= next_provide:
                self._ids_changed = trio.Event()
                await self._provide(node, self.ids)
                provided_at_size = size
                gap = min(gap * 2, cfg.reprovide_interval_s)
                next_provide = trio.current_time() + gap

    def _publish_local(self, node: Any, ids: list[str], report: Any) -> None:
        cfg = node.config.discovery
        res = node.resources
        now = node.clock()
        adv = Advert(
            peer_id=node.peer_id,
            addrs=tuple(dict.fromkeys(a.split("/p2p/")[0] for a in node.p2p.listen_addrs)),
            resources=res,
            metrics=report.metrics(),
            free=free_capacity(res, getattr(node, "scheduler", None)),
            price=Price(
                gpu_hour=cfg.price_gpu_hour,
                cpu_core_hour=cfg.price_cpu_core_hour,
                memory_gib_hour=cfg.price_memory_gib_hour,
            ),
            container=report.container,
            compute_ids=tuple(ids),
            seq=self.seq,
            issued_at=now,
            expires_at=now + cfg.advert_lifetime_s,
        )
        self.current = seal(adv, node.key)

    async def _publish_dht(self, node: Any) -> None:
        assert self.current is not None
        self.published.inc(type=type(self.current.message).__name__.lower())
        with trio.move_on_after(DHT_TIMEOUT):
            try:
                await node.p2p.put_value(advert_key(node.peer_id), self.current.raw)
            except ValueError as exc:  # our own validator refused: a bug, say so loudly
                log.error("could not store our own advert: %s", exc)

    async def _provide(self, node: Any, ids: list[str]) -> None:
        """Announce ``ids`` in bursts that respect receivers' ADD_PROVIDER rate limit.

        py-libp2p accepts at most 10 ADD_PROVIDER messages per peer per 10 s and
        *resets the stream* (dropping the record) beyond that; every identifier
        goes to the same closest peers, so a ladder is sent in bursts of
        :data:`PROVIDE_BURST` with a pause of :data:`PROVIDE_WINDOW_S` between.
        """
        for start in range(0, len(ids), PROVIDE_BURST):
            if start:
                await trio.sleep(PROVIDE_WINDOW_S)
            with trio.move_on_after(DHT_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for i in ids[start : start + PROVIDE_BURST]:
                        nursery.start_soon(node.p2p.provide, dht_key(i))

    async def _withdraw(self, node: Any) -> None:
        """Replace the advert by a tombstone (served directly and stored in the DHT)."""
        if self.current is None:
            return
        tomb = Tombstone(peer_id=node.peer_id, seq=self.seq, issued_at=node.clock())
        self.current = seal(tomb, node.key)
        await self._publish_dht(node)
        log.info("advert withdrawn (tombstone seq %d)", self.seq)

    async def _serve(self, stream: Any) -> None:
        with trio.fail_after(FETCH_TIMEOUT):
            request = await stream.receive_frame(MAX_REQUEST)
            if request:
                await stream.send_frame(_answer(None, "bad_request"))
                raise ProtocolError("bad_request", "advert request must be an empty frame")
            if self.current is None:
                await stream.send_frame(_answer(None, "no_advert"))
            else:
                await stream.send_frame(_answer(self.current.raw))
            await stream.close()


def free_capacity(res: Any, scheduler: Any) -> FreeCapacity:
    """What the advert offers as free now: the scheduler's view (capacity not
    reserved or committed to jobs) within what the last probe found.

    MIG-mode GPUs are never free (they cannot be scheduled whole); without a
    scheduler (negotiation not running) the whole host is free.
    """
    gpus = [g.uuid for g in res.gpus if not g.mig]
    cpu, mem, disk = res.cpu_cores * 1000, res.memory_mib, res.disk_mib
    if scheduler is not None:
        free = scheduler.free()
        idle = set(free.gpu_uuids)
        gpus = [u for u in gpus if u in idle]
        cpu = min(cpu, max(0, free.cpu_millis))
        mem = min(mem, max(0, free.memory_mib))
        disk = min(disk, max(0, free.disk_mib))
    return FreeCapacity(gpu_uuids=tuple(gpus), cpu_millis=cpu, memory_mib=mem, disk_mib=disk)


def _next_seq(data_dir: Path, now: int) -> int:
    """A sequence number above every one this key used before, even across restarts
    or a lost state file (it never goes below the wall clock in seconds)."""
    path = data_dir / SEQ_FILE
    try:
        last = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        last = 0
    seq = max(last + 1, now)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(seq))
    os.replace(tmp, path)
    return seq


# --------------------------------------------------------------------------- find


_LEFT = ("withdrawn", "gone")  #: statuses of providers that are no longer offering


@dataclass
class Candidate:
    peer_id: str
    addrs: list[str]
    status: str = "pending"  #: ok | unreachable | invalid | withdrawn | gone
    reason: str = ""
    advert: Advert | None = None
    rtt_ms: int | None = None


@dataclass
class FindResult:
    identifiers: list[str]
    offers: list[Offer]
    explanation: Explanation
    candidates: list[Candidate] = field(default_factory=list)
    hops: int = 0  #: lookup rounds until providers were found (0: known locally)
    rounds: int = 0  #: lookup rounds made
    lookup_ms: int | None = None  #: time spent in DHT lookups (None: timed out there)
    elapsed_ms: int = 0
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "identifiers": self.identifiers,
            "offers": [
                {
                    "peer_id": o.advert.peer_id,
                    "addrs": list(o.advert.addrs),
                    "rtt_ms": o.rtt_ms,
                    "hourly_cost": o.fit.hourly_cost,
                    "fit_pct": o.fit.fit_pct,
                    "gpu_uuids": list(o.fit.gpu_uuids),
                    "gpus": [
                        {"model": g.model, "memory_mib": g.memory_mib, "cc": g.compute_capability}
                        for g in o.advert.resources.gpus
                        if g.uuid in o.fit.gpu_uuids
                    ],
                    "gpu_summary": _gpu_summary(o.advert),
                    "cpu_cores": o.advert.resources.cpu_cores,
                    "memory_mib": o.advert.resources.memory_mib,
                    "expires_at": o.advert.expires_at,
                    "seq": o.advert.seq,
                }
                for o in self.offers
            ],
            "explanation": self.explanation.to_json(),
            "summary": self.explanation.summary(),
            "candidates": [
                {"peer_id": c.peer_id, "status": c.status, "reason": c.reason, "rtt_ms": c.rtt_ms}
                for c in self.candidates
            ],
            "hops": self.hops,
            "rounds": self.rounds,
            "lookup_ms": self.lookup_ms,
            "elapsed_ms": self.elapsed_ms,
            "timed_out": self.timed_out,
        }


def _gpu_summary(adv: Advert) -> str:
    counts: dict[str, int] = {}
    for g in adv.resources.gpus:
        label = f"{g.model}-{memory_tier(g.memory_mib)}" + ("+mig" if g.mig else "")
        counts[label] = counts.get(label, 0) + 1
    return ",".join(f"{n}x{label}" for label, n in counts.items()) or "-"


class Finder:
    """Look up identifiers, fetch and verify adverts, match, rank."""

    def __init__(
        self,
        p2p: P2PHost,
        clock: Callable[[], int],
        *,
        self_record: Callable[[], Signed[Advert] | Signed[Tombstone] | None] = lambda: None,
        metrics: Any = None,
    ) -> None:
        self.p2p = p2p
        self.clock = clock
        self.self_record = self_record
        #: peer -> (raw record, clock time fetched): records this finder fetched
        self.cache: dict[str, tuple[bytes, int]] = {}
        self.finds = self.candidates = None
        if metrics is not None:
            self.finds = metrics.counter("cpn_find_total", "Find requests served")
            self.candidates = metrics.counter(
                "cpn_find_candidates_total", "Providers checked by finds, by outcome"
            )

    async def find(
        self,
        req: Resources,
        *,
        identifiers: list[str] | None = None,
        limit: int | None = 10,
        within_s: float = 5.0,
    ) -> FindResult:
        """Offers matching ``req`` found within ``within_s`` seconds, best first.

        ``identifiers`` overrides :func:`lookup_ids` (to look up one level).
        """
        t0 = time.perf_counter()
        ids = identifiers if identifiers is not None else lookup_ids(req)
        candidates: dict[str, Candidate] = {}
        hops = rounds = 0
        lookup_ms: int | None = None
        timed_out = True
        # Ask for more providers than offers wanted: some will not match or answer.
        want = max(MIN_PROVIDERS, 3 * (limit or 10))
        with trio.move_on_after(within_s):
            limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
            async with trio.open_nursery() as fetches:
                # Verification starts as each provider is found, overlapping the lookup.
                def on_found(peer: str, addrs: list[str]) -> None:
                    if peer not in candidates:
                        candidates[peer] = cand = Candidate(peer, addrs)
                        fetches.start_soon(self._check, cand, req, limiter)

                async def lookup(i: str) -> None:
                    nonlocal hops, rounds
                    res = await self.p2p.find_providers(dht_key(i), count=want, on_found=on_found)
                    hops, rounds = max(hops, res.hops), max(rounds, res.rounds)

                async with trio.open_nursery() as lookups:
                    for i in ids:
                        lookups.start_soon(lookup, i)
                lookup_ms = round((time.perf_counter() - t0) * 1000)
            timed_out = False
        for cand in candidates.values():
            if cand.status == "pending":
                cand.status, cand.reason = "unreachable", "timed out"
            if self.candidates is not None:
                self.candidates.inc(status=cand.status)
        if self.finds is not None:
            self.finds.inc()
        now = self.clock()
        adverts = [c.advert for c in candidates.values() if c.status == "ok" and c.advert]
        invalid = sum(1 for c in candidates.values() if c.status == "invalid")
        matched, expl = explain(req, adverts, now=now, invalid=invalid)
        unreachable = sum(1 for c in candidates.values() if c.status == "unreachable")
        expl = Explanation(
            candidates=len(candidates)
            - sum(1 for c in candidates.values() if c.status == "withdrawn"),
            matched=expl.matched,
            eliminated=expl.eliminated,
            unreachable=unreachable,
            invalid=invalid,
        )
        rtts = {c.peer_id: c.rtt_ms for c in candidates.values()}
        offers = rank([Offer(adv, fit, rtts.get(adv.peer_id)) for adv, fit in matched], limit)
        return FindResult(
            identifiers=ids,
            offers=offers,
            explanation=expl,
            candidates=sorted(candidates.values(), key=lambda c: c.peer_id),
            hops=hops,
            rounds=rounds,
            lookup_ms=lookup_ms,
            elapsed_ms=round((time.perf_counter() - t0) * 1000),
            timed_out=timed_out,
        )

    async def _check(self, cand: Candidate, req: Resources, limiter: trio.CapacityLimiter) -> None:
        """Verify one provider: a current advert, and that it answers now.

        Cheapest sufficient evidence first (spec/dht.md §4.1): a cached record
        that verifies *now* and is a tombstone settles "withdrawn"; a cached
        advert whose host can never run the job (static resources) is
        eliminated without a round trip; a cached advert that fits needs a
        muxer ping on the open connection (reachability and RTT).  Everything
        else, and every failed shortcut, takes the direct fetch.
        """
        async with limiter:
            now = self.clock()
            if cand.peer_id == self.p2p.peer_id:
                mine = self.self_record()
                try:
                    if mine is None:
                        raise ProtocolError("no_advert", "this node has no advert")
                    self._settle(cand, open_record(mine.raw, now, peer_id=cand.peer_id), 0)
                except ProtocolError as exc:
                    cand.status, cand.reason = "invalid", exc.reason
                return
            cached = self._cached(cand.peer_id, now)
            if cached is not None:
                if isinstance(cached.message, Tombstone):
                    self._settle(cand, cached, None)
                    return
                if _never_fits(req, cached.message):
                    self._settle(cand, cached, None)
                    return
                try:
                    rtt_s = await self.p2p.ping(cand.peer_id)
                except PeerUnreachable:
                    rtt_s = None
                if rtt_s is not None:
                    self._settle(cand, cached, max(0, round(rtt_s * 1000)))
                    return
            try:
                signed, rtt = await self._fetch(cand, now)
            except (PeerUnreachable, StreamClosed, trio.TooSlowError) as exc:
                cand.status, cand.reason = "unreachable", str(exc) or "timed out"
                await self._check_dht(cand)
                return
            except ProtocolError as exc:
                cand.status, cand.reason = "invalid", exc.reason
                log.info("invalid advert from %s: %s", cand.peer_id, exc)
                return
            self._remember(cand.peer_id, signed.raw, now)
            self._settle(cand, signed, rtt)

    async def _fetch(
        self, cand: Candidate, now: int
    ) -> tuple[Signed[Advert] | Signed[Tombstone], int]:
        """Direct fetch with a short first attempt and one retry."""
        last = len(FIND_FETCH_TIMEOUTS) - 1
        for i, limit_s in enumerate(FIND_FETCH_TIMEOUTS):
            try:
                return await fetch_advert(self.p2p, cand.peer_id, cand.addrs, now, limit_s=limit_s)
            except (PeerUnreachable, StreamClosed, trio.TooSlowError):
                if i == last:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _settle(
        cand: Candidate, signed: Signed[Advert] | Signed[Tombstone], rtt: int | None
    ) -> None:
        if isinstance(signed.message, Tombstone):
            cand.status, cand.reason = "withdrawn", f"tombstone seq {signed.message.seq}"
            return
        cand.status, cand.advert, cand.rtt_ms = "ok", signed.message, rtt

    def _remember(self, peer: str, raw: bytes, now: int) -> None:
        if len(self.cache) >= CACHE_MAX and peer not in self.cache:
            self.cache.pop(next(iter(self.cache)))  # oldest insertion
        self.cache[peer] = (raw, now)

    def _cached(self, peer: str, now: int) -> Signed[Advert] | Signed[Tombstone] | None:
        """The newest record of ``peer`` we already hold that verifies at ``now``.

        Sources: our own DHT store (validated on store, kept current by the
        provider's re-stores) and adverts this finder fetched within
        :data:`CACHE_TRUST_S`.  Each is verified again at ``now`` (signature,
        signer, expiry), so an expired or superseded record is never used; a
        tombstone wins over an advert with the same ``seq``.
        """
        raws: list[bytes] = []
        local = self.p2p.local_value(advert_key(peer))
        if local is not None:
            raws.append(local)
        mine = self.cache.get(peer)
        if mine is not None and now - mine[1] <= CACHE_TRUST_S:
            raws.append(mine[0])
        if not raws:
            return None
        try:
            return open_record(raws[select_raw(raws, now, peer_id=peer)], now, peer_id=peer)
        except ProtocolError:
            return None

    async def _check_dht(self, cand: Candidate) -> None:
        """Tell a provider that *left* from one that is *unreachable*.

        Provider records outlive their providers by up to 48 h; the DHT copy of
        the advert says whether the peer withdrew (tombstone) or lapsed (no
        valid record: "gone"), neither of which is worth reporting as
        unreachable.  Only a peer with a current advert counts as unreachable.
        """
        raw = None
        with trio.move_on_after(DHT_FALLBACK_TIMEOUT):
            try:
                raw = await self.p2p.get_value(advert_key(cand.peer_id))
            except ValueError as exc:
                log.debug("DHT advert of %s: %s", cand.peer_id, exc)
        if raw is None:  # the lookup timed out or found nothing: what do we hold?
            raw = self.p2p.local_value(advert_key(cand.peer_id))
        if raw is None:
            cand.status, cand.reason = "gone", "no current advert in the DHT"
            return
        try:
            signed = open_record(raw, self.clock(), peer_id=cand.peer_id)
        except ProtocolError as exc:
            cand.status, cand.reason = "gone", f"DHT advert {exc.reason}"
            return
        if isinstance(signed.message, Tombstone):
            cand.status, cand.reason = "withdrawn", f"tombstone seq {signed.message.seq}"


#: constraints that depend on what is free now; the others are static facts
_FREE_CONSTRAINTS = frozenset({"expired", "gpu-free", "cpu-free", "memory-free", "disk-free"})


def _never_fits(req: Resources, adv: Advert) -> bool:
    """True if ``adv``'s host could not run ``req`` even when idle (model,
    count, memory, cores...): a cached advert then settles the candidate."""
    fit = evaluate(req, adv)
    return any(f not in _FREE_CONSTRAINTS for f in fit.failures)


# --------------------------------------------------------------------------- API


def parse_size_mib(value: Any, name: str) -> int:
    """``40``, ``"40GiB"``, ``"512MiB"``, ``"1.5T"`` -> MiB (raises ValueError naming ``name``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a size like 40GiB")
    text = value.strip().lower().replace(" ", "")
    units = {"t": 1 << 20, "g": 1 << 10, "m": 1}
    for suffix in ("tib", "tb", "t", "gib", "gb", "g", "mib", "mb", "m"):
        if text.endswith(suffix):
            num, mult = text[: -len(suffix)], units[suffix[0]]
            break
    else:
        num, mult = text, 1 << 10  # a bare number is GiB
    try:
        amount = float(num)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a size like 40GiB") from None
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{name}: must be a positive size")
    return math.ceil(amount * mult)


def requirement_from_json(body: dict[str, Any]) -> Resources:
    """The find request body -> :class:`Resources` (raises ValueError/ProtocolError)."""
    from protocol.jobspec import GpuRequirement

    known = {
        "gpus",
        "gpu_mem",
        "gpu_model",
        "vendor",
        "cc",
        "cpus",
        "mem",
        "disk",
        "limit",
        "timeout",
        "id",
    }
    unknown = set(body) - known
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    gpus = int(body.get("gpus") or 0)
    models = body.get("gpu_model") or []
    if isinstance(models, str):
        models = [m for m in models.split(",") if m]
    gpu = None
    if gpus or models or body.get("gpu_mem") or body.get("cc") or body.get("vendor"):
        gpu = GpuRequirement(
            count=max(gpus, 1),
            min_memory_mib=parse_size_mib(body["gpu_mem"], "gpu_mem") if body.get("gpu_mem") else 0,
            vendor=body.get("vendor") or None,
            models=tuple(sorted(set(models))),
            min_compute_capability=body.get("cc") or None,
        )
    cpus = body.get("cpus")
    return Resources(
        gpu=gpu,
        cpu_millis=math.ceil(float(cpus) * 1000) if cpus else 1,
        memory_mib=parse_size_mib(body["mem"], "mem") if body.get("mem") else 1,
        disk_mib=parse_size_mib(body["disk"], "disk") if body.get("disk") else 0,
    )


def _register_routes(node: Any, service: AdvertiseService, finder: Finder) -> None:
    from node.api.server import ApiError

    async def get_advert(request: Any) -> Any:
        """This node's current signed record (advert or tombstone), decoded."""
        if service.current is None:
            raise ApiError(404, "no_advert", "discovery has not published an advert")
        msg = service.current.message
        return {
            "type": type(msg).__name__,
            "record": msg.to_wire(),
            "raw_hex": service.current.raw.hex(),
        }

    async def post_find(request: Any) -> Any:
        """Find providers matching a requirement (fields as `cpn find` flags)."""
        body = request.json() or {}
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        try:
            req = requirement_from_json(body)
            ident = body.get("id")
            if ident is not None:
                from protocol.identifiers import parse_id

                parse_id(ident)
            limit = int(body.get("limit") or 10)
            timeout = float(body.get("timeout") or 5.0)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        except ProtocolError as exc:
            raise ApiError(400, exc.reason, exc.detail) from None
        if not 0 < timeout <= 120 or limit < 1:
            raise ApiError(400, "bad_request", "timeout must be 0..120 s and limit >= 1")
        result = await finder.find(
            req, identifiers=[ident] if ident else None, limit=limit, within_s=timeout
        )
        return result.to_json()

    node.api.route("GET", "/v1/advert", get_advert, summary="This node's current advert")
    node.api.route("POST", "/v1/find", post_find, summary="Find matching providers")
