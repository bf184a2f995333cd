"""Blob store: atomic publication, resume state, quota, pins and GC, dedup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from node.transfer.blobstore import (
    STORE_VERSION,
    BlobMeta,
    BlobStore,
    BlobStoreError,
    CorruptBlob,
    CorruptChunk,
    PartialBlob,
    QuotaExceeded,
)
from protocol.chunks import chunk_hashes, chunk_root, digest_of

CS = 4096


def _blob(data: bytes) -> tuple[BlobMeta, list[bytes]]:
    hashes = chunk_hashes(data, CS)
    return BlobMeta(digest_of(data), len(data), CS, chunk_root(hashes)), hashes


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CS] for i in range(0, len(data), CS)]


def test_import_streams_and_dedups(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * CS + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    meta = store.import_file(src, chunk_size=CS)
    assert meta.digest == digest_of(data) and meta.size == len(data)
    assert meta.chunk_root == chunk_root(chunk_hashes(data, CS))
    assert store.has(meta.digest)
    assert store.path_of(meta.digest).read_bytes() == data
    assert store.chunk_list(meta.digest) == chunk_hashes(data, CS)
    before = store.used_bytes()
    again = store.import_file(src, chunk_size=CS)  # dedup: same blob, no second copy
    assert again == meta and store.used_bytes() == before
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    ref = meta.blob_ref("application/octet-stream")  # what a job spec carries
    assert (ref.digest, ref.size, ref.chunk_root) == (meta.digest, meta.size, meta.chunk_root)


def test_partial_blob_is_never_visible_and_resumes(tmp_path: Path) -> None:
    data = os.urandom(5 * CS)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    for i in (0, 1, 3):
        p.write_chunk(i, _chunks(data)[i])
        p.mark_written(i)
    assert not store.has(meta.digest)
    with pytest.raises(BlobStoreError):
        store.path_of(meta.digest)
    p.close()  # e.g. the sender went away
    store.close()

    store = BlobStore(tmp_path)  # a daemon restart
    p = store.begin(meta, hashes)
    assert p.missing() == [2, 4]  # only these move again
    for i in p.missing():
        p.write_chunk(i, _chunks(data)[i])
        p.mark_written(i)
    p.finish()
    assert store.has(meta.digest) and store.path_of(meta.digest).read_bytes() == data
    assert not (tmp_path / "blobs" / "partial" / meta.digest[7:]).exists()


def test_only_checkpointed_chunks_survive_a_crash(tmp_path: Path) -> None:
    data = os.urandom(4 * CS)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    p.write_chunk(0, _chunks(data)[0])
    p.mark_written(0)
    p.checkpoint()
    p.write_chunk(1, _chunks(data)[1])
    p.mark_written(1)
    # crash: no close(), the process dies; a new store opens the same files
    store2 = BlobStore(tmp_path)
    held = store2.held_chunks(meta.digest)
    assert held is not None and held[1] == {0}


def test_corrupt_chunk_is_rejected_without_writing(tmp_path: Path) -> None:
    data = os.urandom(2 * CS)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    bad = bytearray(_chunks(data)[1])
    bad[0] ^= 1
    with pytest.raises(CorruptChunk) as exc:
        p.write_chunk(1, bytes(bad))
    assert exc.value.index == 1
    assert os.pread(os.open(p.path, os.O_RDONLY), CS, CS) == bytes(CS)  # nothing written


def test_blob_ref_whose_digest_disagrees_with_its_chunk_list_is_refused(tmp_path: Path) -> None:
    """The last chunk list entry is the blob's SHA-256: a (signed but wrong) blob
    reference whose digest is not that entry is refused before any byte is written."""
    data = os.urandom(2 * CS)
    _, hashes = _blob(data)
    meta = BlobMeta("sha256:" + "ab" * 32, len(data), CS, chunk_root(hashes))
    store = BlobStore(tmp_path)
    with pytest.raises(CorruptBlob, match="last entry is not the blob digest"):
        store.begin(meta, hashes)
    assert not store.has(meta.digest) and store.meta(meta.digest) is None
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_last_chunk_check_is_the_whole_blob_sha256(tmp_path: Path) -> None:
    """Chunks verify on their own, in any order, and a last chunk that differs in
    its final byte is refused: its check finishes the blob's SHA-256."""
    data = os.urandom(3 * CS + 10)
    meta, hashes = _blob(data)
    assert hashes[-1] == hashlib.sha256(data).digest()
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    chunks = _chunks(data)
    bad = bytearray(chunks[3])
    bad[-1] ^= 1
    with pytest.raises(CorruptChunk):
        p.verify_chunk(3, bytes(bad))
    with pytest.raises(CorruptChunk):
        p.verify_chunk(2, chunks[1])  # right bytes, wrong place
    for i in (3, 1, 0, 2):
        p.write_chunk(i, chunks[i])
        p.mark_written(i)
    p.finish()
    assert store.path_of(meta.digest).read_bytes() == data


def test_quota_exceeded_is_clear_and_gc_frees_unpinned(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, quota_bytes=10 * CS)
    a = store.import_bytes(os.urandom(4 * CS), chunk_size=CS)
    b = store.import_bytes(os.urandom(4 * CS), chunk_size=CS)
    store.pin(a.digest, "job-1")
    store.pin(b.digest, "job-2")
    big, hashes = _blob(os.urandom(4 * CS))
    with pytest.raises(QuotaExceeded) as exc:
        store.begin(big, hashes)
    assert "quota is 40960 bytes" in str(exc.value) and exc.value.need == 4 * CS
    assert store.has(a.digest) and store.has(b.digest)  # pinned blobs survive the attempt
    store.unpin("job-2")
    p = store.begin(big, hashes)  # collecting unpinned b makes room
    assert not store.has(b.digest) and store.has(a.digest)
    p.close()


def test_gc_keeps_pinned_and_in_progress(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    kept = store.import_bytes(b"kept" * 2000, chunk_size=CS)
    gone = store.import_bytes(b"gone" * 2000, chunk_size=CS)
    store.pin(kept.digest, "job")
    meta, hashes = _blob(os.urandom(2 * CS))
    p = store.begin(meta, hashes)
    freed = store.gc()
    assert freed == gone.size
    assert store.has(kept.digest) and not store.has(gone.digest)
    assert store.meta(meta.digest) is not None  # being written: not collected
    p.close()
    store.unpin("job")
    store.gc()
    assert store.digests() == [] and store.used_bytes() == 0


def test_recovery_after_crash_between_rename_and_row_update(tmp_path: Path) -> None:
    data = os.urandom(CS + 1)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    for i, c in enumerate(_chunks(data)):
        p.write_chunk(i, c)
        p.mark_written(i)
    os.replace(p.path, tmp_path / "blobs" / "sha256" / meta.digest[7:])  # renamed, then "crash"
    store2 = BlobStore(tmp_path)
    assert store2.has(meta.digest)
    assert store2.path_of(meta.digest).read_bytes() == data


def test_page_aligned_buffers_out_of_order(tmp_path: Path) -> None:
    """The receive pipeline's calls: verify_chunk then write_verified from
    page-aligned buffers (so the O_DIRECT path is taken where the file system
    has it), chunks landing out of order as from two sources."""
    import mmap

    data = os.urandom(7 * CS + 100)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    for i in (0, 1, 4, 5, 2, 7, 3, 6):
        chunk = _chunks(data)[i]
        buf = memoryview(mmap.mmap(-1, CS))[: len(chunk)]
        buf[:] = chunk
        p.verify_chunk(i, buf)
        p.write_verified(i, buf)
        p.mark_written(i)
    assert p.read_back == 0  # nothing read back: no second pass over the data
    p.finish()
    assert store.path_of(meta.digest).read_bytes() == data


def _interrupted_after_two_chunks(tmp_path: Path) -> tuple[bytes, BlobMeta, list[bytes], BlobStore, Path]:
    """A 4-chunk blob whose transfer stopped after chunks 0 and 1 were kept."""
    data = os.urandom(4 * CS)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes)
    for i in (0, 1):
        p.write_chunk(i, _chunks(data)[i])
        p.mark_written(i)
    p.close()
    return data, meta, hashes, store, p.path


def _deliver(p: PartialBlob, data: bytes, indexes: tuple[int, ...]) -> None:
    for i in indexes:
        p.write_chunk(i, _chunks(data)[i])
        p.mark_written(i)


def test_resumed_chunks_are_verified_again_from_the_file(tmp_path: Path) -> None:
    data, meta, hashes, store, _ = _interrupted_after_two_chunks(tmp_path)
    p = store.begin(meta, hashes)  # resume: 0 and 1 are on disk, never in memory
    _deliver(p, data, (2, 3))
    assert p.read_back == 2  # the two kept chunks, read back and verified at resume
    p.finish()
    assert store.path_of(meta.digest).read_bytes() == data


def test_kept_chunk_damaged_on_disk_is_fetched_again(tmp_path: Path) -> None:
    data, meta, hashes, store, path = _interrupted_after_two_chunks(tmp_path)
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"\xff", CS + 5)  # bit rot in chunk 1 between sessions
    os.close(fd)
    p = store.begin(meta, hashes)
    assert p.missing() == [1, 2, 3] and p.read_back == 2
    _deliver(p, data, (1, 2, 3))
    p.finish()
    assert store.path_of(meta.digest).read_bytes() == data


def test_store_from_before_chained_chunk_lists_is_upgraded(tmp_path: Path) -> None:
    """A version-1 store (per-chunk SHA-256 lists) is rewritten on open: complete
    blobs get chained lists, partial ones are dropped; a newer store is refused."""
    import sqlite3

    data = os.urandom(3 * CS + 5)
    store = BlobStore(tmp_path)
    meta = store.import_bytes(data, chunk_size=CS)
    partial_meta, partial_hashes = _blob(os.urandom(2 * CS))
    p = store.begin(partial_meta, partial_hashes)
    p.close()
    store.close()
    old = [hashlib.sha256(data[i : i + CS]).digest() for i in range(0, len(data), CS)]
    db = sqlite3.connect(tmp_path / "blobs" / "store.sqlite")
    db.execute("UPDATE blobs SET hashes=?, chunk_root=? WHERE digest=?", (b"".join(old), chunk_root(old), meta.digest))
    db.execute("PRAGMA user_version=0")
    db.commit()
    db.close()

    store = BlobStore(tmp_path)
    assert store.chunk_list(meta.digest) == _blob(data)[1]
    assert store.meta(meta.digest) == meta
    assert store.meta(partial_meta.digest) is None
    assert not (tmp_path / "blobs" / "partial" / partial_meta.digest[7:]).exists()
    store.close()

    db = sqlite3.connect(tmp_path / "blobs" / "store.sqlite")
    db.execute(f"PRAGMA user_version={STORE_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(BlobStoreError, match="newer CPN"):
        BlobStore(tmp_path)


_V2_SCHEMA = """
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    chunk_root TEXT NOT NULL, hashes BLOB NOT NULL, complete INTEGER NOT NULL, bitmap BLOB NOT NULL);
CREATE TABLE pins (digest TEXT NOT NULL, owner TEXT NOT NULL, PRIMARY KEY (digest, owner));
PRAGMA user_version=2;
"""


def test_store_version_2_gains_suppliers_and_keeps_its_blobs(tmp_path: Path) -> None:
    """A version-2 store (before suppliers were kept) opens as version 3: its
    blobs and pins stay, nobody is recorded as their supplier (so no peer may
    reuse them without delivering them once more), and the node itself may."""
    import sqlite3

    data = os.urandom(2 * CS + 1)
    meta, hashes = _blob(data)
    root = tmp_path / "blobs"
    (root / "sha256").mkdir(parents=True)
    (root / "sha256" / meta.digest[7:]).write_bytes(data)
    db = sqlite3.connect(root / "store.sqlite")
    db.executescript(_V2_SCHEMA)
    db.execute("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, 1, x'')",
               (meta.digest, meta.size, meta.chunk_size, meta.chunk_root, b"".join(hashes)))
    db.execute("INSERT INTO pins VALUES (?, 'job:x')", (meta.digest,))
    db.commit()
    db.close()

    store = BlobStore(tmp_path, now=lambda: 1000.0)
    assert store.meta(meta.digest) == meta and store.pinned(meta.digest) == ["job:x"]
    assert store.usable_by(meta.digest, None)  # this node's own use
    assert not store.usable_by(meta.digest, "peer-a") and store.suppliers(meta.digest) == []
    store.add_supplier(meta.digest, "peer-a")
    assert store.usable_by(meta.digest, "peer-a") and not store.usable_by(meta.digest, "peer-b")
    assert store.expire_pins("job:", before=1000.5) == 1  # the old pin got the upgrade's time
    store.close()
    db = sqlite3.connect(root / "store.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION == 3
    db.close()


def test_sweep_deletes_idle_unpinned_blobs_by_kind(tmp_path: Path) -> None:
    """The sweep keeps pinned blobs, keeps a cache (a blob a peer delivered, or a
    public one) for ``idle_s`` after its last use, and a blob only this node
    produced (outputs after their receipt) for ``local_idle_s``."""
    now = [1000.0]
    store = BlobStore(tmp_path, now=lambda: now[0])
    cached = store.import_bytes(os.urandom(CS + 1), chunk_size=CS)
    store.add_supplier(cached.digest, "peer-a")
    public = store.import_bytes(os.urandom(CS + 2), chunk_size=CS, public=True)
    local = store.import_bytes(os.urandom(CS + 3), chunk_size=CS)
    pinned = store.import_bytes(os.urandom(CS + 4), chunk_size=CS)
    store.pin(pinned.digest, "result:x")
    now[0] += 700  # past the local grace, not the cache's
    assert store.sweep(idle_s=3600, local_idle_s=600) == local.size
    assert not store.has(local.digest) and all(store.has(m.digest) for m in (cached, public, pinned))
    now[0] += 3000
    store.touch(public.digest)  # used again: kept longer
    assert store.sweep(idle_s=3600, local_idle_s=600) == cached.size
    assert store.suppliers(cached.digest) == []
    assert store.expire_pins("result:", before=now[0]) == 1  # no receipt came: the pin expires
    now[0] += 3601
    assert store.sweep(idle_s=3600, local_idle_s=600) == public.size + pinned.size
    assert store.digests() == []
    store.close()


def test_a_partial_blob_resumes_only_for_its_party(tmp_path: Path) -> None:
    """Chunks kept from an interrupted transfer count only for the party the
    blob was being received for: another party starts from nothing."""
    data = os.urandom(4 * CS)
    meta, hashes = _blob(data)
    store = BlobStore(tmp_path)
    p = store.begin(meta, hashes, party="peer-a")
    _deliver(p, data, (0, 1))
    p.close()
    other = store.begin(meta, hashes, party="peer-b")
    assert other.missing() == [0, 1, 2, 3]
    other.close()
    again = store.begin(meta, hashes, party="peer-b")
    _deliver(again, data, (0,))
    again.close()
    mine = store.begin(meta, hashes, party="peer-b")
    assert mine.missing() == [1, 2, 3]
    mine.close()
    store.close()
