"""Every message type of the foundation, discovery, negotiation and execution
documents has at least one vector that accepts it and one that rejects it
(issue 16: a reader should never have to guess how a message type fails).

The type of a vector's envelope is read from the vector bytes alone (the
envelope map's ``type``), the way an outside implementer would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import cbor
from protocol.errors import ProtocolError

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
#: tag -> message, the rows of spec/README.md these documents define
TYPES = {
    1: "JobSpec", 16: "Advert", 17: "Tombstone", 32: "Offer", 33: "Quote", 34: "Refusal", 35: "Accept",
    36: "Agreement", 37: "Cancel", 38: "JobStatus", 96: "Result", 97: "Receipt",
}  # fmt: skip
AREAS = ("envelope", "jobspec", "discovery", "negotiation", "execution")


def _type_of(raw_hex: str, *, framed: bool = False) -> int | None:
    raw = bytes.fromhex(raw_hex)
    if framed:  # strip the uvarint length prefix of negotiation.md §1.1
        i = 0
        while i < len(raw) and raw[i] & 0x80:
            i += 1
        raw = raw[i + 1 :]
    try:
        env = cbor.decode(raw)
    except ProtocolError:
        return None
    tag = env.get("type") if isinstance(env, dict) else None
    return tag if isinstance(tag, int) and not isinstance(tag, bool) else None


def _envelopes(v: dict[str, Any]) -> Iterator[tuple[int | None, bool]]:
    """(type, accepted) for every envelope a vector feeds to an implementation."""
    inp, exp = v["input"], v["expected"]
    ok = exp["outcome"] == "accept"
    if v["operation"] == "negotiation_transcript":
        failing = exp.get("failing_frame")
        for i, step in enumerate(inp["frames"]):
            if "frame_hex" in step and (ok or i < failing):
                yield _type_of(step["frame_hex"], framed=True), True
            elif "frame_hex" in step and i == failing:
                yield _type_of(step["frame_hex"], framed=True), False
        return
    for key in ("envelope_hex", "receipt_hex"):
        if key in inp:
            yield _type_of(inp[key]), ok
    if v["operation"] == "record.select" and ok:
        yield _type_of(inp["records_hex"][exp["index"]]), True


def _coverage() -> dict[int, set[bool]]:
    seen: dict[int, set[bool]] = {}
    for area in AREAS:
        for v in json.loads((VECTORS / f"{area}.json").read_text())["vectors"]:
            for tag, accepted in _envelopes(v):
                if tag is not None:
                    seen.setdefault(tag, set()).add(accepted)
    return seen


COVERAGE = _coverage()


@pytest.mark.parametrize("tag", sorted(TYPES), ids=lambda t: f"{t}-{TYPES[t]}")
def test_message_type_has_accept_and_reject_vectors(tag: int) -> None:
    assert COVERAGE.get(tag, set()) == {True, False}, f"{TYPES[tag]} ({tag}): {COVERAGE.get(tag)}"


def test_registry_rows_match_the_code() -> None:
    import importlib

    from protocol.wire import REGISTRY

    for module in ("advert", "jobspec", "negotiation", "result"):
        importlib.import_module(f"protocol.{module}")
    assert {tag: REGISTRY[tag].__name__ for tag in TYPES} == TYPES
