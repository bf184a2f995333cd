"""Run every vector of spec/vectors/dht.json against protocol/dht_advert.py (the
file is the contract; tools/vectors/dht.py only writes it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.advert import Tombstone
from protocol.dht_advert import (
    MAX_ANSWER,
    advert_key,
    check_request,
    decode_answer,
    encode_answer,
    peer_of_advert_key,
    select_value,
    validate_value,
)
from protocol.errors import ProtocolError

ROOT = Path(__file__).resolve().parents[2]
CONTENT = json.loads((ROOT / "spec" / "vectors" / "dht.json").read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _record(signed: Any) -> dict[str, Any]:
    kind = "Tombstone" if isinstance(signed.message, Tombstone) else "Advert"
    return {"outcome": "accept", "type": kind, "seq": signed.message.seq}


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp, op = v["input"], v["operation"]
    if op == "dht.advert_key":
        key = advert_key(inp["peer_id"])
        return {"outcome": "accept", "key": key, "key_hex": key.encode().hex()}
    if op == "dht.advert_key.parse":
        return {"outcome": "accept", "peer_id": peer_of_advert_key(bytes.fromhex(inp["key_hex"]))}
    if op == "dht.validate":
        return _record(validate_value(bytes.fromhex(inp["key_hex"]), bytes.fromhex(inp["value_hex"]), inp["now"]))
    if op == "dht.select":
        values = [bytes.fromhex(x) for x in inp["values_hex"]]
        return {"outcome": "accept", "index": select_value(bytes.fromhex(inp["key_hex"]), values, inp["now"])}
    if op == "dht.advert_request.check":
        check_request(bytes.fromhex(inp["bytes_hex"]))
        return {"outcome": "accept"}
    if op == "dht.advert_answer.encode":
        record = bytes.fromhex(inp["record_hex"]) if "record_hex" in inp else None
        return {"outcome": "accept", "bytes_hex": encode_answer(record, inp.get("error")).hex()}
    if op == "dht.advert_answer.decode":
        return _record(decode_answer(bytes.fromhex(inp["bytes_hex"]), inp["now"], inp["peer_id"]))
    raise AssertionError(f"unknown operation {op}")


def test_file_header() -> None:
    assert (CONTENT["area"], CONTENT["spec"], CONTENT["revision"]) == ("dht", "dht.md", 9)
    assert {v["operation"] for v in VECTORS} == {
        "dht.advert_key", "dht.advert_key.parse", "dht.validate", "dht.select", "dht.advert_request.check",
        "dht.advert_answer.encode", "dht.advert_answer.decode"}


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    expected = v["expected"]
    if expected["outcome"] == "reject":
        with pytest.raises(ProtocolError) as exc:
            _run(v)
        assert exc.value.reason == expected["reason"], str(exc.value)
    else:
        assert _run(v) == expected


def test_oversize_answer_vector_is_one_byte_over() -> None:
    (v,) = [v for v in VECTORS if v["name"] == "answer-decode-oversize"]
    assert len(bytes.fromhex(v["input"]["bytes_hex"])) == MAX_ANSWER + 1
