"""Kademlia lookup and provide as pure state machines (sans-IO, in the h11 style).

Nothing here sends, sleeps or draws random numbers: the driver (the daemon's
libp2p adapter, or ``bench/dht_sim.py``'s simulated network) asks what to send
next, sends it, and feeds back what came of it.  Time (``now``) and randomness
(``rand``, a ``() -> float`` in [0, 1)) are parameters, so tests and the
simulator run the same code deterministically.

* :class:`Lookup`: one iterative ``FIND_NODE`` / ``GET_PROVIDERS`` lookup.
  ``next_queries(now)`` names the peers to ask (at most ``alpha`` in flight);
  ``on_response(peer, closer, providers)`` / ``on_failure(peer, reason, now)``
  feed the outcome; new providers are returned as they arrive, deduplicated.
  It ends when the ``k`` closest peers to the key that did not fail have all
  answered (spec/dht.md §6.2) -- never on a "quiet round" or on agreeing
  answers -- or when the caller calls :meth:`Lookup.stop` (deadline, enough
  providers).  For popular keys it then *pages*: answers are capped at
  :data:`PAGE_SIZE` random providers, so peers that returned a full page are
  asked again while that still brings new providers (§6.5).
* :class:`Provide`: a ``FIND_NODE`` lookup for the k closest, then
  ``ADD_PROVIDER`` to each, retried with back-off when it fails or is refused
  (rate limit), replaced by the next closest peer when it keeps failing;
  :meth:`Provide.result` says which of the k closest hold the record.
* :class:`SendBudget`: the per-receiver ``ADD_PROVIDER`` rate a provider keeps
  to (py-libp2p drops more than 10 per peer per 10 s).
* :class:`ReprovideSchedule`: when to announce again, jittered so a network
  started at once does not re-announce at once.
* :class:`ProviderRecords`: the records one DHT node holds, bounded per key,
  and the random page it answers with.

Keys and distance are those of libp2p kad (go, js and py-libp2p alike): a
peer's point in the key space is ``sha256(peer ID bytes)``, a key's point is
``sha256(key bytes as sent on the wire)`` -- for a CID, its multihash -- and
distance is their XOR as a 256-bit integer (py-libp2p
``routing_table.peer_id_to_key`` and ``find_local_closest_peers``).
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Final, Generic, TypeVar

from .errors import LocalProtocolError

__all__ = [
    "K",
    "ALPHA",
    "PAGE_SIZE",
    "MAX_PROVIDERS_PER_KEY",
    "Failure",
    "Lookup",
    "LookupStats",
    "Op",
    "Request",
    "Provide",
    "ProvideResult",
    "SendBudget",
    "ReprovideSchedule",
    "ProviderRecords",
    "kad_point",
    "distance",
    "common_prefix_len",
    "sample",
    "jittered",
]

Rand = Callable[[], float]  #: a source of uniform floats in [0, 1), injected
T = TypeVar("T")

K: Final = 20  #: bucket size, replication factor, and size of the closest set a lookup completes
ALPHA: Final = 3  #: queries in flight per lookup
#: providers one GET_PROVIDERS answer carries at most (a fresh uniform sample when more are held)
PAGE_SIZE: Final = 100
MAX_PAGES: Final = 160  #: repeat queries one lookup makes for further pages
MAX_QUERIES: Final = 256  #: queries one lookup sends at most (closest set + pages)
MAX_LOOKUP_PROVIDERS: Final = 10_000  #: distinct providers one lookup remembers
#: a query unanswered this long stops counting against ``alpha`` (it may still answer)
SLOW_AFTER_S: Final = 1.0
BUSY_RETRY_S: Final = 1.0  #: a lookup asks a peer that said "busy" once more after this
#: provider records one node keeps per key: a class's live providers plus the
#: records of those that left within one re-announce interval (refresh order evicts)
MAX_PROVIDERS_PER_KEY: Final = 2048
#: provider record lifetime on CPN nodes: three re-announce intervals (libp2p's
#: 48 h suits its 22 h republish; CPN providers re-announce at least hourly)
PROVIDER_TTL_S: Final = 3 * 3600.0
PROVIDE_ATTEMPTS: Final = 4  #: ADD_PROVIDER tries per peer before another peer replaces it
PROVIDE_BACKOFF_S: Final = 1.0  #: first retry delay; doubles per attempt, jittered
PROVIDE_BACKOFF_MAX_S: Final = 60.0
SEND_LIMIT: Final = 8  #: ADD_PROVIDER messages one provider sends one receiver per window
SEND_WINDOW_S: Final = 11.0  #: (py-libp2p accepts 10 per peer per 10 s and drops the rest)


class Failure(enum.StrEnum):
    """Why a query got no usable answer (the driver maps its errors onto these)."""

    TIMEOUT = "timeout"  #: no answer within the driver's per-query timeout
    UNREACHABLE = "unreachable"  #: dial or protocol negotiation failed
    BUSY = "busy"  #: refused or reset by a live peer: rate limit, inbound stream limit
    INVALID = "invalid"  #: the answer broke the protocol (malformed, oversize)


# --------------------------------------------------------------------------- key space


def kad_point(data: bytes) -> int:
    """The 256-bit point of a peer ID or key: ``sha256(data)`` as a big-endian integer."""
    return int.from_bytes(sha256(data).digest(), "big")


def distance(key: bytes, peer_id: bytes) -> int:
    """XOR distance between a key (wire bytes) and a peer (peer ID bytes)."""
    return kad_point(key) ^ kad_point(peer_id)


def common_prefix_len(a: int, b: int) -> int:
    """Leading bits two 256-bit points share (256 when equal): the k-bucket index."""
    return 256 - (a ^ b).bit_length()


def sample(items: Sequence[T], cap: int, rand: Rand) -> list[T]:
    """A uniform random subset of ``cap`` items (all of them, in order, if there are fewer).

    Partial Fisher-Yates: every subset of size ``cap`` is equally likely, so
    which providers an answer names depends neither on when they announced
    nor on their IDs.
    """
    if cap < 0:
        raise ValueError("cap must be >= 0")
    if len(items) <= cap:
        return list(items)
    pool = list(items)
    n = len(pool)
    for i in range(cap):
        j = i + min(int(rand() * (n - i)), n - i - 1)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:cap]


def jittered(value: float, rand: Rand, jitter: float) -> float:
    """``value`` scaled by a uniform factor in [1 - jitter, 1 + jitter] (mean preserved)."""
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    return value * (1.0 + jitter * (2.0 * rand() - 1.0))


# --------------------------------------------------------------------------- lookup


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


# --------------------------------------------------------------------------- provide


class Op(enum.StrEnum):
    FIND_NODE = "find_node"
    ADD_PROVIDER = "add_provider"


@dataclass(frozen=True, slots=True)
class Request:
    """One message :class:`Provide` wants sent: ``op`` to ``peer``."""

    peer: bytes
    op: Op


class SendBudget:
    """Per-receiver rate limit for our own ``ADD_PROVIDER`` messages (sliding window).

    Shared by all of one node's :class:`Provide` procedures: py-libp2p drops
    more than 10 ``ADD_PROVIDER`` per sender per 10 s, and a ladder of
    identifiers sends several to the same closest peers.
    """

    def __init__(self, limit: int = SEND_LIMIT, window: float = SEND_WINDOW_S) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._sent: dict[bytes, deque[float]] = {}

    def _recent(self, peer: bytes, now: float) -> deque[float]:
        times = self._sent.get(peer)
        if times is None:
            times = self._sent[peer] = deque()
        while times and times[0] + self.window <= now:
            times.popleft()
        return times

    def try_take(self, peer: bytes, now: float) -> bool:
        """Record one send to ``peer`` if the window allows it; False if it must wait."""
        if len(self._sent) > 4096:
            self._prune(now)
        times = self._recent(peer, now)
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def free_at(self, peer: bytes, now: float) -> float:
        """Earliest time a send to ``peer`` is allowed (``now`` if it is already)."""
        times = self._recent(peer, now)
        return now if len(times) < self.limit else times[0] + self.window

    def _prune(self, now: float) -> None:
        for peer in [p for p, t in self._sent.items() if not t or t[-1] + self.window <= now]:
            del self._sent[peer]


class _TState(enum.Enum):
    READY = "ready"
    SENT = "sent"
    RETRY = "retry"
    STORED = "stored"
    GAVE_UP = "gave_up"


@dataclass(frozen=True, slots=True)
class ProvideResult:
    """How one provide went."""

    closest: tuple[bytes, ...]  #: the k closest peers that answered the lookup
    stored: tuple[bytes, ...]  #: peers that confirmed the record
    gave_up: tuple[bytes, ...]  #: peers that failed every attempt
    messages: int  #: FIND_NODE + ADD_PROVIDER messages sent

    @property
    def holders_in_closest(self) -> int:
        """How many of the k closest hold the record (the confirmation count)."""
        return len(set(self.closest) & set(self.stored))

    @property
    def confirmed(self) -> bool:
        """At least half of the closest peers found hold the record (and some were found)."""
        return bool(self.closest) and 2 * self.holders_in_closest >= len(self.closest)


class Provide:
    """Announce ourselves as a provider of ``key`` at the k closest peers, reliably.

    1. A ``FIND_NODE`` :class:`Lookup` for the k closest peers (complete, as above).
    2. ``ADD_PROVIDER`` to each of them, all at once but within ``budget``.
       A failure is retried after ``backoff * 2**(attempt-1)`` (jittered,
       capped at ``backoff_max``); a ``BUSY`` refusal -- a rate limit or an
       overloaded peer -- waits at least the rate window.  After
       ``attempts`` failures the peer is given up and the next closest peer
       the lookup knows (and did not see fail) takes its place.
    3. Done when every target stored the record or was given up.

    Driver loop::

        p = Provide(key, seeds, self_id=me, rand=random.random, budget=node_budget)
        while not p.done:
            for req in p.next_requests(now()):
                send req.op to req.peer
            wait for a request to end, or until p.next_wakeup(now())
            FIND_NODE answer          -> p.on_response(req, closer_peers)
            ADD_PROVIDER acknowledged -> p.on_response(req)
            any failure               -> p.on_failure(req, Failure.X, now())
        p.result()
    """

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[bytes],
        *,
        rand: Rand,
        self_id: bytes | None = None,
        k: int = K,
        alpha: int = ALPHA,
        attempts: int = PROVIDE_ATTEMPTS,
        backoff: float = PROVIDE_BACKOFF_S,
        backoff_max: float = PROVIDE_BACKOFF_MAX_S,
        budget: SendBudget | None = None,
        slow_after: float = SLOW_AFTER_S,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.lookup = Lookup(key, seeds, self_id=self_id, k=k, alpha=alpha, slow_after=slow_after)
        self.k = k
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.budget = budget if budget is not None else SendBudget()
        self._rand = rand
        self._tstate: dict[bytes, _TState] = {}
        self._tries: dict[bytes, int] = {}
        self._due: dict[bytes, float] = {}
        self._spares: deque[bytes] = deque()
        self._closest: tuple[bytes, ...] = ()
        self._storing = False
        self._stores_sent = 0
        self._maybe_store()

    @property
    def done(self) -> bool:
        return self._storing and all(
            s in (_TState.STORED, _TState.GAVE_UP) for s in self._tstate.values()
        )

    def next_requests(self, now: float) -> list[Request]:
        """Messages to send now."""
        if not self._storing:
            return [Request(p, Op.FIND_NODE) for p in self.lookup.next_queries(now)]
        out: list[Request] = []
        for peer, state in self._tstate.items():
            due = state is _TState.READY or (state is _TState.RETRY and self._due[peer] <= now)
            if due and self.budget.try_take(peer, now):
                self._tstate[peer] = _TState.SENT
                self._tries[peer] += 1
                self._stores_sent += 1
                out.append(Request(peer, Op.ADD_PROVIDER))
        return out

    def next_wakeup(self, now: float) -> float | None:
        """When time alone makes :meth:`next_requests` return something new."""
        if not self._storing:
            return self.lookup.next_wakeup()
        times = []
        for peer, state in self._tstate.items():
            if state is _TState.RETRY:
                times.append(max(self._due[peer], self.budget.free_at(peer, now)))
            elif state is _TState.READY:
                times.append(self.budget.free_at(peer, now))
        return min(times, default=None)

    def on_response(self, req: Request, closer: Iterable[bytes] = ()) -> None:
        """A FIND_NODE answer (with its closer peers) or an ADD_PROVIDER acknowledgement."""
        if req.op is Op.FIND_NODE:
            if not self._storing:
                self.lookup.on_response(req.peer, closer)
                self._maybe_store()
            return
        if self._tstate.get(req.peer) is not _TState.SENT:
            raise LocalProtocolError("no ADD_PROVIDER to this peer is in flight")
        self._tstate[req.peer] = _TState.STORED

    def on_failure(self, req: Request, reason: Failure, now: float) -> None:
        """A request failed.  ``ADD_PROVIDER`` failures are retried (see class doc)."""
        if req.op is Op.FIND_NODE:
            if not self._storing:
                self.lookup.on_failure(req.peer, reason, now)
                self._maybe_store()
            return
        if self._tstate.get(req.peer) is not _TState.SENT:
            raise LocalProtocolError("no ADD_PROVIDER to this peer is in flight")
        tries = self._tries[req.peer]
        if tries >= self.attempts:
            self._tstate[req.peer] = _TState.GAVE_UP
            self._promote_spare()
            return
        delay = min(self.backoff_max, self.backoff * 2 ** (tries - 1))
        if reason is Failure.BUSY:
            delay = max(delay, self.budget.window)
        self._tstate[req.peer] = _TState.RETRY
        self._due[req.peer] = now + jittered(delay, self._rand, 0.5)

    def result(self) -> ProvideResult:
        stored = tuple(p for p, s in self._tstate.items() if s is _TState.STORED)
        gave_up = tuple(p for p, s in self._tstate.items() if s is _TState.GAVE_UP)
        return ProvideResult(
            closest=self._closest or tuple(self.lookup.closest()),
            stored=stored,
            gave_up=gave_up,
            messages=self.lookup.statistics().queries + self._stores_sent,
        )

    def _maybe_store(self) -> None:
        """Move to the store phase as soon as the lookup has ended."""
        if not self._storing and self.lookup.done:
            self._start_storing()

    def stop(self) -> None:
        """End the lookup phase now (the caller's deadline): store at the closest found so far."""
        self.lookup.stop()
        self._maybe_store()

    def _start_storing(self) -> None:
        self._storing = True
        self._closest = tuple(self.lookup.closest())
        for peer in self._closest:
            self._add_target(peer)
        # spares: the next closest peers known, answered or not (ADD_PROVIDER tests them)
        self._spares.extend(p for p in self.lookup.candidates() if p not in self._tstate)

    def _add_target(self, peer: bytes) -> None:
        self._tstate[peer] = _TState.READY
        self._tries[peer] = 0

    def _promote_spare(self) -> None:
        if self._spares:
            self._add_target(self._spares.popleft())


# --------------------------------------------------------------------------- scheduling


class ReprovideSchedule:
    """When to announce again: often at first, then every ``interval``, always jittered.

    Provider records land on the closest peers known *at announce time*; a
    node that just started knows few, so the first gaps are short and double
    up to ``interval``.  Every gap is scaled by a random factor in
    [1 - jitter, 1 + jitter], and the first announcement waits a random part
    of ``start_spread``, so nodes started together drift apart instead of
    announcing in bursts.
    """

    def __init__(
        self,
        now: float,
        rand: Rand,
        *,
        first_gap: float = 11.0,
        interval: float = 3600.0,
        jitter: float = 0.25,
        start_spread: float = 0.0,
    ) -> None:
        if first_gap <= 0 or interval < first_gap:
            raise ValueError("need 0 < first_gap <= interval")
        self._rand = rand
        self._gap = self._first_gap = first_gap
        self.interval = interval
        self.jitter = jitter
        self.due: float = now + start_spread * rand()

    def provided(self, now: float, confirmed: bool = True) -> float:
        """Record an announcement made at ``now``; returns the next due time.

        An announcement that was not confirmed (:attr:`ProvideResult.confirmed`)
        is repeated after ``first_gap`` and does not lengthen the gaps.
        """
        if not confirmed:
            self.due = now + jittered(self._first_gap, self._rand, self.jitter)
            return self.due
        self.due = now + jittered(self._gap, self._rand, self.jitter)
        self._gap = min(self._gap * 2, self.interval)
        return self.due

    def expedite(self, now: float, within: float) -> float:
        """Announce again within ``within`` seconds (at a random point): the
        identifiers changed or the routing table grew."""
        self.due = min(self.due, now + within * self._rand())
        return self.due


# --------------------------------------------------------------------------- records


class _Held(Generic[T]):
    """One key's records: refresh order (for expiry and eviction) plus a dense
    list (for an O(page) random sample)."""

    __slots__ = ("order", "items", "pos")

    def __init__(self) -> None:
        self.order: dict[bytes, tuple[float, T]] = {}  # oldest refresh first: (expires_at, info)
        self.items: list[bytes] = []
        self.pos: dict[bytes, int] = {}

    def append(self, provider: bytes, expires_at: float, info: T) -> None:
        self.order[provider] = (expires_at, info)
        self.pos[provider] = len(self.items)
        self.items.append(provider)

    def remove(self, provider: bytes) -> None:
        del self.order[provider]
        i = self.pos.pop(provider)
        last = self.items.pop()
        if last != provider:
            self.items[i] = last
            self.pos[last] = i

    def expire(self, now: float) -> None:
        order = self.order
        while order:
            first = next(iter(order))
            if order[first][0] > now:
                break
            self.remove(first)


class ProviderRecords(Generic[T]):
    """Provider records one DHT node holds: ``key -> provider -> info`` with expiry.

    At most ``max_per_key`` providers per key.  When a key is full, a new or
    re-announced provider replaces the one refreshed longest ago -- not "first
    come, kept forever", which would make late providers of a popular key
    unfindable and keep departed ones.  Records expire ``ttl`` after their
    last announcement.  :meth:`answer` returns a fresh uniform sample of at
    most ``page`` providers (spec/dht.md §6.5), in O(page) time.
    """

    def __init__(
        self,
        *,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
        ttl: float = PROVIDER_TTL_S,
        max_keys: int = 100_000,
    ) -> None:
        if max_per_key < 1 or ttl <= 0 or max_keys < 1:
            raise ValueError("max_per_key, ttl and max_keys must be positive")
        self.max_per_key = max_per_key
        self.ttl = ttl
        self.max_keys = max_keys
        self._keys: dict[bytes, _Held[T]] = {}

    def add(self, key: bytes, provider: bytes, info: T, now: float) -> bool:
        """Store or refresh a record; False when the node holds ``max_keys`` other keys."""
        held = self._keys.get(key)
        if held is None:
            if len(self._keys) >= self.max_keys:
                return False
            held = self._keys[key] = _Held()
        if provider in held.order:
            del held.order[provider]  # re-insert at the end: the newest refresh
            held.order[provider] = (now + self.ttl, info)
            return True
        held.expire(now)
        while len(held.items) >= self.max_per_key:
            held.remove(next(iter(held.order)))
        held.append(provider, now + self.ttl, info)
        return True

    def _live(self, key: bytes, now: float) -> _Held[T] | None:
        held = self._keys.get(key)
        if held is None:
            return None
        held.expire(now)
        if not held.items:
            del self._keys[key]
            return None
        return held

    def get(self, key: bytes, now: float) -> list[tuple[bytes, T]]:
        """All unexpired ``(provider, info)`` for ``key``, oldest refresh first."""
        held = self._live(key, now)
        return [] if held is None else [(p, info) for p, (_, info) in held.order.items()]

    def answer(
        self, key: bytes, now: float, rand: Rand, page: int = PAGE_SIZE
    ) -> list[tuple[bytes, T]]:
        """What a ``GET_PROVIDERS`` answer carries: a uniform sample of at most ``page``."""
        held = self._live(key, now)
        if held is None:
            return []
        items, n = held.items, len(held.items)
        if n <= page or 2 * page > n:
            chosen = sample(items, page, rand)
        else:  # distinct uniform indices by rejection: O(page), uniform over subsets
            picked: set[int] = set()
            while len(picked) < page:
                picked.add(min(int(rand() * n), n - 1))
            chosen = [items[i] for i in picked]
        return [(p, held.order[p][1]) for p in chosen]

    def count(self, key: bytes) -> int:
        held = self._keys.get(key)
        return 0 if held is None else len(held.items)

    def keys(self) -> list[bytes]:
        return list(self._keys)
