"""node/transfer/guard.py: log lines a peer can cause are rate-limited per peer."""

from __future__ import annotations

import logging

import pytest

from node.transfer.guard import PeerLog


def test_one_line_per_peer_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    plog = PeerLog(logging.getLogger("cpn.test.guard"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="cpn.test.guard"):
        assert plog.note("a", "failure from %s", "a")
        assert not plog.note("a", "failure from %s", "a")
        assert not plog.note("a", "failure from %s", "a")
        assert plog.note("b", "failure from %s", "b")  # another peer is not held back
        now[0] = 61
        assert plog.note("a", "failure from %s", "a")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["failure from a", "failure from b", "failure from a (2 more from this peer not logged)"]
    assert (plog.lines, plog.suppressed) == (3, 2)


def test_memory_is_bounded_however_many_peers() -> None:
    from node.transfer import guard

    plog = PeerLog(logging.getLogger("cpn.test.guard"), every=60, clock=lambda: 0.0)
    for i in range(guard.MAX_PEERS + 100):
        plog.note(f"peer-{i}", "x")
    assert len(plog._last) == guard.MAX_PEERS
