"""The node's Ed25519 identity key: created on first run, kept in the data dir.

The same key is the libp2p peer identity *and* the signing key of every CPN
envelope, so a verified envelope proves which peer produced it.  The file holds
the raw 32-byte seed and is created with mode 0600 (never widened later: a
readable key file is refused rather than silently used).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from protocol.identity import peer_id_from_raw_key

KEY_FILE = "identity.key"


class KeyFileError(Exception):
    """The identity key file exists but cannot be used (wrong size or mode)."""


def seed_of(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def peer_id_of(key: Ed25519PrivateKey) -> str:
    """The libp2p peer ID (``12D3KooW...``) of ``key``."""
    return peer_id_from_raw_key(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    """Return the node key from ``data_dir``, creating it (mode 0600) on first run."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path} is readable by others (mode {mode:o}); run chmod 600 on it"
            ) from None
        return _read_key(path)
    key = Ed25519PrivateKey.generate()
    with os.fdopen(fd, "wb") as f:
        f.write(seed_of(key))
    return key


def _read_key(path: Path) -> Ed25519PrivateKey:
    seed = path.read_bytes()
    if len(seed) != 32:
        raise KeyFileError(f"{path} must hold a 32-byte Ed25519 seed, has {len(seed)} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)
