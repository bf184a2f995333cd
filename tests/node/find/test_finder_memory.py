"""A finder's memory of failed checks (issue 14): a live provider that missed one
check is checked again soon; one that keeps failing is skipped longer each time.

At N=60 a finder whose first find ran during the start-up overload called some
live providers "gone" and then skipped them for ``find_failure_memory_s``
(300 s): every later find from that node missed them for five minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.net import network

from node.find import finder as finder_module
from node.find.finder import FAILURE_FIRST_S, Candidate, CandidateStatus
from node.find.records import advert_key
from node.p2p import FramedStream
from protocol.jobspec import Resources
from protocol.streams import ADVERT_PROTOCOL

REQ = Resources(gpu=None, cpu_millis=500, memory_mib=64, disk_mib=16)


async def test_provider_that_missed_one_check_is_found_again_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finder_module, "FIND_FETCH_TIMEOUTS", (0.2, 0.2))
    async with network(tmp_path) as net:
        prov = await net.start("p")
        sub = await net.start("f", discovery={"enabled": False})
        with trio.fail_after(30):
            await prov.discovery.wait_announced()
        # The provider is busy: its advert requests wait, and no copy of its
        # advert is in the DHT yet (as just after start-up, before the first store).
        busy = trio.Event()
        serve = prov.discovery._serve

        async def slow(stream: FramedStream) -> None:
            await busy.wait()
            await serve(stream)

        prov.p2p.set_stream_handler(ADVERT_PROTOCOL, slow)
        for node in (prov, sub):
            node.p2p.remove_local_value(advert_key(prov.peer_id))

        finder = sub.discovery.finder
        with trio.fail_after(30):
            missed = await finder.find(REQ, limit=10, within_s=10)
        assert prov.peer_id not in {o.advert.peer_id for o in missed.offers}
        first = {c.peer_id: c for c in missed.candidates}[prov.peer_id]
        assert first.status in (CandidateStatus.GONE, CandidateStatus.UNREACHABLE)
        assert finder.failed_recently(prov.peer_id, finder.clock()) is not None

        busy.set()  # it answers again; this finder's next find is a little later
        net.clocks["f"].offset += FAILURE_FIRST_S
        with trio.fail_after(30):
            again = await finder.find(REQ, limit=10, within_s=10)
        assert prov.peer_id in {o.advert.peer_id for o in again.offers}


async def test_failures_in_a_row_are_skipped_longer_each_time(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        sub = await net.start("f", discovery={"enabled": False, "find_failure_memory_s": 100})
        finder = sub.discovery.finder
        peer, t = "12D3KooWPeerThatNeverAnswers", 1000

        def fail(now: int) -> None:
            finder.note(Candidate(peer, [], CandidateStatus.UNREACHABLE, "timed out"), now)

        skipped = []
        for _ in range(5):
            fail(t)
            wait = next(s for s in range(1, 1000) if finder.failed_recently(peer, t + s) is None)
            skipped.append(wait)
            t += wait
        assert skipped == [FAILURE_FIRST_S, 2 * FAILURE_FIRST_S, 4 * FAILURE_FIRST_S, 100, 100]
        # one success forgets the streak
        finder.note(Candidate(peer, [], CandidateStatus.OK), t)
        assert finder.failed_recently(peer, t) is None
        fail(t)
        assert finder.failed_recently(peer, t + FAILURE_FIRST_S) is None
        # a failure long after the last one starts a new streak
        fail(t + 1000)
        assert finder.failed_recently(peer, t + 1000 + FAILURE_FIRST_S) is None
