"""The ``punch`` path's IO parts on 127.0.0.1 (node/transfer/punch.py): admission
limits, the race of connection attempts, the holder's checks, and the fetcher's
fallback to the stream when a punch cannot be had.  A real punch across two
NATs is in test_datapath_netns.py."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from support.transfer import transfer_services

from node.reach import Reachability
from node.transfer.blobtypes import BlobMeta
from node.transfer.punch import PunchFailed, PunchGate, PunchLimits, racing
from node.transfer.service import TransferService
from protocol.errors import ProtocolError
from protocol.transfer import ROLE_PROBE, ROLE_SPRAY, Direction, PunchRequest

CS = 4096


async def put(svc: TransferService, data: bytes) -> BlobMeta:
    return await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, data, chunk_size=CS))


def test_the_gate_bounds_punches_per_peer_and_in_all() -> None:
    now = [0.0]
    gate = PunchGate(PunchLimits(per_peer=1, total=2, per_peer_per_min=2, total_per_min=4), now=lambda: now[0])
    with gate.hold("a"):
        assert gate.refusal("a") == "too many punches running"
        with gate.hold("b"):
            assert gate.refusal("c") == "too many punches running"
            with pytest.raises(ProtocolError) as exc, gate.hold("c"):
                pass
            assert exc.value.reason == "busy"
    with gate.hold("a"):
        pass
    assert gate.refusal("a") == "too many punches this minute"  # two started in this minute
    with gate.hold("c"):
        pass
    assert gate.refusal("d") == "too many punches this minute"  # four in all
    now[0] = 60.0
    assert gate.refusal("a") is None and gate.refusal("d") is None
    assert not gate._started and not gate._running  # nothing kept for idle peers


async def test_a_fetchers_punches_to_one_holder_take_turns(autojump_clock: trio.testing.MockClock) -> None:
    gate = PunchGate()
    order: list[str] = []
    first_in = trio.Event()
    release = trio.Event()

    async def first() -> None:
        async with gate.turn("a", patience=6):
            first_in.set()
            await release.wait()
            order.append("first")

    async def second() -> None:
        await first_in.wait()
        async with gate.turn("a", patience=6):  # waits for the first to end, not refused
            order.append("second")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(second)
        await first_in.wait()
        release.set()
    assert order == ["first", "second"]
    async with gate.turn("b", patience=6):  # patience runs out: busy
        with pytest.raises(ProtocolError) as exc:
            async with gate.turn("b", patience=6):
                pass
    assert exc.value.reason == "busy"


async def test_the_first_attempt_that_connects_wins_and_every_other_socket_closes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        addr = listener.getsockname()
        async with racing() as race:
            for _ in range(5):
                race.dial(addr)
            await race.won.wait()
            sock = race.take()
        with sock:
            assert sock.getpeername() == addr and sock.getblocking()
            assert not race.socks and race.attempts == 5  # the other four were closed
            sock.sendall(b"x")
            listener.settimeout(10)
            got: dict[tuple[str, int], bytes] = {}
            while sock.getsockname() not in got:  # the losers that connected were closed at once
                conn, peer = listener.accept()
                with conn:
                    got[peer] = conn.recv(1)
            assert got.pop(sock.getsockname()) == b"x" and set(got.values()) <= {b""}


async def test_with_need_data_a_connection_wins_only_once_its_peer_spoke() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        addr = listener.getsockname()
        tl = trio.socket.from_stdlib_socket(listener)
        async with racing(need_data=True) as race:
            race.dial(addr)
            race.dial(addr)
            first, _ = await tl.accept()
            second, _ = await tl.accept()
            first.close()  # closed before a byte: it never wins
            await second.send(b"preamble")
            await race.won.wait()
            sock = race.take()
        second.close()
        with sock:
            assert sock.recv(8, socket.MSG_PEEK) == b"preamble"
            assert not race.socks


async def test_the_holder_checks_ticket_roles_path_and_target(tmp_path: Path) -> None:
    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(2 * CS))
        ticket = a.dataplane.issue(b.peer_id, meta)
        other = a.dataplane.issue("12D3KooWOther", meta)
        paths = {"x": "relayed"}
        a._p2p.connection_path = lambda peer: paths["x"]  # type: ignore[method-assign]
        a.punch.role = lambda: (ROLE_PROBE, "198.51.100.100")  # type: ignore[method-assign]

        def check(tid: bytes, role: str = ROLE_SPRAY, ip: str = "198.51.100.101") -> str:
            req = PunchRequest(ticket_id=tid, role=role, ip=ip, port=0 if role == ROLE_SPRAY else 40000)
            try:
                a.punch._check(b.peer_id, req)
            except ProtocolError as exc:
                return exc.reason
            return "ok"

        assert check(ticket.ticket_id) == "ok"
        assert check(other.ticket_id) == "unauthorized"  # issued to another peer
        assert check(os.urandom(16)) == "unauthorized"
        assert check(ticket.ticket_id, role=ROLE_PROBE) == "punch_unavailable"  # two probers
        assert check(ticket.ticket_id, ip="192.168.1.7") == "bad_target"  # SYNs at a private network
        assert check(ticket.ticket_id, ip="198.51.100.100") == "bad_target"  # at ourselves
        paths["x"] = "direct"
        assert check(ticket.ticket_id) == "punch_unavailable"  # a direct connection: use it


async def test_a_ticket_offers_punch_only_on_a_relayed_connection_to_a_node_that_can_punch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with transfer_services(tmp_path, 2) as (a, b):
        # a private holder, b reached through a relay: no tcp for b
        monkeypatch.setattr(type(a._p2p), "reachability", property(lambda self: Reachability(status="private")))
        a._p2p.connection_path = lambda peer: "relayed"  # type: ignore[method-assign]
        assert a.paths_for(b.peer_id) == ("stream",)  # loopback: reachability knows no NAT type
        a.punch.role = lambda: (ROLE_SPRAY, "198.51.100.101")  # type: ignore[method-assign]
        assert a.paths_for(b.peer_id) == ("punch", "stream")
        a._p2p.connection_path = lambda peer: "hole-punched"  # type: ignore[method-assign]
        assert a.paths_for(b.peer_id) == ("stream",)


@pytest.mark.parametrize("fetcher_can_punch", [False, True])
async def test_a_punch_that_cannot_be_had_falls_back_to_the_stream(
        tmp_path: Path, fetcher_can_punch: bool) -> None:
    """The fetcher takes no part in punches (no role: it skips at once), or the
    holder refuses (two sprayers): either way the data moves on the stream."""
    async with transfer_services(tmp_path, 2) as (a, b):
        data = os.urandom(30 * CS)
        meta = await put(a, data)
        a.grant(b.peer_id, meta.digest, Direction.FETCH)
        a.paths_for = lambda peer: ("punch", "stream")  # type: ignore[method-assign]
        if fetcher_can_punch:
            for svc in (a, b):
                svc._p2p.connection_path = lambda peer: "relayed"  # type: ignore[method-assign]
                svc.punch.role = lambda: (ROLE_SPRAY, "198.51.100.101")  # type: ignore[method-assign]
        await b.fetch(meta, [a.peer_id])
        assert b.store.path_of(meta.digest).read_bytes() == data
        assert b.progress[meta.digest].paths == {a.peer_id: "relayed" if fetcher_can_punch else "direct"}
        assert b.stats["path_punched_tcp"] == 0 and a.dataplane.stats["streams"] == 1
        assert a.punch.stats["punches_refused"] == (1 if fetcher_can_punch else 0)
        assert b.punch.stats["punches_won"] == 0


@pytest.mark.parametrize("first", ["no hit", "refused"])
async def test_a_punch_that_found_no_connection_is_tried_once_more(tmp_path: Path, first: str) -> None:
    """One try misses about one time in a hundred: the fetcher tries once more
    (fresh random ports) before the relay.  A refusal is not retried."""
    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(2 * CS))
        ticket = a.dataplane.issue(b.peer_id, meta)
        b._p2p.connection_path = lambda peer: "relayed"  # type: ignore[method-assign]
        b.punch.role = lambda: (ROLE_SPRAY, "198.51.100.101")  # type: ignore[method-assign]
        ours, theirs = socket.socketpair()
        tries: list[int] = []

        async def fetch_side(peer: str, t: object, mine: object) -> socket.socket:
            tries.append(1)
            if len(tries) == 1:
                if first == "no hit":
                    raise trio.TooSlowError
                raise ProtocolError("punch_unavailable", "the holder is a spray too")
            return ours

        b.punch._fetch_side = fetch_side  # type: ignore[method-assign]
        with theirs:
            if first == "no hit":
                assert await b.punch.open(a.peer_id, ticket) is ours
                assert b.punch.stats["punches"] == 2 and b.punch.stats["punches_won"] == 1
            else:
                with pytest.raises(PunchFailed, match="punch_unavailable"):
                    await b.punch.open(a.peer_id, ticket)
                assert len(tries) == 1
            ours.close()
