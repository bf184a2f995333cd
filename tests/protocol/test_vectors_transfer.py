"""Run every vector of spec/vectors/transfer.json against protocol/ (the file is
the contract; tools/vectors/transfer.py only writes it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol import cbor
from protocol.chunks import verify_chunk_list
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError
from protocol.transfer import (
    CONTROL_LIMITS,
    HEADER_SIZE,
    ChunkList,
    FetchGrant,
    FrameOpener,
    FrameType,
    GetChunkList,
    Have,
    Holders,
    Offer,
    OfferResult,
    Present,
    Ticket,
    TicketRequest,
    TransferError,
    Want,
    WhoHas,
    check_chunk,
    decode_header,
    decode_preamble,
    derive_keys,
)

ROOT = Path(__file__).resolve().parents[2]
CONTENT = json.loads((ROOT / "spec" / "vectors" / "transfer.json").read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]
TYPES = (Want, Have, GetChunkList, ChunkList, TicketRequest, Ticket, Offer, OfferResult, TransferError,
         WhoHas, Holders, FetchGrant, Present)


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {"map": [[_json(k), _json(v)] for k, v in value.items()]}
    return value


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp, op = v["input"], v["operation"]
    if op == "transfer.message.open":
        signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=TYPES, signer=inp["signer"],
                               limits=CONTROL_LIMITS)
        msg = signed.message
        return {"outcome": "accept", "type": type(msg).__name__, "fields": _json(cbor.decode(msg.encode()))}
    if op == "transfer.chunk_list.verify":
        raw = bytes.fromhex(inp["hashes_hex"])
        verify_chunk_list([raw[i : i + 32] for i in range(0, len(raw), 32)], size=inp["size"],
                          chunk_size=inp["chunk_size"], root=inp["root"], digest=inp["digest"])
        return {"outcome": "accept"}
    if op == "transfer.keys.derive":
        c2s, s2c = derive_keys(bytes.fromhex(inp["secret_hex"]), bytes.fromhex(inp["ticket_id_hex"]))
        return {"outcome": "accept", "client_to_server_key_hex": c2s.hex(), "server_to_client_key_hex": s2c.hex()}
    if op == "transfer.preamble.decode":
        return {"outcome": "accept", "ticket_id_hex": decode_preamble(bytes.fromhex(inp["bytes_hex"])).hex()}
    if op == "transfer.frame.open":
        frame = bytes.fromhex(inp["frame_hex"])
        from_server = inp["sender"] == "server"
        header, body = frame[:HEADER_SIZE], frame[HEADER_SIZE:]
        kind, index, length = decode_header(header, from_server=from_server)
        if len(body) != length:
            raise ProtocolError("bad_frame", "truncated body")
        c2s, s2c = derive_keys(bytes.fromhex(inp["secret_hex"]), bytes.fromhex(inp["ticket_id_hex"]))
        opener = FrameOpener(s2c if from_server else c2s)
        opener.counter = inp["counter"]
        plain = opener.open(header, body)
        if kind is FrameType.CHUNK:
            raw = bytes.fromhex(inp["chunk_hashes_hex"])
            check_chunk(index, plain, [raw[i : i + 32] for i in range(0, len(raw), 32)],
                        size=inp["blob_size"], chunk_size=inp["chunk_size"])
        return {"outcome": "accept", "type": kind.name, "index": index, "body_hex": plain.hex()}
    raise AssertionError(f"unknown operation {op}")


def test_file_header() -> None:
    assert CONTENT["area"] == "transfer" and CONTENT["spec"] == "transfer.md"
    assert any(v["expected"]["outcome"] == "reject" for v in VECTORS)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    expected = v["expected"]
    if expected["outcome"] == "reject":
        with pytest.raises(ProtocolError) as exc:
            _run(v)
        assert exc.value.reason == expected["reason"], str(exc.value)
    else:
        assert _run(v) == expected
