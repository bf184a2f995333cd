"""The data plane over a libp2p stream: which path a ticket offers, and the bridge.

A ticket lists the paths its holder offers (spec/transfer.md section 3.1):
``tcp`` (the data port, :mod:`node.transfer.dataplane`) where this fetcher can
reach it, and ``stream``, the same bytes on the libp2p protocol
``/cpn/transfer/data/0.1.0`` over whatever libp2p connection the two peers
have: direct, reversed (the private side dialled the public one),
hole-punched (DCUtR) or relayed (circuit v2).

The stream path reuses the threaded data-plane pipelines unchanged: a
:func:`socket.socketpair` stands in for the TCP connection.  One end goes to
the server's connection handler or the client's ``SourceFetch`` as if it were
a TCP socket; :func:`bridge` pumps the other end to and from the libp2p
stream on the event loop (two tasks, one buffer of at most PUMP_BYTES each
way, so the pipelines' socket timeouts and back-pressure still hold).  Every
way the bridge can end (EOF, reset, cancellation) closes both ends.

A third path, ``punch`` (:mod:`node.transfer.punch`), is offered where
neither of those is direct: the libp2p connection is relayed because one side
is behind a symmetric NAT, which DCUtR cannot pass.  Reverse dialling of the
data port is not implemented: a libp2p stream over a reversed or
hole-punched connection already runs direct between the two hosts
(spec/transfer.md, "Design considerations").
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import trio

from node.p2p import FramedStream, StreamClosed
from node.reach import Path, Scope, Status, ip_scope

__all__ = ["bridge", "offer_tcp", "data_path_label", "PUMP_BYTES", "CLOSE_GRACE_S", "RELAYED", "PUNCHED"]

PUMP_BYTES = 256 << 10  #: bytes one pump reads at a time (one buffer per direction)
CLOSE_GRACE_S = 5.0  #: seconds the other direction may finish after our socket's peer closed
RELAYED = "relayed"
#: the recorded data path of a ``punch`` fetch: raw TCP through both NATs (node/transfer/punch.py)
PUNCHED = "punched-tcp"


def offer_tcp(status: Status, data_host: str, fetcher_ip: str | None) -> bool:
    """Whether a holder offers its data port (``tcp``) to a fetcher.

    ``status`` is the holder's AutoNAT verdict; ``fetcher_ip`` the fetcher's IP
    on a direct libp2p connection (None: relayed only).  A loopback data port
    only to a fetcher on this host; a fetcher in our own private network
    always; otherwise unless we know we are private (``unknown``: the fetcher
    tries it briefly, then the stream)."""
    data_scope = ip_scope(data_host)
    fetcher_scope = ip_scope(fetcher_ip) if fetcher_ip is not None else None
    if data_scope is Scope.LOOPBACK:
        return fetcher_scope is Scope.LOOPBACK
    if fetcher_scope is not None and fetcher_scope is not Scope.PUBLIC and fetcher_scope is data_scope:
        return True
    return status != "private"


def data_path_label(connection: Path | None) -> str:
    """The recorded data path of a ``stream`` fetch from the libp2p connection
    it ran on (``direct`` for a plain TCP fetch is recorded by the caller)."""
    return connection if connection is not None else "stream"


async def bridge(stream: FramedStream, sock: socket.socket) -> None:
    """Pump bytes between ``stream`` and our end ``sock`` of a socket pair until
    both directions are done; then close both (a stream that did not end
    cleanly is reset).  Never raises for the stream's or the socket's failures."""
    tsock = trio.socket.from_stdlib_socket(sock)
    clean = [False, False]  #: [stream -> socket ended with EOF, socket -> stream ended with EOF]

    async def stream_to_sock() -> None:
        while data := await stream.receive_some(PUMP_BYTES):
            view = memoryview(data)
            while view:
                view = view[await tsock.send(view):]
        with contextlib.suppress(OSError):
            tsock.shutdown(socket.SHUT_WR)
        clean[0] = True

    async def sock_to_stream(cancel: trio.CancelScope) -> None:
        while data := await tsock.recv(PUMP_BYTES):
            await stream.send_raw(data)
        await stream.close()
        clean[1] = True
        cancel.deadline = min(cancel.deadline, trio.current_time() + CLOSE_GRACE_S)

    async def guarded(fn: Callable[..., Awaitable[None]], *args: object) -> None:
        try:
            await fn(*args)
        except (StreamClosed, OSError):
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, stream_to_sock)
            nursery.start_soon(guarded, sock_to_stream, nursery.cancel_scope)
    finally:
        tsock.close()
        if not all(clean):
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.reset()
