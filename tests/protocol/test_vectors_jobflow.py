"""Run every vector of spec/vectors/jobflow.json against protocol/jobflow.py (the file
is the contract; tools/vectors/jobflow.py only writes it)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol import cbor
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError, ValidationError
from protocol.jobflow import FRAME_LIMITS, JobCancel, JobUpdate, JobWatch, WatchView
from protocol.result import Result

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "spec" / "vectors" / "jobflow.json"
CONTENT = json.loads(FILE.read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _watch(inp: dict[str, Any]) -> dict[str, Any]:
    view = WatchView(agreement_id=bytes.fromhex(inp["agreement_id_hex"]), lines=inp["log_lines"])
    new: list[str] = []
    result = None
    for i, frame in enumerate(inp["frames"]):
        try:
            got = open_envelope(bytes.fromhex(frame), expected=(JobUpdate, Result), signer=inp["provider"],
                                limits=FRAME_LIMITS)
            if isinstance(got.message, Result):
                result = got.digest.hex()
                assert i == len(inp["frames"]) - 1, "the Result ends the stream"
                break
            new += view.receive(got.message)
        except ProtocolError as exc:
            return {"outcome": "reject", "reason": exc.reason, "frame": i}
    phase = None if view.phase is None else view.phase.value
    return {"outcome": "accept", "lines": new, "phase": phase, "log_lines": view.lines, "result_digest_hex": result}


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp = v["input"]
    if v["operation"] == "jobflow.watch":
        return _watch(inp)
    assert v["operation"] == "jobflow.open"
    signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=(JobWatch, JobUpdate, JobCancel),
                           signer=inp.get("signer"), limits=FRAME_LIMITS)
    out: dict[str, Any] = {"outcome": "accept", "type": type(signed.message).__name__}
    for name, value in signed.message.to_wire().items():
        out[name + ("_hex" if isinstance(value, bytes) else "")] = value.hex() if isinstance(value, bytes) else value
    return out


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    try:
        got = _run(v)
    except ValidationError as exc:
        got = {"outcome": "reject", "reason": exc.reason, "field": exc.field}
        if "field" not in v["expected"]:
            del got["field"]
    except ProtocolError as exc:
        got = {"outcome": "reject", "reason": exc.reason}
    assert json.loads(json.dumps(got)) == v["expected"]


def test_file_header_and_coverage() -> None:
    assert (CONTENT["area"], CONTENT["spec"]) == ("jobflow", "jobflow.md")
    accepted = {v["expected"]["type"] for v in VECTORS
                if v["operation"] == "jobflow.open" and v["expected"]["outcome"] == "accept"}
    assert accepted == {"JobWatch", "JobUpdate", "JobCancel"}
    reasons = {v["expected"].get("reason") for v in VECTORS}
    assert {"wrong_signer", "invalid_field", "unexpected_type", "binding_mismatch", "unknown_agreement"} <= reasons
    rejected = {cbor.decode(bytes.fromhex(v["input"]["envelope_hex"]))["type"] for v in VECTORS
                if v["operation"] == "jobflow.open" and v["expected"]["outcome"] == "reject"}
    assert {JobWatch.TYPE, JobUpdate.TYPE, JobCancel.TYPE} <= rejected  # a reject vector per message type


def test_generator_matches_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        vectors = importlib.import_module("vectors")
        gen = importlib.import_module("vectors.jobflow")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert vectors.render(gen.generate()) == FILE.read_text()
