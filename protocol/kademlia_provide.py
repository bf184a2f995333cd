"""Providing a key (``ADD_PROVIDER`` to the k closest) and when to provide it again."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import LocalProtocolError
from .kademlia_core import (
    ALPHA,
    PROVIDE_ATTEMPTS,
    PROVIDE_BACKOFF_MAX_S,
    PROVIDE_BACKOFF_S,
    SEND_LIMIT,
    SEND_WINDOW_S,
    SLOW_AFTER_S,
    Failure,
    K,
    Rand,
    jittered,
)
from .kademlia_lookup import Lookup

__all__ = ["Op", "Request", "SendBudget", "Provide", "ProvideResult", "ReprovideSchedule"]


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
