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
from protocol.errors import ProtocolError, ValidationError
from protocol.jobspec import Resources
from protocol.matching import CONSTRAINTS, Offer, evaluate, explain, rank

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
    req = Resources.decode(bytes.fromhex(inp["requirement_hex"]))
    if op == "match.evaluate":
        adv = Advert.decode(bytes.fromhex(inp["advert_hex"]))
        fit = evaluate(
            req,
            adv,
            now=inp["now"],
            max_price=inp["max_price"],
            run_s=inp["run_s"],
            require_container=inp["require_container"],
        )
        return {
            "outcome": "accept",
            "failures": list(fit.failures),
            "gpu_uuids": list(fit.gpu_uuids),
            "hourly_cost": fit.hourly_cost,
            "fit_pct": fit.fit_pct,
        }
    if op == "match.explain":
        adverts = [Advert.decode(bytes.fromhex(h)) for h in inp["adverts_hex"]]
        matched, why = explain(
            req,
            adverts,
            now=inp["now"],
            max_price=inp["max_price"],
            run_s=inp["run_s"],
            require_container=inp["require_container"],
            invalid=inp["invalid"],
            unreachable=inp["unreachable"],
        )
        eliminated: dict[str, int] = why.to_json()["eliminated"]  # type: ignore[assignment]
        return {
            "outcome": "accept",
            "matched": [adverts.index(a) for a, _ in matched],
            "eliminated": [[k, n] for k, n in eliminated.items()],
            "summary": why.summary(),
        }
    if op == "match.rank":
        offers = []
        for o in inp["offers"]:
            adv = Advert.decode(bytes.fromhex(o["advert_hex"]))
            offers.append(Offer(advert=adv, fit=evaluate(req, adv), rtt_ms=o["rtt_ms"]))
        ranked = rank(offers)
        return {
            "outcome": "accept",
            "order": [offers.index(o) for o in ranked],
            "peer_ids": [o.advert.peer_id for o in ranked],
            "fit_pct": [o.fit.fit_pct for o in ranked],
        }
    raise AssertionError(f"unknown operation {op}")


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict[str, Any]) -> None:
    expected = v["expected"]
    try:
        got = _run(v)
    except ValidationError as exc:
        got = {"outcome": "reject", "reason": exc.reason, "field": exc.field}
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
    for needed in ("unknown_type", "unexpected_type", "bad_key", "wrong_peer", "missing_field",
                   "invalid_field", "oversize", "too_deep", "too_many_items"):
        assert needed in reasons, needed
    # every matching constraint appears in some failures list, and every operation is used
    failed = {f for v in VECTORS if v["operation"] == "match.evaluate" for f in v["expected"]["failures"]}
    assert failed == set(CONSTRAINTS)
    assert {v["operation"] for v in VECTORS} == {
        "record.open", "record.select", "match.evaluate", "match.explain", "match.rank"}
    for v in VECTORS:
        if v["expected"].get("reason") == "invalid_field":
            assert v["expected"]["field"], v["name"]


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
