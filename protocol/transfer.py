"""Content-addressed chunk transfer: control messages, data-plane frames, scheduling.

Sans-IO core of spec/transfer.md.  Three layers:

* **Control messages** (tags 64-95), signed envelopes on the libp2p stream
  ``/cpn/transfer/0.2.0``: ``Want``/``Have`` (which blobs and chunks a peer
  holds, after Bitswap), ``GetChunkList``/``ChunkList`` (the chunk hashes in
  pages of at most 4096, checked against the signed root once assembled),
  ``TicketRequest``/``Ticket`` (admission to the data plane),
  ``Offer``/``OfferResult`` (an upload is an invitation to pull),
  ``TransferError``, and the owner-vouched sources ``WhoHas``/``Holders``/
  ``FetchGrant``/``Present``.  Every control frame is at most 1 MiB, the
  default CBOR decode limit of spec/encoding.md, and every message fits it.
* **Data-plane frames**: after a plaintext preamble naming the ticket, every
  frame is AES-256-GCM sealed under a per-direction key derived from the
  ticket secret; the 12-byte frame header is the associated data and the nonce
  is a per-direction counter.  Requests (chunk ranges), chunks, end, stop and
  errors travel there.
* **ChunkScheduler**: pure state deciding which source fetches which chunk,
  penalising a source that sent a corrupt chunk and reassigning it.

Bulk data leaves libp2p because a py-libp2p stream moves ~100 MiB/s while raw
TCP moves >1 GiB/s; the control plane stays on libp2p (authenticated peers).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct as _struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import cbor
from .chunks import (
    DIGEST_RE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    chunk_count,
    chunk_matches,
    verify_chunk_list,
)
from .errors import LocalProtocolError, ProtocolError, ValidationError
from .identity import validate_peer_id
from .wire import Message, Struct, message, struct

__all__ = [
    "PROTOCOL_ID",
    "MAX_CONTROL_FRAME",
    "CONTROL_LIMITS",
    "DATA_BODY_LIMITS",
    "MAX_CHUNKS",
    "MAX_CHUNK_LIST_PAGE",
    "MAX_WANT",
    "MAX_PARTIAL",
    "MAX_RANGES",
    "Direction",
    "HaveEntry",
    "Want",
    "Have",
    "GetChunkList",
    "ChunkList",
    "TicketRequest",
    "Ticket",
    "Offer",
    "OfferResult",
    "TransferError",
    "WhoHas",
    "Holders",
    "HolderEntry",
    "FetchGrant",
    "Present",
    "MAX_GRANT_TTL",
    "ChunkRange",
    "Request",
    "DataError",
    "FrameType",
    "PREAMBLE_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "encode_preamble",
    "decode_preamble",
    "encode_header",
    "decode_header",
    "derive_keys",
    "FrameSealer",
    "FrameOpener",
    "check_chunk",
    "bitmap_from_indexes",
    "indexes_from_bitmap",
    "ranges_of",
    "ChunkScheduler",
    "ChunkListAssembler",
    "chunk_list_page",
    "parse_request",
    "check_ticket",
    "check_empty_body",
]

PROTOCOL_ID = "/cpn/transfer/0.2.0"
#: Largest control frame (the envelope after the length prefix): the default
#: CBOR decode limit of spec/encoding.md.  Every control message fits it (the
#: largest, a Have with 32 partial entries of maximal bitmaps, is ~560 KiB).
MAX_CONTROL_FRAME = 1 << 20
#: Most chunks one blob may have (128 GiB at the 1 MiB default chunk size).
MAX_CHUNKS = 1 << 17
#: Decode limits of control envelopes and their payloads (tighter than the default depth).
CONTROL_LIMITS = cbor.Limits(max_size=MAX_CONTROL_FRAME, max_depth=8, max_items=4096)
#: Most chunk-list entries in one ChunkList (128 KiB of hashes); longer lists are paged.
MAX_CHUNK_LIST_PAGE = 4096
MAX_WANT = 256  #: digests in a Want or WhoHas; entries in a Have
MAX_PARTIAL = 32  #: Have entries with complete = false (each bitmap is at most 16 KiB)
MAX_RANGES = 1024
MAX_REQUEST_CHUNKS = 4096  #: chunks one data-plane REQUEST names in all (repeats count)
MAX_GRANTS = 64  #: FetchGrants in one Holders answer
MAX_GRANT_TTL = 3600  #: seconds a holder accepts between now and a grant's expires_at


class Direction(enum.Enum):
    """What a peer asks to do with a blob, as seen by the authorisation hook."""

    FETCH = "fetch"  #: the peer downloads the blob from us
    UPLOAD = "upload"  #: the peer wants us to pull (store) the blob from it


_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _digest(value: str, field: str = "digest") -> None:
    if not DIGEST_RE.match(value):
        raise ValidationError(field, "must be sha256: and 64 lowercase hex digits")


def _check_common(digest: str, size: int, chunk_size: int) -> None:
    """Checked in this order: digest, size, chunk_size, chunk count."""
    _digest(digest)
    if size < 0:
        raise ValidationError("size", "must be >= 0")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise ValidationError("chunk_size", f"must be a power of two in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise ValidationError("size", f"more than {MAX_CHUNKS} chunks")


def _check_reason(reason: str, detail: str) -> None:
    if not _REASON_RE.match(reason):
        raise ValidationError("reason", "1..64 characters: a-z, then a-z, 0-9 or _")
    if len(detail) > 1024:
        raise ValidationError("detail", "at most 1024 characters")


# --------------------------------------------------------------------------- control messages


def _check_digests(digests: tuple[str, ...]) -> None:
    if not 1 <= len(digests) <= MAX_WANT:
        raise ValidationError("digests", f"1..{MAX_WANT} entries")
    for i, d in enumerate(digests):
        _digest(d, f"digests[{i}]")
    if len(set(digests)) != len(digests):
        raise ValidationError("digests", "must be distinct")


@struct
class HaveEntry(Struct):
    digest: str
    size: int
    chunk_size: int
    complete: bool
    #: chunks held when not complete: bit i (LSB-first in byte i // 8) = chunk i; empty if complete
    bitmap: bytes

    def check(self) -> None:
        _check_common(self.digest, self.size, self.chunk_size)
        n = chunk_count(self.size, self.chunk_size)
        if self.complete and self.bitmap:
            raise ValidationError("bitmap", "must be empty when complete")
        if not self.complete and len(self.bitmap) != (n + 7) // 8:
            raise ValidationError("bitmap", f"must be {(n + 7) // 8} bytes for {n} chunks")
        if not self.complete and n % 8 and self.bitmap[-1] >> (n % 8):
            raise ProtocolError("bad_bitmap", "bits set beyond the last chunk")

    def indexes(self) -> set[int]:
        n = chunk_count(self.size, self.chunk_size)
        return set(range(n)) if self.complete else indexes_from_bitmap(self.bitmap, n)


@message(tag=64, domain="cpn/transfer/want")
class Want(Message):
    """Ask which of these blobs (and which of their chunks) the peer holds."""

    digests: tuple[str, ...]

    def check(self) -> None:
        _check_digests(self.digests)


@message(tag=65, domain="cpn/transfer/have")
class Have(Message):
    """Answer to Want: one entry per wanted blob the peer holds (fully or partly)."""

    blobs: tuple[HaveEntry, ...]

    def check(self) -> None:
        if len(self.blobs) > MAX_WANT:
            raise ValidationError("blobs", f"at most {MAX_WANT} entries")
        if len({e.digest for e in self.blobs}) != len(self.blobs):
            raise ValidationError("blobs", "one entry per digest")
        if sum(1 for e in self.blobs if not e.complete) > MAX_PARTIAL:
            raise ValidationError("blobs", f"at most {MAX_PARTIAL} entries with complete = false")


@message(tag=66, domain="cpn/transfer/get-chunk-list")
class GetChunkList(Message):
    """Ask for entries ``start`` .. ``start + count - 1`` of a blob's chunk list
    (one page; the answer holds ``min(count, n - start)`` entries)."""

    digest: str
    start: int = 0  #: first entry wanted
    count: int = MAX_CHUNK_LIST_PAGE  #: entries wanted, 1 .. MAX_CHUNK_LIST_PAGE

    def check(self) -> None:
        _digest(self.digest)
        if not 0 <= self.start < MAX_CHUNKS:
            raise ValidationError("start", f"must be in 0..{MAX_CHUNKS - 1}")
        if not 1 <= self.count <= MAX_CHUNK_LIST_PAGE:
            raise ValidationError("count", f"must be in 1..{MAX_CHUNK_LIST_PAGE}")


@message(tag=67, domain="cpn/transfer/chunk-list")
class ChunkList(Message):
    """One page of a blob's chunk list: the raw 32-byte entries ``start`` ..
    ``start + k - 1``, concatenated.  The whole list (all pages) is verified
    against the signed root."""

    digest: str
    size: int
    chunk_size: int
    start: int = 0  #: index of the first entry in ``hashes``
    hashes: bytes

    def check(self) -> None:
        _check_common(self.digest, self.size, self.chunk_size)
        n = chunk_count(self.size, self.chunk_size)
        if self.start != 0 and not 0 < self.start < n:
            raise ValidationError("start", f"must be in 0..{max(n - 1, 0)}")
        k, rest = divmod(len(self.hashes), 32)
        if rest:
            raise ValidationError("hashes", "must be a whole number of 32-byte entries")
        if k > MAX_CHUNK_LIST_PAGE:
            raise ValidationError("hashes", f"at most {MAX_CHUNK_LIST_PAGE} entries")
        if n and not 1 <= k <= n - self.start:
            raise ValidationError("hashes", f"must hold 1..{n - self.start} entries from start {self.start}")
        if not n and k:
            raise ValidationError("hashes", "an empty blob has no entries")

    def hash_list(self) -> list[bytes]:
        return [self.hashes[i : i + 32] for i in range(0, len(self.hashes), 32)]


@message(tag=68, domain="cpn/transfer/ticket-request")
class TicketRequest(Message):
    """Ask for admission to the sender's data plane to fetch chunks of ``digest``."""

    digest: str

    def check(self) -> None:
        _digest(self.digest)


@message(tag=69, domain="cpn/transfer/ticket")
class Ticket(Message):
    """Admission to the data plane.  Only ever sent inside the Noise-encrypted
    libp2p stream to the peer it was issued to: ``secret`` keys the AEAD."""

    ticket_id: bytes  #: 16 random bytes, sent in clear in the data-plane preamble
    secret: bytes  #: 32 random bytes; input keying material of the frame keys
    digest: str
    host: str  #: data-plane address: an IPv4 or IPv6 literal, no brackets, no zone
    port: int
    expires_at: int  #: unix seconds; the ticket is single-use and MUST NOT be used after

    def check(self) -> None:
        if len(self.ticket_id) != 16:
            raise ValidationError("ticket_id", "must be 16 bytes")
        if len(self.secret) != 32:
            raise ValidationError("secret", "must be 32 bytes")
        _digest(self.digest)
        if not 0 < len(self.host) <= 64 or "%" in self.host:
            raise ValidationError("host", "an IP literal of 1..64 characters")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValidationError("host", "an IP literal of 1..64 characters") from None
        if not 0 < self.port < 65536:
            raise ValidationError("port", "must be 1..65535")
        if self.expires_at < 0:
            raise ValidationError("expires_at", "must be >= 0")


@message(tag=70, domain="cpn/transfer/offer")
class Offer(Message):
    """Upload: "store this blob, pull it from me".  The receiver authorises the
    upload (agreed job, agreed size) and fetches it like any other blob."""

    digest: str
    size: int
    chunk_size: int
    chunk_root: str

    def check(self) -> None:
        _check_common(self.digest, self.size, self.chunk_size)
        _digest(self.chunk_root, "chunk_root")


@message(tag=71, domain="cpn/transfer/offer-result")
class OfferResult(Message):
    digest: str
    stored: bool  #: true once the blob is complete and verified in the receiver's store

    def check(self) -> None:
        _digest(self.digest)


@message(tag=73, domain="cpn/transfer/who-has")
class WhoHas(Message):
    """To a blob's owner (the submitter): which other peers hold these blobs?"""

    digests: tuple[str, ...]

    def check(self) -> None:
        _check_digests(self.digests)


@struct
class HolderEntry(Struct):
    grant: bytes  #: the owner's signed FetchGrant envelope
    addrs: tuple[str, ...]  #: multiaddrs where the owner last saw the holder (may be empty)

    def check(self) -> None:
        if not 0 < len(self.grant) <= 1024:
            raise ValidationError("grant", "a signed envelope of at most 1024 bytes")
        if len(self.addrs) > 8 or any(not 0 < len(a) <= 256 for a in self.addrs):
            raise ValidationError("addrs", "at most 8 multiaddrs of 1..256 characters")


@message(tag=74, domain="cpn/transfer/holders")
class Holders(Message):
    """Answer to WhoHas: one entry per (blob, holder) the owner vouches for,
    each with a FetchGrant for the asker; empty if it knows of none."""

    holders: tuple[HolderEntry, ...]

    def check(self) -> None:
        if len(self.holders) > MAX_GRANTS:
            raise ValidationError("holders", f"at most {MAX_GRANTS}")


@message(tag=75, domain="cpn/transfer/fetch-grant")
class FetchGrant(Message):
    """Signed by a blob's owner: ``grantee`` may fetch ``digest`` from ``holder``
    until ``expires_at``.  Only ever carried inside Holders and Present."""

    digest: str
    grantee: str  #: peer ID allowed to fetch
    holder: str  #: peer ID asked to serve
    expires_at: int  #: unix seconds

    def check(self) -> None:
        _digest(self.digest)
        validate_peer_id(self.grantee)
        validate_peer_id(self.holder)
        if self.grantee == self.holder:
            raise ValidationError("holder", "must differ from grantee")
        if self.expires_at <= 0:
            raise ValidationError("expires_at", "must be > 0")


@message(tag=76, domain="cpn/transfer/present")
class Present(Message):
    """To a holder: a FetchGrant naming it and the sender; answered with Have
    for the granted blob (or TransferError)."""

    grant: bytes  #: the owner's signed FetchGrant envelope

    def check(self) -> None:
        if not 0 < len(self.grant) <= 1024:
            raise ValidationError("grant", "a signed envelope of at most 1024 bytes")


@message(tag=72, domain="cpn/transfer/error")
class TransferError(Message):
    """A refusal on the control stream; ``reason`` is machine-readable."""

    reason: str  #: a-z, then a-z, 0-9 or _; 1..64 characters
    detail: str  #: for humans; at most 1024 characters

    def check(self) -> None:
        _check_reason(self.reason, self.detail)


# --------------------------------------------------------------------------- data plane bodies


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
        _check_reason(self.reason, self.detail)

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


# --------------------------------------------------------------------------- helpers


def check_chunk(index: int, data: bytes | memoryview, hashes: Sequence[bytes], *, size: int,
                chunk_size: int) -> None:
    """A received chunk MUST match its entry in the (root-verified) chunk list:
    SHA-256 resumed from the previous entry (protocol/chunks.py)."""
    if not 0 <= index < len(hashes):
        raise ProtocolError("bad_chunk_index", f"chunk {index} of a blob with {len(hashes)} chunks")
    if not chunk_matches(index, data, hashes, size=size, chunk_size=chunk_size):
        raise ProtocolError("corrupt_chunk", f"chunk {index} does not match the chunk list")


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


def chunk_list_page(req: GetChunkList, *, size: int, chunk_size: int, hashes: Sequence[bytes]) -> ChunkList:
    """Responder: the page of ``hashes`` (the blob's whole chunk list) that
    ``req`` asks for; ``bad_chunk_index`` if ``req.start`` is beyond the list
    (an empty blob has one empty page, at start 0)."""
    if req.start >= max(len(hashes), 1):
        raise ProtocolError("bad_chunk_index", f"start {req.start} of a chunk list of {len(hashes)} entries")
    return ChunkList(digest=req.digest, size=size, chunk_size=chunk_size, start=req.start,
                     hashes=b"".join(hashes[req.start : req.start + req.count]))


class ChunkListAssembler:
    """Initiator: fetch one blob's chunk list page by page from one source and
    verify it against the signed root.

    :meth:`request` gives the next ``GetChunkList`` (None once complete);
    :meth:`add` checks the answer.  Both a page that does not answer the
    request exactly and a whole list that fails the root raise
    ``ProtocolError("bad_chunk_list")``: the source is to blame.  (A list that
    matches the root but does not end in the blob's digest is the signed
    BlobRef's fault, not the source's: the caller checks that separately.)
    """

    def __init__(self, *, digest: str, size: int, chunk_size: int, root: str,
                 page: int = MAX_CHUNK_LIST_PAGE) -> None:
        if not 1 <= page <= MAX_CHUNK_LIST_PAGE:
            raise LocalProtocolError(f"page size must be 1..{MAX_CHUNK_LIST_PAGE}")
        self.digest, self.size, self.chunk_size, self.root = digest, size, chunk_size, root
        self.n = chunk_count(size, chunk_size)
        self.page = page
        self._entries: list[bytes] = []
        self.complete = False

    def request(self) -> GetChunkList | None:
        if self.complete:
            return None
        return GetChunkList(digest=self.digest, start=len(self._entries), count=self.page)

    def add(self, page: ChunkList) -> None:
        if self.complete:
            raise LocalProtocolError("the chunk list is complete")
        start = len(self._entries)
        want = min(self.page, self.n - start)
        if (page.digest, page.size, page.chunk_size, page.start) != (self.digest, self.size, self.chunk_size, start):
            raise ProtocolError("bad_chunk_list", "the page is not the one asked for")
        if len(page.hashes) != 32 * want:
            raise ProtocolError("bad_chunk_list", f"{len(page.hashes) // 32} entries where {want} were due")
        self._entries += page.hash_list()
        if len(self._entries) == self.n:
            verify_chunk_list(self._entries, size=self.size, chunk_size=self.chunk_size, root=self.root)
            self.complete = True

    @property
    def hashes(self) -> list[bytes]:
        """The verified chunk list (only once :attr:`complete`)."""
        if not self.complete:
            raise LocalProtocolError("the chunk list is not complete yet")
        return list(self._entries)


def bitmap_from_indexes(indexes: Iterable[int], n: int) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in indexes:
        if not 0 <= i < n:
            raise LocalProtocolError(f"chunk {i} outside 0..{n - 1}")
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def indexes_from_bitmap(bitmap: bytes, n: int) -> set[int]:
    if len(bitmap) != (n + 7) // 8:
        raise ProtocolError("bad_bitmap", f"bitmap of {len(bitmap)} bytes for {n} chunks")
    if n % 8 and bitmap[-1] >> (n % 8):
        raise ProtocolError("bad_bitmap", "bits set beyond the last chunk")
    return {i for i in range(n) if bitmap[i >> 3] >> (i & 7) & 1}


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


# --------------------------------------------------------------------------- scheduling


@dataclass
class SourceState:
    """What the scheduler knows about one source (a peer serving this blob)."""

    has: set[int] | None  #: None = the whole blob
    in_flight: set[int] = field(default_factory=set)
    received: int = 0
    strikes: int = 0
    banned: bool = False


class ChunkScheduler:
    """Which source fetches which chunk of one blob.  Pure state, no clock.

    Chunks are handed out in ascending runs so a single source streams the
    blob in order (sequential reads and writes).  A corrupt
    chunk strikes its source, is never again asked from that source, and goes
    back to the pool; ``max_strikes`` strikes ban the source.
    """

    def __init__(self, n_chunks: int, done: Iterable[int] = (), *, max_strikes: int = 1) -> None:
        self.n = n_chunks
        self.done: set[int] = set(done)
        self.sources: dict[str, SourceState] = {}
        self.max_strikes = max_strikes
        self._excluded: dict[int, set[str]] = {}
        self._next = 0  # scan hint

    # ---- sources

    def add_source(self, source: str, has: Iterable[int] | None = None) -> None:
        self.sources[source] = SourceState(has=None if has is None else set(has))

    def source_failed(self, source: str) -> list[int]:
        """A source went away: its in-flight chunks return to the pool."""
        st = self.sources.pop(source, None)
        return sorted(st.in_flight) if st else []

    def live_sources(self) -> list[str]:
        return [s for s, st in self.sources.items() if not st.banned]

    # ---- assignment

    @property
    def complete(self) -> bool:
        return len(self.done) == self.n

    def missing(self) -> set[int]:
        return set(range(self.n)) - self.done

    def _pending(self) -> set[int]:
        flying: set[int] = set()
        for st in self.sources.values():
            flying |= st.in_flight
        return flying

    def assign(self, source: str, max_chunks: int) -> list[int]:
        """Up to ``max_chunks`` chunks for ``source`` to fetch next (possibly none)."""
        st = self.sources.get(source)
        if st is None or st.banned or max_chunks <= 0:
            return []
        flying = self._pending()
        out: list[int] = []
        for i in range(self.n):
            if len(out) >= max_chunks:
                break
            if i in self.done or i in flying:
                continue
            if st.has is not None and i not in st.has:
                continue
            if source in self._excluded.get(i, ()):
                continue
            if out and i != out[-1] + 1 and len(out) >= 1:
                # keep runs contiguous so a source streams in order
                break
            out.append(i)
        st.in_flight.update(out)
        return out

    def received(self, source: str, index: int) -> bool:
        """A verified chunk arrived.  Returns False if it was not needed any more."""
        st = self.sources.get(source)
        if st is not None:
            st.in_flight.discard(index)
            st.received += 1
        if index in self.done:
            return False
        self.done.add(index)
        return True

    def corrupt(self, source: str, index: int) -> bool:
        """A chunk from ``source`` failed verification.  Returns True if the source is now banned."""
        self._excluded.setdefault(index, set()).add(source)
        st = self.sources.get(source)
        if st is None:
            return True
        st.in_flight.discard(index)
        st.strikes += 1
        if st.strikes >= self.max_strikes:
            st.banned = True
            st.in_flight.clear()
        return st.banned

    def release(self, source: str, indexes: Sequence[int]) -> None:
        """Give back chunks assigned to ``source`` that it will not send."""
        st = self.sources.get(source)
        if st is not None:
            st.in_flight.difference_update(indexes)

    def stuck(self) -> bool:
        """True when chunks are missing that no live source can (still) provide."""
        for i in self.missing():
            for s, st in self.sources.items():
                if st.banned or s in self._excluded.get(i, ()):
                    continue
                if st.has is None or i in st.has:
                    break
            else:
                return True
        return False
