"""Chained chunk lists (protocol/chunks.py) and the SHA-256 they rest on (protocol/sha256.py)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chunks import (
    ChunkListBuilder,
    chunk_hashes,
    chunk_matches,
    chunk_root,
    verify_chunk_list,
)
from protocol.errors import ProtocolError
from protocol.sha256 import BACKEND, IV, Sha256

CS = 4096


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_sha256_matches_hashlib_split_anywhere(data: bytes, cut: int) -> None:
    for pure in (False, True):
        h = Sha256(pure=pure)
        h.update(data[:cut])
        h.update(bytearray(data[cut:]))
        assert h.digest() == hashlib.sha256(data).digest()
        h.update(b"x")  # digest() did not finalise the object itself
        assert h.digest() == hashlib.sha256(data + b"x").digest()


def test_chaining_value_resume_and_pure_reference_agree() -> None:
    data = bytes(range(256)) * 40 + b"tail"
    fast, pure = Sha256(), Sha256(pure=True)
    fast.update(memoryview(bytearray(data[:1024])))
    pure.update(data[:1024])
    assert fast.state() == pure.state() != IV
    for p in (False, True):
        rest = Sha256.resume(fast.state(), 1024, pure=p)
        rest.update(data[1024:])
        assert rest.digest() == hashlib.sha256(data).digest()
    assert Sha256().state() == IV


def test_sha256_refuses_misuse() -> None:
    h = Sha256()
    h.update(b"abc")
    with pytest.raises(ValueError, match="block boundary"):
        h.state()
    with pytest.raises(ValueError, match="64-byte"):
        Sha256.resume(IV, 10)
    with pytest.raises(ValueError, match="32 bytes"):
        Sha256.resume(IV[:31], 0)


def test_backend_is_reported() -> None:
    assert BACKEND in ("libcrypto", "pure")


@pytest.mark.parametrize("size", [1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 17])
def test_chunk_list_entries(size: int) -> None:
    data = bytes((i * 7) % 251 for i in range(size))
    hashes = chunk_hashes(data, CS)
    assert len(hashes) == -(-size // CS)
    assert hashes[-1] == hashlib.sha256(data).digest()  # the last entry is the digest
    for i in range(len(hashes) - 1):  # the others: chaining values at the boundaries
        h = Sha256()
        h.update(data[: (i + 1) * CS])
        assert hashes[i] == h.state()
    assert chunk_hashes(data, CS, pure=True) == hashes
    for i in range(len(hashes)):
        chunk = data[i * CS : (i + 1) * CS]
        assert chunk_matches(i, chunk, hashes, size=size, chunk_size=CS)
        assert not chunk_matches(i, chunk[:-1], hashes, size=size, chunk_size=CS)  # length is checked
        flipped = bytearray(chunk)
        flipped[len(chunk) // 2] ^= 0x01
        assert not chunk_matches(i, bytes(flipped), hashes, size=size, chunk_size=CS)
    assert not chunk_matches(len(hashes), b"", hashes, size=size, chunk_size=CS)


def test_builder_takes_pieces_of_any_size() -> None:
    data = bytes(range(256)) * 50
    b = ChunkListBuilder(CS)
    for start in range(0, len(data), 1000):
        b.update(data[start : start + 1000])
    digest, hashes = b.finish()
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert hashes == chunk_hashes(data, CS) and b.size == len(data)
    assert ChunkListBuilder(CS).finish() == ("sha256:" + hashlib.sha256(b"").hexdigest(), [])


def test_chunk_list_must_end_in_the_digest() -> None:
    data = bytes(3 * CS)
    hashes = chunk_hashes(data, CS)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    verify_chunk_list(hashes, size=len(data), chunk_size=CS, root=chunk_root(hashes), digest=digest)
    other = hashes[:-1] + [hashlib.sha256(b"x").digest()]
    with pytest.raises(ProtocolError, match="last chunk list entry"):
        verify_chunk_list(other, size=len(data), chunk_size=CS, root=chunk_root(other), digest=digest)
    with pytest.raises(ProtocolError, match="root"):
        verify_chunk_list(other, size=len(data), chunk_size=CS, root=chunk_root(hashes))
