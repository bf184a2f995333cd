"""Chunk lists over the transfer control plane, and checking a received chunk.

A blob's chunk list (protocol/chunks.py) travels in pages of at most
:data:`~protocol.transfer_messages.MAX_CHUNK_LIST_PAGE` entries
(``GetChunkList``/``ChunkList``, spec/transfer.md section 2.5): the responder
cuts a page with :func:`chunk_list_page`; the initiator assembles the pages
with :class:`ChunkListAssembler` and verifies the whole list against the
signed root.  Every chunk that arrives on the data plane is then checked
against its entry (:func:`check_chunk`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .chunks import chunk_count, chunk_matches, verify_chunk_list
from .errors import LocalProtocolError, ProtocolError
from .transfer_messages import MAX_CHUNK_LIST_PAGE, ChunkList, GetChunkList

__all__ = ["check_chunk", "chunk_list_page", "ChunkListAssembler"]


def check_chunk(index: int, data: bytes | memoryview, hashes: Sequence[bytes], *, size: int,
                chunk_size: int) -> None:
    """A received chunk MUST match its entry in the (root-verified) chunk list:
    SHA-256 resumed from the previous entry (protocol/chunks.py)."""
    if not 0 <= index < len(hashes):
        raise ProtocolError("bad_chunk_index", f"chunk {index} of a blob with {len(hashes)} chunks")
    if not chunk_matches(index, data, hashes, size=size, chunk_size=chunk_size):
        raise ProtocolError("corrupt_chunk", f"chunk {index} does not match the chunk list")


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
