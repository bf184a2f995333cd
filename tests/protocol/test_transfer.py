"""Sans-IO transfer core: messages, frame codec and AEAD, scheduler."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.envelope import open_envelope, seal
from protocol.errors import ProtocolError, ValidationError
from protocol.framing import decode_frame_prefix, encode_frame
from protocol.transfer import (
    CONTROL_LIMITS,
    HEADER_SIZE,
    MAX_CHUNK_LIST_PAGE,
    MAX_CHUNKS,
    MAX_CONTROL_FRAME,
    MAX_PARTIAL,
    MAX_WANT,
    TAG_SIZE,
    ChunkList,
    ChunkListAssembler,
    ChunkRange,
    ChunkScheduler,
    DataError,
    FetchGrant,
    FrameOpener,
    FrameSealer,
    FrameType,
    GetChunkList,
    Have,
    HaveEntry,
    HolderEntry,
    Holders,
    Request,
    Ticket,
    TransferError,
    Want,
    bitmap_from_indexes,
    chunk_list_page,
    decode_header,
    decode_preamble,
    derive_keys,
    encode_header,
    encode_preamble,
    indexes_from_bitmap,
    parse_request,
    ranges_of,
)

D = "sha256:" + "11" * 32


def test_messages_round_trip_in_envelopes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    t = Ticket(ticket_id=bytes(16), secret=bytes(range(32)), digest=D, host="127.0.0.1", port=4001,
               expires_at=1_700_000_000)
    signed = seal(t, key)
    back = open_envelope(signed.raw, expected=Ticket, signer=signed.signer)
    assert back.message == t


@pytest.mark.parametrize(
    "make",
    [
        lambda: Want(digests=()),
        lambda: Want(digests=("sha256:XYZ",)),
        lambda: ChunkList(digest=D, size=8192, chunk_size=4096, hashes=bytes(31)),
        lambda: ChunkList(digest=D, size=8192, chunk_size=4096, start=1, hashes=bytes(64)),
        lambda: GetChunkList(digest=D, count=4097),
        lambda: Ticket(ticket_id=bytes(16), secret=bytes(32), digest=D, host="example.org", port=1, expires_at=0),
        lambda: HaveEntry(digest=D, size=8192, chunk_size=4160, complete=True, bitmap=b""),
        lambda: Want(digests=(D, D)),
        lambda: TransferError(reason="Bad Reason", detail=""),
        lambda: DataError(reason="not_held", detail="x" * 1025),
        lambda: Request(ranges=(ChunkRange(start=0, end=4097),)),
        lambda: HaveEntry(digest=D, size=8192, chunk_size=4096, complete=False, bitmap=b""),
        lambda: HaveEntry(digest=D, size=8192, chunk_size=100, complete=True, bitmap=b""),
        lambda: Ticket(ticket_id=bytes(15), secret=bytes(32), digest=D, host="h", port=1, expires_at=0),
        lambda: ChunkRange(start=3, end=3),
        lambda: Request(ranges=()),
    ],
)
def test_invalid_messages_are_rejected(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError):
        make()


def test_header_validation() -> None:
    assert decode_header(encode_header(FrameType.CHUNK, 7, 100), from_server=True) == (FrameType.CHUNK, 7, 100)
    with pytest.raises(ProtocolError, match="wrong direction"):
        decode_header(encode_header(FrameType.CHUNK, 7, 100), from_server=False)
    with pytest.raises(ProtocolError) as exc:
        decode_header(encode_header(FrameType.CHUNK, 0, (16 << 20) + 17), from_server=True)
    assert exc.value.reason == "oversize"
    with pytest.raises(ProtocolError) as exc:
        decode_header(encode_header(FrameType.REQUEST, 0, 1 << 20), from_server=False)
    assert exc.value.reason == "oversize"  # control bodies are small
    with pytest.raises(ProtocolError):
        decode_header(bytes([9]) + bytes(11), from_server=True)
    with pytest.raises(ProtocolError):
        decode_header(bytes([2, 1]) + bytes(10), from_server=True)  # reserved bits


def test_preamble() -> None:
    tid = bytes(range(16))
    assert decode_preamble(encode_preamble(tid)) == tid
    with pytest.raises(ProtocolError) as exc:
        decode_preamble(b"HTTP" + encode_preamble(tid)[4:])
    assert exc.value.reason == "bad_preamble"


def test_frames_seal_open_and_detect_tamper_replay_reorder() -> None:
    c2s, s2c = derive_keys(bytes(32), bytes(16))
    assert c2s != s2c and len(c2s) == 32
    sealer, opener = FrameSealer(s2c), FrameOpener(s2c)
    frames = [sealer.seal(FrameType.CHUNK, i, bytes([i]) * 10) for i in range(3)]
    assert len(frames[0][1]) == 10 + TAG_SIZE and len(frames[0][0]) == HEADER_SIZE
    assert opener.open(*frames[0]) == bytes(10)
    with pytest.raises(ProtocolError):  # replay of frame 0 (counter is now 1)
        FrameOpener(s2c).open(*frames[1])
    h, ct = frames[1]
    tampered_header = encode_header(FrameType.CHUNK, 9, len(ct))  # index changed
    with pytest.raises(ProtocolError):
        FrameOpener(s2c).open(tampered_header, ct)
    with pytest.raises(ProtocolError):  # the other direction's key
        FrameOpener(c2s).open(*frames[0])


@given(st.sets(st.integers(0, 99)))
def test_bitmap_round_trip(idx: set[int]) -> None:
    assert indexes_from_bitmap(bitmap_from_indexes(idx, 100), 100) == idx


def test_bitmap_rejects_stray_bits() -> None:
    with pytest.raises(ProtocolError):
        indexes_from_bitmap(b"\xff", 3)


@given(st.sets(st.integers(0, 200)))
def test_ranges_cover_exactly(idx: set[int]) -> None:
    rs = ranges_of(idx)
    assert set(Request(ranges=rs).indexes() if rs else ()) == idx
    assert all(a.end < b.start for a, b in zip(rs, rs[1:], strict=False))


def test_scheduler_splits_between_sources_and_reassigns_corrupt() -> None:
    s = ChunkScheduler(8)
    s.add_source("a")
    s.add_source("b")
    a = s.assign("a", 4)
    b = s.assign("b", 4)
    assert a == [0, 1, 2, 3] and b == [4, 5, 6, 7]
    for i in a:
        s.received("a", i)
    assert s.corrupt("b", 4) is True  # one strike bans by default
    assert s.assign("b", 4) == []
    assert 4 in s.missing() and not s.stuck()
    assert s.assign("a", 8) == [4, 5, 6, 7]  # the banned source's chunks went back to the pool
    assert s.assign("a", 8) == []
    for i in (4, 5, 6, 7):
        s.received("a", i)
    assert s.complete


def test_scheduler_source_failure_returns_chunks_and_detects_stuck() -> None:
    s = ChunkScheduler(4, done=[0])
    s.add_source("a", has={1, 2})
    assert s.assign("a", 10) == [1, 2]
    assert s.stuck()  # chunk 3: nobody has it
    assert s.source_failed("a") == [1, 2]
    s.add_source("b")
    assert s.assign("b", 10) == [1, 2, 3]
    for i in (1, 2, 3):
        assert s.received("b", i)
    assert s.complete and not s.received("b", 3)


def test_scheduler_never_asks_a_corrupting_source_for_that_chunk_again() -> None:
    s = ChunkScheduler(2, max_strikes=3)
    s.add_source("a")
    assert s.assign("a", 1) == [0]
    assert s.corrupt("a", 0) is False
    assert s.assign("a", 2) == [1]
    assert s.stuck()  # only "a" remains and it failed chunk 0


def test_validation_names_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        Want(digests=tuple([D] * 257))
    assert exc.value.field == "digests"


def _key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)


def test_largest_control_messages_fit_one_frame() -> None:
    """Every control message, at the largest size its rules allow, fits the
    1 MiB control frame (the default CBOR decode limit): no limit contradicts another."""
    key = _key(1)
    n = MAX_CHUNKS
    d = ["sha256:" + f"{i:064x}" for i in range(MAX_WANT)]
    bitmap = bytes([0xFF]) * (n // 8)
    partial = [HaveEntry(digest=d[i], size=n * (16 << 20), chunk_size=16 << 20, complete=False, bitmap=bitmap)
               for i in range(MAX_PARTIAL)]
    full = [HaveEntry(digest=d[i], size=n * (16 << 20), chunk_size=16 << 20, complete=True, bitmap=b"")
            for i in range(MAX_PARTIAL, MAX_WANT)]
    peer = seal(Want(digests=(D,)), key).signer
    other = seal(Want(digests=(D,)), _key(2)).signer
    grant = seal(FetchGrant(digest=D, grantee=peer, holder=other, expires_at=1 << 40), key).raw
    biggest = [
        Have(blobs=tuple(partial + full)),
        ChunkList(digest=D, size=n * 4096, chunk_size=4096, start=0, hashes=bytes(32 * MAX_CHUNK_LIST_PAGE)),
        Want(digests=tuple(d)),
        Holders(holders=tuple(HolderEntry(grant=grant + bytes(1024 - len(grant)), addrs=("/" + "x" * 255,) * 8)
                              for _ in range(64))),
        TransferError(reason="x" * 64, detail="\U0001f600" * 1024),
    ]
    for msg in biggest:
        raw = seal(msg, key).raw
        assert len(raw) <= MAX_CONTROL_FRAME, type(msg).__name__
        assert open_envelope(raw, limits=CONTROL_LIMITS).message == msg
    # the largest is the Have: 32 bitmaps of 16 KiB, about half the frame
    assert 512 << 10 < len(seal(biggest[0], key).raw) < 640 << 10


def test_chunk_list_pages_round_trip_a_large_list() -> None:
    data = bytes(range(256)) * 16 * 40 + b"tail"  # 41 chunks of 4 KiB
    hashes = chunk_hashes(data, 4096)
    digest, root = digest_of(data), chunk_root(hashes)
    asm = ChunkListAssembler(digest=digest, size=len(data), chunk_size=4096, root=root, page=16)
    asked = []
    while (req := asm.request()) is not None:
        asked.append(req.start)
        asm.add(chunk_list_page(req, size=len(data), chunk_size=4096, hashes=hashes))
    assert asked == [0, 16, 32] and asm.hashes == hashes


def test_chunk_list_assembler_blames_a_lying_source() -> None:
    data = bytes(4096 * 3)
    hashes = chunk_hashes(data, 4096)
    asm = ChunkListAssembler(digest=digest_of(data), size=len(data), chunk_size=4096,
                             root=chunk_root(hashes))
    page = ChunkList(digest=digest_of(data), size=len(data), chunk_size=4096, hashes=bytes(96))
    with pytest.raises(ProtocolError) as exc:
        asm.add(page)
    assert exc.value.reason == "bad_chunk_list" and not asm.complete


def test_chunk_list_page_beyond_the_list() -> None:
    with pytest.raises(ProtocolError) as exc:
        chunk_list_page(GetChunkList(digest=D, start=2), size=8192, chunk_size=4096, hashes=[bytes(32)] * 2)
    assert exc.value.reason == "bad_chunk_index"


def test_parse_request_checks_blob_then_holdings() -> None:
    body = Request(ranges=(ChunkRange(start=0, end=2),)).encode()
    assert parse_request(body, n_chunks=2).indexes() == [0, 1]
    for n, held, reason in ((1, None, "bad_chunk_index"), (2, {0}, "not_held"), (1, {0}, "bad_chunk_index")):
        with pytest.raises(ProtocolError) as exc:
            parse_request(body, n_chunks=n, held=held)
        assert exc.value.reason == reason


def test_data_error_of_cuts_the_detail() -> None:
    err = DataError.of(ProtocolError("not_held", "y" * 5000))
    assert err.reason == "not_held" and len(err.detail) == 1024
    assert DataError.decode(err.encode()) == err


@given(st.integers(0, MAX_CONTROL_FRAME))
def test_frame_prefix_round_trip(n: int) -> None:
    framed = encode_frame(bytes(n), MAX_CONTROL_FRAME) if n < 4096 else None
    prefix = b""
    length = n
    while True:  # LEB128 by hand, independent of the code under test
        byte, length = length & 0x7F, length >> 7
        prefix += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    assert decode_frame_prefix(prefix, MAX_CONTROL_FRAME) == (n, len(prefix))
    assert decode_frame_prefix(prefix[:-1], MAX_CONTROL_FRAME) is None
    if framed is not None:
        assert framed == prefix + bytes(n)
