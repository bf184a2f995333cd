"""protocol/result.py: signed results, countersigned receipts, their rules."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import public_key_proto_of, seal
from protocol.errors import LocalProtocolError, ProtocolError, ValidationError
from protocol.identity import peer_id_from_proto_key
from protocol.result import (
    Outcome,
    OutputBlob,
    Receipt,
    Result,
    countersign,
    verify_receipt,
    verify_result,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from vectors.execution import sample_result  # noqa: E402

sys.path.pop(0)

PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SUBMITTER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
MALLORY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))


def pid(key: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(key))


def result(**changes: Any) -> Result:
    return sample_result(PROVIDER, pid(SUBMITTER), **changes)


def test_receipt_round_trip_verifies() -> None:
    signed = seal(result(), PROVIDER)
    opened = verify_result(signed.raw, provider=pid(PROVIDER), submitter=pid(SUBMITTER))
    assert opened.message == signed.message
    receipt = countersign(opened, SUBMITTER, now=123)
    v = verify_receipt(receipt.raw, submitter=pid(SUBMITTER), provider=pid(PROVIDER))
    assert v.result.message.exit_code == 0
    assert v.receipt.message.result_digest == hashlib.sha256(signed.raw).digest()
    assert v.receipt.message.received_at == 123


def test_only_the_submitter_can_countersign() -> None:
    signed = seal(result(), PROVIDER)
    with pytest.raises(LocalProtocolError):
        countersign(signed, MALLORY, now=1)


def test_receipt_over_tampered_result_is_refused() -> None:
    signed = seal(result(), PROVIDER)
    env = cbor.decode(signed.raw)
    env["payload"] = result(exit_code=3).encode()
    forged = cbor.encode(env)
    receipt = Receipt(result=forged, result_digest=hashlib.sha256(forged).digest(), accepted=True,
                      detail="", received_at=1)
    with pytest.raises(ProtocolError) as exc:
        verify_receipt(seal(receipt, SUBMITTER).raw)
    assert exc.value.reason == "bad_signature"


def test_receipt_from_wrong_countersigner() -> None:
    signed = seal(result(), PROVIDER)
    receipt = Receipt(result=signed.raw, result_digest=hashlib.sha256(signed.raw).digest(),
                      accepted=True, detail="", received_at=1)
    with pytest.raises(ProtocolError) as exc:
        verify_receipt(seal(receipt, MALLORY).raw)
    assert exc.value.reason == "wrong_countersigner"


def test_binding_checks() -> None:
    signed = seal(result(), PROVIDER)
    with pytest.raises(ProtocolError) as exc:
        verify_result(signed.raw, agreement_id=bytes(16))
    assert exc.value.reason == "binding_mismatch"
    with pytest.raises(ProtocolError) as exc:
        verify_result(seal(result(), MALLORY).raw)
    assert exc.value.reason == "wrong_signer"


@pytest.mark.parametrize(
    "changes",
    [
        {"oom": True},  # flag without the outcome
        {"outcome": Outcome.OOM, "exit_code": 137},  # outcome without the flag
        {"outcome": Outcome.TIMEOUT, "exit_code": None},
        {"exit_code": None},  # exited without an exit code
        {"exit_code": 256},
        {"agreement_id": b"short"},
        {"finished_at": 0},
        {"detail": "x" * 600},
    ],
)
def test_result_rules(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        result(**changes)


def test_output_paths_must_stay_inside() -> None:
    ok = dict(digest="sha256:" + "0" * 64, size=0, chunk_size=1 << 20, chunk_root="sha256:" + "0" * 64)
    for bad in ("/etc/passwd", "../x", "out/../../x", "out//x", "out/./x"):
        with pytest.raises(ValidationError):
            OutputBlob(path=bad, **ok)
    a = OutputBlob(path="out/a", **ok)
    b = OutputBlob(path="out/b", **ok)
    with pytest.raises(ValidationError):
        result(outputs=(b, a))  # unsorted
    with pytest.raises(ValidationError):
        result(outputs=(a, a))


def test_outcomes_with_their_flags_are_valid() -> None:
    r = result(outcome=Outcome.OOM, exit_code=137, oom=True)
    assert Result.decode(r.encode()) == r
    t = result(outcome=Outcome.TIMEOUT, exit_code=None, timed_out=True)
    assert Result.decode(t.encode()).timed_out
    f = result(outcome=Outcome.FAILED, exit_code=None, detail="image refused", outputs=())
    assert Result.decode(f.encode()).outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        ({"outcome": Outcome.OOM, "oom": True, "exit_code": 137}, True),
        ({"outcome": Outcome.OOM, "oom": True, "exit_code": None}, False),
        ({"outcome": Outcome.OOM, "oom": True, "exit_code": 1}, False),
        ({"outcome": Outcome.TIMEOUT, "timed_out": True, "exit_code": None}, True),
        ({"outcome": Outcome.TIMEOUT, "timed_out": True, "exit_code": 137}, False),
        ({"outcome": Outcome.CANCELLED, "exit_code": 0}, False),
        ({"outcome": Outcome.FAILED, "exit_code": 0}, False),
        ({"outcome": Outcome.EXITED, "exit_code": 137}, True),  # a job that killed itself
    ],
)
def test_exit_code_only_when_the_process_ended_on_its_own(changes: dict[str, Any], ok: bool) -> None:
    """execution.md 1.1: exit_code for exited (0..255) and oom (137), null otherwise."""
    if ok:
        r = result(**changes)
        assert Result.decode(r.encode()) == r
    else:
        with pytest.raises(ValidationError) as exc:
            result(**changes)
        assert exc.value.field == "exit_code"


@pytest.mark.parametrize(
    ("field", "value"),
    [("digest", "sha256:" + "0" * 64 + "\n"), ("chunk_root", "md5:0"), ("chunk_size", 4097), ("chunk_size", 2048)],
)
def test_output_blob_rules_are_invalid_field(field: str, value: Any) -> None:
    ok: dict[str, Any] = dict(path="out/a", digest="sha256:" + "0" * 64, size=0, chunk_size=1 << 20,
                              chunk_root="sha256:" + "0" * 64)
    with pytest.raises(ValidationError) as exc:
        OutputBlob(**{**ok, field: value})
    assert exc.value.field == field
