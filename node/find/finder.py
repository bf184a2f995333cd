"""Finding providers: look up compute identifiers, verify adverts, match and rank.

A lookup in the DHT only *nominates* candidates (provider records outlive
their providers by up to 48 h); a candidate becomes an offer only once a
current advert from it verifies at the finder's clock and it answers now
(spec/dht.md section 4).  Verification starts as each provider is found, so
it overlaps the lookup.

Provider records cost nothing to forge, so a Sybil can nominate hundreds of
providers that never answer (each costs a dial timeout to check).  A find
therefore:

* checks providers it verified before (:data:`VERIFIED_MEMORY_S`; a current
  advert in our DHT store or this finder's cache counts too) in a pool of
  their own, so they never queue behind unknown ones;
* checks at most ``find_max_candidates`` unknown providers (the rest are
  ``skipped``);
* skips a provider that failed a check for a while (a negative cache with
  expiry, bounded): :data:`FAILURE_FIRST_S` after one failure, doubling with
  each failure in a row up to ``find_failure_memory_s``, so a live provider
  that missed one check (it was busy, or we were) is checked again soon
  while one that never answers costs a check only every few minutes;
* returns what was verified when ``within_s`` runs out, and once enough
  matching offers are verified and the lookup is over, waits at most
  :data:`EARLY_GRACE_S` more for unknown providers.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

from node.clock import UnixClock
from node.config import DiscoverySection
from node.find.records import OpenedMemo, Record, advert_key, fetch_advert
from node.metrics import Metrics
from node.p2p import EarlyStop, P2PHost, PeerUnreachable, StreamClosed
from protocol.advert import Advert, Tombstone, open_record, select_opened
from protocol.errors import ProtocolError
from protocol.identifiers import dht_key, lookup_ids, memory_tier
from protocol.jobspec import Resources
from protocol.kademlia import FIND_ALPHA
from protocol.matching import Explanation, Offer, evaluate, explain, rank

__all__ = ["Candidate", "CandidateStatus", "FindResult", "Finder", "FinderLimits"]

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
FETCH_CONCURRENCY = 16  #: checks at once, per pool (known providers, unknown ones)
MIN_PROVIDERS = 20  #: providers a lookup collects at least (kad's k)
VERIFIED_MEMORY_S = 3600  #: a provider whose advert verified is preferred for this long
MEMORY_MAX = 8192  #: providers remembered as verified, and as failed (each)
EARLY_GRACE_S = FIND_FETCH_TIMEOUTS[0]  #: more time for unknown providers once enough offers verified
DHT_FALLBACKS = 8  #: DHT lookups per find for providers that did not answer (the rest: our store)
KEPT_PER_CHECKED = 4  #: nominations recorded per checkable one (the rest only counted)
#: how long a provider that failed one check is skipped; each failure in a row
#: doubles it, up to ``find_failure_memory_s``.  Short: a live provider that
#: missed one check (it or this node was overloaded, a connection was being
#: replaced) must not stay invisible to this finder for minutes
FAILURE_FIRST_S = 15


@dataclass(frozen=True)
class FinderLimits:
    """How much of a find one flood of provider records can take (``[discovery]``)."""

    max_candidates: int = 64  #: unknown providers checked per find
    failure_memory_s: int = 300  #: the longest a provider that failed checks is skipped

    @classmethod
    def from_config(cls, d: DiscoverySection) -> FinderLimits:
        return cls(max_candidates=d.find_max_candidates, failure_memory_s=d.find_failure_memory_s)


class CandidateStatus(StrEnum):
    """What a finder learnt of one provider a lookup nominated."""

    PENDING = "pending"  #: not checked yet
    OK = "ok"  #: a current advert verified, and the provider answers
    UNREACHABLE = "unreachable"  #: a current advert, but no answer now
    INVALID = "invalid"  #: it served a record that does not verify
    WITHDRAWN = "withdrawn"  #: its tombstone says it stopped offering
    GONE = "gone"  #: no current advert anywhere (a stale provider record)
    SKIPPED = "skipped"  #: not checked: over the find's bound on unknown providers

#: outcomes remembered in the negative cache
_FAILURES = frozenset({CandidateStatus.UNREACHABLE, CandidateStatus.INVALID, CandidateStatus.GONE})


@dataclass(frozen=True)
class Failure:
    """A provider's last failed check, remembered by a finder."""

    at: int  #: clock time of the check
    status: CandidateStatus
    reason: str
    streak: int = 1  #: failed checks in a row

    def skip_s(self, longest: int) -> int:
        """How long after :attr:`at` the provider is not checked again."""
        return min(longest, FAILURE_FIRST_S << min(self.streak - 1, 16))


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
    dropped: int = 0  #: nominations beyond what a find records (a flood of provider records)

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
                    "gpu_names": [g.name for g in o.advert.resources.gpus],
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
            "dropped": self.dropped,
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
        limits: FinderLimits | None = None,
    ) -> None:
        self.p2p = p2p
        self.clock = clock
        self.self_record = self_record  #: this node's own current record
        self.limits = limits or FinderLimits()
        #: peer -> (raw record, clock time fetched): records this finder fetched
        self.cache: dict[str, tuple[bytes, int]] = {}
        self.opened = OpenedMemo()  #: records already verified, by their bytes
        #: peer -> clock time its advert last verified (preferred in later finds)
        self.verified: OrderedDict[str, int] = OrderedDict()
        #: peer -> its last failed check (skipped for a while: :meth:`failed_recently`)
        self.failed: OrderedDict[str, Failure] = OrderedDict()
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
        sweep = _Sweep(self, req, limit or 10)
        candidates = sweep.candidates
        hops = rounds = 0
        lookup_ms: int | None = None
        timed_out = True
        # Ask for more providers than offers wanted: some will not match or answer.
        want = max(MIN_PROVIDERS, 3 * (limit or 10))
        with trio.move_on_after(within_s):
            async with trio.open_nursery() as fetches:
                sweep.nursery = fetches  # verification starts as each provider is found
                # the lookups end once `want` candidates verified (spec/dht.md §6.5)
                sweep.stop = stop = EarlyStop(lambda: sweep.verified() >= want)

                async def lookup(i: str) -> None:
                    nonlocal hops, rounds
                    res = await self.p2p.find_providers(dht_key(i), alpha=FIND_ALPHA, on_found=sweep.found,
                                                         early_stop=stop)
                    hops, rounds = max(hops, res.hops), max(rounds, res.rounds)

                async with trio.open_nursery() as lookups:
                    for i in ids:
                        lookups.start_soon(lookup, i)
                lookup_ms = round((time.perf_counter() - t0) * 1000)
                fetches.start_soon(sweep.stop_early, fetches.cancel_scope)
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
            dropped=sweep.dropped,
        )

    async def _check(self, cand: Candidate, req: Resources, limiter: trio.CapacityLimiter,
                     *, ask_dht: Callable[[], bool] = lambda: True) -> None:
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
                    self._settle(cand, open_record(mine.raw, now, peer_id=cand.peer_id, memo=self.opened), 0)
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
                await self._check_dht(cand, network=ask_dht())
                return
            except ProtocolError as exc:
                cand.status, cand.reason = CandidateStatus.INVALID, exc.reason
                log.debug("invalid advert from %s: %s", cand.peer_id, exc)
                return
            self._remember(cand.peer_id, signed.raw, now)
            self._settle(cand, signed, rtt)

    # ---- what this finder remembers of providers

    def known_good(self, peer: str, now: int) -> bool:
        """Verified recently, or a current advert of it in our DHT store or cache."""
        seen = self.verified.get(peer)
        return (seen is not None and now - seen <= VERIFIED_MEMORY_S) or self._cached(peer, now) is not None

    def failed_recently(self, peer: str, now: int) -> Failure | None:
        """``peer``'s last failure if it is still to be skipped: :data:`FAILURE_FIRST_S`
        after one failure, twice that after two in a row, ... at most
        ``find_failure_memory_s``."""
        hit = self.failed.get(peer)
        if hit is not None and now - hit.at < hit.skip_s(self.limits.failure_memory_s):
            return hit
        return None

    def note(self, cand: Candidate, now: int) -> None:
        """Remember how ``cand``'s check ended (bounded, oldest forgotten first)."""
        if cand.status is CandidateStatus.OK:
            self.failed.pop(cand.peer_id, None)
            _put(self.verified, cand.peer_id, now)
        elif cand.status in _FAILURES and self.limits.failure_memory_s:
            self.verified.pop(cand.peer_id, None)
            last = self.failed.get(cand.peer_id)
            # failures in a row: the last one is recent (older ones start over)
            in_row = last is not None and now - last.at <= 2 * self.limits.failure_memory_s
            streak = last.streak + 1 if in_row and last is not None else 1
            _put(self.failed, cand.peer_id, Failure(now, cand.status, cand.reason, streak))

    async def _fetch(
        self, cand: Candidate, now: int
    ) -> tuple[Record, int]:
        """Direct fetch with a short first attempt and one retry."""
        last = len(FIND_FETCH_TIMEOUTS) - 1
        for i, limit_s in enumerate(FIND_FETCH_TIMEOUTS):
            try:
                return await fetch_advert(self.p2p, cand.peer_id, cand.addrs, now, limit_s=limit_s,
                                         memo=self.opened)
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
            return select_opened(raws, now, peer_id=peer, memo=self.opened)[1]
        except ProtocolError:
            return None

    async def _check_dht(self, cand: Candidate, *, network: bool = True) -> None:
        """Tell a provider that *left* from one that is *unreachable*.

        Provider records outlive their providers by up to 48 h; the DHT copy of
        the advert says whether the peer withdrew (tombstone) or lapsed (no
        valid record: "gone"), neither of which is worth reporting as
        unreachable.  "Gone" needs evidence: a DHT lookup that *answered*
        without a current advert.  A lookup that timed out (this node or the
        network is busy) or was not made (over :data:`DHT_FALLBACKS`) proves
        nothing, so the provider stays unreachable: a live provider that
        missed one check is never reported as gone for it.
        """
        raw, answered = None, False
        if network:
            with trio.move_on_after(DHT_FALLBACK_TIMEOUT) as scope:
                try:
                    raw = await self.p2p.get_value(advert_key(cand.peer_id))
                except ValueError as exc:
                    log.debug("DHT advert of %s: %s", cand.peer_id, exc)
            answered = not scope.cancelled_caught
        if raw is None:  # the lookup timed out or found nothing: what do we hold?
            raw = self.p2p.local_value(advert_key(cand.peer_id))
        if raw is None:
            if answered:
                cand.status, cand.reason = CandidateStatus.GONE, "no current advert in the DHT"
            else:
                why = "no DHT answer in time" if network else "DHT not asked (enough lookups this find)"
                cand.reason = f"{cand.reason}; {why}"
            log.debug("%s: %s: %s", cand.peer_id, cand.status.value, cand.reason)
            return
        try:
            signed = open_record(raw, self.clock(), peer_id=cand.peer_id, memo=self.opened)
        except ProtocolError as exc:
            cand.status, cand.reason = CandidateStatus.GONE, f"DHT advert {exc.reason}"
            log.debug("%s: gone: %s", cand.peer_id, cand.reason)
            return
        if isinstance(signed.message, Tombstone):
            cand.status, cand.reason = CandidateStatus.WITHDRAWN, f"tombstone seq {signed.message.seq}"
        log.debug("%s: %s: %s", cand.peer_id, cand.status.value, cand.reason)


def _put(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MEMORY_MAX:
        memory.popitem(last=False)


class _Sweep:
    """The candidates of one find and the two pools that check them."""

    def __init__(self, finder: Finder, req: Resources, limit: int) -> None:
        self.finder, self.req, self.limit = finder, req, limit
        self.candidates: dict[str, Candidate] = {}
        self.known = trio.CapacityLimiter(FETCH_CONCURRENCY)
        self.unknown = trio.CapacityLimiter(FETCH_CONCURRENCY)
        self.admitted = 0  #: unknown providers admitted for a check
        self.unknown_seen = 0  #: unknown providers recorded
        self.remembered_seen = 0  #: providers recorded as failed lately (not checked)
        self.dropped = 0
        self.pending_known = 0
        self.nursery: trio.Nursery | None = None
        self.changed = trio.Event()
        self.dht_fallbacks = DHT_FALLBACKS
        self.stop: EarlyStop | None = None  #: the lookups' early stop, told after each check

    def verified(self) -> int:
        """Candidates whose advert verified so far."""
        return sum(c.status is CandidateStatus.OK for c in self.candidates.values())

    def _ask_dht(self) -> bool:
        """A network DHT lookup for one more silent provider?  (Bounded per find.)"""
        self.dht_fallbacks -= 1
        return self.dht_fallbacks >= 0

    def found(self, peer: str, addrs: list[str]) -> None:
        """A lookup nominated ``peer``: decide whether and in which pool to check it."""
        f, bound = self.finder, self.finder.limits.max_candidates
        if peer in self.candidates:
            return
        now = f.clock()
        known = f.known_good(peer, now) or peer == f.p2p.peer_id
        remembered = None if known else f.failed_recently(peer, now)
        # A flood of nominations is counted, not even recorded; failures this finder
        # remembers are recorded apart (no check, and they take no unknown's place:
        # lookups name providers in any order).
        if remembered is not None:
            if self.remembered_seen >= KEPT_PER_CHECKED * bound:
                self.dropped += 1
                return
            self.remembered_seen += 1
        elif not known:
            if self.unknown_seen >= KEPT_PER_CHECKED * bound:
                self.dropped += 1
                return
            self.unknown_seen += 1
        cand = self.candidates[peer] = Candidate(peer, addrs)
        if remembered is not None:
            cand.status = remembered.status
            cand.reason = f"{remembered.reason} ({now - remembered.at} s ago; not checked again yet)"
        elif known:
            self.pending_known += 1
            self._start(cand, self.known, known=True)
        elif self.admitted < bound:
            self.admitted += 1
            self._start(cand, self.unknown, known=False)
        else:
            cand.status, cand.reason = CandidateStatus.SKIPPED, f"over find_max_candidates ({bound})"

    def _start(self, cand: Candidate, pool: trio.CapacityLimiter, *, known: bool) -> None:
        async def check() -> None:
            await self.finder._check(cand, self.req, pool, ask_dht=self._ask_dht)
            self.finder.note(cand, self.finder.clock())
            self.pending_known -= known
            self.changed.set()
            self.changed = trio.Event()
            if self.stop is not None:
                self.stop.nudge()

        assert self.nursery is not None
        self.nursery.start_soon(check)

    def _enough(self) -> bool:
        now = self.finder.clock()
        ok = [c for c in self.candidates.values() if c.status is CandidateStatus.OK and c.advert is not None]
        return sum(evaluate(self.req, c.advert, now=now).ok for c in ok  # type: ignore[arg-type]
                   ) >= self.limit

    async def stop_early(self, scope: trio.CancelScope) -> None:
        """After the lookup: once the known providers are checked and enough offers
        match, give unknown providers :data:`EARLY_GRACE_S` more, then stop."""
        while self.pending_known or not self._enough():
            if all(c.status is not CandidateStatus.PENDING for c in self.candidates.values()):
                return
            await self.changed.wait()
        with trio.move_on_after(EARLY_GRACE_S):
            while any(c.status is CandidateStatus.PENDING for c in self.candidates.values()):
                await self.changed.wait()
        scope.cancel()


#: constraints that depend on what is free now; the others are static facts
_FREE_CONSTRAINTS = frozenset({"expired", "gpu-free", "cpu-free", "memory-free", "disk-free"})


def _never_fits(req: Resources, adv: Advert) -> bool:
    """True if ``adv``'s host could not run ``req`` even when idle (model,
    count, memory, cores...): a cached advert then settles the candidate."""
    fit = evaluate(req, adv)
    return any(f not in _FREE_CONSTRAINTS for f in fit.failures)

