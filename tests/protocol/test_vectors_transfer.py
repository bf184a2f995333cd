"""Run every vector of spec/vectors/transfer.json against protocol/ (the file is
the contract; tools/vectors/transfer.py only writes it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import protocol.jobflow  # noqa: F401  (registers tag 100 for the unexpected_type vector)
from protocol import cbor
from protocol.chunks import verify_chunk_list
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError, ValidationError
from protocol.framing import decode_frame_prefix
from protocol.transfer import (
    CONTROL_LIMITS,
    DATA_BODY_LIMITS,
    HEADER_SIZE,
    MAX_CONTROL_FRAME,
    TAG_SIZE,
    ChunkList,
    ChunkListAssembler,
    DataError,
    FetchGrant,
    FrameOpener,
    FrameType,
    GetChunkList,
    Have,
    Holders,
    Offer,
    OfferResult,
    Present,
    PunchGo,
    PunchReply,
    PunchRequest,
    Ticket,
    TicketRequest,
    TransferError,
    Want,
    WhoHas,
    check_chunk,
    check_empty_body,
    check_ticket,
    chunk_list_page,
    complementary,
    decode_header,
    decode_preamble,
    derive_keys,
    parse_request,
    punch_role,
    usable_paths,
)
from protocol.wire import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
CONTENT = json.loads((ROOT / "spec" / "vectors" / "transfer.json").read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]
TYPES = (Want, Have, GetChunkList, ChunkList, TicketRequest, Ticket, Offer, OfferResult, TransferError,
         WhoHas, Holders, FetchGrant, Present, PunchRequest, PunchReply, PunchGo)


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {"map": [[_json(k), _json(v)] for k, v in value.items()]}
    return value


def _entries(hex_text: str) -> list[bytes]:
    raw = bytes.fromhex(hex_text)
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp, op = v["input"], v["operation"]
    if op == "transfer.frame_prefix.decode":
        got = decode_frame_prefix(bytes.fromhex(inp["bytes_hex"]), MAX_CONTROL_FRAME)
        assert got is not None, "incomplete prefix"
        return {"outcome": "accept", "length": got[0], "prefix_bytes": got[1]}
    if op == "transfer.message.open":
        signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=TYPES, signer=inp["signer"],
                               limits=CONTROL_LIMITS)
        msg = signed.message
        return {"outcome": "accept", "type": type(msg).__name__, "fields": _json(cbor.decode(msg.encode()))}
    if op == "transfer.chunk_list.page":
        req = GetChunkList(digest=inp["digest"], start=inp["start"], count=inp["count"])
        page = chunk_list_page(req, size=inp["size"], chunk_size=inp["chunk_size"], hashes=_entries(inp["hashes_hex"]))
        return {"outcome": "accept", "start": page.start, "hashes_hex": page.hashes.hex()}
    if op == "transfer.chunk_list.assemble":
        asm = ChunkListAssembler(digest=inp["digest"], size=inp["size"], chunk_size=inp["chunk_size"],
                                 root=inp["root"], page=inp["page"])
        requests = []
        for answer in inp["pages"]:
            req = asm.request()
            assert req is not None, "an answer after the list was complete"
            requests.append([req.start, req.count])
            asm.add(ChunkList(digest=inp["digest"], size=inp["size"], chunk_size=inp["chunk_size"],
                              start=answer["start"], hashes=bytes.fromhex(answer["hashes_hex"])))
        assert asm.complete and asm.request() is None
        return {"outcome": "accept", "requests": requests}
    if op == "transfer.chunk_list.verify":
        verify_chunk_list(_entries(inp["hashes_hex"]), size=inp["size"], chunk_size=inp["chunk_size"],
                          root=inp["root"], digest=inp["digest"])
        return {"outcome": "accept"}
    if op == "transfer.keys.derive":
        c2s, s2c = derive_keys(bytes.fromhex(inp["secret_hex"]), bytes.fromhex(inp["ticket_id_hex"]))
        return {"outcome": "accept", "client_to_server_key_hex": c2s.hex(), "server_to_client_key_hex": s2c.hex()}
    if op == "transfer.preamble.decode":
        return {"outcome": "accept", "ticket_id_hex": decode_preamble(bytes.fromhex(inp["bytes_hex"])).hex()}
    if op == "transfer.data.admit":
        tid = decode_preamble(bytes.fromhex(inp["bytes_hex"]))
        issued = {bytes.fromhex(t["ticket_id_hex"]): t for t in inp["tickets"]}
        t = issued.get(tid)
        check_ticket(None if t is None or t["used"] else t["expires_at"], inp["now"])
        return {"outcome": "accept", "ticket_id_hex": tid.hex()}
    if op == "transfer.frame.open":
        frame = bytes.fromhex(inp["frame_hex"])
        from_server = inp["sender"] == "server"
        header, body = frame[:HEADER_SIZE], frame[HEADER_SIZE:]
        kind, index, length = decode_header(header, from_server=from_server, max_body=inp["chunk_size"] + TAG_SIZE)
        assert len(body) == length, "a vector holds exactly one frame"
        c2s, s2c = derive_keys(bytes.fromhex(inp["secret_hex"]), bytes.fromhex(inp["ticket_id_hex"]))
        opener = FrameOpener(s2c if from_server else c2s)
        opener.counter = inp["counter"]
        plain = opener.open(header, body)
        check_empty_body(kind, plain)
        if kind is FrameType.CHUNK:
            check_chunk(index, plain, _entries(inp["chunk_hashes_hex"]), size=inp["blob_size"],
                        chunk_size=inp["chunk_size"])
        return {"outcome": "accept", "type": kind.name, "index": index, "body_hex": plain.hex()}
    if op == "transfer.data.request":
        held = None if inp["held"] is None else set(inp["held"])
        req = parse_request(bytes.fromhex(inp["body_hex"]), n_chunks=inp["chunk_count"], held=held)
        return {"outcome": "accept", "ranges": [[r.start, r.end] for r in req.ranges]}
    if op == "transfer.data.error":
        err = DataError.decode(bytes.fromhex(inp["body_hex"]), DATA_BODY_LIMITS)
        return {"outcome": "accept", "reason": err.reason, "detail": err.detail}
    if op == "transfer.ticket.paths":
        return {"outcome": "accept", "tried": usable_paths(inp["paths"], inp["known"])}
    if op == "transfer.punch.role":
        role = punch_role(inp["nat_type"], inp["status"])
        return {"outcome": "accept", "role": role, "punch": complementary(role, inp["peer_role"])}
    raise AssertionError(f"unknown operation {op}")


def test_file_header() -> None:
    assert CONTENT["area"] == "transfer" and CONTENT["spec"] == "transfer.md"
    assert CONTENT["revision"] == 6


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    expected = v["expected"]
    if expected["outcome"] == "reject":
        with pytest.raises(ProtocolError) as exc:
            _run(v)
        assert exc.value.reason == expected["reason"], str(exc.value)
        if "field" in expected:
            assert isinstance(exc.value, ValidationError) and exc.value.field == expected["field"], str(exc.value)
    else:
        assert _run(v) == expected


def test_every_transfer_message_has_accept_and_reject_vectors() -> None:
    tags = {t for t, cls in REGISTRY.items()
            if cls.__module__ in ("protocol.transfer_messages", "protocol.transfer_punch")}
    seen: dict[str, set[int]] = {"accept": set(), "reject": set()}
    for v in VECTORS:
        if v["operation"] == "transfer.message.open":
            env = cbor.decode(bytes.fromhex(v["input"]["envelope_hex"]))
            seen[v["expected"]["outcome"]].add(env["type"])
    assert tags == set(range(64, 80))
    assert tags <= seen["accept"] and tags <= seen["reject"]


def test_every_data_plane_frame_type_and_error_has_vectors() -> None:
    opened = {v["expected"].get("type") for v in VECTORS
              if v["operation"] == "transfer.frame.open" and v["expected"]["outcome"] == "accept"}
    assert opened == {t.name for t in FrameType}
    reasons = {v["expected"].get("reason") for v in VECTORS if v["expected"]["outcome"] == "reject"}
    assert {"bad_chunk_index", "not_held", "bad_ticket", "bad_frame", "bad_frame_tag", "oversize",
            "corrupt_chunk", "bad_preamble", "bad_version", "bad_chunk_list", "bad_bitmap"} <= reasons
