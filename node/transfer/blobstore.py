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
nobody pins (``pin(digest, owner)``) are collected by :meth:`BlobStore.gc`
(under quota pressure) and :meth:`BlobStore.sweep` (when idle too long).

Who may use a stored blob (spec/transfer.md section 1.1): the store remembers
the peers that *delivered* each blob here (:meth:`BlobStore.add_supplier`;
a fetch on a peer's behalf that completed) and whether it is *public*
(marked by the local party that imported it).  :meth:`BlobStore.usable_by`
answers for a party: knowing a digest never opens a blob.

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
import time
from collections.abc import Callable, Iterator, Sequence
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
from node.transfer.partial import PartialBlob, ProofBlob
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
STORE_VERSION = 3


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunk_root TEXT NOT NULL,
    hashes BLOB NOT NULL,
    complete INTEGER NOT NULL,
    bitmap BLOB NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,   -- version 3: any party may use it (section 1.1)
    used_at REAL NOT NULL DEFAULT 0,     -- version 3: last fetched, served or reused (sweep)
    party TEXT                           -- version 3: a partial blob: whom it is received for
);
CREATE TABLE IF NOT EXISTS pins (
    digest TEXT NOT NULL,
    owner TEXT NOT NULL,
    since REAL NOT NULL DEFAULT 0,       -- version 3
    PRIMARY KEY (digest, owner)
);
CREATE TABLE IF NOT EXISTS suppliers (  -- version 3: peers that delivered the blob here
    digest TEXT NOT NULL,
    peer TEXT NOT NULL,
    PRIMARY KEY (digest, peer)
);
"""
#: columns version 3 added to tables of older stores: (table, column, declaration)
_V3_COLUMNS = (
    ("blobs", "public", "INTEGER NOT NULL DEFAULT 0"),
    ("blobs", "used_at", "REAL NOT NULL DEFAULT 0"),
    ("blobs", "party", "TEXT"),
    ("pins", "since", "REAL NOT NULL DEFAULT 0"),
)


class BlobStore:
    def __init__(self, data_dir: Path, *, quota_bytes: int | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.root = Path(data_dir) / "blobs"
        self.quota = quota_bytes
        self.now = now  #: unix seconds (pins, last use)
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
        2 keeps chained lists (protocol/chunks.py): see :meth:`_upgrade_to_2`.
        Version 3 remembers who delivered each blob, which are public, when each
        was last used and since when each pin holds: the columns are added;
        nobody is recorded as a supplier of an existing blob (who delivered it
        was never kept), so a party must deliver a blob once more before its
        jobs reuse it here: safe, and a one-time transfer."""
        version = int(self._q("PRAGMA user_version")[0][0])
        if version > STORE_VERSION:
            raise BlobStoreError(
                f"{self.root} was written by a newer CPN (store version {version}, this one reads "
                f"up to {STORE_VERSION}); upgrade CPN or point it at another data dir")
        if version == STORE_VERSION:
            return
        if version < 2:
            self._upgrade_to_2()
        for table, column, decl in _V3_COLUMNS:
            if column not in {str(r[1]) for r in self._q(f"PRAGMA table_info({table})")}:
                self._x(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        now = self.now()
        self._x("UPDATE blobs SET used_at=? WHERE used_at=0", now)
        self._x("UPDATE pins SET since=? WHERE since=0", now)
        self._x(f"PRAGMA user_version={STORE_VERSION}")

    def _upgrade_to_2(self) -> None:
        """Complete blobs are read once and their chained lists computed (a file
        whose digest no longer matches is dropped); partial blobs are dropped,
        since their kept chunks cannot be checked against the new list without
        the rest of the blob."""
        rows = self._q("SELECT digest, chunk_size, complete FROM blobs")
        if rows:
            log.warning("blob store %s: upgrading %d blobs to store version 2 (chained chunk lists)",
                        self.root, len(rows))
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

    # ---- who may use a blob (spec/transfer.md section 1.1)

    def usable_by(self, digest: str, party: str | None) -> bool:
        """Is ``digest`` stored complete and may ``party`` use it here without
        delivering it?  Yes if it is public or ``party`` delivered it here
        before; ``party=None`` is this node itself (always)."""
        if not self.has(digest):
            return False
        if party is None:
            return True
        rows = self._q("SELECT public FROM blobs WHERE digest=?", digest)
        if rows and rows[0][0]:
            return True
        return bool(self._q("SELECT 1 FROM suppliers WHERE digest=? AND peer=?", digest, party))

    def add_supplier(self, digest: str, peer: str) -> None:
        """``peer`` delivered ``digest`` here (a fetch on its behalf completed:
        every chunk verified against its chunk list, which ends in the digest)."""
        self._x("INSERT OR IGNORE INTO suppliers (digest, peer) VALUES (?, ?)", check_digest(digest), peer)

    def suppliers(self, digest: str) -> list[str]:
        return [str(r[0]) for r in self._q("SELECT peer FROM suppliers WHERE digest=? ORDER BY peer", digest)]

    def is_public(self, digest: str) -> bool:
        rows = self._q("SELECT public FROM blobs WHERE digest=?", check_digest(digest))
        return bool(rows and rows[0][0])

    def mark_public(self, digest: str) -> None:
        """Any party may use ``digest`` here (for the local party that supplied
        it: an operator's image, say).  Never for a blob a peer delivered."""
        self._x("UPDATE blobs SET public=1 WHERE digest=?", check_digest(digest))

    def touch(self, digest: str) -> None:
        """``digest`` was used now (served, fetched, reused): the sweep keeps it longer."""
        self._x("UPDATE blobs SET used_at=? WHERE digest=?", self.now(), digest)

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
        self._x("INSERT OR IGNORE INTO pins (digest, owner, since) VALUES (?, ?, ?)",
                check_digest(digest), owner, self.now())

    def expire_pins(self, prefix: str, before: float) -> int:
        """Drop the pins of owners named ``prefix...`` made before ``before``
        (e.g. results nobody sent a receipt for).  Returns how many."""
        cond = "substr(owner, 1, ?) = ? AND since < ?"
        rows = self._q(f"SELECT COUNT(*) FROM pins WHERE {cond}", len(prefix), prefix, before)
        self._x(f"DELETE FROM pins WHERE {cond}", len(prefix), prefix, before)
        return int(rows[0][0])

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
            self.delete(d)
            freed += int(size)
        return freed

    def sweep(self, *, idle_s: float, local_idle_s: float) -> int:
        """Blocking: delete unpinned blobs nobody used for a while; returns the bytes freed.

        A blob some peer delivered, or a public one, is a cache worth keeping
        for ``idle_s``; a blob only this node produced (a job's outputs and log
        once their receipt arrived, a submitter's own imports after its run)
        goes after ``local_idle_s`` (a grace, so a fresh import is not swept
        before it is pinned)."""
        now = self.now()
        rows = self._q(
            "SELECT digest, size, used_at, public OR EXISTS (SELECT 1 FROM suppliers s WHERE s.digest = b.digest)"
            " FROM blobs b WHERE digest NOT IN (SELECT digest FROM pins)"
        )
        freed = 0
        for digest, size, used_at, cached in rows:
            d = str(digest)
            if d in self._open or float(used_at) > now - (idle_s if cached else local_idle_s):
                continue
            self.delete(d)
            freed += int(size)
        return freed

    def delete(self, digest: str) -> None:
        if digest in self._open:
            raise BlobStoreError(f"{digest} is being written")
        self._x("DELETE FROM blobs WHERE digest=?", check_digest(digest))
        self._x("DELETE FROM suppliers WHERE digest=?", digest)
        self._final(digest).unlink(missing_ok=True)
        self._partial_path(digest).unlink(missing_ok=True)

    # ---- writing

    def import_file(self, path: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE, public: bool = False,
                    supplier: str | None = None) -> BlobMeta:
        """Blocking: copy ``path`` into the store, hashing as it streams (memory: one chunk).
        Dedup: an already stored blob is not copied again.  The local party
        supplies it: ``public`` lets any peer's jobs use it here; ``supplier``
        records a peer it belongs to as well (a job's outputs, for its submitter)."""
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
                meta = self.meta(digest) or meta
            else:
                self._reserve(digest, size)
                self._commit(meta, hashes, tmp)
            self.touch(digest)
            if public:
                self.mark_public(digest)
            if supplier is not None:
                self.add_supplier(digest, supplier)
            return meta
        finally:
            tmp.unlink(missing_ok=True)

    def import_bytes(self, data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE, public: bool = False,
                     supplier: str | None = None) -> BlobMeta:
        tmp = self.root / "tmp" / f"bytes-{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(data)
        try:
            return self.import_file(tmp, chunk_size=chunk_size, public=public, supplier=supplier)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, meta: BlobMeta, hashes: Sequence[bytes], src: Path) -> None:
        final = self._final(meta.digest)
        os.chmod(src, 0o444)
        os.replace(src, final)
        _fsync_dir(final.parent)
        self._x(
            "INSERT OR REPLACE INTO blobs (digest, size, chunk_size, chunk_root, hashes, complete, bitmap,"
            " used_at) VALUES (?, ?, ?, ?, ?, 1, x'', ?)",
            meta.digest, meta.size, meta.chunk_size, meta.chunk_root, b"".join(hashes), self.now(),
        )

    def _checked_list(self, blob: BlobLike, hashes: Sequence[bytes]) -> BlobMeta:
        digest = check_digest(blob.digest)
        meta = BlobMeta(digest=digest, size=blob.size, chunk_size=blob.chunk_size, chunk_root=blob.chunk_root)
        n = chunk_count(meta.size, meta.chunk_size)
        if len(hashes) != n or chunk_root(hashes) != meta.chunk_root:
            raise BlobStoreError("chunk list does not match the blob's chunk root")
        if n and hashes[-1].hex() != digest[7:]:
            raise CorruptBlob(f"{digest}: the chunk list's last entry is not the blob digest"
                              " (the blob reference's root and digest disagree)")
        return meta

    def begin_proof(self, blob: BlobLike, hashes: Sequence[bytes]) -> ProofBlob:
        """Receive a blob we hold already, for a party that has not delivered it
        here: every chunk is verified against that party's chunk list and
        nothing is written; finishing it proves the party holds the blob."""
        meta = self._checked_list(blob, hashes)
        if not self.has(meta.digest):
            raise BlobStoreError(f"{meta.digest} is not stored: fetch it instead")
        return ProofBlob(meta, list(hashes), lambda: self.meta(meta.digest) or meta)

    def begin(self, blob: BlobLike, hashes: Sequence[bytes], *, party: str | None = None) -> PartialBlob:
        """Start (or resume) receiving ``blob`` whose chunk list was verified against its root.

        Chunks kept from an interrupted transfer are resumed only for the same
        ``party`` (the peer the blob is received for): another party's chunks
        would let it complete a blob it does not hold.  Raises QuotaExceeded
        before any byte is written if the blob does not fit.
        """
        digest = check_digest(blob.digest)
        if digest in self._open:
            raise BlobStoreError(f"{digest} is already being received")
        if self.has(digest):
            raise BlobStoreError(f"{digest} is already stored")
        meta = self._checked_list(blob, hashes)
        n = chunk_count(meta.size, meta.chunk_size)
        rows = self._q("SELECT chunk_size, chunk_root, bitmap, party FROM blobs WHERE digest=?", digest)
        durable: set[int] = set()
        path = self._partial_path(digest)
        same = rows and (rows[0][0], rows[0][1], rows[0][3]) == (meta.chunk_size, meta.chunk_root, party)
        if same and path.exists():
            durable = indexes_from_bitmap(bytes(rows[0][2]), n)
            self.touch(digest)
        else:
            if rows:
                self._x("DELETE FROM blobs WHERE digest=?", digest)
            self._reserve(digest, meta.size)
            path.unlink(missing_ok=True)
            self._x(
                "INSERT INTO blobs (digest, size, chunk_size, chunk_root, hashes, complete, bitmap, used_at, party)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                digest, meta.size, meta.chunk_size, meta.chunk_root, b"".join(hashes),
                bitmap_from_indexes((), n), self.now(), party,
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
        self._x("UPDATE blobs SET complete=1, bitmap=x'', party=NULL, used_at=? WHERE digest=?",
                self.now(), p.meta.digest)
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
