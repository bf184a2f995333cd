"""The transfer data plane (spec/transfer.md section 3): preamble, sealed frames, bodies.

Bulk data leaves libp2p because a py-libp2p stream moves ~100 MiB/s while raw
TCP moves >1 GiB/s; the control plane stays on libp2p (authenticated peers).
A client admitted by a :class:`~protocol.transfer_messages.Ticket` opens a TCP
connection, sends a plaintext preamble naming the ticket, and from then on
every frame is AES-256-GCM sealed under a per-direction key derived from the
ticket secret; the 12-byte frame header is the associated data and the nonce
is a per-direction counter.  Requests (chunk ranges), chunks, end, stop and
errors travel there.  The server-side checks of a preamble's ticket and of a
REQUEST are here too.
"""

from __future__ import annotations

import enum
import struct as _struct
from collections.abc import Collection, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import cbor
from .chunks import MAX_CHUNK_SIZE
from .errors import LocalProtocolError, ProtocolError, ValidationError
from .transfer_messages import MAX_CHUNKS, check_reason
from .wire import Struct, struct

__all__ = [
    "MAX_RANGES",
    "MAX_REQUEST_CHUNKS",
    "ChunkRange",
    "Request",
    "DataError",
    "FrameType",
    "MAGIC",
    "VERSION",
    "PREAMBLE_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "MAX_BODY",
    "MAX_CONTROL_BODY",
    "DATA_BODY_LIMITS",
    "encode_preamble",
    "decode_preamble",
    "encode_header",
    "decode_header",
    "derive_keys",
    "FrameSealer",
    "FrameOpener",
    "check_ticket",
    "check_empty_body",
    "parse_request",
    "ranges_of",
]

MAX_RANGES = 1024  #: ranges in one data-plane REQUEST
MAX_REQUEST_CHUNKS = 4096  #: chunks one data-plane REQUEST names in all (repeats count)


# --------------------------------------------------------------------------- bodies


@struct
class ChunkRange(Struct):
    start: int  #: first chunk index
    end: int  #: one past the last chunk index

    def check(self) -> None:
        if self.start < 0:
            raise ValidationError("start", "must be >= 0")
        if not self.start < self.end <= MAX_CHUNKS:
            raise ValidationError("end", f"need start < end <= {MAX_CHUNKS}")


@struct
class Request(Struct):
    """Data plane, client to server: send these chunks, in this order."""

    ranges: tuple[ChunkRange, ...]

    def check(self) -> None:
        if not 1 <= len(self.ranges) <= MAX_RANGES:
            raise ValidationError("ranges", f"1..{MAX_RANGES} ranges")
        if sum(r.end - r.start for r in self.ranges) > MAX_REQUEST_CHUNKS:
            raise ValidationError("ranges", f"at most {MAX_REQUEST_CHUNKS} chunks in all")

    def indexes(self) -> list[int]:
        return [i for r in self.ranges for i in range(r.start, r.end)]


@struct
class DataError(Struct):
    """Data plane, server to client: why the server stops (then it closes)."""

    reason: str  #: as TransferError.reason
    detail: str  #: at most 1024 characters

    def check(self) -> None:
        check_reason(self.reason, self.detail)

    @classmethod
    def of(cls, exc: ProtocolError) -> DataError:
        """The ERROR body for a refusal (the detail cut to 1024 characters)."""
        return cls(reason=exc.reason, detail=exc.detail[:1024])


class FrameType(enum.IntEnum):
    REQUEST = 1  #: client -> server, body: CBOR Request
    CHUNK = 2  #: server -> client, index = chunk index, body: chunk bytes
    END = 3  #: server -> client: every chunk of the preceding requests was sent
    STOP = 4  #: client -> server: stop sending and close
    ERROR = 5  #: server -> client, body: CBOR DataError; then the server closes


_CLIENT_TYPES = frozenset({FrameType.REQUEST, FrameType.STOP})
_SERVER_TYPES = frozenset({FrameType.CHUNK, FrameType.END, FrameType.ERROR})

MAGIC = b"CPNT"
VERSION = 1
PREAMBLE_SIZE = 24
HEADER_SIZE = 12
TAG_SIZE = 16
_HEADER = _struct.Struct(">B3xII")
#: Largest body: one chunk of the largest chunk size (CBOR bodies are far smaller).
MAX_BODY = MAX_CHUNK_SIZE + TAG_SIZE
MAX_CONTROL_BODY = 64 << 10
#: Decode limits of REQUEST and ERROR plaintexts (a frame of MAX_CONTROL_BODY bytes less the tag).
DATA_BODY_LIMITS = cbor.Limits(max_size=MAX_CONTROL_BODY - TAG_SIZE, max_depth=8, max_items=2048)

# --------------------------------------------------------------------------- preamble and frames


def encode_preamble(ticket_id: bytes) -> bytes:
    if len(ticket_id) != 16:
        raise LocalProtocolError("ticket ids are 16 bytes")
    return MAGIC + bytes((VERSION, 0, 0, 0)) + ticket_id


def decode_preamble(data: bytes) -> bytes:
    """Return the ticket id of a data-plane preamble."""
    if len(data) != PREAMBLE_SIZE or data[:4] != MAGIC:
        raise ProtocolError("bad_preamble", "not a CPN transfer data connection")
    if data[4] != VERSION or data[5:8] != b"\0\0\0":
        raise ProtocolError("bad_version", f"data-plane version {data[4]} not supported")
    return bytes(data[8:24])


def encode_header(kind: FrameType, index: int, length: int) -> bytes:
    return _HEADER.pack(int(kind), index, length)


def decode_header(data: bytes, *, from_server: bool, max_body: int = MAX_BODY) -> tuple[FrameType, int, int]:
    """Parse and bound a 12-byte header *before* reading the body it announces."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError("bad_frame", "short frame header")
    if data[1:4] != b"\0\0\0":
        raise ProtocolError("bad_frame", "reserved header bytes must be zero")
    kind_raw, index, length = _HEADER.unpack(data)
    try:
        kind = FrameType(kind_raw)
    except ValueError:
        raise ProtocolError("bad_frame", f"unknown frame type {kind_raw}") from None
    if kind not in (_SERVER_TYPES if from_server else _CLIENT_TYPES):
        raise ProtocolError("bad_frame", f"{kind.name} frame in the wrong direction")
    limit = max_body if kind is FrameType.CHUNK else MAX_CONTROL_BODY
    if length < TAG_SIZE or length > limit:
        raise ProtocolError("oversize" if length > limit else "bad_frame", f"{kind.name} body of {length} bytes")
    if kind is not FrameType.CHUNK and index != 0:
        raise ProtocolError("bad_frame", f"{kind.name} frames carry index 0")
    return kind, index, length


def derive_keys(secret: bytes, ticket_id: bytes) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key), HKDF-SHA256 from the ticket."""
    if len(secret) != 32 or len(ticket_id) != 16:
        raise LocalProtocolError("secret is 32 bytes, ticket id 16")
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=ticket_id, info=b"cpn/transfer/data/v1").derive(secret)
    return okm[:32], okm[32:]


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class FrameSealer:
    """Seals frames of one direction; the nonce is the frame's sequence number.

    Not thread-safe by design: the caller seals frames in send order.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.counter = 0

    def seal(self, kind: FrameType, index: int, body: bytes | memoryview) -> tuple[bytes, bytes]:
        """Return (header, ciphertext-with-tag)."""
        header = encode_header(kind, index, len(body) + TAG_SIZE)
        if len(body) + TAG_SIZE > MAX_BODY:
            raise LocalProtocolError("frame body too large")
        nonce = self.next_nonce()
        return header, self._aead.encrypt(nonce, body, header)

    def next_nonce(self) -> bytes:
        if self.counter >= 1 << 64:
            raise LocalProtocolError("nonce space exhausted")
        nonce = _nonce(self.counter)
        self.counter += 1
        return nonce

    def seal_with(self, nonce: bytes, header: bytes, body: bytes | memoryview) -> bytes:
        """Seal with a nonce taken earlier by :meth:`next_nonce` (for sealing in a worker thread)."""
        return self._aead.encrypt(nonce, body, header)

    def seal_into(self, nonce: bytes, header: bytes, body: bytes | memoryview, out: memoryview) -> int:
        """Like :meth:`seal_with`, writing ciphertext and tag into ``out`` (no allocation)."""
        return int(self._aead.encrypt_into(nonce, body, header, out))


class FrameOpener:
    """Opens frames of one direction in arrival order (replay/reorder -> bad tag)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.counter = 0

    def next_nonce(self) -> bytes:
        nonce = _nonce(self.counter)
        self.counter += 1
        return nonce

    def open_with(self, nonce: bytes, header: bytes, body: bytes | bytearray | memoryview) -> bytes:
        try:
            return self._aead.decrypt(nonce, body, header)
        except InvalidTag:
            raise ProtocolError("bad_frame_tag", "frame failed authentication") from None

    def open_into(self, nonce: bytes, header: bytes, body: bytes | bytearray | memoryview, out: memoryview) -> int:
        """Decrypt into ``out`` (len(body) - 16 bytes); nothing is usable if it raises."""
        try:
            return int(self._aead.decrypt_into(nonce, body, header, out))
        except InvalidTag:
            raise ProtocolError("bad_frame_tag", "frame failed authentication") from None

    def open(self, header: bytes, body: bytes | bytearray | memoryview) -> bytes:
        return self.open_with(self.next_nonce(), header, body)

# --------------------------------------------------------------------------- server checks and ranges


def check_empty_body(kind: FrameType, plain: bytes | memoryview) -> None:
    """END and STOP frames carry an empty body (just the 16-byte tag)."""
    if kind in (FrameType.END, FrameType.STOP) and len(plain):
        raise ProtocolError("bad_frame", f"{kind.name} frame with a body of {len(plain)} bytes")


def check_ticket(expires_at: float | None, now: float) -> None:
    """Server: admit a preamble's ticket.  ``expires_at`` of the ticket issued
    under that id and not used yet, or None if there is none."""
    if expires_at is None:
        raise ProtocolError("bad_ticket", "unknown or already used ticket")
    if now > expires_at:
        raise ProtocolError("bad_ticket", "expired ticket")


def parse_request(body: bytes | memoryview, *, n_chunks: int, held: Collection[int] | None = None) -> Request:
    """Server: decode a REQUEST plaintext and check it against the blob, in this
    order: decoding (its reasons), every range within the blob's ``n_chunks``
    chunks (``bad_chunk_index``), and for a partial holder every chunk in
    ``held`` (``not_held``)."""
    req = Request.decode(bytes(body), DATA_BODY_LIMITS)
    for r in req.ranges:
        if r.end > n_chunks:
            raise ProtocolError("bad_chunk_index", f"chunk {r.end - 1} of a blob with {n_chunks} chunks")
    if held is not None:
        for r in req.ranges:
            for i in range(r.start, r.end):
                if i not in held:
                    raise ProtocolError("not_held", f"chunk {i} is not held here")
    return req

def ranges_of(indexes: Iterable[int]) -> tuple[ChunkRange, ...]:
    """Sorted, merged ranges covering ``indexes``."""
    out: list[ChunkRange] = []
    start = prev = -2
    for i in sorted(set(indexes)):
        if i != prev + 1:
            if start >= 0:
                out.append(ChunkRange(start=start, end=prev + 1))
            start = i
        prev = i
    if start >= 0:
        out.append(ChunkRange(start=start, end=prev + 1))
    return tuple(out)
