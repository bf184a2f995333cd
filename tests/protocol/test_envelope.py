"""Signed envelopes (protocol/envelope.py, spec/encoding.md §4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.envelope import open_envelope, seal, signing_bytes, uvarint
from protocol.errors import ProtocolError
from protocol.identity import peer_id_from_raw_key
from protocol.jobspec import JobSpec, Timeouts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobspec_samples import sample_spec  # noqa: E402

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SPEC = sample_spec()
SIGNED = seal(SPEC, KEY)


def _reason(raw: bytes, **kwargs: object) -> str:
    with pytest.raises(ProtocolError) as err:
        open_envelope(raw, **kwargs)  # type: ignore[arg-type]
    return err.value.reason


def test_seal_then_open() -> None:
    opened = open_envelope(SIGNED.raw, expected=JobSpec, signer=SIGNED.signer)
    assert opened.message == SPEC
    assert opened.signer == peer_id_from_raw_key(KEY.public_key().public_bytes_raw())
    assert opened.digest == SIGNED.digest
    assert len(opened.digest) == 32


def test_signing_bytes_layout() -> None:
    payload = b"\xa0"
    assert signing_bytes("cpn/jobspec", 1, payload) == b"\x0bcpn/jobspec" + b"\x01\x01" + b"\x01\xa0"
    assert uvarint(300) == b"\xac\x02"
    assert uvarint(0) == b"\x00"


def test_signatures_are_deterministic() -> None:
    assert seal(SPEC, KEY).raw == SIGNED.raw


def test_single_bit_flips_never_verify() -> None:
    """Exhaustive over every bit of the envelope: nothing but the original opens."""
    raw = SIGNED.raw
    for i in range(len(raw)):
        for bit in range(8):
            changed = raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :]
            with pytest.raises(ProtocolError):
                open_envelope(changed)


@settings(max_examples=300)
@given(st.data())
def test_any_single_byte_change_never_verifies(data: st.DataObject) -> None:
    raw = SIGNED.raw
    i = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    with pytest.raises(ProtocolError):
        open_envelope(raw[:i] + bytes([new]) + raw[i + 1 :])


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        open_envelope(data)


def test_truncations_and_extensions_never_verify() -> None:
    raw = SIGNED.raw
    for n in range(len(raw)):
        with pytest.raises(ProtocolError):
            open_envelope(raw[:n])
    assert _reason(raw + b"\x00") == "trailing_bytes"


def test_wrong_signer() -> None:
    other_id = peer_id_from_raw_key(OTHER.public_key().public_bytes_raw())
    assert _reason(SIGNED.raw, signer=other_id) == "wrong_signer"


def test_unexpected_type() -> None:
    assert _reason(SIGNED.raw, expected=[]) == "unexpected_type"


def _envelope(**fields: object) -> bytes:
    env = cbor.decode(SIGNED.raw)
    env.update(fields)
    return cbor.encode({k: v for k, v in env.items() if v is not None})


def test_wrong_domain() -> None:
    payload = SPEC.encode()
    sig = KEY.sign(signing_bytes("cpn/negotiation/quote", 1, payload))
    assert _reason(_envelope(sig=sig)) == "bad_signature"


def test_signature_by_another_key() -> None:
    sig = OTHER.sign(signing_bytes("cpn/jobspec", 1, SPEC.encode()))
    assert _reason(_envelope(sig=sig)) == "bad_signature"


def test_payload_swapped() -> None:
    other = sample_spec(timeouts=Timeouts(transfer_s=1, queue_s=1, run_s=1))
    assert _reason(_envelope(payload=other.encode())) == "bad_signature"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": 60000}, "unknown_type"),
        ({"type": "1"}, "malformed"),
        ({"type": -1}, "malformed"),
        ({"type": True}, "malformed"),
        ({"sig": None}, "malformed"),
        ({"extra": 1}, "malformed"),
        ({"key": b"\x08\x01\x12\x20" + bytes(31)}, "bad_key"),
        ({"sig": bytes(63)}, "bad_signature"),
        ({"sig": bytes(64)}, "bad_signature"),
    ],
)
def test_malformed_envelopes(fields: dict[str, object], reason: str) -> None:
    assert _reason(_envelope(**fields)) == reason


def test_not_a_map() -> None:
    assert _reason(cbor.encode([1, 2, 3])) == "malformed"


def test_payload_is_validated_after_the_signature() -> None:
    wire = SPEC.to_wire()
    wire["network"] = "bridge"
    payload = cbor.encode(wire)
    raw = _envelope(payload=payload, sig=KEY.sign(signing_bytes("cpn/jobspec", 1, payload)))
    with pytest.raises(ProtocolError) as err:
        open_envelope(raw)
    assert err.value.reason == "invalid_field"
    assert "network" in str(err.value)
