"""One peer running 50 negotiations at once, quote-and-abandon loops, reservation
floods, and job specs from 1970 or next year: per-peer bounds hold, the offender is
refused ``busy`` with the limit named, an honest submitter still gets its
agreement.  (issue 12, degraded items 1 and 2)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from support.adversary import agree, bare_peer, cpu_share, quote, signed_job, until_capacity
from support.net import container_proven, network

from node.negotiate.client import cancel_quote
from protocol.negotiation import Agreement, CancelReason, RefusalReason

pytestmark = pytest.mark.adversarial

LIMITS = {"max_negotiations_per_peer": 4, "max_reservations_per_peer": 2, "reservations_per_minute": 6,
          "abandon_backoff_s": 60}


async def test_fifty_negotiations_at_once_hold_at_most_the_per_peer_bounds(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation=LIMITS)
        quarter = cpu_share(prov, 4)  # four such jobs fill the node
        async with bare_peer() as (attacker, akey), bare_peer() as (p2p, key):
            sessions = []

            async def one() -> None:
                sessions.append(await quote(attacker, akey, prov, signed_job(akey, cpu_millis=quarter)))

            with trio.fail_after(60):
                async with trio.open_nursery() as n:
                    for _ in range(50):
                        n.start_soon(one)
            quoted = [s for s in sessions if s.quote is not None]
            refused = [s for s in sessions if s.refusal is not None]
            reset = [s for s in sessions if s.error is not None]
            assert len(quoted) == 2  # max_reservations_per_peer, whatever the concurrency
            assert len(quoted) + len(refused) + len(reset) == 50
            assert reset, "streams over max_negotiations_per_peer are reset unread"
            assert all(s.refusal.reason is RefusalReason.BUSY for s in refused)  # type: ignore[union-attr]
            named = ("max_reservations_per_peer", "reservations_per_minute")
            assert all(any(n in s.refusal.detail for n in named) for s in refused)  # type: ignore[union-attr]
            assert prov.negotiation.gate.held(attacker.peer_id) == (2, 0)
            # while the attacker holds its two quotes, an honest submitter gets its agreement
            honest = await agree(p2p, key, prov, signed_job(key, cpu_millis=quarter))
            assert isinstance(honest, Agreement), honest.to_json()
            for s in quoted:
                await cancel_quote(s, CancelReason.USER, clock=prov.clock)


async def test_quote_and_abandon_backs_off_and_reservations_are_rate_limited(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation=LIMITS)
        gate = prov.negotiation.gate
        async with bare_peer() as (abandoner, ak), bare_peer() as (looper, lk), bare_peer() as (p2p, key):
            # quote, then walk away without accept or cancel
            s = await quote(abandoner, ak, prov, signed_job(ak))
            assert s.quote is not None
            assert s.stream is not None
            await s.stream.close()
            with trio.fail_after(30):
                await until_capacity(prov, lambda: gate.held(abandoner.peer_id) == (0, 0))
            again = await quote(abandoner, ak, prov, signed_job(ak))
            assert again.refusal is not None and again.refusal.reason is RefusalReason.BUSY
            assert "back-off" in again.refusal.detail
            # quote and cancel, in a loop: polite, but a burst of max_reservations_per_peer,
            # then reservations_per_minute
            answers = []
            for _ in range(5):
                q = await quote(looper, lk, prov, signed_job(lk))
                answers.append(q)
                await cancel_quote(q, CancelReason.USER, clock=prov.clock)
            assert [q.quote is not None for q in answers] == [True, True, False, False, False]
            last = answers[-1].refusal
            assert last is not None and last.reason is RefusalReason.BUSY and "rate limited" in last.detail
            # the refusals over a bound were not stored (a flood must not grow the database)
            assert len(prov.agreements.recent(role="provider", limit=1000)) < 10
            honest = await agree(p2p, key, prov, signed_job(key))
            assert isinstance(honest, Agreement), honest.to_json()


async def test_job_specs_from_1970_or_next_year_are_refused(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven)
        async with bare_peer() as (p2p, key):
            old = await quote(p2p, key, prov, signed_job(key, created_at=1))  # 1970-01-01
            assert old.refusal is not None and old.refusal.reason is RefusalReason.EXPIRED
            assert "created_at 1 " in old.refusal.detail
            future = await quote(p2p, key, prov, signed_job(key, created_at=int(time.time()) + 365 * 86400))
            assert future.refusal is not None and future.refusal.reason is RefusalReason.MALFORMED
            assert "from_future" in future.refusal.detail
            assert isinstance(await agree(p2p, key, prov, signed_job(key)), Agreement)


async def test_quotes_of_strangers_never_keep_a_returning_submitter_out(tmp_path: Path) -> None:
    """Many identities defeat per-peer bounds; a submitter that concluded an agreement
    here before may take the capacity that strangers' quotes hold."""
    from node.negotiate.client import accept_quote

    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation={"max_fetch_failures": 1})
        half, whole = cpu_share(prov, 2), cpu_share(prov, 1)
        async with bare_peer() as (a, ak), bare_peer() as (b, bk), bare_peer() as (p2p, key), \
                bare_peer() as (new, nk):
            first = await agree(p2p, key, prov, signed_job(key, cpu_millis=half))  # p2p is now known here
            assert isinstance(first, Agreement)
            with trio.fail_after(30):  # that job fails (p2p serves no blobs) and frees its capacity
                await until_capacity(prov, lambda: prov.scheduler.free().cpu_millis == whole)
            held = [await quote(a, ak, prov, signed_job(ak, cpu_millis=half)),
                    await quote(b, bk, prov, signed_job(bk, cpu_millis=half))]
            assert all(s.quote is not None for s in held)  # strangers' quotes fill the node
            stranger = await quote(new, nk, prov, signed_job(nk, cpu_millis=half))
            assert stranger.refusal is not None and stranger.refusal.reason is RefusalReason.BUSY
            again = await agree(p2p, key, prov, signed_job(key, cpu_millis=half))
            assert isinstance(again, Agreement), again.to_json()
            outcomes = [await accept_quote(s, clock=prov.clock) for s in held]
            assert sum(o is not None for o in outcomes) == 1  # one quote was withdrawn ...
            lost = next(s for s, o in zip(held, outcomes, strict=True) if o is None)
            assert lost.refusal is not None and lost.refusal.reason is RefusalReason.EXPIRED  # ... and said so
