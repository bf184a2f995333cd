"""One request, one answer, on a fresh stream, in one round trip ("lazy" multistream-select).

py-libp2p's ``new_stream`` negotiates the protocol before the caller may
write: it sends the multistream header, waits for its echo, sends the
protocol line, waits for that echo (two round trips and two more frames),
and only then hands the stream over.  For a request that fits in one frame
that is three round trips where one does: as go-libp2p does for a single
proposed protocol, :func:`exchange` writes the header, the protocol line and
the request in one write and reads the two echoes and the answer after
(multistream-select 1.0.0 allows it: the listener reads the lines in order
and a refusal, ``na``, arrives where the echo would have).  The kad RPCs
(:mod:`node.p2p.dht`) and the direct fetches of :meth:`node.p2p.P2PHost.request`
use it.

Messages are ``uvarint(length) || body``, the framing of both the kad
protocol and CPN's own (spec/README.md, "Frames").
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.exceptions import IncompleteReadError

from node.p2p.tuning import send_opening, syn_with_first_frame
from protocol.errors import ProtocolError
from protocol.framing import decode_frame_prefix, encode_frame

__all__ = ["Frames", "NegotiationFailed", "negotiation", "negotiated", "close", "exchange", "open_raw"]

MULTISTREAM = b"/multistream/1.0.0\n"
MAX_NEGOTIATION_LINE = 1024
CLOSE_S = 1.0  #: longest a close (or reset) may hold a caller, cancelled or not


class NegotiationFailed(Exception):
    """The peer refused the protocol (``na``), or answered the negotiation
    with anything but the echoes (a close, a reset, garbage)."""


def negotiation(protocol: str) -> bytes:
    """The multistream header and the protocol line, each a frame, as one write."""
    return encode_frame(MULTISTREAM) + encode_frame(protocol.encode() + b"\n")


class Frames:
    """``uvarint(length) || body`` messages off a stream, read as they arrived.

    py-libp2p's reader takes a length prefix one byte per read; this takes
    what is there and splits it, keeping what belongs to the next message.
    A close or a reset before a whole message raises ``IncompleteReadError``.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def next(self, max_size: int) -> bytes:
        while True:
            head = decode_frame_prefix(self._buf, max_size)
            if head is not None and len(self._buf) >= sum(head):
                n, i = head
                body = bytes(self._buf[i : i + n])
                del self._buf[: i + n]
                return body
            try:
                chunk = await self._stream.read()  # what has arrived (read(n) waits for all n)
            except EOFError:
                chunk = b""
            if not chunk:
                raise IncompleteReadError(
                    "stream ended before the whole message", received_bytes=len(self._buf)
                )
            self._buf += chunk


async def negotiated(frames: Frames, protocol: str) -> None:
    """Read the two echoes of :func:`negotiation`; raises :class:`NegotiationFailed`."""
    for line in (MULTISTREAM, protocol.encode() + b"\n"):
        try:
            got = await frames.next(MAX_NEGOTIATION_LINE)
        except (IncompleteReadError, BaseLibp2pError, EOFError, ProtocolError) as exc:
            raise NegotiationFailed(f"protocol negotiation: {exc}") from None
        if got != line:
            raise NegotiationFailed(f"peer answered {got[:40]!r} to {line!r}")


async def close(stream: Any, *, reset: bool) -> None:
    """Close our side (the server's handler then ends and frees its slot), or reset
    it when the exchange broke off; never blocks a cancelled caller for long."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_S):
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except BaseLibp2pError:
            pass


async def exchange(stream: Any, protocol: str, request: bytes, max_answer: int) -> bytes:
    """Send ``request`` as one frame on a raw (not yet negotiated) ``stream``,
    proposing ``protocol``; return the one answer frame (at most ``max_answer``
    bytes).  The stream is closed after (reset if the exchange broke off).
    A stream opened in :func:`node.p2p.tuning.syn_with_first_frame` (as
    :func:`open_raw` does) carries its SYN, the proposal, the request and our
    FIN in one yamux frame.

    Raises :class:`NegotiationFailed` (the peer does not serve ``protocol``),
    ``ProtocolError`` (an oversized or malformed answer prefix), and
    ``IncompleteReadError`` / ``BaseLibp2pError`` (a close, reset or dead
    connection before the whole answer).  Timeouts are the caller's.
    """
    done = False
    frames = Frames(stream)
    try:
        data = negotiation(protocol) + encode_frame(request)
        if not await send_opening(stream, data):
            await stream.write(data)
        await negotiated(frames, protocol)
        stream.set_protocol(TProtocol(protocol))
        answer = await frames.next(max_answer)
        done = True
        return answer
    finally:
        await close(stream, reset=not done)


async def open_raw(network: Any, peer: Any) -> Any:
    """A new stream to ``peer`` on the connection ``network`` (py-libp2p's swarm)
    holds, not negotiated, its SYN held for :func:`exchange`'s first frame."""
    with syn_with_first_frame():
        return await network.new_stream(peer)
