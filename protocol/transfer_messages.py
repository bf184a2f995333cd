"""Transfer control messages (spec/transfer.md section 2), tags 64-95.

Signed envelopes on the libp2p stream ``/cpn/transfer/0.3.0``:
``Want``/``Have`` (which blobs and chunks a peer holds, after Bitswap),
``GetChunkList``/``ChunkList`` (the chunk hashes in pages of at most 4096,
checked against the signed root once assembled), ``TicketRequest``/``Ticket``
(admission to the data plane, :mod:`protocol.transfer_frames`),
``Offer``/``OfferResult`` (an upload is an invitation to pull),
``TransferError``, and the owner-vouched sources ``WhoHas``/``Holders``/
``FetchGrant``/``Present``.  Every control frame is at most 1 MiB, the default
CBOR decode limit of spec/encoding.md, and every message fits it.

Also here: the limits these messages share with the data plane, and the
chunk bitmap of ``HaveEntry`` (bit i, LSB-first in byte i // 8, = chunk i).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable

from . import cbor
from .chunks import DIGEST_RE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, chunk_count
from .errors import LocalProtocolError, ProtocolError, ValidationError
from .identity import validate_peer_id
from .wire import Message, Struct, message, struct

__all__ = [
    "PROTOCOL_ID",
    "DATA_PROTOCOL_ID",
    "PATH_TCP",
    "PATH_STREAM",
    "PATH_PUNCH",
    "KNOWN_PATHS",
    "MAX_PATHS",
    "usable_paths",
    "MAX_CONTROL_FRAME",
    "CONTROL_LIMITS",
    "MAX_CHUNKS",
    "MAX_CHUNK_LIST_PAGE",
    "MAX_WANT",
    "MAX_PARTIAL",
    "MAX_GRANTS",
    "MAX_GRANT_TTL",
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
    "bitmap_from_indexes",
    "indexes_from_bitmap",
]

PROTOCOL_ID = "/cpn/transfer/0.3.0"
#: The data plane carried on a libp2p stream (the ``stream`` path of a Ticket):
#: the same bytes as a data-plane TCP connection, preamble first.
DATA_PROTOCOL_ID = "/cpn/transfer/data/0.1.0"
#: Data paths a holder may offer in a Ticket, and what each means (spec/transfer.md section 3.1).
PATH_TCP = "tcp"  #: dial the ticket's ``host:port``
PATH_STREAM = "stream"  #: open DATA_PROTOCOL_ID on the libp2p connection to the holder
PATH_PUNCH = "punch"  #: punch a TCP connection (protocol.transfer_punch) and use it like ``tcp``
KNOWN_PATHS = (PATH_TCP, PATH_STREAM, PATH_PUNCH)
MAX_PATHS = 8  #: entries in ``Ticket.paths``
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
MAX_GRANTS = 64  #: FetchGrants in one Holders answer
MAX_GRANT_TTL = 3600  #: seconds a holder accepts between now and a grant's expires_at


class Direction(enum.Enum):
    """What a peer asks to do with a blob, as seen by the authorisation hook."""

    FETCH = "fetch"  #: the peer downloads the blob from us
    UPLOAD = "upload"  #: the peer wants us to pull (store) the blob from it


_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PATH_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


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


def check_reason(reason: str, detail: str) -> None:
    """The rules of a refusal's ``reason`` and ``detail`` (TransferError and the data plane's ERROR)."""
    if not _REASON_RE.match(reason):
        raise ValidationError("reason", "1..64 characters: a-z, then a-z, 0-9 or _")
    if len(detail) > 1024:
        raise ValidationError("detail", "at most 1024 characters")


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
    #: the data paths the holder offers, in its order of preference (``tcp``: ``host:port``;
    #: ``stream``: DATA_PROTOCOL_ID on the libp2p connection); a fetcher skips names it
    #: does not know
    paths: tuple[str, ...] = (PATH_TCP,)

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
        if not 0 < len(self.paths) <= MAX_PATHS:
            raise ValidationError("paths", f"1..{MAX_PATHS} path names")
        if len(set(self.paths)) != len(self.paths):
            raise ValidationError("paths", "path names must be distinct")
        for i, name in enumerate(self.paths):
            if not _PATH_RE.match(name):
                raise ValidationError(f"paths[{i}]", "a lowercase name of 1..16 characters [a-z0-9-]")


def usable_paths(paths: Iterable[str], known: Iterable[str] = KNOWN_PATHS) -> list[str]:
    """The paths of a Ticket a fetcher tries, in the holder's order: the ones it
    knows (unknown names are skipped, spec/transfer.md section 3.1).  Raises
    ProtocolError ``no_usable_path`` when none is left."""
    mine = set(known)
    out = [p for p in paths if p in mine]
    if not out:
        raise ProtocolError("no_usable_path", f"the ticket offers no path this node can use: {list(paths)}")
    return out


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
        check_reason(self.reason, self.detail)


# --------------------------------------------------------------------------- chunk bitmaps


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
