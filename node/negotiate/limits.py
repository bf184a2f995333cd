"""Per-peer bounds on what one submitter can make a provider hold.

One peer (or one of many identities of one attacker) must not be able to
hold a provider's capacity with negotiations it never means to conclude.
:class:`PeerGate` keeps, per remote peer:

* the negotiation streams it has open now (``max_negotiations_per_peer``:
  more are reset before a byte is read);
* the quotes (reservations) and agreements it holds now
  (``max_reservations_per_peer``, ``max_agreements_per_peer``);
* the rate of quotes it gets that do not become agreements
  (``reservations_per_minute``, a token bucket that allows bursts of
  ``max_reservations_per_peer``; an agreement gives its token back, so a
  submitter that accepts what it asks for is never rate limited);
* quotes it let lapse, neither accepted nor cancelled: each one puts the
  peer in back-off for ``abandon_backoff_s``, doubling per further lapse
  within an hour (at most 64x).

Per-peer bounds do not stop an attacker with many identities.  So a peer
that concluded an agreement here within :data:`PROVEN_S` is *proven*: when
the node is busy, an offer of a proven peer may take the capacity that quotes
of unproven peers (never accepted yet) hold (:meth:`PeerGate.strangers_quotes`;
their accept is then refused ``expired``).  A flood of quotes from strangers
never keeps a returning customer out.

Offers over a bound are refused ``busy`` with a detail that names the
limit (spec/negotiation.md section 8).  The state of at most
:data:`MAX_PEERS` peers is kept; idle peers are forgotten first.  Time is
trio's clock (``trio.testing.MockClock`` drives it in tests).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from node.config import NegotiationSection
from node.negotiate.scheduler import Scheduler

__all__ = ["PeerGate", "PeerLimits", "MAX_PEERS"]

MAX_PEERS = 10_000  #: peers whose counters are remembered
ABANDON_MEMORY_S = 3600.0  #: lapses older than this no longer double the back-off
PROVEN_S = 24 * 3600.0  #: a peer with an agreement this recent is preferred over strangers
MAX_BACKOFF_FACTOR = 64


@dataclass(frozen=True)
class PeerLimits:
    max_negotiations: int = 4
    max_reservations: int = 4
    max_agreements: int = 8
    reservations_per_minute: int = 30
    abandon_backoff_s: int = 30

    @classmethod
    def from_config(cls, n: NegotiationSection) -> PeerLimits:
        return cls(max_negotiations=n.max_negotiations_per_peer, max_reservations=n.max_reservations_per_peer,
                   max_agreements=n.max_agreements_per_peer, reservations_per_minute=n.reservations_per_minute,
                   abandon_backoff_s=n.abandon_backoff_s)


@dataclass
class _Peer:
    streams: int = 0
    tokens: float = -1.0  #: quotes it may get now (refilled at reservations_per_minute); -1: full
    refilled_at: float = 0.0
    lapses: deque[float] = field(default_factory=lambda: deque(maxlen=256))  #: lapsed quotes (last hour)
    backoff_until: float = 0.0
    agreed_at: float | None = None  #: last agreement concluded (or resumed) here


@dataclass
class PeerGate:
    """The per-peer counters of one provider (see the module docstring)."""

    scheduler: Scheduler
    limits: PeerLimits = field(default_factory=PeerLimits)
    clock: Callable[[], float] = trio.current_time
    #: allocation key -> peer holding it (reservations and agreements)
    holders: dict[str, str] = field(default_factory=dict)
    _peers: OrderedDict[str, _Peer] = field(default_factory=OrderedDict)
    refused: int = 0  #: offers refused by a per-peer bound
    reset: int = 0  #: streams reset over ``max_negotiations``

    def _peer(self, peer: str) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer()
            self._forget_idle()
        self._peers.move_to_end(peer)
        return p

    def _forget_idle(self) -> None:
        if len(self._peers) <= MAX_PEERS:
            return
        for name in list(self._peers):
            if len(self._peers) <= MAX_PEERS:
                return
            if self._peers[name].streams == 0:
                del self._peers[name]

    # ---- streams

    def enter(self, peer: str) -> bool:
        """A negotiation stream from ``peer`` opens: False if over its limit (reset it)."""
        p = self._peer(peer)
        if p.streams >= self.limits.max_negotiations:
            self.reset += 1
            return False
        p.streams += 1
        return True

    def leave(self, peer: str) -> None:
        p = self._peers.get(peer)
        if p is not None and p.streams > 0:
            p.streams -= 1

    # ---- offers

    def held(self, peer: str) -> tuple[int, int]:
        """(reservations, agreements) ``peer`` holds now."""
        quotes = agreed = 0
        for key, holder in list(self.holders.items()):
            alloc = self.scheduler.get(key)
            if alloc is None:
                del self.holders[key]  # released or expired
            elif holder == peer:
                agreed += alloc.committed
                quotes += not alloc.committed
        return quotes, agreed

    def check(self, peer: str) -> str | None:
        """None if ``peer`` may get a quote now, else why not (the detail of a ``busy``)."""
        now = self.clock()
        p = self._peer(peer)
        why = None
        if now < p.backoff_until:
            why = (f"back-off: {len(p.lapses)} quote(s) of yours lapsed without accept or cancel; "
                   f"try again in {p.backoff_until - now:.0f} s")
        else:
            quotes, agreed = self.held(peer)
            if quotes >= self.limits.max_reservations:
                why = f"you hold {quotes} quotes here (max_reservations_per_peer)"
            elif agreed >= self.limits.max_agreements:
                why = f"you hold {agreed} open agreements here (max_agreements_per_peer)"
            elif self._tokens(p, now) < 1:
                rate = self.limits.reservations_per_minute
                why = (f"rate limited: more than {rate} quotes a minute to you (reservations_per_minute); "
                       f"next in {(1 - p.tokens) * 60 / rate:.0f} s")
        self.refused += why is not None
        return why

    def _tokens(self, p: _Peer, now: float) -> float:
        burst = float(self.limits.max_reservations)
        if p.tokens < 0:
            p.tokens = burst
        else:
            p.tokens = min(burst, p.tokens + (now - p.refilled_at) * self.limits.reservations_per_minute / 60)
        p.refilled_at = now
        return p.tokens

    def quoted(self, peer: str, key: str) -> None:
        """A quote reserved capacity under ``key`` for ``peer``."""
        self.holders[key] = peer
        p = self._peer(peer)
        p.tokens = self._tokens(p, self.clock()) - 1

    def agreed(self, peer: str) -> None:
        """``peer`` accepted a quote: the reservation was not wasted, its token comes back."""
        p = self._peer(peer)
        p.tokens = min(float(self.limits.max_reservations), self._tokens(p, self.clock()) + 1)
        p.agreed_at = self.clock()

    def holds(self, peer: str, key: str) -> None:
        """``peer`` holds the agreement ``key`` (restored after a restart)."""
        self.holders[key] = peer
        self._peer(peer).agreed_at = self.clock()

    def proven(self, peer: str) -> bool:
        """``peer`` concluded an agreement here within :data:`PROVEN_S`."""
        p = self._peers.get(peer)
        return p is not None and p.agreed_at is not None and self.clock() - p.agreed_at < PROVEN_S

    def strangers_quotes(self) -> list[str]:
        """Keys of quotes (not agreements) held by peers that are not proven, oldest first."""
        out = []
        for key, holder in list(self.holders.items()):
            alloc = self.scheduler.get(key)
            if alloc is not None and not alloc.committed and not self.proven(holder):
                out.append(key)
        return out

    def lapsed(self, peer: str) -> None:
        """A quote of ``peer`` ended with neither accept nor cancel: back off."""
        if not self.limits.abandon_backoff_s:
            return
        now = self.clock()
        p = self._peer(peer)
        while p.lapses and p.lapses[0] <= now - ABANDON_MEMORY_S:
            p.lapses.popleft()
        p.lapses.append(now)
        factor = min(MAX_BACKOFF_FACTOR, 2 ** (len(p.lapses) - 1))
        p.backoff_until = max(p.backoff_until, now + self.limits.abandon_backoff_s * factor)
