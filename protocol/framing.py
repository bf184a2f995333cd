"""Length-prefixed frames on libp2p streams (spec/README.md, "Frames").

Every CPN protocol on a libp2p stream sends ``uvarint(length) || bytes``.
The prefix is the minimal unsigned LEB128 encoding of ``length``; a receiver
decodes it and checks the protocol's frame limit *before* it reads (or
buffers) the body, so a hostile prefix costs at most its own few bytes.

Sans-IO: :func:`decode_frame_prefix` looks at the bytes received so far and
says how long the frame is, or that more bytes are needed.
"""

from __future__ import annotations

from .errors import LocalProtocolError, ProtocolError

__all__ = ["MAX_PREFIX_BYTES", "encode_frame", "decode_frame_prefix", "decode_frame"]

#: A prefix longer than this is malformed whatever the limit (a uvarint of a 64-bit value).
MAX_PREFIX_BYTES = 10


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(body: bytes, max_size: int | None = None) -> bytes:
    """``uvarint(len(body)) || body``; refuses (a local bug) a body above ``max_size``."""
    if max_size is not None and len(body) > max_size:
        raise LocalProtocolError(f"frame body of {len(body)} bytes exceeds {max_size}")
    return _uvarint(len(body)) + bytes(body)


def decode_frame_prefix(data: bytes | bytearray | memoryview, max_size: int) -> tuple[int, int] | None:
    """``(length, prefix_bytes)`` of the frame starting at ``data[0]``, or ``None``
    if the prefix is not complete yet.

    Raises ``ProtocolError("oversize")`` as soon as the announced length is
    known to exceed ``max_size``, and ``ProtocolError("malformed")`` for a
    prefix that is not minimal (a final byte of 0 after the first) or longer
    than :data:`MAX_PREFIX_BYTES`.  Nothing past the prefix is looked at.
    """
    n = shift = 0
    for i in range(min(len(data), MAX_PREFIX_BYTES)):
        b = data[i]
        n |= (b & 0x7F) << shift
        shift += 7
        if n > max_size:
            raise ProtocolError("oversize", f"frame of more than {max_size} bytes announced")
        if not b & 0x80:
            if i and b == 0:
                raise ProtocolError("malformed", "frame length prefix is not minimal")
            return n, i + 1
    if len(data) >= MAX_PREFIX_BYTES:
        raise ProtocolError("malformed", f"frame length prefix longer than {MAX_PREFIX_BYTES} bytes")
    return None


def decode_frame(data: bytes | bytearray, max_size: int) -> tuple[bytes, int] | None:
    """Split the first frame off ``data``: ``(body, bytes consumed)``, or None
    when more bytes are needed (the prefix is checked as :func:`decode_frame_prefix` does)."""
    head = decode_frame_prefix(data, max_size)
    if head is None:
        return None
    n, i = head
    if len(data) < i + n:
        return None
    return bytes(data[i : i + n]), i + n
