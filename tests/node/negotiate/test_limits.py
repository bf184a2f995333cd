"""PeerGate and PeerLog: the per-peer bounds, with a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from node.negotiate.guard import PeerLog
from node.negotiate.limits import ABANDON_MEMORY_S, PeerGate, PeerLimits
from node.negotiate.scheduler import Scheduler
from protocol.jobspec import Resources
from protocol.resources import ResourceSet

NODE = ResourceSet(cpu_cores=8, cpu_model="x", memory_mib=65536, disk_mib=100_000, gpus=())
SMALL = Resources(gpu=None, cpu_millis=100, memory_mib=16, disk_mib=16)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gate(**limits: int) -> tuple[PeerGate, Clock]:
    clock = Clock()
    sched = Scheduler(NODE, clock=clock, reservation_s=30)
    return PeerGate(sched, PeerLimits(**limits), clock=clock), clock


def quote(g: PeerGate, peer: str, key: str) -> str | None:
    why = g.check(peer)
    if why is None:
        g.scheduler.reserve(key, SMALL)
        g.quoted(peer, key)
    return why


def test_streams_per_peer() -> None:
    g, _ = gate(max_negotiations=2)
    assert g.enter("a") and g.enter("a") and not g.enter("a")
    assert g.enter("b")  # another peer is not affected
    g.leave("a")
    assert g.enter("a") and g.reset == 1


def test_quotes_held_and_agreements_held() -> None:
    g, _ = gate(max_reservations=2, max_agreements=1, reservations_per_minute=100)
    assert quote(g, "a", "k1") is None and quote(g, "a", "k2") is None
    assert "max_reservations_per_peer" in (quote(g, "a", "k3") or "")
    g.scheduler.commit("k1")
    g.agreed("a")
    assert g.held("a") == (1, 1)
    g.scheduler.release("k2")
    assert "max_agreements_per_peer" in (quote(g, "a", "k4") or "")
    g.scheduler.release("k1")  # the job ended
    assert quote(g, "a", "k5") is None and g.held("a") == (1, 0)


def test_rate_is_a_token_bucket_and_an_agreement_gives_its_token_back() -> None:
    g, clock = gate(max_reservations=3, reservations_per_minute=6)
    for i in range(3):
        assert quote(g, "a", f"k{i}") is None
        g.scheduler.release(f"k{i}")  # cancelled: the quote was wasted
    why = quote(g, "a", "k3")
    assert why is not None and "rate limited" in why and "next in 10 s" in why
    clock.t += 10  # one token back at 6 a minute
    assert quote(g, "a", "k4") is None
    assert quote(g, "a", "k5") is not None
    g.agreed("a")  # an accepted quote is not a wasted one
    assert quote(g, "a", "k6") is None


def test_lapsed_quotes_back_off_doubling_and_are_forgotten() -> None:
    g, clock = gate(abandon_backoff_s=30, reservations_per_minute=1000, max_reservations=100)
    g.lapsed("a")
    assert "try again in 30 s" in (g.check("a") or "")
    clock.t += 31
    assert g.check("a") is None
    g.lapsed("a")
    assert "try again in 60 s" in (g.check("a") or "")
    clock.t += ABANDON_MEMORY_S + 61
    g.lapsed("a")  # the old lapses no longer count
    assert "try again in 30 s" in (g.check("a") or "")
    off, _ = gate(abandon_backoff_s=0)
    off.lapsed("a")
    assert off.check("a") is None


def test_proven_peers_and_strangers_quotes() -> None:
    g, clock = gate(reservations_per_minute=1000, max_reservations=10)
    assert quote(g, "stranger", "s1") is None and quote(g, "known", "n1") is None
    g.scheduler.commit("n1")
    g.agreed("known")
    assert g.proven("known") and not g.proven("stranger")
    assert quote(g, "known", "n2") is None
    assert g.strangers_quotes() == ["s1"]  # the known peer's quote is not a stranger's
    clock.t += 2 * 86400
    assert not g.proven("known")


@pytest.mark.parametrize("per_minute", [1, 3])
def test_peer_log_prints_at_most_per_minute_and_counts_the_rest(
    per_minute: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    plog = PeerLog(logging.getLogger("cpn.test.peer"), per_minute=per_minute, clock=clock)
    caplog.set_level(logging.INFO, logger="cpn.test.peer")
    printed = [plog.log("a", logging.INFO, "line %d", i) for i in range(10)]
    assert sum(printed) == per_minute and plog.suppressed_total == 10 - per_minute
    assert plog.log("b", logging.INFO, "other peer")  # its own budget
    clock.t += 61
    assert plog.log("a", logging.INFO, "after a minute")
    texts = [r.getMessage() for r in caplog.records]
    assert f"({10 - per_minute} more lines caused by a were not printed)" in texts
