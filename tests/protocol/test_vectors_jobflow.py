"""Run every vector of spec/vectors/jobflow.json against protocol/jobflow.py (the file
is the contract; tools/vectors/jobflow.py only writes it)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol.envelope import open_envelope
from protocol.errors import ProtocolError
from protocol.jobflow import JobCancel, JobUpdate, JobWatch

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "spec" / "vectors" / "jobflow.json"
CONTENT = json.loads(FILE.read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp = v["input"]
    assert v["operation"] == "jobflow.open"
    signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=(JobWatch, JobUpdate, JobCancel),
                           signer=inp.get("signer"))
    out: dict[str, Any] = {"outcome": "accept", "type": type(signed.message).__name__}
    for name, value in signed.message.to_wire().items():
        out[name + ("_hex" if isinstance(value, bytes) else "")] = value.hex() if isinstance(value, bytes) else value
    return out


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    try:
        got = _run(v)
    except ProtocolError as exc:
        got = {"outcome": "reject", "reason": exc.reason}
    assert json.loads(json.dumps(got)) == v["expected"]


def test_file_header_and_coverage() -> None:
    assert (CONTENT["area"], CONTENT["spec"]) == ("jobflow", "jobflow.md")
    accepted = {v["expected"].get("type") for v in VECTORS if v["expected"]["outcome"] == "accept"}
    assert accepted == {"JobWatch", "JobUpdate", "JobCancel"}
    assert {"wrong_signer", "invalid_field"} <= {v["expected"].get("reason") for v in VECTORS}


def test_generator_matches_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        vectors = importlib.import_module("vectors")
        gen = importlib.import_module("vectors.jobflow")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert vectors.render(gen.generate()) == FILE.read_text()
