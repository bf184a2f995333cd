"""Run every vector of spec/vectors/execution.json against protocol/result.py and
the ledger's entry hash (the file is the contract; tools/vectors/execution.py
only writes it)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from node.ledger import entry_hash
from protocol.errors import ProtocolError, ValidationError
from protocol.result import verify_receipt, verify_result

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "spec" / "vectors" / "execution.json"
CONTENT = json.loads(FILE.read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp, op = v["input"], v["operation"]
    if op == "result.open":
        signed = verify_result(
            bytes.fromhex(inp["envelope_hex"]),
            provider=inp.get("provider"),
            submitter=inp.get("submitter"),
            agreement_id=bytes.fromhex(inp["agreement_id_hex"]) if "agreement_id_hex" in inp else None,
            job_digest=bytes.fromhex(inp["job_digest_hex"]) if "job_digest_hex" in inp else None,
        )
        m = signed.message
        return {
            "outcome": "accept", "signer": signed.signer, "result_outcome": m.outcome.value,
            "exit_code": m.exit_code, "wall_ms": m.metering.wall_ms, "cpu_ms": m.metering.cpu_ms,
            "peak_memory_bytes": m.metering.peak_memory_bytes,
            "gpu_ms": {g.uuid: g.gpu_ms for g in m.metering.gpus},
        }
    if op == "receipt.verify":
        vr = verify_receipt(bytes.fromhex(inp["receipt_hex"]), submitter=inp.get("submitter"))
        return {
            "outcome": "accept", "result_digest_hex": vr.result.digest.hex(),
            "countersigner": vr.receipt.signer, "provider": vr.result.signer,
        }
    if op == "ledger.entry_hash":
        h = entry_hash(inp["seq"], bytes.fromhex(inp["prev_hex"]), inp["recorded_at"],
                       bytes.fromhex(inp["receipt_hex"]))
        return {"outcome": "accept", "entry_hash_hex": h.hex()}
    raise AssertionError(f"unknown operation {op}")


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    try:
        got = _run(v)
    except ValidationError as exc:
        got = {"outcome": "reject", "reason": exc.reason, "field": exc.field}
    except ProtocolError as exc:
        got = {"outcome": "reject", "reason": exc.reason}
    assert got == v["expected"]


def test_file_header_and_coverage() -> None:
    assert (CONTENT["area"], CONTENT["spec"]) == ("execution", "execution.md")
    reasons = {v["expected"].get("reason") for v in VECTORS}
    for needed in ("bad_signature", "wrong_signer", "wrong_countersigner", "digest_mismatch",
                   "unexpected_type", "invalid_field", "binding_mismatch"):
        assert needed in reasons
    outcomes = {v["expected"].get("result_outcome") for v in VECTORS}
    assert {"exited", "oom", "timeout", "cancelled", "failed"} <= outcomes
    assert sum(v["expected"]["outcome"] == "accept" for v in VECTORS) >= 4


def test_generator_matches_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        vectors = importlib.import_module("vectors")
        gen = importlib.import_module("vectors.execution")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert vectors.render(gen.generate()) == FILE.read_text()
