"""Finding providers: look up compute identifiers, verify adverts, match and rank.

A lookup in the DHT only *nominates* candidates (provider records outlive
their providers by up to 48 h); a candidate becomes an offer only once a
current advert from it verifies at the finder's clock and it answers now
(spec/dht.md section 4).  Verification starts as each provider is found, so
it overlaps the lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

from node.clock import UnixClock
from node.find.records import Record, advert_key, fetch_advert
from node.metrics import Metrics
from node.p2p import EarlyStop, P2PHost, PeerUnreachable, StreamClosed
from protocol.advert import Advert, Tombstone, open_record, select_raw
from protocol.errors import ProtocolError
from protocol.identifiers import dht_key, lookup_ids, memory_tier
from protocol.jobspec import Resources
from protocol.matching import Explanation, Offer, evaluate, explain, rank

__all__ = ["Candidate", "CandidateStatus", "FindResult", "Finder"]

log = logging.getLogger("cpn.discovery")

#: a finder's attempts at one direct fetch (dial + request + answer): a short
#: first try and one retry, so a stalled stream or busy peer costs 0.5 s, not 3
FIND_FETCH_TIMEOUTS = (0.5, 1.5)
DHT_FALLBACK_TIMEOUT = 1.0  #: DHT advert lookup for a provider that did not answer
#: how long an advert this finder fetched itself is trusted for its *free
#: capacity* (with a fresh ping for reachability); copies in our DHT store are
#: trusted for as long as they are valid, as providers re-store on every change
CACHE_TRUST_S = 10
CACHE_MAX = 4096  #: adverts a finder remembers
FETCH_CONCURRENCY = 32
MIN_PROVIDERS = 20  #: providers a lookup collects at least (kad's k)


class CandidateStatus(StrEnum):
    """What a finder learnt of one provider a lookup nominated."""

    PENDING = "pending"  #: not checked yet
    OK = "ok"  #: a current advert verified, and the provider answers
    UNREACHABLE = "unreachable"  #: a current advert, but no answer now
    INVALID = "invalid"  #: it served a record that does not verify
    WITHDRAWN = "withdrawn"  #: its tombstone says it stopped offering
    GONE = "gone"  #: no current advert anywhere (a stale provider record)


@dataclass
class Candidate:
    peer_id: str
    addrs: list[str]
    status: CandidateStatus = CandidateStatus.PENDING
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
        clock: UnixClock,
        *,
        self_record: Callable[[], Record | None],
        metrics: Metrics,
    ) -> None:
        self.p2p = p2p
        self.clock = clock
        self.self_record = self_record  #: this node's own current record
        #: peer -> (raw record, clock time fetched): records this finder fetched
        self.cache: dict[str, tuple[bytes, int]] = {}
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
                # Verification starts as each provider is found, overlapping the lookup;
                # the lookups end once `want` candidates verified (spec/dht.md §6.5).
                stop = EarlyStop(
                    lambda: sum(c.status is CandidateStatus.OK for c in candidates.values()) >= want
                )

                async def check(cand: Candidate) -> None:
                    await self._check(cand, req, limiter)
                    stop.nudge()

                def on_found(peer: str, addrs: list[str]) -> None:
                    if peer not in candidates:
                        candidates[peer] = cand = Candidate(peer, addrs)
                        fetches.start_soon(check, cand)

                async def lookup(i: str) -> None:
                    nonlocal hops, rounds
                    res = await self.p2p.find_providers(dht_key(i), on_found=on_found, early_stop=stop)
                    hops, rounds = max(hops, res.hops), max(rounds, res.rounds)

                async with trio.open_nursery() as lookups:
                    for i in ids:
                        lookups.start_soon(lookup, i)
                lookup_ms = round((time.perf_counter() - t0) * 1000)
            timed_out = False
        for cand in candidates.values():
            if cand.status is CandidateStatus.PENDING:
                cand.status, cand.reason = CandidateStatus.UNREACHABLE, "timed out"
            self.candidates.inc(status=cand.status.value)
        self.finds.inc()
        now = self.clock()
        adverts = [c.advert for c in candidates.values() if c.status is CandidateStatus.OK and c.advert]
        invalid = sum(1 for c in candidates.values() if c.status is CandidateStatus.INVALID)
        matched, expl = explain(req, adverts, now=now, invalid=invalid)
        unreachable = sum(1 for c in candidates.values() if c.status is CandidateStatus.UNREACHABLE)
        expl = Explanation(
            candidates=len(candidates)
            - sum(1 for c in candidates.values() if c.status is CandidateStatus.WITHDRAWN),
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
                    cand.status, cand.reason = CandidateStatus.INVALID, exc.reason
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
                cand.status, cand.reason = CandidateStatus.UNREACHABLE, str(exc) or "timed out"
                await self._check_dht(cand)
                return
            except ProtocolError as exc:
                cand.status, cand.reason = CandidateStatus.INVALID, exc.reason
                log.info("invalid advert from %s: %s", cand.peer_id, exc)
                return
            self._remember(cand.peer_id, signed.raw, now)
            self._settle(cand, signed, rtt)

    async def _fetch(
        self, cand: Candidate, now: int
    ) -> tuple[Record, int]:
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
        cand: Candidate, signed: Record, rtt: int | None
    ) -> None:
        if isinstance(signed.message, Tombstone):
            cand.status, cand.reason = CandidateStatus.WITHDRAWN, f"tombstone seq {signed.message.seq}"
            return
        cand.status, cand.advert, cand.rtt_ms = CandidateStatus.OK, signed.message, rtt

    def _remember(self, peer: str, raw: bytes, now: int) -> None:
        if len(self.cache) >= CACHE_MAX and peer not in self.cache:
            self.cache.pop(next(iter(self.cache)))  # oldest insertion
        self.cache[peer] = (raw, now)

    def _cached(self, peer: str, now: int) -> Record | None:
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
            cand.status, cand.reason = CandidateStatus.GONE, "no current advert in the DHT"
            return
        try:
            signed = open_record(raw, self.clock(), peer_id=cand.peer_id)
        except ProtocolError as exc:
            cand.status, cand.reason = CandidateStatus.GONE, f"DHT advert {exc.reason}"
            return
        if isinstance(signed.message, Tombstone):
            cand.status, cand.reason = CandidateStatus.WITHDRAWN, f"tombstone seq {signed.message.seq}"


#: constraints that depend on what is free now; the others are static facts
_FREE_CONSTRAINTS = frozenset({"expired", "gpu-free", "cpu-free", "memory-free", "disk-free"})


def _never_fits(req: Resources, adv: Advert) -> bool:
    """True if ``adv``'s host could not run ``req`` even when idle (model,
    count, memory, cores...): a cached advert then settles the candidate."""
    fit = evaluate(req, adv)
    return any(f not in _FREE_CONSTRAINTS for f in fit.failures)

