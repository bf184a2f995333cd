"""Sybil provider records: three DHT peers placed closest to the job's identifier
answer every provider lookup with 200 forged provider records (two thirds at a TCP
tarpit that accepts and never answers, the rest at a closed port) ahead of the 4
honest providers.  A find still returns the 4 honest offers, checks a bounded
number of unknown providers, and remembers the failures.  (issue 12, degraded
item 3)"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.adversary import (
    answer_providers_with,
    bare_peer,
    closed_port,
    closest_key,
    fake_providers,
    tarpit,
)
from support.net import network

from protocol.identifiers import lookup_ids
from protocol.jobspec import Resources

pytestmark = pytest.mark.adversarial

REQ = Resources(gpu=None, cpu_millis=500, memory_mib=64, disk_mib=16)
BOUND = 16  #: find_max_candidates of the finder


async def test_forged_provider_records_do_not_hide_the_honest_providers(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        provs = [await net.start(f"p{i}") for i in range(4)]
        sub = await net.start("sub", discovery={"enabled": False, "find_max_candidates": BOUND})
        finder = sub.discovery.finder
        warm = await finder.find(REQ, limit=4, within_s=10)  # the finder has met them before
        assert sorted(o.advert.peer_id for o in warm.offers) == sorted(p.peer_id for p in provs)

        slow = await net.nursery.start(tarpit)
        fast = closed_port()
        fakes = fake_providers(200, [f"/ip4/127.0.0.1/tcp/{slow}"] * 2 + [f"/ip4/127.0.0.1/tcp/{fast}"])
        honest = [(p.peer_id, p.p2p.advertised_addrs()) for p in provs]
        ids = lookup_ids(REQ)
        everyone = [n.peer_id for n in net.nodes.values()]
        async with bare_peer(closest_key(ids, everyone)) as (s1, _), \
                bare_peer(closest_key(ids, everyone)) as (s2, _), \
                bare_peer(closest_key(ids, everyone)) as (s3, _):
            # forged records first; each liar a third of the fakes, so that every answer
            # fits one page (a lookup samples 100 of a longer answer, and random pages
            # could leave one fake unseen) and the three together name all 204
            for i, sybil in enumerate((s1, s2, s3)):
                answer_providers_with(sybil, fakes[i::3] + honest)
                await sub.p2p.connect_multiaddr(sybil.listen_addrs[0])

            flooded = await finder.find(REQ, limit=4, within_s=4)
            assert sorted(o.advert.peer_id for o in flooded.offers) == sorted(p.peer_id for p in provs)
            assert not flooded.timed_out  # back soon after the honest ones verified
            status = [c.status.value for c in flooded.candidates]
            assert len(flooded.candidates) + flooded.dropped == 204  # the flood reached the finder
            assert status.count("skipped") + flooded.dropped >= 200 - BOUND  # at most BOUND unknown checked

            # A find that waits for every check it started: its failures are remembered ...
            # (on the finder's clock, held still here: a failure is skipped 15 s at first,
            # and the two finds below may take 18 s of a slow machine's time)
            net.clocks["sub"].frozen = net.clocks["sub"]()
            await finder.find(REQ, limit=10, within_s=10)
            assert len(finder.failed) >= BOUND
            # ... so the next find skips them and checks the next unknown ones instead
            again = await finder.find(REQ, limit=4, within_s=8)
            remembered = [c for c in again.candidates if "not checked again" in c.reason]
            assert len(remembered) >= BOUND
            assert len(again.offers) == 4
