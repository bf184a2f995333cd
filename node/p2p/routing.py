"""The sans-IO Kademlia of :mod:`protocol.kademlia` driven over libp2p: lookups, provides, bootstrap.

One driver loop serves every procedure: ask the procedure what to send, start
each request as a task in the **host's** nursery (under ``trio.fail_after``,
dial included), feed answers and failures back as they arrive, and sleep until
the next answer or the procedure's next wakeup.  Requests outlive the
procedure that sent them: a finished (or cancelled) lookup never cancels a
query mid-stream, because py-libp2p's kad server holds one of its 12 inbound
slots until the client closes the stream (spec/dht.md §6.2 step 6).  Their
late answers are dropped.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.p2p.dht import (
    QUERY_TIMEOUT,
    TABLE_UPDATE_S,
    Answer,
    HostStats,
    KadClient,
    LookupResult,
    PagedProviderStore,
    ProvideReport,
    QueryFailed,
    addr_strings,
    dht_key,
)
from protocol.kademlia import (
    ALPHA,
    PAGE_SIZE,
    Failure,
    K,
    Lookup,
    Op,
    Provide,
    Request,
    SendBudget,
    kad_point,
)

log = logging.getLogger("cpn.p2p")

__all__ = ["EarlyStop", "KadRouting", "LOOKUP_DEADLINE_S", "PROVIDE_LOOKUP_S", "PROVIDE_DEADLINE_S"]

LOOKUP_DEADLINE_S = 60.0  #: a provider lookup ends by then at the latest (callers stop it sooner)
PROVIDE_LOOKUP_S = 30.0  #: the FIND_NODE phase of a provide; then it stores at the closest found
PROVIDE_DEADLINE_S = 180.0  #: a whole provide, ADD_PROVIDER retries included
BOOTSTRAP_S = 30.0  #: the self-lookup that fills the routing table at start
PUT_CONCURRENCY = 5  #: PUT_VALUE requests of one put in flight at once
DROP_AFTER_TIMEOUTS = 3  #: timeouts in a row that drop a peer from the routing table
IDLE_TICK_S = 0.05  #: how often a procedure whose wakeup sent nothing is asked again

T = TypeVar("T")
Outcome = Answer | Failure


class EarlyStop:
    """Ends provider lookups once the caller has what it needs (spec/dht.md §6.5).

    ``enough()`` is checked after every answer a lookup gets and whenever the
    caller calls :meth:`nudge` (e.g. after each candidate it verified), so a
    lookup stops as soon as the caller's condition holds.  One object may
    serve several lookups at once (a finder looks up several identifiers).
    """

    def __init__(self, enough: Callable[[], bool]) -> None:
        self.enough = enough
        self._wakers: set[trio.MemorySendChannel[Any]] = set()

    def nudge(self) -> None:
        """Make every lookup using this object check ``enough()`` now."""
        for channel in list(self._wakers):
            try:
                channel.send_nowait(None)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._wakers.discard(channel)


class _Procedure:
    """What the driver loop needs from a Lookup or a Provide (adapters below)."""

    def done(self) -> bool:
        raise NotImplementedError

    def next(self, now: float) -> list[Any]:
        raise NotImplementedError

    def wakeup(self, now: float) -> float | None:
        raise NotImplementedError

    def feed(self, tag: Any, outcome: Outcome, now: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _LookupProc(_Procedure):
    def __init__(self, lookup: Lookup, on_new: Callable[[list[bytes], Answer], None]) -> None:
        self.lookup = lookup
        self.on_new = on_new

    def done(self) -> bool:
        return self.lookup.done

    def next(self, now: float) -> list[bytes]:
        return self.lookup.next_queries(now)

    def wakeup(self, now: float) -> float | None:
        return self.lookup.next_wakeup()

    def feed(self, tag: bytes, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, Failure):
            self.lookup.on_failure(tag, outcome, now)
            return
        new = self.lookup.on_response(tag, outcome.closer, [p for p, _ in outcome.providers])
        if new:
            self.on_new(new, outcome)

    def stop(self) -> None:
        self.lookup.stop()


class _ProvideProc(_Procedure):
    def __init__(self, provide: Provide, lookup_until: float) -> None:
        self.provide = provide
        self.lookup_until = lookup_until

    def done(self) -> bool:
        return self.provide.done

    def next(self, now: float) -> list[Request]:
        if not self.provide.lookup.done and now >= self.lookup_until:
            self.provide.stop()  # store at the closest found so far
        return self.provide.next_requests(now)

    def wakeup(self, now: float) -> float | None:
        wake = self.provide.next_wakeup(now)
        if not self.provide.lookup.done:
            wake = self.lookup_until if wake is None else min(wake, self.lookup_until)
        return wake

    def feed(self, tag: Request, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, Failure):
            self.provide.on_failure(tag, outcome, now)
        else:
            self.provide.on_response(tag, outcome.closer)

    def stop(self) -> None:
        self.provide.stop()


class KadRouting:
    """Lookups and provides for one host; requests run in ``nursery`` (the host's)."""

    def __init__(self, host: Any, dht: Any, nursery: trio.Nursery, stats: HostStats) -> None:
        self._host = host
        self._dht = dht
        self._nursery = nursery
        self._kad = KadClient(host)
        self._me = host.get_id()
        self.stats = stats
        #: one ADD_PROVIDER budget per host, shared by every provide (spec/dht.md §6.3 step 5)
        self.budget = SendBudget()
        self._silent: dict[bytes, int] = {}  #: peer -> timeouts in a row
        self._points: dict[bytes, int] = {}  #: peer -> its point in the key space

    @property
    def store(self) -> PagedProviderStore:
        store = self._dht.provider_store
        assert isinstance(store, PagedProviderStore)
        return store

    def seeds(self, key: bytes) -> list[bytes]:
        """The k closest peers our routing table knows, topped up with connected
        peers while the table is small (as py-libp2p's own lookup does)."""
        peers = list(self._dht.routing_table.find_local_closest_peers(key, K))
        if len(peers) < K:
            peers += [p for p in self._host.get_connected_peers() if p not in peers]
        return [p.to_bytes() for p in peers if p != self._me]

    # ---- provider lookup

    async def find_providers(
        self,
        key: bytes,
        *,
        count: int | None = None,
        alpha: int = ALPHA,
        on_found: Callable[[str, list[str]], None] | None = None,
        early_stop: EarlyStop | None = None,
    ) -> LookupResult:
        mh = dht_key(key)
        self.stats.lookups += 1
        found: dict[str, list[str]] = {}

        def add(peer: str, addrs: list[str]) -> None:
            if peer not in found:
                found[peer] = addrs
                if on_found is not None:
                    on_found(peer, addrs)

        for info in self.store.local(mh):  # what we hold ourselves (our own record too)
            add(str(info.peer_id), [str(a) for a in info.addrs])
        lookup = Lookup(
            mh, self.seeds(mh), self_id=self._me.to_bytes(), alpha=alpha,
            page_size=PAGE_SIZE, rand=random.random,
        )  # fmt: skip

        def on_new(new: list[bytes], answer: Answer) -> None:
            addrs = dict(answer.providers)
            for p in new:
                add(str(ID(p)), addr_strings(addrs.get(p, [])))

        def enough() -> bool:
            if count is not None and len(found) >= count:
                return True
            return early_stop is not None and early_stop.enough()

        if not enough():
            await self._drive(
                _LookupProc(lookup, on_new),
                lambda peer: self._kad.get_providers(peer, mh),
                deadline=trio.current_time() + LOOKUP_DEADLINE_S,
                enough=enough,
                early_stop=early_stop,
            )
        lookup.stop()
        st = lookup.statistics()
        return LookupResult(
            providers=list(found.items())[:count] if count is not None else list(found.items()),
            hops=st.hops_to_provider,
            rounds=st.depth,
            queried=st.queries,
            outcome=st.outcome,
            failures=st.failures,
            closest=[str(ID(p)) for p in lookup.closest()],
        )

    # ---- provide

    def hold_own_record(self, key: bytes) -> None:
        """Store our own provider record for ``key`` locally (no network): a node
        asked for ``key`` names itself at once, before any announcement."""
        self.store.add_provider(dht_key(key), PeerInfo(self._me, list(self._host.get_addrs())))

    async def provide(self, key: bytes, *, k: int = K) -> ProvideReport:
        """Announce ourselves as a provider of ``key`` at the ``k`` closest peers (spec/dht.md §6.3)."""
        mh = dht_key(key)
        self.hold_own_record(mh)
        provide = Provide(
            mh, self.seeds(mh), self_id=self._me.to_bytes(), rand=random.random,
            budget=self.budget, k=k,
        )  # fmt: skip

        async def ask(req: Request) -> Answer:
            if req.op is Op.FIND_NODE:
                return await self._kad.find_node(req.peer, mh)
            await self._kad.add_provider(req.peer, mh)
            return Answer()

        now = trio.current_time()
        await self._drive(
            _ProvideProc(provide, now + PROVIDE_LOOKUP_S), ask, deadline=now + PROVIDE_DEADLINE_S
        )
        res = provide.result()
        self.stats.provides += 1
        self.stats.provides_confirmed += res.confirmed
        report = ProvideReport(
            closest=len(res.closest),
            stored=res.holders_in_closest,
            gave_up=len(res.gave_up),
            messages=res.messages,
            confirmed=res.confirmed,
            closest_peers=tuple(str(ID(p)) for p in res.closest),
        )
        log.debug("provided %s: %s", mh.hex()[:16], report)
        return report

    def holders(self, key: bytes, last: ProvideReport, *, k: int = K) -> tuple[int, int]:
        """``(held, closest)``: of the ``k`` peers closest to ``key`` that we know
        of now (our routing table and ``last``'s closest set), how many took
        the record at ``last`` (an earlier provide of ``key``), and how many
        there are.  Peers that joined since, or that we learnt of, and that
        are closer than some holders, hold none."""
        target = kad_point(dht_key(key))
        took = {ID.from_base58(p).to_bytes() for p in last.closest_peers}
        known = {p.to_bytes() for p in self._dht.routing_table.get_peer_ids()} | took
        known.discard(self._me.to_bytes())
        view = sorted(known, key=lambda p: self._point(p) ^ target)[:k]
        return sum(1 for p in view if p in took), len(view)

    def _point(self, peer: bytes) -> int:
        """``kad_point(peer)``, remembered (a SHA-256 per peer and check otherwise)."""
        point = self._points.get(peer)
        if point is None:
            if len(self._points) >= 4096:
                self._points.pop(next(iter(self._points)))
            point = self._points[peer] = kad_point(peer)
        return point

    # ---- values

    async def put_value(self, key: bytes, record: Any) -> int:
        """``PUT_VALUE`` of ``record`` at the k peers our routing table holds closest
        to ``key``, :data:`PUT_CONCURRENCY` at a time; returns how many acknowledged."""
        peers = [p for p in self._dht.routing_table.find_local_closest_peers(key, K) if p != self._me]
        stored = 0
        limiter = trio.CapacityLimiter(PUT_CONCURRENCY)

        async def put(peer: ID) -> None:
            nonlocal stored
            async with limiter:
                self.stats.queries += 1
                try:
                    with trio.fail_after(QUERY_TIMEOUT):
                        await self._kad.put_value(peer.to_bytes(), key, record)
                    stored += 1
                except (trio.TooSlowError, QueryFailed) as exc:
                    reason = exc.reason if isinstance(exc, QueryFailed) else Failure.TIMEOUT
                    self.stats.failures[reason.value] = self.stats.failures.get(reason.value, 0) + 1
                    log.debug("PUT_VALUE to %s failed: %s", peer, reason.value)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(put, peer)
        return stored

    # ---- routing table

    async def bootstrap(self) -> int:
        """Fill the routing table: a complete ``FIND_NODE`` lookup for our own ID
        (every peer that answers joins the table).  Returns the peers found."""
        me = self._me.to_bytes()
        lookup = Lookup(me, self.seeds(me), self_id=me)
        await self._drive(
            _LookupProc(lookup, lambda new, answer: None),
            lambda peer: self._kad.find_node(peer, me),
            deadline=trio.current_time() + BOOTSTRAP_S,
        )
        lookup.stop()
        return len(lookup.closest())

    # ---- the driver

    async def _drive(
        self,
        proc: _Procedure,
        ask: Callable[[Any], Awaitable[Answer]],
        *,
        deadline: float,
        enough: Callable[[], bool] | None = None,
        early_stop: EarlyStop | None = None,
    ) -> None:
        """Run ``proc`` until it is done, ``enough()`` holds, or ``deadline``."""
        send, recv = trio.open_memory_channel[tuple[Any, Outcome] | None](math.inf)
        if early_stop is not None:
            early_stop._wakers.add(send)
        try:
            with recv:
                while not proc.done():
                    now = trio.current_time()
                    if now >= deadline:
                        proc.stop()
                        break
                    sent = proc.next(now)
                    for tag in sent:
                        self._nursery.start_soon(self._query, tag, ask, send)
                    if proc.done():
                        break
                    wake = proc.wakeup(now)
                    until = deadline if wake is None else min(wake, deadline)
                    if until <= now and not sent:
                        # a wakeup that is due but sends nothing (a retry waiting for a
                        # free slot, or outside the closest set): poll, do not spin
                        until = min(now + IDLE_TICK_S, deadline)
                    with trio.move_on_at(until):
                        item = await recv.receive()
                        while True:
                            if item is not None and not proc.done():
                                proc.feed(item[0], item[1], trio.current_time())
                            try:  # take whatever else already arrived before asking again
                                item = recv.receive_nowait()
                            except trio.WouldBlock:
                                break
                    if enough is not None and not proc.done() and enough():
                        proc.stop()
        finally:
            if early_stop is not None:
                early_stop._wakers.discard(send)

    def _note_failure(self, peer: bytes, outcome: Failure) -> None:
        """spec/dht.md §6.6: drop a peer that cannot be dialled from the routing
        table, and one that timed out :data:`DROP_AFTER_TIMEOUTS` times in a
        row (a peer that died behind a connection we still hold times out
        rather than failing to dial; an overloaded one answers again soon and
        is not dropped for one slow answer).  A live peer comes back the next
        time it asks us something."""
        if outcome is Failure.TIMEOUT:
            self._silent[peer] = misses = self._silent.get(peer, 0) + 1
            if len(self._silent) > 4096:
                self._silent.pop(next(iter(self._silent)))
            if misses < DROP_AFTER_TIMEOUTS:
                return
        elif outcome is not Failure.UNREACHABLE:
            return
        self._silent.pop(peer, None)
        self._dht.routing_table.remove_peer(ID(peer))

    async def _query(
        self,
        tag: Any,
        ask: Callable[[Any], Awaitable[Answer]],
        send: trio.MemorySendChannel[tuple[Any, Outcome] | None],
    ) -> None:
        """One request, in the host's nursery: its outcome goes to the driver
        (if it still listens), then the routing table learns from it."""
        peer: bytes = tag.peer if isinstance(tag, Request) else tag
        outcome: Outcome = Failure.TIMEOUT  # also what a cancelled request reports
        self.stats.queries += 1
        try:
            with trio.fail_after(QUERY_TIMEOUT):
                outcome = await ask(tag)
        except trio.TooSlowError:
            outcome = Failure.TIMEOUT
        except QueryFailed as exc:
            outcome = exc.reason
            log.debug("kad query to %s failed: %s", ID(peer), exc)
        except Exception:  # a bug, or an answer py-libp2p chokes on: one peer, not the node
            log.warning("kad query to %s raised", ID(peer), exc_info=True)
            outcome = Failure.INVALID
        finally:
            try:
                send.send_nowait((tag, outcome))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the procedure ended: a late answer is dropped
        if isinstance(outcome, Failure):
            self.stats.lookup_errors += 1
            self.stats.failures[outcome.value] = self.stats.failures.get(outcome.value, 0) + 1
            self._note_failure(peer, outcome)
            return
        self._silent.pop(peer, None)
        with trio.move_on_after(TABLE_UPDATE_S):
            await self._dht.routing_table.add_peer(ID(peer), skip_server_mode_check=True)
