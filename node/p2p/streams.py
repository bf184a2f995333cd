"""Framed libp2p streams: the one stream type the rest of the node sees."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF

from protocol.framing import decode_frame_prefix, encode_frame

log = logging.getLogger("cpn.p2p")

__all__ = ["StreamClosed", "PeerUnreachable", "FramedStream", "StreamHandler"]

class StreamClosed(Exception):
    """The stream ended (closed, reset, or the connection died) before a whole frame."""


class PeerUnreachable(StreamClosed):
    """Dialling the peer, or negotiating the protocol with it, failed."""






class FramedStream:
    """A libp2p stream carrying uvarint-length-prefixed frames.

    Framing exists because py-libp2p reports a remote reset as a plain EOF:
    without a length, a half-received message would look complete.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.remote_peer: str = str(stream.muxed_conn.peer_id)
        self.protocol: str = str(stream.get_protocol() or "")

    async def send_frame(self, data: bytes) -> None:
        """Send one frame.  Raises :class:`StreamClosed` if the stream is gone."""
        try:
            await self._stream.write(encode_frame(data))
        except BaseLibp2pError as exc:
            raise StreamClosed(f"write failed: {exc}") from None

    async def _fill(self) -> None:
        try:
            chunk = await self._stream.read(65536)
        except BaseLibp2pError as exc:  # StreamEOF, StreamReset, muxer errors
            raise StreamClosed(str(exc) or type(exc).__name__) from None
        if not chunk:
            raise StreamClosed("end of stream")
        self._buf += chunk

    async def receive_frame(self, max_size: int) -> bytes:
        """Receive one frame of at most ``max_size`` bytes (spec/README.md, "Frames").

        Raises :class:`StreamClosed` at end of stream (also mid-frame) and the
        prefix's ``ProtocolError`` (``oversize``, ``malformed``) before reading
        a byte of the body.
        """
        while (head := decode_frame_prefix(self._buf, max_size)) is None:
            await self._fill()
        n, i = head
        while len(self._buf) < i + n:
            await self._fill()
        frame = bytes(self._buf[i : i + n])
        del self._buf[: i + n]
        return frame

    async def receive_some(self, max_bytes: int) -> bytes:
        """Unframed: whatever bytes arrive next (at most ``max_bytes``), b"" at end
        of stream.  For streams that carry a byte protocol of their own (the data
        plane, spec/transfer.md section 3.1); a remote reset also reads as b""
        here (py-libp2p cannot tell them apart), so that protocol must frame its
        data.  Raises :class:`StreamClosed` on other stream errors."""
        if self._buf:
            out = bytes(self._buf[:max_bytes])
            del self._buf[:max_bytes]
            return out
        try:
            return bytes(await self._stream.read(max_bytes))
        except StreamEOF:
            return b""
        except BaseLibp2pError as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    async def send_raw(self, data: bytes) -> None:
        """Unframed: send ``data`` as it is (see :meth:`receive_some`)."""
        try:
            await self._stream.write(data)
        except BaseLibp2pError as exc:
            raise StreamClosed(f"write failed: {exc}") from None

    async def close(self) -> None:
        """Half-close our side (the peer reads end-of-stream)."""
        try:
            await self._stream.close()
        except BaseLibp2pError:
            pass

    async def reset(self) -> None:
        """Abort the stream in both directions."""
        try:
            await self._stream.reset()
        except BaseLibp2pError:
            pass


StreamHandler = Callable[[FramedStream], Awaitable[None]]

