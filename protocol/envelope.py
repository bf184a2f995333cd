"""Signed envelopes (after libp2p RFC 0002 "signed envelopes").

An envelope carries one message, the signer's public key and an Ed25519
signature.  The signer's libp2p peer ID is *derived* from the public key, so a
verified envelope proves which peer produced the message.

Signed bytes (domain separation; ``uvarint`` is unsigned LEB128)::

    uvarint(len(domain)) || domain || uvarint(len(type)) || type
        || uvarint(len(payload)) || payload

where ``domain`` is the UTF-8 domain string of the message type (for example
``cpn/jobspec``), ``type`` is ``uvarint(type tag)`` and ``payload`` is the
canonical CBOR encoding of the message.  The envelope itself is the CBOR map
``{"key": bytes, "payload": bytes, "sig": bytes, "type": uint}``.
See spec/encoding.md.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import cbor
from .errors import ProtocolError
from .identity import peer_id_from_proto_key, public_key_from_proto, public_key_to_proto
from .wire import REGISTRY, Message, uvarint

__all__ = ["Signed", "seal", "open_envelope", "signing_bytes", "uvarint", "public_key_proto_of"]

M = TypeVar("M", bound=Message)

_ENVELOPE_KEYS = ("key", "payload", "sig", "type")
_ENVELOPE_KEYSET = frozenset(_ENVELOPE_KEYS)


@lru_cache(maxsize=4096)
def _verifier(raw_key: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw_key)
    except ValueError:
        raise ProtocolError("bad_key", "not a valid Ed25519 public key") from None


@lru_cache(maxsize=4096)
def _verifier_of_proto(proto: bytes) -> Ed25519PublicKey:
    """``_verifier(public_key_from_proto(proto))``, cached by the envelope's key
    bytes (errors are not cached, so they are raised every time)."""
    return _verifier(public_key_from_proto(proto))


@lru_cache(maxsize=256)
def _signing_prefix(domain: str, type_tag: int) -> bytes:
    d = domain.encode("utf-8")
    t = uvarint(type_tag)
    return uvarint(len(d)) + d + uvarint(len(t)) + t


def signing_bytes(domain: str, type_tag: int, payload: bytes) -> bytes:
    return _signing_prefix(domain, type_tag) + uvarint(len(payload)) + payload


def public_key_proto_of(key: Ed25519PrivateKey) -> bytes:
    # public_bytes_raw(), not public_bytes(Encoding.Raw, ...): importing
    # cryptography's serialization module pulls in ``random`` (via its SSH/RSA code).
    raw = key.public_key().public_bytes_raw()
    return public_key_to_proto(raw)


@dataclass(frozen=True, slots=True)
class Signed(Generic[M]):
    """A verified envelope: who signed it, what it says, and its exact bytes."""

    signer: str  #: libp2p peer ID (base58btc) derived from the envelope's key
    message: M
    raw: bytes  #: the envelope's encoded bytes, as received or produced

    @property
    def digest(self) -> bytes:
        """sha256 of the envelope bytes: a stable reference to this signed message."""
        return sha256(self.raw).digest()


def seal(msg: M, key: Ed25519PrivateKey) -> Signed[M]:
    """Sign ``msg`` with ``key`` (the node's libp2p identity key)."""
    payload = msg.encode()
    proto = public_key_proto_of(key)
    sig = key.sign(signing_bytes(msg.DOMAIN, msg.TYPE, payload))
    raw = cbor.encode({"key": proto, "payload": payload, "sig": sig, "type": msg.TYPE})
    return Signed(signer=peer_id_from_proto_key(proto), message=msg, raw=raw)


def open_envelope(
    data: bytes,
    *,
    expected: Collection[type[M]] | type[M] | None = None,
    signer: str | None = None,
    limits: cbor.Limits = cbor.DEFAULT_LIMITS,
) -> Signed[M]:
    """Verify an envelope and decode its message.

    ``expected`` restricts the acceptable message classes; ``signer`` is the
    peer ID the envelope must come from (for example the peer on the other end
    of the stream).  Raises :class:`ProtocolError` with reason ``malformed``,
    ``unknown_type``, ``unexpected_type``, ``bad_key``, ``bad_signature``,
    ``wrong_signer`` or any decoding reason of the payload.
    """
    env = cbor.decode(data, limits)
    # A set comparison, not sorted(): a map may mix int and text keys, and
    # sorting those raised TypeError instead of a ProtocolError.
    if not isinstance(env, dict) or env.keys() != _ENVELOPE_KEYSET:
        raise ProtocolError("malformed", "an envelope is a map with exactly key, payload, sig, type")
    proto, payload, sig, tag = env["key"], env["payload"], env["sig"], env["type"]
    if not (isinstance(proto, bytes) and isinstance(payload, bytes) and isinstance(sig, bytes)):
        raise ProtocolError("malformed", "envelope key, payload and sig must be byte strings")
    if not isinstance(tag, int) or isinstance(tag, bool) or tag < 0:
        raise ProtocolError("malformed", "envelope type must be an unsigned integer")
    cls = REGISTRY.get(tag)
    if cls is None:
        raise ProtocolError("unknown_type", f"message type {tag} is not defined")
    if expected is not None:
        allowed = (expected,) if isinstance(expected, type) else tuple(expected)
        if cls not in allowed:
            names = ", ".join(c.__name__ for c in allowed)
            raise ProtocolError("unexpected_type", f"got {cls.__name__}, expected one of {names}")
    verifier = _verifier_of_proto(proto)  # bad_key before bad_signature
    if len(sig) != 64:
        raise ProtocolError("bad_signature", "an Ed25519 signature is 64 bytes")
    try:
        verifier.verify(sig, signing_bytes(cls.DOMAIN, tag, payload))
    except InvalidSignature:
        raise ProtocolError("bad_signature", f"signature does not verify for {cls.__name__}") from None
    peer = peer_id_from_proto_key(proto)
    if signer is not None and peer != signer:
        raise ProtocolError("wrong_signer", f"signed by {peer}, expected {signer}")
    msg = cls.decode(payload, limits)
    return Signed(signer=peer, message=msg, raw=bytes(data))  # type: ignore[arg-type]
