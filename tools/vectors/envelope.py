"""Vectors for spec/encoding.md, "Signed envelopes".

Operation ``envelope.open``: decode ``envelope_hex``, check the type against
``expected_types`` (when given) and the signer against ``signer`` (when given),
verify the signature over the domain-separated bytes and decode the payload.
The message type used is the job spec (tag 1, domain ``cpn/jobspec``).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key

from . import accept, key_from_seed, reject, seed, vector, vector_file
from .jobspec import sample_spec

OP = "envelope.open"
TAG = 1
DOMAIN = "cpn/jobspec"


def _envelope(
    signer: Ed25519PrivateKey, payload: bytes, *, tag: int = TAG, domain: str = DOMAIN, override: dict[str, Any] | None = None
) -> bytes:
    """An envelope built by hand, so that each part can be made wrong on purpose."""
    proto = public_key_proto_of(signer)
    env: dict[str, Any] = {
        "key": proto,
        "payload": payload,
        "sig": signer.sign(signing_bytes(domain, tag, payload)),
        "type": tag,
    }
    env.update(override or {})
    return cbor.encode({k: v for k, v in env.items() if v is not None})


def _open(name: str, description: str, env: bytes, expected: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    return vector(name, description, OP, {"envelope_hex": env.hex(), **inputs}, expected)


def generate() -> dict[str, Any]:
    alice_seed, bob_seed = seed("envelope/alice"), seed("envelope/bob")
    alice, bob = key_from_seed(alice_seed), key_from_seed(bob_seed)
    alice_id = peer_id_from_proto_key(public_key_proto_of(alice))
    bob_id = peer_id_from_proto_key(public_key_proto_of(bob))
    spec = sample_spec()
    payload = spec.encode()
    signed = seal(spec, alice)
    sig = alice.sign(signing_bytes(DOMAIN, TAG, payload))
    bad_payload = sample_spec().to_wire()
    bad_payload["network"] = "host"
    bad_payload_bytes = cbor.encode(bad_payload)
    flipped_sig = bytes([sig[0] ^ 1]) + sig[1:]

    vectors = [
        vector(
            "seal-jobspec",
            "sealing: the exact envelope bytes for seed, type, domain and payload (Ed25519 is deterministic)",
            "envelope.seal",
            {"signer_seed_hex": alice_seed.hex(), "type": TAG, "domain": DOMAIN, "payload_hex": payload.hex()},
            accept(
                envelope_hex=signed.raw.hex(),
                signing_bytes_hex=signing_bytes(DOMAIN, TAG, payload).hex(),
                signature_hex=sig.hex(),
                signer=alice_id,
            ),
        ),
        _open("open-valid", "a valid envelope; the signer is derived from the key", signed.raw,
              accept(signer=alice_id, type=TAG, payload_hex=payload.hex(), digest_hex=signed.digest.hex())),
        _open("open-valid-expected-signer", "the expected signer matches", signed.raw,
              accept(signer=alice_id, type=TAG, payload_hex=payload.hex(), digest_hex=signed.digest.hex()), signer=alice_id),
        _open("open-valid-expected-type", "the expected type matches", signed.raw,
              accept(signer=alice_id, type=TAG, payload_hex=payload.hex(), digest_hex=signed.digest.hex()), expected_types=[TAG]),
        _open("wrong-signer", "valid signature by alice, bob expected", signed.raw, reject("wrong_signer"), signer=bob_id),
        _open("unexpected-type", "a job spec where only type 2 is acceptable", signed.raw, reject("unexpected_type"), expected_types=[2]),
        _open("wrong-domain", "signed under domain 'cpn/other' instead of 'cpn/jobspec'",
              _envelope(alice, payload, domain="cpn/other"), reject("bad_signature")),
        _open("wrong-type-in-signed-bytes", "signed bytes name type 2, envelope says 1",
              _envelope(alice, payload, override={"sig": alice.sign(signing_bytes(DOMAIN, 2, payload))}), reject("bad_signature")),
        _open("signature-flipped-bit", "one bit of the signature flipped",
              _envelope(alice, payload, override={"sig": flipped_sig}), reject("bad_signature")),
        _open("signature-short", "a 63-byte signature", _envelope(alice, payload, override={"sig": sig[:63]}), reject("bad_signature")),
        _open("payload-changed", "payload differs from what was signed",
              _envelope(alice, sample_spec(max_price=1).encode(), override={"sig": sig}), reject("bad_signature")),
        _open("key-swapped", "bob's key with alice's signature",
              _envelope(alice, payload, override={"key": public_key_proto_of(bob)}), reject("bad_signature")),
        _open("key-not-ed25519", "public key with protobuf key type 2",
              _envelope(alice, payload, override={"key": b"\x08\x02\x12\x20" + public_key_proto_of(alice)[4:]}), reject("bad_key")),
        _open("key-raw", "a raw 32-byte key instead of the libp2p protobuf form",
              _envelope(alice, payload, override={"key": public_key_proto_of(alice)[4:]}), reject("bad_key")),
        _open("unknown-type", "type tag 200 is not in the registry",
              _envelope(alice, payload, tag=200, domain="cpn/unknown"), reject("unknown_type")),
        _open("missing-sig", "envelope without 'sig'", _envelope(alice, payload, override={"sig": None}), reject("malformed")),
        _open("extra-field", "envelope with an extra 'ts' field", _envelope(alice, payload, override={"ts": 1}), reject("malformed")),
        _open("type-as-text", "type given as text", _envelope(alice, payload, override={"type": "1"}), reject("malformed")),
        _open("payload-as-text", "payload given as text", _envelope(alice, payload, override={"payload": "x"}), reject("malformed")),
        _open("not-a-map", "an array instead of a map", cbor.encode([1, 2]), reject("malformed")),
        _open("trailing-bytes", "a valid envelope followed by one byte", signed.raw + b"\x00", reject("trailing_bytes")),
        _open("truncated", "a valid envelope missing its last byte", signed.raw[:-1], reject("truncated")),
        _open("invalid-payload-signed", "correctly signed payload that breaks a job spec rule",
              _envelope(alice, bad_payload_bytes), reject("invalid_field", field="network")),
        _open("payload-not-canonical", "correctly signed payload with a non-canonical integer",
              _envelope(alice, b"\x18\x01"), reject("non_canonical")),
        # ---- two failures at once: the order of section 4.3
        _open("unknown-type-before-bad-signature", "type 200 and a signature that does not verify: type first",
              _envelope(alice, payload, tag=200, override={"sig": flipped_sig}), reject("unknown_type")),
        _open("unexpected-type-before-bad-key", "a key that is not Ed25519 on a type that is not acceptable: type first",
              _envelope(alice, payload, override={"key": b"\x08\x02\x12\x20" + public_key_proto_of(alice)[4:]}),
              reject("unexpected_type"), expected_types=[2]),
        _open("bad-key-before-bad-signature", "a raw key and a flipped signature: the key first",
              _envelope(alice, payload, override={"key": public_key_proto_of(alice)[4:], "sig": flipped_sig}), reject("bad_key")),
        _open("bad-signature-before-wrong-signer", "a bad signature from a key other than the expected signer",
              _envelope(alice, payload, override={"sig": flipped_sig}), reject("bad_signature"), signer=bob_id),
        _open("wrong-signer-before-payload", "a correctly signed but invalid payload from the wrong signer: the payload is not parsed",
              _envelope(alice, bad_payload_bytes), reject("wrong_signer"), signer=bob_id),
        _open("malformed-before-unknown-type", "an unknown type and a missing sig: the envelope shape first",
              _envelope(alice, payload, tag=200, override={"sig": None}), reject("malformed")),
        _open("type-zero", "type 0 is never registered", _envelope(alice, payload, tag=0, domain="cpn/zero"), reject("unknown_type")),
        _open("type-negative", "type -1 is not an unsigned integer", _envelope(alice, payload, override={"type": -1}), reject("malformed")),
        _open("type-bool", "type true is not an unsigned integer", _envelope(alice, payload, override={"type": True}), reject("malformed")),
        _open("key-as-text", "key given as text", _envelope(alice, payload, override={"key": "k"}), reject("malformed")),
        _open("integer-map-key", "an extra integer key 1 in the envelope map",
              cbor.encode({1: b"", **cbor.decode(signed.raw)}), reject("malformed")),
        _open("payload-not-a-map", "a correctly signed payload that is an array: invalid_field named after the message",
              _envelope(alice, cbor.encode([1])), reject("invalid_field", field="JobSpec")),
        _open("payload-unknown-and-missing", "a signed payload with an unknown field and a missing one: unknown_field",
              _envelope(alice, cbor.encode({**{k: v for k, v in sample_spec().to_wire().items() if k != "nonce"}, "x": 1})),
              reject("unknown_field")),
        _open("payload-16-deep", "the payload is decoded from depth 0 again: 16 nested arrays decode (then fail as a JobSpec)",
              _envelope(alice, bytes.fromhex("81" * 15 + "80")), reject("invalid_field", field="JobSpec")),
        _open("payload-too-deep", "the payload is decoded from depth 0 again: 16 levels inside it are fine, 17 are not",
              _envelope(alice, bytes.fromhex("81" * 16 + "80")), reject("too_deep")),
        _open("signature-65-bytes", "a 65-byte signature", _envelope(alice, payload, override={"sig": sig + b"\x00"}),
              reject("bad_signature")),
    ]
    return vector_file("envelope", "encoding.md", 2, vectors)
