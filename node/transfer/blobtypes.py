"""The blob store's vocabulary: what identifies a blob and what can go wrong.

Shared by the store (:mod:`node.transfer.blobstore`), a blob being received
(:mod:`node.transfer.partial`), the data plane and the fetch engine, so none
of them imports another for its names.  ``node.transfer.blobstore`` exports
them all too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BlobMeta",
    "BlobLike",
    "BlobStoreError",
    "BlobNotFound",
    "QuotaExceeded",
    "CorruptChunk",
    "CorruptBlob",
]


class BlobStoreError(Exception):
    """Base of local blob-store failures (not a peer's fault)."""


class BlobNotFound(BlobStoreError):
    pass


class QuotaExceeded(BlobStoreError):
    def __init__(self, digest: str, need: int, quota: int, used: int) -> None:
        self.need, self.quota, self.used = need, quota, used
        super().__init__(
            f"storing {digest} needs {need} bytes but the blob store quota is {quota} bytes "
            f"with {used} in use ({quota - used} free) after collecting unpinned blobs"
        )


class CorruptChunk(BlobStoreError):
    """A chunk's bytes do not hash to its entry in the chunk list (blame the sender)."""

    def __init__(self, digest: str, index: int) -> None:
        self.index = index
        super().__init__(f"chunk {index} of {digest} does not match its chunk list")


class CorruptBlob(BlobStoreError):
    """A blob reference whose chunk list does not end in its digest (root and
    digest disagree: signed wrongly); nothing of it is written."""


class BlobLike(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def chunk_root(self) -> str: ...


@dataclass(frozen=True, slots=True)
class BlobMeta:
    """What identifies a blob: the fields of the job spec's BlobRef minus media type."""

    digest: str
    size: int
    chunk_size: int
    chunk_root: str

    def blob_ref(self, media_type: str) -> Any:
        """The job spec's ``BlobRef`` for this blob."""
        from protocol.jobspec import BlobRef

        return BlobRef(digest=self.digest, size=self.size, chunk_size=self.chunk_size,
                       chunk_root=self.chunk_root, media_type=media_type)
