"""One iterative Kademlia lookup (``FIND_NODE``, ``GET_PROVIDERS``) as a pure state machine."""

from __future__ import annotations

import bisect
import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError
from .kademlia_core import (
    ALPHA,
    BUSY_RETRY_S,
    MAX_LOOKUP_PROVIDERS,
    MAX_PAGES,
    MAX_QUERIES,
    SLOW_AFTER_S,
    Failure,
    K,
    Rand,
    kad_point,
    sample,
)

__all__ = ["Lookup", "LookupStats"]


class _State(enum.Enum):
    HEARD = "heard"  # known, not asked
    WAITING = "waiting"  # asked, counts against alpha
    SLOW = "slow"  # asked SLOW_AFTER_S ago, still unanswered: no longer counts against alpha
    BACKOFF = "backoff"  # said "busy": asked once more after retry_at
    ANSWERED = "answered"
    FAILED = "failed"


class _Peer:
    __slots__ = ("dist", "state", "sent_at", "depth", "retries", "retry_at", "pages")

    def __init__(self, dist: int, depth: int) -> None:
        self.dist = dist
        self.state = _State.HEARD
        self.sent_at = 0.0
        self.depth = depth
        self.retries = 0
        self.retry_at = 0.0
        self.pages = 0


@dataclass(frozen=True, slots=True)
class LookupStats:
    """What one lookup cost and how it ended."""

    outcome: str  #: "complete" (closest set answered), "stopped" (by the caller), "max_queries", or "" (running)
    queries: int  #: queries sent, pages included
    answers: int  #: answers received
    failures: int  #: queries that failed (timeout, unreachable, busy, invalid)
    pages: int  #: repeat queries for further providers
    providers: int  #: distinct providers seen
    #: hops until the first provider: depth of the first answer naming one (a seed is depth 1); 0 if none
    hops_to_provider: int
    #: hops to the closest set: the greatest depth among the k closest peers that answered
    depth: int


class Lookup:
    """One iterative Kademlia lookup for ``key`` (``FIND_NODE`` or ``GET_PROVIDERS``).

    ``seeds`` are the closest peers the local routing table knows; ``self_id``
    (our own peer ID) is never queried.  Give ``page_size`` (normally
    :data:`PAGE_SIZE`) for a provider lookup: at most that many providers are
    taken from any one answer (a ``rand`` subset when an answer carries more),
    and peers whose answers were full are asked again for further pages once
    the closest set is complete.

    Driver loop (see spec/dht.md §6.2)::

        lookup = Lookup(key, seeds, self_id=me, page_size=PAGE_SIZE, rand=random.random)
        while not lookup.done:
            for peer in lookup.next_queries(now()):
                start a query to peer (with its own timeout)
            wait for a query to end, or until lookup.next_wakeup(), or the deadline
            answer  -> new = lookup.on_response(peer, closer_peers, providers)
            failure -> lookup.on_failure(peer, Failure.X, now())
            deadline or enough providers -> lookup.stop()
    """

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[bytes],
        *,
        self_id: bytes | None = None,
        k: int = K,
        alpha: int = ALPHA,
        page_size: int | None = None,
        max_pages: int = MAX_PAGES,
        max_queries: int = MAX_QUERIES,
        slow_after: float = SLOW_AFTER_S,
        busy_retry_after: float = BUSY_RETRY_S,
        rand: Rand | None = None,
    ) -> None:
        if not key:
            raise ValueError("empty lookup key")
        if k < 1 or alpha < 1 or max_queries < 1 or (page_size is not None and page_size < 1):
            raise ValueError("k, alpha, max_queries and page_size must be >= 1")
        self.key = bytes(key)
        self.k = k
        self.alpha = alpha
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_queries = max_queries
        self.slow_after = slow_after
        self.busy_retry_after = busy_retry_after
        self._rand = rand
        self._self_id = self_id
        self._target = kad_point(self.key)
        self._peers: dict[bytes, _Peer] = {}
        self._order: list[tuple[int, bytes]] = []  # (distance, peer) not failed, ascending
        self._pending: dict[bytes, _Peer] = {}  # WAITING, SLOW or BACKOFF
        self._providers: dict[bytes, None] = {}  # insertion-ordered set
        self._paging: set[bytes] = set()  # ANSWERED peers with a page query in flight
        self._page_queue: deque[bytes] = deque()
        self._full: set[bytes] = set()  # peers that ever returned a full page
        self._dry = 0  # page answers in a row that brought no new provider
        self._queries = self._answers = self._failures = self._pages = 0
        self._hops_to_provider = 0
        self._outcome = ""
        for peer in seeds:
            self._learn(bytes(peer), 1)
        self._update()

    # ---- state

    @property
    def done(self) -> bool:
        """True once the lookup ended; it then sends nothing more."""
        return bool(self._outcome)

    @property
    def providers(self) -> list[bytes]:
        """Every distinct provider seen so far, in order of arrival."""
        return list(self._providers)

    def closest(self) -> list[bytes]:
        """The k closest peers that answered, closest first (the lookup's result)."""
        out: list[bytes] = []
        for _, peer in self._order:
            if self._peers[peer].state is _State.ANSWERED:
                out.append(peer)
                if len(out) == self.k:
                    break
        return out

    def answered(self) -> list[bytes]:
        """Every peer that answered, closest first."""
        return [p for _, p in self._order if self._peers[p].state is _State.ANSWERED]

    def candidates(self) -> list[bytes]:
        """Every peer known and not failed, closest first (:class:`Provide` takes spares here)."""
        return [p for _, p in self._order]

    def in_flight(self) -> list[bytes]:
        """Peers with a query outstanding (a driver may let them finish after ``done``)."""
        waiting = [p for p, r in self._pending.items() if r.state is not _State.BACKOFF]
        return waiting + sorted(self._paging)

    def statistics(self) -> LookupStats:
        depth = max((self._peers[p].depth for p in self.closest()), default=0)
        return LookupStats(
            outcome=self._outcome,
            queries=self._queries,
            answers=self._answers,
            failures=self._failures,
            pages=self._pages,
            providers=len(self._providers),
            hops_to_provider=self._hops_to_provider,
            depth=depth,
        )

    # ---- driving

    def next_queries(self, now: float) -> list[bytes]:
        """Peers to query now (each is then in flight until its answer or failure is fed)."""
        if self._outcome:
            return []
        for rec in self._pending.values():
            if rec.state is _State.WAITING and now >= rec.sent_at + self.slow_after:
                rec.state = _State.SLOW
        slots = self.alpha - self._counted_in_flight()
        if slots <= 0 or self._queries >= self.max_queries:
            return []
        complete, picks = self._scan(now)
        chosen: list[bytes] = []
        for peer in picks[:slots]:
            rec = self._peers[peer]
            rec.state = _State.WAITING
            rec.sent_at = now
            self._pending[peer] = rec
            chosen.append(peer)
            self._queries += 1
            if self._queries >= self.max_queries:
                break
        if complete and self.page_size is not None:
            while len(chosen) < slots and self._page_queue and self._pages < self.max_pages:
                if self._queries >= self.max_queries:
                    break
                peer = self._page_queue.popleft()
                self._paging.add(peer)
                self._peers[peer].pages += 1
                self._pages += 1
                self._queries += 1
                chosen.append(peer)
        return chosen

    def next_wakeup(self) -> float | None:
        """When time alone changes what :meth:`next_queries` returns (a slot frees, a retry is due)."""
        if self._outcome:
            return None
        times = [
            r.sent_at + self.slow_after if r.state is _State.WAITING else r.retry_at
            for r in self._pending.values()
            if r.state is not _State.SLOW
        ]
        return min(times, default=None)

    def on_response(
        self, peer: bytes, closer: Iterable[bytes] = (), providers: Sequence[bytes] = ()
    ) -> list[bytes]:
        """Feed ``peer``'s answer; returns the providers it named that are new to this lookup.

        At most ``k`` closer peers are taken from one answer (the closest of
        them), so a peer padding its answer cannot flood the candidate set;
        our own ID and the responder's are ignored.
        """
        rec = self._in_flight(peer)
        if self._outcome:
            return []
        self._answers += 1
        paging = peer in self._paging
        if paging:
            self._paging.discard(peer)
        else:
            rec.state = _State.ANSWERED
            del self._pending[peer]
        new = self._take_providers(providers)
        if new and not self._hops_to_provider:
            self._hops_to_provider = rec.depth
        if paging:
            self._dry = 0 if new else self._dry + 1
        if self.page_size is not None and len(providers) >= self.page_size:
            self._full.add(peer)
            if rec.pages < self.max_pages:
                self._page_queue.append(peer)
        fresh = {bytes(p) for p in closer} - {peer, self._self_id or b""}
        if len(fresh) > self.k:
            fresh = set(sorted(fresh, key=lambda p: kad_point(p) ^ self._target)[: self.k])
        for p in fresh:
            self._learn(p, rec.depth + 1)
        self._update()
        return new

    def on_failure(self, peer: bytes, reason: Failure, now: float) -> None:
        """Feed a failed query.  A peer that failed is out of the closest set,
        except that one ``BUSY`` refusal earns a single retry after ``busy_retry_after``."""
        rec = self._in_flight(peer)
        if self._outcome:
            return
        self._failures += 1
        if peer in self._paging:
            self._paging.discard(peer)  # it answered before: keep it, ask it no more pages
        elif reason is Failure.BUSY and rec.retries < 1:
            rec.retries += 1
            rec.state = _State.BACKOFF
            rec.retry_at = now + self.busy_retry_after
        else:
            rec.state = _State.FAILED
            del self._pending[peer]
            del self._order[bisect.bisect_left(self._order, (rec.dist, peer))]
        self._update()

    def stop(self) -> None:
        """End the lookup now (the caller's deadline passed, or it has enough)."""
        if not self._outcome:
            self._outcome = "stopped"

    # ---- internals

    def _in_flight(self, peer: bytes) -> _Peer:
        rec = self._peers.get(peer)
        if rec is None or (
            rec.state not in (_State.WAITING, _State.SLOW) and peer not in self._paging
        ):
            raise LocalProtocolError(f"no query to {peer.hex()[:16]} is in flight")
        return rec

    def _learn(self, peer: bytes, depth: int) -> None:
        if not peer or peer == self._self_id:
            return
        rec = self._peers.get(peer)
        if rec is not None:
            rec.depth = min(rec.depth, depth)
            return
        rec = _Peer(kad_point(peer) ^ self._target, depth)
        self._peers[peer] = rec
        bisect.insort(self._order, (rec.dist, peer))

    def _take_providers(self, providers: Sequence[bytes]) -> list[bytes]:
        offered = list(providers)
        if self.page_size is not None and len(offered) > self.page_size:
            if self._rand is not None:
                offered = sample(offered, self.page_size, self._rand)
            else:
                offered = offered[: self.page_size]
        new: list[bytes] = []
        for p in offered:
            p = bytes(p)
            if p and p not in self._providers and len(self._providers) < MAX_LOOKUP_PROVIDERS:
                self._providers[p] = None
                new.append(p)
        return new

    def _counted_in_flight(self) -> int:
        waiting = sum(1 for r in self._pending.values() if r.state is _State.WAITING)
        return waiting + len(self._paging)

    def _scan(self, now: float) -> tuple[bool, list[bytes]]:
        """(closest set complete?, peers to ask next in distance order).

        The closest set is the ``k`` closest peers not failed.  It is complete
        when all of them answered.  A silent (``SLOW``) member widens the
        window by one, so the next candidate is asked while it may still fail.
        """
        window = self.k
        seen = 0
        complete = True
        picks: list[bytes] = []
        for _, peer in self._order:
            rec = self._peers[peer]
            seen += 1
            if seen > window:
                break
            if rec.state is _State.ANSWERED:
                continue
            complete = False
            if rec.state is _State.SLOW:
                window += 1
            elif rec.state is _State.HEARD or (
                rec.state is _State.BACKOFF and rec.retry_at <= now
            ):
                picks.append(peer)
        return complete, picks

    def _update(self) -> None:
        if self._outcome:
            return
        complete, _ = self._scan(float("-inf"))
        if complete:
            if self.page_size is None or self._paging_finished():
                self._outcome = "complete"
                return
        idle = not self._paging and not any(
            r.state is not _State.BACKOFF for r in self._pending.values()
        )
        if self._queries >= self.max_queries and idle:
            self._outcome = "complete" if complete else "max_queries"

    def _paging_finished(self) -> bool:
        if self._full and self._dry >= len(self._full):
            return True  # a whole round of pages found nothing new
        if self._pages >= self.max_pages:
            return not self._paging
        return not self._page_queue and not self._paging
