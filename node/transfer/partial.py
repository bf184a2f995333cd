"""A blob being received: verified chunks in, atomic rename at the end.

:meth:`node.transfer.blobstore.BlobStore.begin` creates a :class:`PartialBlob`;
the data plane's receive pipeline verifies each chunk against the chained
chunk list in memory (:meth:`PartialBlob.verify_chunk`) before it writes it
(:meth:`PartialBlob.write_verified`).  Checkpoints record the written chunks
in the store only after ``fdatasync``; :meth:`PartialBlob.finish` publishes
the blob.

Why received chunks bypass the page cache: in these VMs a write into fresh
page-cache pages costs 1-4 ms of CPU per MiB (more than decrypting and
verifying the chunk), and the final fsync then writes it all again.  Chunks
whose offset and length are block-aligned are written with ``O_DIRECT`` from
the receiver's page-aligned buffers (~0.1 ms of CPU per MiB, the device does
the copy); anything else (the last chunk, unaligned test buffers, file systems
without ``O_DIRECT``) takes the ordinary buffered path.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from node.transfer.blobtypes import BlobMeta, BlobStoreError, CorruptChunk
from protocol.chunks import chunk_matches

__all__ = ["PartialBlob", "PartialLedger", "ProofBlob", "Receiving"]

_DIO_ALIGN = 4096  #: offsets and lengths written with O_DIRECT are multiples of this


def _open_direct(path: Path) -> int | None:
    """A second descriptor with O_DIRECT, or None where the platform or file system has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_RDWR | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


class PartialLedger(Protocol):
    """What a partial blob tells its store (:class:`~node.transfer.blobstore.BlobStore`)."""

    def record_checkpoint(self, p: PartialBlob, indexes: set[int]) -> None:
        """Record ``indexes`` (made durable by the caller) as the blob's bitmap."""

    def publish(self, p: PartialBlob) -> None:
        """Move the fsynced, fully verified blob into place; it is complete."""

    def release(self, p: PartialBlob) -> None:
        """The blob is no longer being received (closed for a later resume)."""


class PartialBlob:
    """A blob being received: verified chunks in, atomic rename at the end."""

    def __init__(self, store: PartialLedger, meta: BlobMeta, hashes: list[bytes], path: Path, durable: set[int]) -> None:
        self.store = store
        self.meta = meta
        self.hashes = hashes
        self.n = len(hashes)
        self.path = path
        self.durable = set(durable)  #: on disk and recorded in the bitmap
        self.written = set(durable)  #: on disk (maybe not yet fsynced)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, meta.size)
        self._dfd = _open_direct(path)  # bulk writes; None: buffered only
        self.read_back = 0  #: chunks read back from the file to be verified again (resume)
        self._closed = False

    @property
    def have(self) -> set[int]:
        return self.written

    def missing(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.written]

    def write_chunk(self, index: int, data: bytes | memoryview) -> None:
        """Blocking (hash + pwrite): verify ``data`` against the chunk list, then write it.
        Raises CorruptChunk without writing anything if it does not match."""
        self.verify_chunk(index, data)
        self.write_verified(index, data)

    def verify_chunk(self, index: int, data: bytes | memoryview) -> None:
        """Blocking (one SHA-256 pass): raise CorruptChunk unless ``data`` is chunk
        ``index``.  For the last chunk this is the whole-blob SHA-256 check."""
        if not chunk_matches(index, data, self.hashes, size=self.meta.size, chunk_size=self.meta.chunk_size):
            raise CorruptChunk(self.meta.digest, index)

    def write_verified(self, index: int, data: bytes | memoryview) -> None:
        """Blocking (pwrite) of a chunk that :meth:`verify_chunk` accepted.

        Thread-safe for distinct chunks."""
        offset = index * self.meta.chunk_size
        if self._pwrite(data, offset) != len(data):
            raise BlobStoreError(f"short write of chunk {index} of {self.meta.digest}")

    def reverify_resumed(self) -> list[int]:
        """Blocking: read back every chunk kept from an earlier session and verify
        it again, forgetting the ones that fail (the disk changed under us: they
        are fetched again).  Returns the indexes forgotten."""
        bad = []
        for index in sorted(self.written):
            self.read_back += 1
            if not chunk_matches(index, self._read_back(index), self.hashes, size=self.meta.size,
                                 chunk_size=self.meta.chunk_size):
                bad.append(index)
        if bad:
            self.written.difference_update(bad)
            self.durable.difference_update(bad)
            self.store.record_checkpoint(self, self.durable)
        return bad

    def _pwrite(self, data: bytes | memoryview, offset: int) -> int:
        if self._dfd is not None and offset % _DIO_ALIGN == 0 and len(data) % _DIO_ALIGN == 0:
            try:
                return os.pwrite(self._dfd, data, offset)
            except OSError as exc:  # EINVAL: the buffer's address is not aligned
                if exc.errno != errno.EINVAL:
                    raise
        return os.pwrite(self._fd, data, offset)

    def _read_back(self, index: int) -> memoryview:
        """Blocking: chunk ``index`` from the file (written in an earlier session)."""
        cs = self.meta.chunk_size
        offset = index * cs
        length = min(cs, self.meta.size - offset)
        view = memoryview(mmap.mmap(-1, max(cs, _DIO_ALIGN)))[:length]  # page-aligned
        done = 0
        if self._dfd is not None and offset % _DIO_ALIGN == 0:  # no page-cache copy
            aligned = length - length % _DIO_ALIGN
            while done < aligned:
                n = os.preadv(self._dfd, [view[done:aligned]], offset + done)
                if n <= 0:
                    break
                done += n
        while done < length:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise BlobStoreError(f"short read of chunk {index} of {self.meta.digest}")
            done += n
        return view

    def mark_written(self, index: int) -> None:
        self.written.add(index)

    def checkpoint(self, snapshot: set[int] | None = None) -> None:
        """Blocking: make written chunks durable, then record them (the order matters).

        ``snapshot`` is a copy of :attr:`written` taken on the event loop (the
        set may grow while this runs in a worker thread)."""
        if self._closed:
            return
        snapshot = set(self.written) if snapshot is None else snapshot
        os.fdatasync(self._fd)
        self.store.record_checkpoint(self, snapshot)
        self.durable = snapshot

    def finish(self) -> BlobMeta:
        """Blocking: fsync and atomically publish a blob whose every chunk is verified.

        Every chunk was checked against the chained chunk list (received ones in
        memory before their write, resumed ones read back at :meth:`begin`), the
        last one by finishing the blob's SHA-256 and comparing it with the
        digest (protocol/chunks.py), so this is the whole-blob check."""
        if len(self.written) != self.n:
            raise BlobStoreError(f"{self.meta.digest}: {self.n - len(self.written)} chunks missing")
        os.fsync(self._fd)
        self._close_fds()
        self.store.publish(self)
        return self.meta

    def close(self) -> None:
        """Stop receiving for now, keeping verified chunks for resume (blocking: fsync)."""
        if self._closed:
            return
        try:
            self.checkpoint()
        finally:
            self._close_fds()
            self.store.release(self)

    def _close_fds(self) -> None:
        self._closed = True
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None
        os.close(self._fd)


class Receiving(Protocol):
    """What a fetch writes verified chunks into: a :class:`PartialBlob`, or a
    :class:`ProofBlob` that only verifies."""

    meta: BlobMeta
    n: int
    written: set[int]

    def verify_chunk(self, index: int, data: bytes | memoryview) -> None: ...
    def write_verified(self, index: int, data: bytes | memoryview) -> None: ...
    def mark_written(self, index: int) -> None: ...
    def checkpoint(self, snapshot: set[int] | None = None) -> None: ...
    def finish(self) -> BlobMeta: ...
    def close(self) -> None: ...


class ProofBlob:
    """A blob the store holds already, received again for a party that never
    delivered it here (spec/transfer.md section 1.1).

    Every chunk is verified against the party's chunk list, whose last entry
    is the digest, so receiving all of them proves the party holds the whole
    blob; nothing is written (the stored copy is the same bytes).
    """

    def __init__(self, meta: BlobMeta, hashes: list[bytes], stored: Callable[[], BlobMeta]) -> None:
        self.meta = meta
        self.hashes = hashes
        self.n = len(hashes)
        self.written: set[int] = set()  #: chunks verified (never written anywhere)
        self._stored = stored

    def verify_chunk(self, index: int, data: bytes | memoryview) -> None:
        if not chunk_matches(index, data, self.hashes, size=self.meta.size, chunk_size=self.meta.chunk_size):
            raise CorruptChunk(self.meta.digest, index)

    def write_verified(self, index: int, data: bytes | memoryview) -> None:
        """Nothing to write: the store holds these bytes already."""

    def mark_written(self, index: int) -> None:
        self.written.add(index)

    def checkpoint(self, snapshot: set[int] | None = None) -> None:
        """Nothing is kept: an interrupted proof starts again."""

    def finish(self) -> BlobMeta:
        if len(self.written) != self.n:
            raise BlobStoreError(f"{self.meta.digest}: {self.n - len(self.written)} chunks missing")
        return self._stored()

    def close(self) -> None:
        """Nothing to release."""
