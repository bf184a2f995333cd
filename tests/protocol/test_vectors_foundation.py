"""Check the foundation vector files (spec/vectors/{encoding,envelope,identifiers,jobspec}.json)
against the code, the way another implementation would consume them: only the
JSON, the documented operations and the public API."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.envelope import open_envelope, public_key_proto_of, signing_bytes
from protocol.errors import ProtocolError, ValidationError
from protocol.identifiers import (
    advertised_ids,
    cid_string,
    dht_key,
    lookup_ids,
    memory_tier,
    normalise_gpu_model,
    parse_id,
)
from protocol.identity import peer_id_from_proto_key, peer_id_from_raw_key, validate_peer_id
from protocol.jobspec import JobSpec, Resources, check_created_at
from protocol.resources import ResourceSet, parse_gpu_name, vendor_of_model
from protocol.wire import REGISTRY

# Every message module, so that the registry holds every tag of spec/README.md
# (an envelope of a registered type must be unexpected_type, not unknown_type).
for _module in ("advert", "jobflow", "negotiation", "result", "transfer"):
    importlib.import_module(f"protocol.{_module}")

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
AREAS = ("encoding", "envelope", "identifiers", "jobspec")


def _load(area: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{area}.json").read_text(encoding="utf-8"))


def _cases(area: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in _load(area)["vectors"]]


def from_json(value: Any) -> Any:
    """Inverse of the lossless JSON form of spec/README.md."""
    if isinstance(value, dict) and set(value) == {"bytes_hex"}:
        return bytes.fromhex(value["bytes_hex"])
    if isinstance(value, dict) and set(value) == {"map"}:
        return {from_json(k): from_json(v) for k, v in value["map"]}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {"map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    return value


def _outcome(fn: Any) -> dict[str, Any]:
    try:
        return {"outcome": "accept", **fn()}
    except ValidationError as exc:
        return {"outcome": "reject", "reason": exc.reason, "field": exc.field}
    except ProtocolError as exc:
        return {"outcome": "reject", "reason": exc.reason}


def _compare(got: dict[str, Any], expected: dict[str, Any]) -> None:
    if expected["outcome"] == "reject" and "field" not in expected:
        got.pop("field", None)
    assert got == expected


@pytest.mark.parametrize("area", AREAS)
def test_file_shape(area: str) -> None:
    content = _load(area)
    assert content["area"] == area
    assert (VECTORS.parent / content["spec"]).exists()
    assert isinstance(content["revision"], int)
    names = [v["name"] for v in content["vectors"]]
    assert len(names) == len(set(names))
    outcomes = {v["expected"]["outcome"] for v in content["vectors"]}
    assert outcomes == {"accept", "reject"}, "each area has positive and negative vectors"
    for v in content["vectors"]:
        assert set(v) == {"name", "description", "operation", "input", "expected"}
        if v["expected"]["outcome"] == "reject":
            assert v["expected"]["reason"]


@pytest.mark.parametrize("v", _cases("encoding"))
def test_encoding(v: dict[str, Any]) -> None:
    inp, op = v["input"], v["operation"]
    if op == "cbor.decode":
        data = bytes.fromhex(inp["bytes_hex"])
        limits = cbor.Limits(**inp["limits"]) if "limits" in inp else cbor.DEFAULT_LIMITS

        def run() -> dict[str, Any]:
            return {"value": cbor.decode(data, limits)}

        got = _outcome(run)
        if got["outcome"] == "accept":
            assert cbor.encode(got["value"]) == data, "accepted bytes are the unique encoding"
            assert from_json(v["expected"]["value"]) == got["value"]
            # json.dumps tells true from 1, which == does not
            got["value"] = json.loads(json.dumps(to_json(got["value"])))
        _compare(got, v["expected"])
    elif op == "peer_id.from_public_key":
        assert peer_id_from_raw_key(bytes.fromhex(inp["public_key_hex"])) == v["expected"]["peer_id"]
    elif op == "peer_id.parse":

        def parse() -> dict[str, Any]:
            from protocol.identity import b58decode

            validate_peer_id(inp["peer_id"])
            return {"public_key_hex": b58decode(inp["peer_id"])[6:].hex()}

        _compare(_outcome(parse), v["expected"])
    else:  # pragma: no cover - a new operation needs code here
        pytest.fail(f"unknown operation {op}")


@pytest.mark.parametrize("v", _cases("envelope"))
def test_envelope(v: dict[str, Any]) -> None:
    inp, op = v["input"], v["operation"]
    if op == "envelope.seal":
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["signer_seed_hex"]))
        payload = bytes.fromhex(inp["payload_hex"])
        msg = REGISTRY[inp["type"]].decode(payload)
        assert msg.DOMAIN == inp["domain"]
        from protocol.envelope import seal

        signed = seal(msg, key)
        exp = v["expected"]
        assert signing_bytes(inp["domain"], inp["type"], payload).hex() == exp["signing_bytes_hex"]
        assert signed.raw.hex() == exp["envelope_hex"]
        assert cbor.decode(signed.raw)["sig"].hex() == exp["signature_hex"]
        assert signed.signer == exp["signer"] == peer_id_from_proto_key(public_key_proto_of(key))
        return
    assert op == "envelope.open"
    types = inp.get("expected_types")

    def run() -> dict[str, Any]:
        expected = None if types is None else [REGISTRY[t] for t in types if t in REGISTRY]
        signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=expected, signer=inp.get("signer"))
        return {
            "signer": signed.signer,
            "type": signed.message.TYPE,
            "payload_hex": signed.message.encode().hex(),
            "digest_hex": signed.digest.hex(),
        }

    _compare(_outcome(run), v["expected"])


@pytest.mark.parametrize("v", _cases("identifiers"))
def test_identifiers(v: dict[str, Any]) -> None:
    inp, op = v["input"], v["operation"]

    def run() -> dict[str, Any]:
        if op == "model.vendor":
            return {"vendor": vendor_of_model(inp["model"])}
        if op == "gpu.parse_name":
            parsed = parse_gpu_name(inp["name"])
            return {"vendor": parsed.vendor, "model": parsed.model, "memory_gb": parsed.memory_gb}
        if op == "gpu.normalise":
            vendor, model = normalise_gpu_model(inp["name"])
            return {"vendor": vendor, "model": model, "memory_tier": memory_tier(inp["memory_mib"])}
        if op == "id.parse":
            parsed = parse_id(inp["id"])
            assert str(parsed) == inp["id"], "parse then print gives the canonical text back"
            return {"dht_key_hex": dht_key(inp["id"]).hex(), "cid": cid_string(inp["id"])}
        if op == "ids.advertise":
            return {"ids": advertised_ids(ResourceSet.decode(bytes.fromhex(inp["resources_hex"])))}
        if op == "ids.lookup":
            return {"ids": lookup_ids(Resources.decode(bytes.fromhex(inp["requirement_hex"])))}
        raise AssertionError(f"unknown operation {op}")

    _compare(_outcome(run), v["expected"])


@pytest.mark.parametrize("v", _cases("jobspec"))
def test_jobspec(v: dict[str, Any]) -> None:
    inp, op = v["input"], v["operation"]

    def run() -> dict[str, Any]:
        if op == "jobspec.decode":
            spec = JobSpec.decode(bytes.fromhex(inp["bytes_hex"]))
            return {"name": spec.name, "blobs": [b.digest for b in spec.blobs()]}
        if op == "jobspec.open":
            signed = open_envelope(bytes.fromhex(inp["envelope_hex"]), expected=JobSpec)
            check_created_at(signed.message, now=inp["now"])
            return {"signer": signed.signer, "job_digest_hex": signed.digest.hex()}
        if op == "blob.chunk_root":
            data = bytes.fromhex(inp["data_hex"])
            hashes = chunk_hashes(data, inp["chunk_size"])
            # the pure-Python reference (spec/jobspec.md section 3) agrees with the fast backend
            assert chunk_hashes(data, inp["chunk_size"], pure=True) == hashes
            return {
                "digest": digest_of(data),
                "chunk_hashes_hex": [h.hex() for h in hashes],
                "chunk_root": chunk_root(hashes),
            }
        raise AssertionError(f"unknown operation {op}")

    got = _outcome(run)
    _compare(got, v["expected"])
    if v["name"] == "signed-jobspec":  # the seed in the input reproduces the signer
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["submitter_seed_hex"]))
        assert got["signer"] == peer_id_from_proto_key(public_key_proto_of(key))
