"""Content-addressed blob store in the data dir (``sha256:<hex>``, the OCI digest form).

Layout under ``<data_dir>/blobs/``::

    sha256/<hex>      complete, verified blobs (read-only files)
    partial/<hex>     blobs being received (sparse; only verified chunks written)
    tmp/              imports in progress
    store.sqlite      sizes, chunk lists, partial bitmaps, pins (WAL)

Why it is crash-safe: a blob reaches ``sha256/`` only by ``rename`` after every
chunk was verified and the file fsynced, so a complete-looking blob is never
partial or corrupt.  The chunk list chains SHA-256 across chunks
(protocol/chunks.py): verifying the last chunk computes the whole blob's
SHA-256, so the whole-blob check needs no second pass over the data.  Chunks
kept from an interrupted transfer are read back and verified again when the
transfer resumes.  A partial blob's bitmap is persisted only after
``fdatasync`` of its data, so a chunk marked present after a crash really is
on disk; chunks written after the last checkpoint are simply fetched again.

A blob being received is a :class:`~node.transfer.partial.PartialBlob`
(node/transfer/partial.py, which also says why its chunks bypass the page
cache); the names every transfer module shares (:class:`BlobMeta`, the
errors) live in node/transfer/blobtypes.py and are exported here too.

Sizes count against an optional quota; a partial blob reserves its full size
when it starts, so a transfer cannot run out of quota half way.  Blobs that
nobody pins (``pin(digest, owner)``) are collected by :meth:`BlobStore.gc`.

Methods are synchronous and cheap except the ones named as blocking
(``import_file``, ``begin``, ``PartialBlob.write_chunk``, ``verify_chunk``,
``write_verified``, ``finish``, ``checkpoint``): the daemon runs those in
worker threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from node.transfer.blobtypes import (
    BlobLike,
    BlobMeta,
    BlobNotFound,
    BlobStoreError,
    CorruptBlob,
    CorruptChunk,
    QuotaExceeded,
)
from node.transfer.partial import PartialBlob
from protocol.chunks import (
    DEFAULT_CHUNK_SIZE,
    ChunkListBuilder,
    check_digest,
    chunk_count,
    chunk_root,
)
from protocol.transfer import bitmap_from_indexes, indexes_from_bitmap

__all__ = [
    "BlobMeta",
    "hash_file",
    "BlobLike",
    "BlobStore",
    "PartialBlob",
    "BlobStoreError",
    "BlobNotFound",
    "QuotaExceeded",
    "CorruptChunk",
    "CorruptBlob",
]

log = logging.getLogger("cpn.blobstore")

#: On-disk format of store.sqlite (PRAGMA user_version); see BlobStore._upgrade.
STORE_VERSION = 2


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunk_root TEXT NOT NULL,
    hashes BLOB NOT NULL,
    complete INTEGER NOT NULL,
    bitmap BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    digest TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (digest, owner)
);
"""


class BlobStore:
    def __init__(self, data_dir: Path, *, quota_bytes: int | None = None) -> None:
        self.root = Path(data_dir) / "blobs"
        self.quota = quota_bytes
        for sub in ("sha256", "partial", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "store.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._open: dict[str, PartialBlob] = {}
        self._recover()
        self._upgrade()

    def close(self) -> None:
        for p in list(self._open.values()):
            p.close()
        self._db.close()

    # ---- recovery

    def _recover(self) -> None:
        """Reconcile files and rows after a crash; never trusts an unverified file."""
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink()
        rows = self._q("SELECT digest, complete FROM blobs")
        for digest, complete in rows:
            final = self._final(digest)
            if final.exists() and not complete:  # crashed between rename and row update
                self._x("UPDATE blobs SET complete=1, bitmap=x'' WHERE digest=?", digest)
                self._partial_path(digest).unlink(missing_ok=True)
            elif complete and not final.exists():  # removed behind our back
                self._x("DELETE FROM blobs WHERE digest=?", digest)

    def _upgrade(self) -> None:
        """Bring a store written by an older CPN to :data:`STORE_VERSION`.

        Version 1 (v0.1 before 2026-11-24) kept per-chunk SHA-256 lists; version
        2 keeps chained lists (protocol/chunks.py).  Complete blobs are read once
        and their lists recomputed (a file whose digest no longer matches is
        dropped); partial blobs are dropped, since their kept chunks cannot be
        checked against the new list without the rest of the blob."""
        version = int(self._q("PRAGMA user_version")[0][0])
        if version > STORE_VERSION:
            raise BlobStoreError(
                f"{self.root} was written by a newer CPN (store version {version}, this one reads "
                f"up to {STORE_VERSION}); upgrade CPN or point it at another data dir")
        if version == STORE_VERSION:
            return
        rows = self._q("SELECT digest, chunk_size, complete FROM blobs")
        if rows:
            log.warning("blob store %s: upgrading %d blobs to store version %d (chained chunk lists)",
                        self.root, len(rows), STORE_VERSION)
        for digest, chunk_size, complete in rows:
            d = str(digest)
            if not complete:
                self._x("DELETE FROM blobs WHERE digest=?", d)
                self._partial_path(d).unlink(missing_ok=True)
                continue
            builder = ChunkListBuilder(int(chunk_size))
            with open(self._final(d), "rb") as f:
                while block := f.read(int(chunk_size)):
                    builder.update(block)
            got, hashes = builder.finish()
            if got != d:
                log.warning("blob store: %s does not match its digest; dropped", d)
                self._x("DELETE FROM blobs WHERE digest=?", d)
                self._final(d).unlink(missing_ok=True)
                continue
            self._x("UPDATE blobs SET chunk_root=?, hashes=? WHERE digest=?",
                    chunk_root(hashes), b"".join(hashes), d)
        self._x(f"PRAGMA user_version={STORE_VERSION}")

    # ---- sqlite helpers (one connection, serialised: callers may be worker threads)

    def _q(self, sql: str, *args: object) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, *args: object) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # ---- paths

    def _final(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest)[7:]

    def _partial_path(self, digest: str) -> Path:
        return self.root / "partial" / check_digest(digest)[7:]

    # ---- queries

    def has(self, digest: str) -> bool:
        rows = self._q("SELECT complete FROM blobs WHERE digest=?", check_digest(digest))
        return bool(rows and rows[0][0]) and self._final(digest).exists()

    def meta(self, digest: str) -> BlobMeta | None:
        rows = self._q("SELECT size, chunk_size, chunk_root FROM blobs WHERE digest=?", check_digest(digest))
        if not rows:
            return None
        size, chunk_size, root = rows[0]
        return BlobMeta(digest=digest, size=int(size), chunk_size=int(chunk_size), chunk_root=str(root))

    def path_of(self, digest: str) -> Path:
        if not self.has(digest):
            raise BlobNotFound(f"{digest} is not in the blob store")
        return self._final(digest)

    def open_read(self, digest: str) -> BinaryIO:
        return open(self.path_of(digest), "rb")

    def chunk_list(self, digest: str) -> list[bytes]:
        rows = self._q("SELECT hashes FROM blobs WHERE digest=?", check_digest(digest))
        if not rows:
            raise BlobNotFound(f"{digest} is not in the blob store")
        raw = bytes(rows[0][0])
        return [raw[i : i + 32] for i in range(0, len(raw), 32)]

    def open_for_serving(self, digest: str) -> tuple[int, bool]:
        """Blocking: ``(read-only fd, complete)`` of a stored blob, complete or
        partial (a partial blob's file holds its verified chunks at their
        offsets).  Raises BlobNotFound if neither exists."""
        for path, complete in ((self._final(digest), True), (self._partial_path(digest), False)):
            try:
                return os.open(path, os.O_RDONLY), complete
            except FileNotFoundError:
                continue
        raise BlobNotFound(f"{digest} is not in the blob store")

    def held_chunks(self, digest: str) -> tuple[BlobMeta, set[int] | None] | None:
        """(meta, chunk indexes held; None = complete), or None if absent."""
        m = self.meta(digest)
        if m is None:
            return None
        if self.has(digest):
            return m, None
        p = self._open.get(digest)
        if p is not None:
            return m, set(p.written)  # verified and written (maybe not yet fsynced)
        rows = self._q("SELECT bitmap FROM blobs WHERE digest=?", digest)
        return m, indexes_from_bitmap(bytes(rows[0][0]), chunk_count(m.size, m.chunk_size))

    def digests(self) -> list[str]:
        return [str(r[0]) for r in self._q("SELECT digest FROM blobs WHERE complete=1")]

    def used_bytes(self) -> int:
        rows = self._q("SELECT COALESCE(SUM(size), 0) FROM blobs")
        return int(rows[0][0])

    # ---- reading chunks (serving)

    def read_chunk(self, fd: int, meta: BlobMeta, index: int) -> bytes:
        """Blocking: chunk ``index`` from an open file descriptor of a complete blob."""
        start = index * meta.chunk_size
        return os.pread(fd, min(meta.chunk_size, meta.size - start), start)

    # ---- quota, pins, gc

    def _reserve(self, digest: str, size: int) -> None:
        if self.quota is None:
            return
        if self.used_bytes() + size > self.quota:
            self.gc()
        used = self.used_bytes()
        if used + size > self.quota:
            raise QuotaExceeded(digest, size, self.quota, used)

    def pin(self, digest: str, owner: str) -> None:
        """Keep ``digest`` (present or future) from garbage collection on behalf of ``owner``."""
        self._x("INSERT OR IGNORE INTO pins (digest, owner) VALUES (?, ?)", check_digest(digest), owner)

    def unpin(self, owner: str, digest: str | None = None) -> None:
        if digest is None:
            self._x("DELETE FROM pins WHERE owner=?", owner)
        else:
            self._x("DELETE FROM pins WHERE owner=? AND digest=?", owner, digest)

    def pinned(self, digest: str) -> list[str]:
        return [str(r[0]) for r in self._q("SELECT owner FROM pins WHERE digest=?", digest)]

    def gc(self) -> int:
        """Delete blobs (complete or partial) that no owner pins and no transfer is writing.
        Returns the bytes freed."""
        rows = self._q(
            "SELECT digest, size FROM blobs WHERE digest NOT IN (SELECT digest FROM pins)"
        )
        freed = 0
        for digest, size in rows:
            d = str(digest)
            if d in self._open:
                continue
            self._x("DELETE FROM blobs WHERE digest=?", d)
            self._final(d).unlink(missing_ok=True)
            self._partial_path(d).unlink(missing_ok=True)
            freed += int(size)
        return freed

    def delete(self, digest: str) -> None:
        if digest in self._open:
            raise BlobStoreError(f"{digest} is being written")
        self._x("DELETE FROM blobs WHERE digest=?", check_digest(digest))
        self._final(digest).unlink(missing_ok=True)
        self._partial_path(digest).unlink(missing_ok=True)

    # ---- writing

    def import_file(self, path: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobMeta:
        """Blocking: copy ``path`` into the store, hashing as it streams (memory: one chunk).
        Dedup: an already stored blob is not copied again."""
        src = Path(path)
        size = src.stat().st_size
        builder = ChunkListBuilder(chunk_size)  # validates chunk_size; one SHA-256 pass
        tmp = self.root / "tmp" / f"import-{os.getpid()}-{threading.get_ident()}-{id(src)}"
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while True:
                    block = fin.read(chunk_size)
                    if not block:
                        break
                    builder.update(block)
                    fout.write(block)
                fout.flush()
                os.fsync(fout.fileno())
            digest, hashes = builder.finish()
            meta = BlobMeta(digest=digest, size=size, chunk_size=chunk_size, chunk_root=chunk_root(hashes))
            if self.has(digest):
                return self.meta(digest) or meta
            self._reserve(digest, size)
            self._commit(meta, hashes, tmp)
            return meta
        finally:
            tmp.unlink(missing_ok=True)

    def import_bytes(self, data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobMeta:
        tmp = self.root / "tmp" / f"bytes-{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(data)
        try:
            return self.import_file(tmp, chunk_size=chunk_size)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, meta: BlobMeta, hashes: Sequence[bytes], src: Path) -> None:
        final = self._final(meta.digest)
        os.chmod(src, 0o444)
        os.replace(src, final)
        _fsync_dir(final.parent)
        self._x(
            "INSERT OR REPLACE INTO blobs (digest, size, chunk_size, chunk_root, hashes, complete, bitmap)"
            " VALUES (?, ?, ?, ?, ?, 1, x'')",
            meta.digest, meta.size, meta.chunk_size, meta.chunk_root, b"".join(hashes),
        )

    def begin(self, blob: BlobLike, hashes: Sequence[bytes]) -> PartialBlob:
        """Start (or resume) receiving ``blob`` whose chunk list was verified against its root.

        Raises QuotaExceeded before any byte is written if the blob does not fit.
        """
        digest = check_digest(blob.digest)
        if digest in self._open:
            raise BlobStoreError(f"{digest} is already being received")
        if self.has(digest):
            raise BlobStoreError(f"{digest} is already stored")
        meta = BlobMeta(digest=digest, size=blob.size, chunk_size=blob.chunk_size, chunk_root=blob.chunk_root)
        n = chunk_count(meta.size, meta.chunk_size)
        if len(hashes) != n or chunk_root(hashes) != meta.chunk_root:
            raise BlobStoreError("chunk list does not match the blob's chunk root")
        if n and hashes[-1].hex() != digest[7:]:
            raise CorruptBlob(f"{digest}: the chunk list's last entry is not the blob digest"
                              " (the blob reference's root and digest disagree)")
        rows = self._q("SELECT chunk_size, chunk_root, bitmap FROM blobs WHERE digest=?", digest)
        durable: set[int] = set()
        path = self._partial_path(digest)
        if rows and (rows[0][0], rows[0][1]) == (meta.chunk_size, meta.chunk_root) and path.exists():
            durable = indexes_from_bitmap(bytes(rows[0][2]), n)
        else:
            if rows:
                self._x("DELETE FROM blobs WHERE digest=?", digest)
            self._reserve(digest, meta.size)
            path.unlink(missing_ok=True)
            self._x(
                "INSERT INTO blobs (digest, size, chunk_size, chunk_root, hashes, complete, bitmap)"
                " VALUES (?, ?, ?, ?, ?, 0, ?)",
                digest, meta.size, meta.chunk_size, meta.chunk_root, b"".join(hashes),
                bitmap_from_indexes((), n),
            )
        partial = PartialBlob(self, meta, list(hashes), path, durable)
        if durable:
            partial.reverify_resumed()
        self._open[digest] = partial
        return partial

    # ---- called by PartialBlob (the PartialLedger protocol)

    def record_checkpoint(self, p: PartialBlob, indexes: set[int]) -> None:
        """Record ``indexes`` (made durable by ``p``) as its bitmap."""
        self._x(
            "UPDATE blobs SET bitmap=? WHERE digest=? AND complete=0",
            bitmap_from_indexes(indexes, p.n), p.meta.digest,
        )

    def publish(self, p: PartialBlob) -> None:
        """Rename the fsynced, fully verified ``p`` into ``sha256/``: it is complete."""
        final = self._final(p.meta.digest)
        os.chmod(p.path, 0o444)
        os.replace(p.path, final)
        _fsync_dir(final.parent)
        self._x("UPDATE blobs SET complete=1, bitmap=x'' WHERE digest=?", p.meta.digest)
        self._open.pop(p.meta.digest, None)

    def release(self, p: PartialBlob) -> None:
        """``p`` is closed (kept for a later resume): no transfer is writing it now."""
        self._open.pop(p.meta.digest, None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_chunks(fileobj: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while block := fileobj.read(chunk_size):
        yield block


def hash_file(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int, str]:
    """``(digest, size, chunk_root)`` of a file, reading one chunk at a time
    (one SHA-256 pass gives both: protocol/chunks.py)."""
    builder = ChunkListBuilder(chunk_size)
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            builder.update(chunk)
    digest, hashes = builder.finish()
    return digest, builder.size, chunk_root(hashes)
