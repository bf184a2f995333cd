"""Test-vector generators, one module per area (spec/README.md, "Test vectors").

Each module ``tools/vectors/<area>.py`` defines ``generate() -> dict`` returning
the whole content of ``spec/vectors/<area>.json``.  ``tools/gen-vectors``
discovers every such module, so adding an area means adding one file here.

Generators must be deterministic: keys come from fixed seeds
(:func:`key_from_seed`), time is the fixed :data:`NOW`, nonces are fixed bytes.
Running the generator twice gives byte-identical files, which is what lets
``tools/gen-vectors --check`` detect stale vectors.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "NOW", "seed", "key_from_seed", "vector", "accept", "reject", "vector_file", "render", "json_value",
]

#: The fixed "current time" of every vector (2026-01-01T00:00:00Z).
NOW = 1_767_225_600


def seed(label: str) -> bytes:
    """A fixed 32-byte Ed25519 seed named by ``label`` (sha256 of it): readable
    in generator code, reproducible by anyone from the hex in the file."""
    import hashlib

    return hashlib.sha256(b"cpn test vector seed: " + label.encode()).digest()


def key_from_seed(seed_bytes: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed_bytes)


def accept(**fields: Any) -> dict[str, Any]:
    return {"outcome": "accept", **fields}


def reject(reason: str, **fields: Any) -> dict[str, Any]:
    return {"outcome": "reject", "reason": reason, **fields}


def vector(name: str, description: str, operation: str, input: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "operation": operation,
        "input": input,
        "expected": expected,
    }


def vector_file(area: str, spec: str, revision: int, vectors: list[dict[str, Any]]) -> dict[str, Any]:
    names = [v["name"] for v in vectors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{area}: duplicate vector names {duplicates}")
    return {"area": area, "spec": spec, "revision": revision, "vectors": vectors}


def render(content: dict[str, Any]) -> str:
    """The exact text of a vector file: 2-space indented JSON, ASCII, newline at the end."""
    return json.dumps(content, indent=2, ensure_ascii=True) + "\n"


def json_value(value: Any) -> Any:
    """A decoded CBOR value in the lossless JSON form of spec/README.md."""
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {"map": [[json_value(k), json_value(v)] for k, v in value.items()]}
    return value
