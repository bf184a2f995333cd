"""libp2p identities for Ed25519 keys, without importing libp2p.

A libp2p peer ID for an Ed25519 key is the *identity multihash* of the
protobuf-encoded public key (``08 01 12 20 || key``), written in base58btc
(the familiar ``12D3KooW...`` form).  See spec/encoding.md, "Identities".
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import ProtocolError, ValidationError

__all__ = [
    "public_key_to_proto",
    "public_key_from_proto",
    "peer_id_from_proto_key",
    "peer_id_from_raw_key",
    "peer_id_bytes",
    "validate_peer_id",
    "check_peer_id_field",
    "b58encode",
    "b58decode",
]

_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"  # KeyType=Ed25519 (1), Data: 32 bytes
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _INDEX[c]
        except KeyError:
            raise ProtocolError("bad_peer_id", f"character {c!r} is not base58btc") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def public_key_to_proto(raw: bytes) -> bytes:
    """The libp2p protobuf ``PublicKey`` encoding of a raw 32-byte Ed25519 key."""
    if len(raw) != 32:
        raise ProtocolError("bad_key", f"Ed25519 public key must be 32 bytes, got {len(raw)}")
    return _ED25519_PROTO_PREFIX + raw


def public_key_from_proto(proto: bytes) -> bytes:
    """Inverse of :func:`public_key_to_proto`; only Ed25519 keys are accepted."""
    if len(proto) != 36 or not proto.startswith(_ED25519_PROTO_PREFIX):
        raise ProtocolError("bad_key", "public key is not a libp2p protobuf Ed25519 key")
    return proto[4:]


def peer_id_bytes(proto: bytes) -> bytes:
    """Binary peer ID: identity multihash (code 0x00) of the protobuf key."""
    return b"\x00" + bytes((len(proto),)) + proto


@lru_cache(maxsize=4096)
def peer_id_from_proto_key(proto: bytes) -> str:
    public_key_from_proto(proto)
    return b58encode(peer_id_bytes(proto))


def peer_id_from_raw_key(raw: bytes) -> str:
    return peer_id_from_proto_key(public_key_to_proto(raw))


def validate_peer_id(text: str) -> str:
    """Check ``text`` is the peer ID of an Ed25519 key; return it unchanged."""
    if not isinstance(text, str) or not 0 < len(text) <= 64:
        raise ProtocolError("bad_peer_id", "a peer ID is 1 to 64 base58btc characters")
    raw = b58decode(text)
    if len(raw) != 38 or raw[:2] != b"\x00\x24" or not raw[2:].startswith(_ED25519_PROTO_PREFIX):
        raise ProtocolError("bad_peer_id", f"{text!r} is not an Ed25519 libp2p peer ID")
    if b58encode(raw) != text:  # defensive: base58 round trip must be exact
        raise ProtocolError("bad_peer_id", f"{text!r} is not in canonical base58btc")
    return text


@lru_cache(maxsize=4096)
def _valid(text: str) -> bool:
    # Only successes are cached (an invalid ID raises, and lru_cache does not
    # store exceptions): the same few peer IDs recur in every message.
    validate_peer_id(text)
    return True


def check_peer_id_field(value: str, field: str) -> str:
    """A message field that holds a peer ID: ``invalid_field`` naming ``field``
    unless it is an Ed25519 peer ID (spec/encoding.md section 2: inside a
    message every broken rule is ``invalid_field``; ``bad_peer_id`` is the
    reason of parsing a peer ID on its own)."""
    try:
        _valid(value)
    except ProtocolError as exc:
        raise ValidationError(field, f"must be an Ed25519 libp2p peer ID ({exc.detail})") from None
    return value


def public_key_of_peer(peer_id: str) -> Ed25519PublicKey:
    """The public key embedded in an Ed25519 peer ID."""
    raw = b58decode(validate_peer_id(peer_id))
    return Ed25519PublicKey.from_public_bytes(raw[6:])
