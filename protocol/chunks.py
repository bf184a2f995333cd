"""Chunk lists of content-addressed blobs (spec/jobspec.md section 3).

A blob of ``size`` bytes is cut into fixed-size chunks: chunk ``i`` covers
bytes ``[i * chunk_size, min((i + 1) * chunk_size, size))``; an empty blob has
no chunks.  The chunk list holds one 32-byte entry per chunk, ``h_i``:

- for every chunk but the last, the SHA-256 *chaining value* (FIPS 180-4
  intermediate hash value, eight big-endian words) after the blob's first
  ``(i + 1) * chunk_size`` bytes;
- for the last chunk, the SHA-256 of the whole blob (its digest).

Chunk ``i`` is verified on its own by resuming SHA-256 from ``h_{i-1}`` (the
initial value for chunk 0) at byte ``i * chunk_size``, processing the chunk,
and comparing with ``h_i`` (for the last chunk: finishing with the padding
for ``size`` bytes and comparing with the digest).  So each chunk costs one
SHA-256 pass over its bytes, and when every chunk has been verified the whole
blob's SHA-256 has been too: no second pass.

The *chunk root* is ``sha256(h_0 || h_1 || ... || h_{n-1})``, written
``sha256:<hex>``; for an empty blob it is ``sha256(b"")``.  The job spec
carries the root, so every chunk received from any peer can be checked
against a chunk list whose root is signed by the submitter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from .errors import ProtocolError
from .sha256 import IV, Sha256

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "DIGEST_RE",
    "ChunkListBuilder",
    "check_digest",
    "digest_of",
    "chunk_count",
    "chunk_range",
    "chunk_root",
    "chunk_hashes",
    "chunk_matches",
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
    if size < 0 or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 64:
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
            raise ProtocolError("bad_chunk_list", "chunk list entries are 32 bytes")
        h.update(digest)
    return "sha256:" + h.hexdigest()


class ChunkListBuilder:
    """Streams a blob once and yields its digest and chunk list (one SHA-256 pass).

    ``update`` takes pieces of any size, in order; ``finish`` returns
    ``("sha256:<hex>", [h_0, ..., h_{n-1}])``."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, *, pure: bool = False) -> None:
        chunk_count(0, chunk_size)  # validates chunk_size
        self.chunk_size = chunk_size
        self.size = 0
        self._h = Sha256(pure=pure)
        self._hashes: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        cs = self.chunk_size
        while view:
            part = view[: cs - self.size % cs]
            self._h.update(part)
            self.size += len(part)
            view = view[len(part) :]
            if self.size % cs == 0:
                self._hashes.append(self._h.state())

    def finish(self) -> tuple[str, list[bytes]]:
        digest = self._h.digest()
        hashes = list(self._hashes)
        if self.size % self.chunk_size:
            hashes.append(digest)
        elif hashes:
            hashes[-1] = digest  # the last chunk is full: its entry is the digest
        return "sha256:" + digest.hex(), hashes


def chunk_hashes(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE, *, pure: bool = False) -> list[bytes]:
    """The chunk list of ``data`` (chaining values, then the digest)."""
    builder = ChunkListBuilder(chunk_size, pure=pure)
    builder.update(data)
    return builder.finish()[1]


def chunk_matches(index: int, data: bytes | bytearray | memoryview, hashes: Sequence[bytes], *,
                  size: int, chunk_size: int, pure: bool = False) -> bool:
    """Whether ``data`` is chunk ``index`` of the blob whose (verified) chunk list
    is ``hashes``: one SHA-256 pass over ``data``, resumed from the previous
    entry.  For the last chunk this computes the blob's SHA-256."""
    n = len(hashes)
    if not 0 <= index < n:
        return False
    start = index * chunk_size
    if len(data) != min(chunk_size, size - start):
        return False
    h = Sha256.resume(hashes[index - 1] if index else IV, start, pure=pure)
    h.update(data)
    return (h.digest() if index == n - 1 else h.state()) == hashes[index]


def verify_chunk_list(hashes: Sequence[bytes], *, size: int, chunk_size: int, root: str,
                      digest: str | None = None) -> None:
    """A chunk list received from a peer must match the signed root and the
    size, and (given ``digest``) its last entry must be the blob's digest."""
    if len(hashes) != chunk_count(size, chunk_size):
        raise ProtocolError("bad_chunk_list", f"{len(hashes)} entries for {chunk_count(size, chunk_size)} chunks")
    if chunk_root(hashes) != root:
        raise ProtocolError("bad_chunk_list", "chunk list does not match its root")
    if digest is not None and hashes and "sha256:" + hashes[-1].hex() != digest:
        raise ProtocolError("bad_chunk_list", "the last chunk list entry is not the blob digest")
