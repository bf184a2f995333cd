"""The node's identity key as a libp2p key pair."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.ed25519 import Ed25519PrivateKey as LibEd25519PrivateKey
from libp2p.crypto.keys import KeyPair

from node.keys import seed_of

__all__ = ["to_libp2p_keypair", "from_libp2p_keypair"]



def to_libp2p_keypair(key: Ed25519PrivateKey) -> KeyPair:
    """The libp2p ``KeyPair`` of the node's identity key."""
    lib = LibEd25519PrivateKey.from_bytes(seed_of(key))
    return KeyPair(lib, lib.get_public_key())


def from_libp2p_keypair(pair: KeyPair) -> Ed25519PrivateKey:
    """Inverse of :func:`to_libp2p_keypair`."""
    raw = pair.private_key.to_bytes()
    return Ed25519PrivateKey.from_private_bytes(raw[:32])

