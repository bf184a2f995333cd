"""The pure Kademlia lookup and provide (protocol/kademlia.py) against a fake in-memory network.

The network is a dict of peers with k-bucket routing tables built from their
IDs; a tiny discrete-event driver (a heap of completion times, a simulated
clock, no sleeps) runs a :class:`Lookup` or :class:`Provide` the way the
daemon will: ask for queries, deliver answers or failures when they are due,
wake up at ``next_wakeup``.  Peers can be dead (never answer), lie (name
bogus closer peers and bogus providers), be busy (refuse, as py-libp2p's rate
limit does), or be slow.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from hashlib import sha256

import pytest

from protocol.errors import LocalProtocolError
from protocol.kademlia import (
    PAGE_SIZE,
    Failure,
    K,
    Lookup,
    Op,
    Provide,
    ProviderRecords,
    ReprovideSchedule,
    Request,
    SendBudget,
    common_prefix_len,
    distance,
    jittered,
    kad_point,
    sample,
)


def pid(i: int, tag: bytes = b"peer") -> bytes:
    """A peer ID shaped like libp2p's Ed25519 identity multihash (38 bytes)."""
    return b"\x00\x24\x08\x01\x12\x20" + sha256(tag + str(i).encode()).digest()


def key_of(name: str) -> bytes:
    """A kad key as on the wire: the multihash of a CID."""
    return b"\x12\x20" + sha256(name.encode()).digest()


@dataclass
class Node:
    id: bytes
    dead: bool = False  # never answers: every query times out
    liar: bool = False  # names bogus closer peers and bogus providers
    busy: int = 0  # refuses (BUSY) this many queries first
    latency: float = 0.05
    table: list[bytes] = field(default_factory=list)
    records: ProviderRecords[None] = field(default_factory=ProviderRecords)


class FakeNet:
    """Peers with bucketed routing tables (up to ``k`` per common-prefix length)."""

    def __init__(self, n: int, *, k: int = K, seed: int = 1) -> None:
        self.k = k
        self.rng = random.Random(seed)
        self.nodes = {pid(i): Node(pid(i)) for i in range(n)}
        ids = list(self.nodes)
        points = {p: kad_point(p) for p in ids}
        for me in ids:
            buckets: dict[int, list[bytes]] = {}
            for other in ids:
                if other != me:
                    buckets.setdefault(common_prefix_len(points[me], points[other]), []).append(other)
            for members in buckets.values():
                self.rng.shuffle(members)
                self.nodes[me].table.extend(members[:k])
        self.bogus: list[bytes] = []
        self.sent: list[tuple[bytes, str]] = []

    def true_closest(self, key: bytes, n: int, *, alive_only: bool = True) -> list[bytes]:
        ids = [p for p, node in self.nodes.items() if not (alive_only and node.dead)]
        return sorted(ids, key=lambda p: distance(key, p))[:n]

    def closer(self, node: Node, key: bytes) -> list[bytes]:
        if node.liar:
            return self.bogus
        return sorted(node.table, key=lambda p: distance(key, p))[: self.k]

    def providers(self, node: Node, key: bytes, now: float) -> list[bytes]:
        if node.liar:
            return [pid(i, b"ghost-provider") for i in range(5)]
        return [p for p, _ in node.records.answer(key, now, self.rng.random)]


class Driver:
    """Runs one Lookup or Provide over a FakeNet on a simulated clock."""

    def __init__(self, net: FakeNet, *, timeout: float = 2.0, now: float = 0.0) -> None:
        self.net = net
        self.timeout = timeout
        self.now = now
        self.heap: list[tuple[float, int, bytes, str, object]] = []
        self.seq = 0
        self.max_waiting = 0
        self.sent_at: dict[bytes, list[float]] = {}

    def _schedule(self, peer: bytes, op: str, key: bytes, tag: object) -> None:
        self.net.sent.append((peer, op))
        self.sent_at.setdefault(peer, []).append(self.now)
        node = self.net.nodes.get(peer)
        if node is None:  # a bogus ID: nobody there
            at, outcome = self.now + 0.01, ("fail", Failure.UNREACHABLE)
        elif node.dead or node.latency >= self.timeout:
            at, outcome = self.now + self.timeout, ("fail", Failure.TIMEOUT)
        elif node.busy > 0:
            node.busy -= 1
            at, outcome = self.now + node.latency, ("fail", Failure.BUSY)
        else:
            at, outcome = self.now + node.latency, ("ok", None)
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, peer, op, (outcome, key, tag)))

    def run_lookup(self, lookup: Lookup, *, deadline: float | None = None) -> list[bytes]:
        streamed: list[bytes] = []
        while not lookup.done:
            for peer in lookup.next_queries(self.now):
                self._schedule(peer, "get_providers", lookup.key, None)
            waiting = len(lookup.in_flight())
            self.max_waiting = max(self.max_waiting, waiting)
            times = [t for t in (self.heap[0][0] if self.heap else None, lookup.next_wakeup()) if t is not None]
            assert times, "lookup stalled: nothing in flight and nothing scheduled"
            at = min(times)
            if deadline is not None and at > deadline:
                self.now = deadline
                lookup.stop()
                break
            self.now = max(self.now, at)
            if self.heap and self.heap[0][0] <= self.now:
                _, _, peer, _, (outcome, key, _) = heapq.heappop(self.heap)  # type: ignore[misc]
                if outcome[0] == "ok":
                    node = self.net.nodes[peer]
                    streamed += lookup.on_response(
                        peer, self.net.closer(node, key), self.net.providers(node, key, self.now)
                    )
                else:
                    lookup.on_failure(peer, outcome[1], self.now)
        return streamed

    def run_provide(self, provide: Provide, key: bytes, provider: bytes) -> None:
        while not provide.done:
            for req in provide.next_requests(self.now):
                self._schedule(req.peer, req.op.value, key, req)
            times = [t for t in (self.heap[0][0] if self.heap else None, provide.next_wakeup(self.now)) if t is not None]
            assert times, "provide stalled: nothing in flight and nothing scheduled"
            self.now = max(self.now, min(times))
            if self.heap and self.heap[0][0] <= self.now:
                _, _, peer, op, (outcome, _, req) = heapq.heappop(self.heap)  # type: ignore[misc]
                assert isinstance(req, Request)
                if outcome[0] != "ok":
                    provide.on_failure(req, outcome[1], self.now)
                elif op == Op.FIND_NODE.value:
                    provide.on_response(req, self.net.closer(self.net.nodes[peer], key))
                else:
                    self.net.nodes[peer].records.add(key, provider, None, self.now)
                    provide.on_response(req)


def seeds_for(net: FakeNet, me: bytes, key: bytes) -> list[bytes]:
    return sorted(net.nodes[me].table, key=lambda p: distance(key, p))[:K]


def place(net: FakeNet, key: bytes, providers: list[bytes], holders: list[bytes]) -> None:
    for h in holders:
        for p in providers:
            net.nodes[h].records.add(key, p, None, 0.0)


# --------------------------------------------------------------------------- key space


def test_distance_is_libp2p_kad_distance() -> None:
    """Same points as py-libp2p (and node/p2p/): sha256(peer ID bytes) XOR sha256(key)."""
    from libp2p.kad_dht.routing_table import peer_id_to_key
    from libp2p.kad_dht.utils import xor_distance
    from libp2p.peer.id import ID

    peer = pid(7)
    key = key_of("cpn:cpu")
    theirs = xor_distance(peer_id_to_key(ID(peer)), sha256(key).digest())
    assert distance(key, peer) == theirs
    assert common_prefix_len(kad_point(peer), kad_point(peer)) == 256


# --------------------------------------------------------------------------- lookup


def test_lookup_finds_the_true_k_closest_and_respects_alpha() -> None:
    net = FakeNet(300)
    key = key_of("cpn:gpu:h100")
    me = pid(0)
    lookup = Lookup(key, seeds_for(net, me, key), self_id=me)
    driver = Driver(net)
    driver.run_lookup(lookup)
    assert lookup.statistics().outcome == "complete"
    want = [p for p in net.true_closest(key, K + 1) if p != me][:K]
    assert lookup.closest() == want
    assert driver.max_waiting <= 3
    assert me not in {p for p, _ in net.sent}


def test_lookup_does_not_stop_at_agreeing_answers() -> None:
    """Three far peers agree on a provider set; the closest peer holds another
    provider.  The old rule (3 identical answers, or a quiet round) stopped
    early; this lookup runs until the k closest have answered."""
    net = FakeNet(200)
    key = key_of("cpn:cpu")
    me = pid(0)
    closest = net.true_closest(key, K)
    far = [p for p in seeds_for(net, me, key) if p not in closest][:3]
    place(net, key, [pid(1, b"old")], far)
    place(net, key, [pid(2, b"new")], closest[:1])
    lookup = Lookup(key, far, self_id=me)
    streamed = Driver(net).run_lookup(lookup)
    assert pid(1, b"old") in streamed and pid(2, b"new") in streamed
    assert lookup.statistics().outcome == "complete"


def test_providers_are_streamed_once_each() -> None:
    net = FakeNet(150)
    key = key_of("cpn:gpu")
    provs = [pid(i, b"prov") for i in range(7)]
    place(net, key, provs, net.true_closest(key, K))
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0), page_size=PAGE_SIZE)
    streamed = Driver(net).run_lookup(lookup)
    assert sorted(streamed) == sorted(provs)  # each once, though ~20 peers named them
    assert lookup.providers == streamed
    assert lookup.statistics().hops_to_provider >= 1


def test_dead_peers_are_passed_over_and_lookup_completes() -> None:
    net = FakeNet(250)
    key = key_of("cpn:cpu:x86_64")
    me = pid(0)
    for p in net.true_closest(key, 8, alive_only=False):
        net.nodes[p].dead = True  # stale routing entries: the 8 closest never answer
    seeds = seeds_for(net, me, key)
    lookup = Lookup(key, seeds, self_id=me)
    driver = Driver(net)
    driver.run_lookup(lookup)
    stats = lookup.statistics()
    assert stats.outcome == "complete"
    # the k closest live peers that any answering peer could name (only the dead
    # ones may know some of the very closest: bucketed tables hold k per bucket)
    named = set(seeds) | {q for p in lookup.answered() for q in net.closer(net.nodes[p], key)}
    live = [p for p in net.true_closest(key, 250) if p != me and p in named]
    assert lookup.closest() == live[:K]
    assert not set(lookup.closest()) & {p for p, n in net.nodes.items() if n.dead}
    assert stats.failures >= 8
    # a silent peer stops holding an alpha slot after SLOW_AFTER_S, so the lookup
    # did not wait out eight 2 s timeouts one after another
    assert driver.now < 8 * 2.0


def test_liars_cannot_derail_the_lookup() -> None:
    """Liars name bogus peers that look closer than anyone real (and far ones), and
    providers that do not exist.  Bogus peers fail to dial; the lookup still
    converges on the real closest set; at most k names are taken per answer."""
    net = FakeNet(250)
    key = key_of("cpn:gpu:a100")
    me = pid(0)
    pool = sorted((pid(i, b"bogus") for i in range(3000)), key=lambda p: distance(key, p))
    net.bogus = pool[:60] + pool[-10:]  # 60 closer than any real peer, padded with far ones
    liars = seeds_for(net, me, key)[:4]
    for p in liars:
        net.nodes[p].liar = True
    real = pid(9, b"real-provider")
    place(net, key, [real], net.true_closest(key, K))
    lookup = Lookup(key, seeds_for(net, me, key), self_id=me, page_size=PAGE_SIZE)
    streamed = Driver(net).run_lookup(lookup)
    assert lookup.statistics().outcome == "complete"
    assert real in streamed
    assert pid(0, b"ghost-provider") in streamed  # candidates only; the finder verifies them
    # liars are live peers that answer: they keep their place; bogus names get none
    assert lookup.closest() == [p for p in net.true_closest(key, K + 1) if p != me][:K]
    asked_bogus = {p for p, _ in net.sent if p not in net.nodes}
    assert len(asked_bogus) <= K  # one answer's worth, not all 70
    assert not set(lookup.closest()) & set(net.bogus)


def test_busy_peer_is_retried_once_after_backoff_then_dropped() -> None:
    net = FakeNet(120)
    key = key_of("cpn:cpu")
    me = pid(0)
    closest = net.true_closest(key, 2)
    net.nodes[closest[0]].busy = 1  # refuses once, then answers
    net.nodes[closest[1]].busy = 5  # keeps refusing
    lookup = Lookup(key, seeds_for(net, me, key), self_id=me, busy_retry_after=1.5)
    driver = Driver(net)
    driver.run_lookup(lookup)
    assert lookup.statistics().outcome == "complete"
    first = driver.sent_at[closest[0]]
    assert len(first) == 2 and first[1] - first[0] >= 1.5
    assert closest[0] in lookup.closest()
    assert len(driver.sent_at[closest[1]]) == 2
    assert closest[1] not in lookup.closest()


def test_slow_peer_frees_its_slot_and_may_still_answer() -> None:
    net = FakeNet(120)
    key = key_of("cpn:mem")
    me = pid(0)
    seeds = seeds_for(net, me, key)
    net.nodes[seeds[0]].latency = 1.8  # slower than slow_after, faster than the timeout
    lookup = Lookup(key, seeds, self_id=me, alpha=1, slow_after=0.2)
    driver = Driver(net)
    driver.run_lookup(lookup)
    assert lookup.statistics().outcome == "complete"
    assert seeds[0] in lookup.answered()
    # with alpha = 1 a blocking slow peer would have delayed every other query by 1.8 s
    second = min(t for p, ts in driver.sent_at.items() for t in ts if p != seeds[0])
    assert second == pytest.approx(0.2)


def test_stop_ends_the_lookup_and_late_answers_are_ignored() -> None:
    net = FakeNet(100)
    key = key_of("cpn:disk")
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0))
    first = lookup.next_queries(0.0)
    assert len(first) == 3
    lookup.stop()
    assert lookup.done and lookup.statistics().outcome == "stopped"
    assert lookup.next_queries(1.0) == [] and lookup.next_wakeup() is None
    assert lookup.on_response(first[0], [pid(50)], [pid(1, b"p")]) == []
    with pytest.raises(LocalProtocolError):
        lookup.on_response(pid(99, b"never-asked"), [], [])


def test_deadline_stops_a_lookup_whose_peers_never_answer() -> None:
    net = FakeNet(60)
    key = key_of("cpn:cpu")
    for node in net.nodes.values():
        node.dead = True
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0))
    Driver(net).run_lookup(lookup, deadline=5.0)
    assert lookup.statistics().outcome == "stopped"
    assert lookup.closest() == []


def test_all_seeds_failing_ends_the_lookup_empty() -> None:
    lookup = Lookup(key_of("x"), [pid(1, b"gone"), pid(2, b"gone")])
    for p in lookup.next_queries(0.0):
        lookup.on_failure(p, Failure.UNREACHABLE, 0.1)
    assert lookup.done and lookup.closest() == [] and lookup.statistics().outcome == "complete"


def test_popular_key_pages_until_a_round_brings_nothing_new() -> None:
    """1000 providers, answers capped at a random 100: the lookup re-asks full
    pages and ends up with (nearly) all of them, for a bounded number of pages."""
    net = FakeNet(200)
    key = key_of("cpn:cpu")
    provs = [pid(i, b"many") for i in range(1000)]
    place(net, key, provs, net.true_closest(key, K))
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0), page_size=PAGE_SIZE,
                    rand=random.Random(3).random)  # fmt: skip
    Driver(net).run_lookup(lookup)
    stats = lookup.statistics()
    assert stats.outcome == "complete"
    assert len(set(lookup.providers) & set(provs)) >= 990
    assert 0 < stats.pages <= 160


def test_a_finder_that_has_enough_stops_early_on_a_popular_key() -> None:
    net = FakeNet(200)
    key = key_of("cpn:cpu")
    provs = [pid(i, b"many") for i in range(1000)]
    place(net, key, provs, net.true_closest(key, K))
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0), page_size=PAGE_SIZE)
    driver = Driver(net)
    while not lookup.done:  # the finder's loop: stop once 30 candidates are in
        for p in lookup.next_queries(driver.now):
            driver._schedule(p, "get_providers", key, None)
        at, _, peer, _, (outcome, _, _) = heapq.heappop(driver.heap)  # type: ignore[misc]
        driver.now = at
        node = net.nodes[peer]
        lookup.on_response(peer, net.closer(node, key), net.providers(node, key, at))
        if len(lookup.providers) >= 30:
            lookup.stop()
    assert lookup.statistics().answers <= 3
    assert len(lookup.providers) <= 3 * PAGE_SIZE


def test_exactly_full_pages_do_not_loop() -> None:
    """A key with exactly PAGE_SIZE providers: every answer is 'full', but a round
    of pages that brings nothing new ends the lookup."""
    net = FakeNet(120)
    key = key_of("cpn:cpu")
    provs = [pid(i, b"hundred") for i in range(PAGE_SIZE)]
    place(net, key, provs, net.true_closest(key, K))
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0), page_size=PAGE_SIZE)
    Driver(net).run_lookup(lookup)
    stats = lookup.statistics()
    assert stats.outcome == "complete" and stats.providers == PAGE_SIZE
    assert stats.pages <= K + 3  # one dry page per full responder (and a few in flight)


def test_max_queries_bounds_a_lookup() -> None:
    net = FakeNet(300)
    key = key_of("cpn:cpu")
    lookup = Lookup(key, seeds_for(net, pid(0), key), self_id=pid(0), max_queries=7)
    Driver(net).run_lookup(lookup)
    assert lookup.statistics().queries == 7
    assert lookup.statistics().outcome == "max_queries"


def test_hops_count_depth_of_referral() -> None:
    """A chain: each peer knows only the next closer one.  The provider is found
    at the end of the chain, 4 hops from the seed."""
    net = FakeNet(40)
    key = key_of("chain")
    chain = net.true_closest(key, 4)[::-1]  # farthest first
    for a, b in zip(chain, chain[1:], strict=False):
        net.nodes[a].table = [b]
    net.nodes[chain[-1]].table = []
    place(net, key, [pid(1, b"end")], [chain[-1]])
    lookup = Lookup(key, [chain[0]], k=4)
    Driver(net).run_lookup(lookup)
    assert lookup.providers == [pid(1, b"end")]
    assert lookup.statistics().hops_to_provider == 4
    assert lookup.statistics().depth == 4


# --------------------------------------------------------------------------- provide


def test_provide_reaches_the_k_closest_and_confirms() -> None:
    net = FakeNet(300)
    key = key_of("cpn:gpu:h100:2")
    me = pid(5)
    provide = Provide(key, seeds_for(net, me, key), self_id=me, rand=random.Random(1).random)
    Driver(net).run_provide(provide, key, me)
    res = provide.result()
    want = [p for p in net.true_closest(key, K + 1) if p != me][:K]
    assert list(res.closest) == want
    assert res.holders_in_closest == K and not res.gave_up and res.confirmed
    assert all(net.nodes[p].records.count(key) == 1 for p in want)


def test_provide_retries_rate_limited_peers_after_the_window() -> None:
    net = FakeNet(200)
    key = key_of("cpn:cpu")
    me = pid(5)
    closest = [p for p in net.true_closest(key, K + 1) if p != me][:K]
    for p in closest[:5]:
        net.nodes[p].busy = 1
    provide = Provide(key, seeds_for(net, me, key), self_id=me, rand=random.Random(2).random)
    # the lookup's own FIND_NODE to these peers would consume the refusal: refuse ADD_PROVIDER only
    driver = Driver(net)
    orig = driver._schedule

    def schedule(peer: bytes, op: str, k: bytes, tag: object) -> None:
        node = net.nodes.get(peer)
        if op == Op.FIND_NODE.value and node is not None and node.busy:
            busy, node.busy = node.busy, 0
            orig(peer, op, k, tag)
            node.busy = busy
        else:
            orig(peer, op, k, tag)

    driver._schedule = schedule  # type: ignore[method-assign]
    driver.run_provide(provide, key, me)
    res = provide.result()
    assert res.holders_in_closest == K
    sends = list(zip(net.sent, _times(driver), strict=True))
    for p in closest[:5]:
        adds = [t for (q, op), t in sends if q == p and op == Op.ADD_PROVIDER.value]
        assert len(adds) == 2  # refused once, retried once
        assert adds[1] - adds[0] >= SendBudget().window * 0.5  # not before the rate window


def test_provide_replaces_a_peer_that_keeps_failing() -> None:
    net = FakeNet(200)
    key = key_of("cpn:gpu")
    me = pid(5)
    provide = Provide(key, seeds_for(net, me, key), self_id=me, rand=random.Random(4).random,
                      attempts=2)  # fmt: skip
    # run the lookup phase, then make the closest peer refuse every ADD_PROVIDER
    driver = Driver(net)
    closest = [p for p in net.true_closest(key, K + 1) if p != me]
    orig = driver._schedule

    def schedule(peer: bytes, op: str, k: bytes, tag: object) -> None:
        if op == Op.ADD_PROVIDER.value and peer == closest[0]:
            net.nodes[peer].busy = 1
        orig(peer, op, k, tag)

    driver._schedule = schedule  # type: ignore[method-assign]
    driver.run_provide(provide, key, me)
    res = provide.result()
    assert res.gave_up == (closest[0],)
    assert closest[K] in res.stored  # the 21st closest took its place
    assert res.holders_in_closest == K - 1
    assert len(res.stored) == K


def test_provide_with_no_reachable_peer_ends_with_nothing_stored() -> None:
    provide = Provide(key_of("x"), [pid(1, b"gone")], rand=random.Random(0).random)
    (req,) = provide.next_requests(0.0)
    provide.on_failure(req, Failure.UNREACHABLE, 0.5)
    assert provide.done and provide.next_wakeup(0.5) is None  # no send needed to notice
    assert provide.next_requests(0.5) == []
    assert provide.result().stored == () and not provide.result().confirmed
    assert Provide(key_of("x"), [], rand=random.Random(0).random).done  # nobody to ask


def test_provide_stop_stores_at_the_closest_found_so_far() -> None:
    net = FakeNet(100)
    key = key_of("cpn:cpu")
    me = pid(5)
    provide = Provide(key, seeds_for(net, me, key), self_id=me, rand=random.Random(3).random)
    first = provide.next_requests(0.0)
    assert {r.op for r in first} == {Op.FIND_NODE}
    provide.on_response(first[0], net.closer(net.nodes[first[0].peer], key))
    provide.stop()  # deadline: no more FIND_NODE, store at what is known
    reqs = provide.next_requests(0.1)
    assert reqs and {r.op for r in reqs} == {Op.ADD_PROVIDER}
    assert [r.peer for r in reqs] == [first[0].peer]  # the only peer that answered


def test_provide_errors_on_unsolicited_ack() -> None:
    provide = Provide(key_of("x"), [pid(1)], rand=random.Random(0).random)
    with pytest.raises(LocalProtocolError):
        provide.on_response(Request(pid(1), Op.ADD_PROVIDER))


def test_send_budget_is_shared_by_a_ladder_of_provides() -> None:
    budget = SendBudget(limit=8, window=11.0)
    peer = pid(1)
    assert all(budget.try_take(peer, 0.0) for _ in range(8))
    assert not budget.try_take(peer, 5.0)
    assert budget.free_at(peer, 5.0) == pytest.approx(11.0)
    assert budget.try_take(pid(2), 5.0)  # per receiver
    assert budget.try_take(peer, 11.0)


def test_ladder_of_provides_never_exceeds_the_receivers_rate() -> None:
    """Twelve identifiers go to the same closest peers (a small network): no peer
    gets more than 8 ADD_PROVIDER in any 11 s, and all 12 are stored everywhere."""
    net = FakeNet(25)
    me = pid(0)
    budget = SendBudget()
    driver = Driver(net)
    keys = [key_of(f"cpn:id:{i}") for i in range(12)]
    for key in keys:  # sequential here; the budget is what matters
        provide = Provide(key, seeds_for(net, me, key), self_id=me, budget=budget,
                          rand=random.Random(7).random)  # fmt: skip
        driver.run_provide(provide, key, me)
        assert provide.result().holders_in_closest == len(provide.result().closest)
    adds: dict[bytes, list[float]] = {}
    for (peer, op), t in zip(net.sent, _times(driver), strict=True):
        if op == Op.ADD_PROVIDER.value:
            adds.setdefault(peer, []).append(t)
    for times in adds.values():
        times.sort()
        for i in range(len(times) - 8):
            assert times[i + 8] - times[i] >= 11.0 - 1e-9


def _times(driver: Driver) -> list[float]:
    """Send times of net.sent in order (the driver records them per peer, in order)."""
    cursor: dict[bytes, int] = {}
    out = []
    for peer, _ in driver.net.sent:
        i = cursor.get(peer, 0)
        out.append(driver.sent_at[peer][i])
        cursor[peer] = i + 1
    return out


# --------------------------------------------------------------------------- scheduling


def test_reprovide_gaps_double_to_the_interval_with_bounded_jitter() -> None:
    sched = ReprovideSchedule(0.0, random.Random(5).random, first_gap=10, interval=80, jitter=0.25)
    now, gaps = 0.0, []
    for _ in range(6):
        due = sched.provided(now)
        gaps.append(due - now)
        now = due
    nominal = [10, 20, 40, 80, 80, 80]
    assert all(0.75 * g <= x <= 1.25 * g for x, g in zip(gaps, nominal, strict=True))
    assert sched.expedite(now, 5.0) <= now + 5.0
    # an unconfirmed announcement is repeated soon, and the gaps stay long afterwards
    assert sched.provided(now, confirmed=False) - now <= 12.5
    assert sched.provided(now) - now >= 60.0


def test_nodes_started_together_do_not_announce_together() -> None:
    rng = random.Random(11)
    scheds = [ReprovideSchedule(0.0, rng.random, start_spread=10.0) for _ in range(60)]
    firsts = sorted(s.due for s in scheds)
    assert firsts[-1] - firsts[0] > 8.0
    # after a few rounds, announcements are spread out, not in 60-node bursts
    dues = []
    for s in scheds:
        now = s.due
        for _ in range(5):
            now = s.provided(now)
        dues.append(now)
    dues.sort()
    busiest = max(sum(1 for d in dues if t <= d < t + 5.0) for t in dues)
    assert busiest <= 15


def test_jittered_and_sample() -> None:
    r = random.Random(1).random
    vals = [jittered(100.0, r, 0.2) for _ in range(1000)]
    assert min(vals) >= 80.0 and max(vals) <= 120.0
    assert 98 < sum(vals) / len(vals) < 102
    assert sample([1, 2, 3], 5, r) == [1, 2, 3]
    counts = {i: 0 for i in range(50)}
    for _ in range(2000):
        got = sample(list(range(50)), 10, r)
        assert len(set(got)) == 10
        for i in got:
            counts[i] += 1
    assert min(counts.values()) > 300 and max(counts.values()) < 500  # expected 400 each
    with pytest.raises(ValueError):
        jittered(1.0, r, 1.5)


# --------------------------------------------------------------------------- records


def test_provider_records_bound_refresh_and_expiry() -> None:
    store: ProviderRecords[str] = ProviderRecords(max_per_key=3, ttl=100.0)
    key = key_of("k")
    for i in range(3):
        store.add(key, pid(i), f"addr{i}", now=float(i))
    store.add(key, pid(0), "addr0b", now=5.0)  # refresh: 0 becomes the newest
    store.add(key, pid(3), "addr3", now=6.0)  # full: evicts the oldest refresh (1)
    assert [p for p, _ in store.get(key, 7.0)] == [pid(2), pid(0), pid(3)]
    assert dict(store.get(key, 7.0))[pid(0)] == "addr0b"
    assert [p for p, _ in store.get(key, 103.0)] == [pid(0), pid(3)]  # 2 expired at 102
    assert store.get(key, 1000.0) == [] and store.keys() == []


def test_provider_records_answer_is_an_unbiased_page() -> None:
    store: ProviderRecords[None] = ProviderRecords()
    key = key_of("cpn:cpu")
    for i in range(1000):
        store.add(key, pid(i), None, now=0.0)
    r = random.Random(8).random
    seen: dict[bytes, int] = {}
    for _ in range(400):
        page = store.answer(key, 1.0, r)
        assert len(page) == PAGE_SIZE
        for p, _ in page:
            seen[p] = seen.get(p, 0) + 1
    assert len(seen) == 1000  # early and late announcers alike: expected 40 each
    assert min(seen.values()) >= 15 and max(seen.values()) <= 70


def test_provider_records_refuse_keys_beyond_the_bound() -> None:
    store: ProviderRecords[None] = ProviderRecords(max_keys=2)
    assert store.add(key_of("a"), pid(1), None, 0.0)
    assert store.add(key_of("b"), pid(1), None, 0.0)
    assert not store.add(key_of("c"), pid(1), None, 0.0)
    assert store.add(key_of("a"), pid(2), None, 0.0)
