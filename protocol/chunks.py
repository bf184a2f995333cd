"""Chunk lists of content-addressed blobs (see spec/transfer.md).

A blob of ``size`` bytes is cut into fixed-size chunks: chunk ``i`` covers
bytes ``[i * chunk_size, min((i + 1) * chunk_size, size))``; an empty blob has
no chunks.  Each chunk is identified by the raw 32-byte sha256 of its bytes.
The *chunk root* is ``sha256(h_0 || h_1 || ... || h_{n-1})`` of those raw
hashes, written ``sha256:<hex>``; for an empty blob it is ``sha256(b"")``.
The job spec carries the root, so every chunk received from any peer can be
checked against a chunk list whose root is signed by the submitter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from .errors import ProtocolError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "DIGEST_RE",
    "check_digest",
    "digest_of",
    "chunk_count",
    "chunk_range",
    "chunk_root",
    "chunk_hashes",
    "verify_chunk_list",
]

DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 24
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(text: str, what: str = "digest") -> str:
    """``text`` must be ``sha256:`` and 64 lowercase hex digits (the OCI form)."""
    if not isinstance(text, str) or not DIGEST_RE.match(text):
        raise ProtocolError("bad_digest", f"{what} {text!r} is not sha256:<64 lowercase hex>")
    return text


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunk_count(size: int, chunk_size: int) -> int:
    if size < 0 or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ProtocolError("bad_chunking", f"size {size}, chunk size {chunk_size}")
    return (size + chunk_size - 1) // chunk_size


def chunk_range(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of chunk ``index``."""
    n = chunk_count(size, chunk_size)
    if not 0 <= index < n:
        raise ProtocolError("bad_chunk_index", f"chunk {index} of a blob with {n} chunks")
    start = index * chunk_size
    return start, min(start + chunk_size, size)


def chunk_root(hashes: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for digest in hashes:
        if len(digest) != 32:
            raise ProtocolError("bad_chunk_list", "chunk hashes are 32-byte sha256 digests")
        h.update(digest)
    return "sha256:" + h.hexdigest()


def chunk_hashes(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    n = chunk_count(len(data), chunk_size)
    return [hashlib.sha256(data[i * chunk_size : (i + 1) * chunk_size]).digest() for i in range(n)]


def verify_chunk_list(hashes: Sequence[bytes], *, size: int, chunk_size: int, root: str) -> None:
    """A chunk list received from a peer must match the signed root and the size."""
    if len(hashes) != chunk_count(size, chunk_size):
        raise ProtocolError("bad_chunk_list", f"{len(hashes)} hashes for {chunk_count(size, chunk_size)} chunks")
    if chunk_root(hashes) != root:
        raise ProtocolError("bad_chunk_list", "chunk list does not match its root")
