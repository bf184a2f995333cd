"""Fewer frames, fewer wake-ups: one request, one answer (node/p2p/lazy.py, tuning.py, paths.py).

Real hosts on 127.0.0.1; every frame a yamux connection writes is recorded
(py-libp2p's own ``_write_frame``, under our tuning).  A request opened with
:func:`node.p2p.lazy.open_raw` is one frame from the asking side (SYN, the
protocol proposal, the request and FIN together; it was three: SYN, data,
FIN), and the answering side's ACK and multistream header ride on its echo of the
proposal instead of a frame each.  Each frame is one Noise message, one ``send`` and one wake-up of
the other process: at N=60 on two cores that was most of a find's time.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.stream_muxer.yamux import yamux as _yamux

from node.p2p import FramedStream, P2PHost, PeerUnreachable, lazy, open_host, paths, tuning

LOOP = "/ip4/127.0.0.1/tcp/0"
ANSWER = "/test/answer/1"
SYN, ACK, FIN, RST = _yamux.FLAG_SYN, _yamux.FLAG_ACK, _yamux.FLAG_FIN, _yamux.FLAG_RST
DATA, WINDOW_UPDATE = _yamux.TYPE_DATA, _yamux.TYPE_WINDOW_UPDATE


@dataclass(frozen=True)
class Frame:
    to: str  #: the peer the frame went to
    typ: int
    flags: int
    sid: int
    length: int
    payload: bytes


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Frame]]:
    """Every frame any yamux connection in this process writes, as written."""
    seen: list[Frame] = []
    original = tuning._write_frame

    async def record(self: Any, data: bytes) -> None:
        _, typ, flags, sid, length = struct.unpack_from(_yamux.YAMUX_HEADER_FORMAT, data)
        seen.append(Frame(str(self.peer_id), typ, flags, sid, length, bytes(data[_yamux.HEADER_SIZE:])))
        await original(self, data)

    monkeypatch.setattr(tuning, "_write_frame", record)
    yield seen


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Frame]]:
    """For a stand-in connection (:class:`_Conn`): what tuning hands py-libp2p to write."""
    seen: list[Frame] = []

    async def record(self: Any, data: bytes) -> None:
        _, typ, flags, sid, length = struct.unpack_from(_yamux.YAMUX_HEADER_FORMAT, data)
        seen.append(Frame(str(self.peer_id), typ, flags, sid, length, bytes(data[_yamux.HEADER_SIZE:])))

    monkeypatch.setattr(tuning, "_write_frame", record)
    yield seen


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    """Two connected hosts; ``b`` answers :data:`ANSWER` with ``ok:`` + the request."""
    async with AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(open_host(Ed25519PrivateKey.generate(), [LOOP]))
                for _ in range(2)]

        async def answer(stream: FramedStream) -> None:
            req = await stream.receive_frame(1 << 20)
            await stream.send_frame(b"ok:" + req[:16])
            await stream.close()

        b.set_stream_handler(ANSWER, answer)
        await a.connect(b.peer_id, b.listen_addrs)
        yield a, b


def stream_of(frames: list[Frame], to: str, marker: bytes) -> int:
    """The stream ID of the first frame sent to ``to`` whose payload holds ``marker``."""
    return next(f.sid for f in frames if f.to == to and marker in f.payload)


async def test_a_request_is_one_frame_and_the_answer_carries_the_ack(frames: list[Frame]) -> None:
    async with pair() as (a, b):
        answer = await a.request(b.peer_id, ANSWER, b"question", 1024)
        assert answer == b"ok:question"
        sid = stream_of(frames, b.peer_id, b"question")
        asked = [f for f in frames if f.to == b.peer_id and f.sid == sid]
        answered = [f for f in frames if f.to == a.peer_id and f.sid == sid]
    # the asking side: one frame, SYN + proposal + request + FIN (was SYN, data, FIN)
    assert [(f.typ, f.flags) for f in asked] == [(DATA, SYN | FIN)]
    assert ANSWER.encode() in asked[0].payload
    # the answering side: no frame of its own for the ACK, nor for its multistream
    # header: its first frame holds the ACK, its header and the echo of the proposal
    assert answered[0].typ == DATA and answered[0].flags == ACK
    assert answered[0].payload == lazy.negotiation(ANSWER)
    assert not [f for f in answered if f.typ == WINDOW_UPDATE and f.flags == ACK]
    assert len(answered) == 3 and answered[-1].flags & FIN  # then the answer, then its FIN


async def test_a_request_too_big_for_one_frame_is_sent_as_usual(frames: list[Frame]) -> None:
    big = b"Q" * 100_000  # over one frame (64 KiB): SYN on its own, then the data frames
    async with pair() as (a, b):
        assert await a.request(b.peer_id, ANSWER, big, 1024) == b"ok:" + big[:16]
        sid = stream_of(frames, b.peer_id, ANSWER.encode())
        asked = [f for f in frames if f.to == b.peer_id and f.sid == sid]
    assert (asked[0].typ, asked[0].flags, asked[0].length) == (WINDOW_UPDATE, SYN, 0)
    assert sum(f.length for f in asked if f.typ == DATA) > len(big)


async def test_a_protocol_the_peer_does_not_serve_is_unreachable() -> None:
    async with pair() as (a, b):
        with pytest.raises(PeerUnreachable, match="/test/nobody/1"):
            await a.request(b.peer_id, "/test/nobody/1", b"question", 1024)
        assert await a.request(b.peer_id, ANSWER, b"again", 1024) == b"ok:again"  # the connection lives on


async def test_kad_requests_are_one_frame_each(frames: list[Frame]) -> None:
    async with pair() as (a, b):
        await a.find_providers(b"\x01\x55\x12\x20" + bytes(32))
        ours = lazy.negotiation("/ipfs/kad/1.0.0")  # (py-libp2p's own kad client proposes line by line)
        sids = {f.sid for f in frames if f.to == b.peer_id and ours in f.payload}
        assert sids
        for sid in sids:
            assert [(f.typ, f.flags) for f in frames if f.to == b.peer_id and f.sid == sid] == [(DATA, SYN | FIN)]


class _Conn:
    """Just what the frame rewrite reads of a py-libp2p ``Yamux``."""

    def __init__(self) -> None:
        self.streams: dict[int, Any] = {}
        self.peer_id = "peer"


def header(typ: int, flags: int, sid: int, length: int = 0) -> bytes:
    return struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, typ, flags, sid, length)


async def test_a_held_ack_goes_alone_before_a_fin_or_reset(written: list[Frame]) -> None:
    """py-libp2p reads neither FIN nor RST on a frame that has ACK: an accepted
    stream whose first frame of ours ends it gets its ACK in a frame of its own."""
    conn = _Conn()
    write: Any = getattr(_yamux.Yamux, "_write_frame")  # noqa: B009 - tuning's, as installed
    await write(conn, header(WINDOW_UPDATE, ACK, 5))
    await write(conn, header(WINDOW_UPDATE, ACK, 7))
    assert written == []  # both held
    await write(conn, header(WINDOW_UPDATE, FIN, 5))
    await write(conn, header(DATA, 0, 7, 2) + b"hi")
    await write(conn, header(DATA, 0, 7, 2) + b"hi")  # (the ACK went with the first)
    assert [(f.typ, f.flags, f.sid) for f in written] == [
        (WINDOW_UPDATE, ACK, 5), (WINDOW_UPDATE, FIN, 5), (DATA, ACK, 7), (DATA, 0, 7)]


async def test_held_acks_are_bounded_per_connection(written: list[Frame]) -> None:
    conn = _Conn()
    write: Any = getattr(_yamux.Yamux, "_write_frame")  # noqa: B009
    for sid in range(1, 2 * tuning.MAX_HELD_ACKS, 2):  # streams that ended before a frame of ours
        await write(conn, header(WINDOW_UPDATE, ACK, sid))
    assert written == [] and len(conn.__dict__["_cpn_ack_held"]) == tuning.MAX_HELD_ACKS
    conn.streams = {9999: object()}
    await write(conn, header(WINDOW_UPDATE, ACK, 9999))  # the ended ones are forgotten
    assert conn.__dict__["_cpn_ack_held"] == {9999} and written == []
    conn.streams = {n: object() for n in range(10_001, 10_001 + 4 * tuning.MAX_HELD_ACKS, 2)}
    for sid in conn.streams:  # a peer holding that many streams open, unanswered
        await write(conn, header(WINDOW_UPDATE, ACK, sid))
    assert len(conn.__dict__["_cpn_ack_held"]) == tuning.MAX_HELD_ACKS
    assert len(written) == tuning.MAX_HELD_ACKS  # the other half went out as py-libp2p sends them


async def test_a_peer_that_negotiates_line_by_line_is_answered_line_by_line(frames: list[Frame]) -> None:
    """py-libp2p's own ``new_stream`` waits for the listener's header before it
    proposes: that header is never held back for a proposal, and that SYN
    goes out at once (its stream is not opened in ``syn_with_first_frame``)."""
    async with pair() as (a, b):
        with trio.fail_after(10):
            stream = await a.open_stream(b.peer_id, ANSWER)
            await stream.send_frame(b"plain")
            assert await stream.receive_frame(1024) == b"ok:plain"
        sid = stream_of(frames, b.peer_id, b"plain")
        first = next(f for f in frames if f.to == b.peer_id and f.sid == sid)
        header = next(f for f in frames if f.to == a.peer_id and f.sid == sid)
    assert (first.typ, first.flags) == (WINDOW_UPDATE, SYN)
    assert header.payload == lazy.negotiation(ANSWER)[:20]  # the header alone


def test_install_is_idempotent() -> None:
    before = getattr(_yamux.Yamux, "_write_frame")  # noqa: B009
    tuning.install()
    assert getattr(_yamux.Yamux, "_write_frame") is before  # noqa: B009


async def test_a_connections_remote_ip_is_read_once() -> None:
    """The NAT loop asks every connection's remote IP every few seconds; turning
    its multiaddrs into text each time was a fifth of an idle daemon's CPU at
    N=60.  Once py-libp2p knows the path, the answer is kept on the connection."""
    async with pair() as (a, b):
        conn = next(c for cs in a._host.get_network().connections.values() for c in cs)
        assert paths.remote_ip(conn) == "127.0.0.1"

        def gone() -> None:
            raise AssertionError("read again")

        conn.get_transport_addresses = gone
        conn.muxed_conn.get_remote_address = gone
        assert paths.remote_ip(conn) == "127.0.0.1"


async def test_tasks_started_while_a_syn_is_held_send_their_own_syns() -> None:
    """Tasks started while a stream opens in ``syn_with_first_frame`` (py-libp2p
    starts a dial's connection handlers and notifications then) inherit its
    context; their streams' SYNs must go out as usual.  (When the context held
    a plain flag, a private provider behind a NAT could no longer open its
    transfer stream to the submitter: tests/node/test_reach_jobs_netns.py.)"""
    async with pair() as (a, b):

        async def elsewhere() -> None:
            with trio.fail_after(10):
                stream = await a.open_stream(b.peer_id, ANSWER)
                await stream.send_frame(b"own syn")
                assert await stream.receive_frame(1024) == b"ok:own syn"

        async with trio.open_nursery() as nursery:
            with tuning.syn_with_first_frame():
                nursery.start_soon(elsewhere)  # (inherits this context)
