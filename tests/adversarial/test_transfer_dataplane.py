"""Attacks on the transfer data plane (issue 12), each against real transfer
services on 127.0.0.1 while an honest peer keeps fetching.

The attacker's connections come from 127.0.0.2 (another host, as far as the
server can tell); the honest peer's from 127.0.0.1.  "While the attack is in
force" is checked on the attacker's own sockets after the honest fetch: none
of them was dropped by a timeout first, so the honest peer was served during
the attack, not after it.  No test waits on a clock: every wait is for a
socket event or a transfer to finish, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import trio
from support.transfer import transfer_services

from node.config import TransferSection
from node.transfer.blobstore import BlobMeta
from node.transfer.service import TransferService
from protocol.transfer import (
    HEADER_SIZE,
    TAG_SIZE,
    ChunkRange,
    Direction,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    TicketRequest,
    decode_header,
    derive_keys,
    encode_preamble,
)

pytestmark = pytest.mark.adversarial

CS = 64 << 10
ATTACKER = "127.0.0.2"  #: the attacker's source address (loopback: any 127/8 address works)
BOUND = 60  #: seconds any single wait may take before the test fails instead of hanging


def pid(svc: TransferService) -> str:
    return svc.peer_id


async def put(svc: TransferService, data: bytes, chunk_size: int = CS) -> BlobMeta:
    return await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, data, chunk_size=chunk_size))


async def connect(port: int, *, src: str = ATTACKER, rcvbuf: int = 0) -> socket.socket:
    """A plain TCP connection to the data plane from ``src`` (non-blocking afterwards)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    await trio.to_thread.run_sync(s.connect, ("127.0.0.1", port))
    s.setblocking(False)
    return s


def is_open(s: socket.socket) -> bool:
    """Has the server closed this connection?  (A peek that does not block.)"""
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def receive(s: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only if the server closes first."""
    out = bytearray()
    with trio.fail_after(BOUND):
        while len(out) < n:
            try:
                data = s.recv(min(n - len(out), 1 << 20))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(s.fileno())
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
    return bytes(out)


async def closed_by_server(s: socket.socket) -> bool:
    """Wait (bounded) until the server closes ``s`` without sending anything."""
    return await receive(s, 1) == b""


def _limits(**kw: int) -> TransferSection:
    return TransferSection(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- silent connections


async def test_silent_connections_do_not_stall_an_honest_transfer(tmp_path: Path) -> None:
    """200 TCP connections that never send a preamble (issue 12 item 4): the
    server reads preambles on the event loop, so they hold no worker thread
    and an honest fetch completes while all 200 are still open.  (Before, each
    silent connection held one of trio's 40 threads for 10 s.)"""
    cfg = _limits(data_conns_per_addr=256, data_handshake_s=30)
    async with transfer_services(tmp_path, 2, config=cfg) as (a, b):
        data = os.urandom(32 * CS)
        meta = await put(a, data)
        a.grant(pid(b), meta.digest, Direction.FETCH)
        silent = [await connect(a.dataplane.port) for _ in range(200)]
        with trio.fail_after(BOUND):
            await b.fetch(meta, [pid(a)])
        assert b.store.path_of(meta.digest).read_bytes() == data
        assert all(is_open(s) for s in silent), "the honest peer was served only after the attack timed out"
        assert a.dataplane.open_connections >= 200
        for s in silent:
            s.close()


async def test_silent_connections_are_capped_per_address_and_timed_out(tmp_path: Path) -> None:
    """A source address gets at most ``data_conns_per_addr`` connections (the
    rest are closed at once), and a connection that sends no preamble is closed
    after ``data_handshake_s``; an honest peer from another address is served."""
    cfg = _limits(data_conns_per_addr=4, data_handshake_s=1)
    async with transfer_services(tmp_path, 2, config=cfg) as (a, b):
        meta = await put(a, os.urandom(8 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)
        silent = [await connect(a.dataplane.port) for _ in range(12)]
        with trio.fail_after(BOUND):
            await b.fetch(meta, [pid(a)])
        assert b.store.has(meta.digest)
        assert all([await closed_by_server(s) for s in silent])  # the excess at once, the rest at 1 s
        assert a.dataplane.stats["refused_busy"] == 8
        assert a.dataplane.open_connections == 0
        for s in silent:
            s.close()


# --------------------------------------------------------------------------- receivers that never read


async def _tickets(attacker: TransferService, server: TransferService, digest: str, n: int) -> list[Ticket]:
    """``n`` tickets through the real control plane (pipelined on one stream)."""
    stream = await attacker.open_stream(pid(server))
    try:
        return [await attacker.ask(stream, TicketRequest(digest=digest), Ticket) for _ in range(n)]
    finally:
        await stream.close()


async def _stalling_request(port: int, ticket: Ticket, chunks: int) -> socket.socket:
    """Admit with ``ticket``, ask for ``chunks`` chunks, then read nothing (a tiny receive buffer)."""
    s = await connect(port, rcvbuf=4096)
    c2s, _ = derive_keys(ticket.secret, ticket.ticket_id)
    header, ct = FrameSealer(c2s).seal(FrameType.REQUEST, 0, Request(ranges=(ChunkRange(start=0, end=chunks),)).encode())
    s.setblocking(True)
    s.sendall(encode_preamble(ticket.ticket_id) + header + ct)
    s.setblocking(False)
    return s


async def test_receivers_that_never_read_do_not_starve_an_honest_fetch(tmp_path: Path) -> None:
    """An authorised peer opens 48 ticketed connections, asks each for 16 MiB
    and never reads (issue 12: each held a worker thread for 60 s, an honest
    job took 59.8 s instead of 4.9 s).  Now a peer gets at most
    ``data_conns_per_peer`` admitted connections, sending threads come from the
    data plane's own limiter, and the honest fetch completes while the stalled
    connections are still being served: each admitted one later delivers its
    whole request, each refused one was closed before any chunk."""
    cfg = _limits(data_conns_per_peer=4, data_threads=8, data_stall_s=120)
    async with transfer_services(tmp_path, 3, config=cfg) as (a, honest, attacker):
        big = await put(a, os.urandom(256 * CS))
        small = await put(a, os.urandom(32 * CS))
        a.grant(pid(attacker), big.digest, Direction.FETCH)
        a.grant(pid(honest), small.digest, Direction.FETCH)
        tickets = await _tickets(attacker, a, big.digest, 48)
        stalled = [await _stalling_request(a.dataplane.port, t, 256) for t in tickets]
        with trio.fail_after(BOUND):
            await honest.fetch(small, [pid(a)])
        assert honest.store.has(small.digest)
        whole = 256 * (HEADER_SIZE + CS + TAG_SIZE) + HEADER_SIZE + TAG_SIZE
        got = [await receive(s, whole) for s in stalled]
        served = [g for g in got if g]
        assert len(served) == 4  # data_conns_per_peer admitted, the other 44 closed at admission
        for g in served:  # nothing was cut off by a timeout while the honest fetch ran
            assert len(g) == whole
            assert decode_header(g[-HEADER_SIZE - TAG_SIZE:][:HEADER_SIZE], from_server=True)[0] is FrameType.END
        for s in stalled:
            s.close()


async def test_tickets_per_peer_are_capped_oldest_first(tmp_path: Path) -> None:
    """A peer that asks for tickets and never uses them holds at most
    ``tickets_per_peer``; the oldest are dropped, the newest still admit."""
    cfg = _limits(tickets_per_peer=5)
    async with transfer_services(tmp_path, 2, config=cfg) as (a, b):
        meta = await put(a, os.urandom(4 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)
        tickets = await _tickets(b, a, meta.digest, 12)
        assert a.dataplane.tickets_of(pid(b)) == 5
        old = await _stalling_request(a.dataplane.port, tickets[0], 1)
        assert await closed_by_server(old)  # dropped: bad_ticket
        new = await _stalling_request(a.dataplane.port, tickets[-1], 1)
        assert len(await receive(new, HEADER_SIZE)) == HEADER_SIZE  # served
        old.close()
        new.close()


# --------------------------------------------------------------------------- ticket theft


async def test_wrong_secret_does_not_burn_the_holders_ticket(tmp_path: Path) -> None:
    """Someone who saw a ticket_id (it travels in clear) connects first with a
    forged first frame: the server drops that connection and the ticket stays
    for its holder, who is then served (issue 12: the attempt burned it)."""
    async with transfer_services(tmp_path, 2) as (a, b):
        meta = await put(a, os.urandom(4 * CS))
        a.grant(pid(b), meta.digest, Direction.FETCH)
        (ticket,) = await _tickets(b, a, meta.digest, 1)
        forged = Ticket(ticket_id=ticket.ticket_id, secret=os.urandom(32), digest=ticket.digest,
                        host=ticket.host, port=ticket.port, expires_at=ticket.expires_at)
        thief = await _stalling_request(a.dataplane.port, forged, 1)
        assert await closed_by_server(thief)
        holder = await _stalling_request(a.dataplane.port, ticket, 4)
        whole = 4 * (HEADER_SIZE + CS + TAG_SIZE) + HEADER_SIZE + TAG_SIZE
        assert len(await receive(holder, whole)) == whole
        assert a.dataplane.tickets_of(pid(b)) == 0  # consumed by the holder, once
        thief.close()
        holder.close()
