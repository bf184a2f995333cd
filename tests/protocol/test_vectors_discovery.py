"""Run every vector of spec/vectors/discovery.json against protocol/ (the file is
the contract; tools/vectors/discovery.py only writes it)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol.advert import Advert, open_record, select_raw
from protocol.errors import ProtocolError
from protocol.jobspec import Resources
from protocol.matching import evaluate

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "spec" / "vectors" / "discovery.json"
CONTENT = json.loads(FILE.read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _run(v: dict[str, Any]) -> dict[str, Any]:
    inp = v["input"]
    op = v["operation"]
    if op == "record.open":
        signed = open_record(
            bytes.fromhex(inp["envelope_hex"]), inp["now"], peer_id=inp.get("peer_id")
        )
        return {
            "outcome": "accept",
            "type": type(signed.message).__name__,
            "signer": signed.signer,
            "seq": signed.message.seq,
        }
    if op == "record.select":
        records = [bytes.fromhex(h) for h in inp["records_hex"]]
        return {"outcome": "accept", "index": select_raw(records, inp["now"])}
    if op == "match.evaluate":
        adv = Advert.decode(bytes.fromhex(inp["advert_hex"]))
        req = Resources.decode(bytes.fromhex(inp["requirement_hex"]))
        fit = evaluate(req, adv, now=inp["now"], max_price=inp["max_price"], run_s=inp["run_s"])
        return {
            "outcome": "accept",
            "failures": list(fit.failures),
            "gpu_uuids": list(fit.gpu_uuids),
            "hourly_cost": fit.hourly_cost,
        }
    raise AssertionError(f"unknown operation {op}")


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    expected = v["expected"]
    try:
        got = _run(v)
    except ProtocolError as exc:
        got = {"outcome": "reject", "reason": exc.reason}
    assert got == expected


def test_file_header_and_coverage() -> None:
    assert (CONTENT["area"], CONTENT["spec"]) == ("discovery", "discovery.md")
    reasons = {v["expected"].get("reason") for v in VECTORS}
    for needed in (
        "expired",
        "not_yet_valid",
        "lifetime_too_long",
        "bad_signature",
        "wrong_signer",
        "unknown_field",
        "malformed",
        "no_valid_record",
    ):
        assert needed in reasons
    assert any(v["name"] == "select-tombstone-equal-seq" for v in VECTORS)


def test_signer_seeds_reproduce_the_signer() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.envelope import public_key_proto_of
    from protocol.identity import peer_id_from_proto_key

    (v,) = [v for v in VECTORS if v["name"] == "advert-valid"]
    k = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["input"]["signer_seed_hex"]))
    assert peer_id_from_proto_key(public_key_proto_of(k)) == v["expected"]["signer"]


def test_generator_matches_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        vectors = importlib.import_module("vectors")
        gen = importlib.import_module("vectors.discovery")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert vectors.render(gen.generate()) == FILE.read_text()
