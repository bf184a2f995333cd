"""spec/vectors/negotiation.json against protocol/ (the file is the contract), and the
transition table of spec/negotiation.md against the code's table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.envelope import open_envelope, public_key_proto_of
from protocol.errors import ProtocolError
from protocol.identity import peer_id_from_proto_key
from protocol.negotiation_state import (
    MAX_FRAME,
    TRANSITIONS,
    Event,
    MemoryReplayCache,
    Negotiation,
    Role,
    State,
    replay_key,
)

ROOT = Path(__file__).resolve().parents[2]
CONTENT = json.loads((ROOT / "spec" / "vectors" / "negotiation.json").read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def _frame_body(raw: bytes) -> bytes:
    """Strip the uvarint length prefix (negotiation.md §1), written out here
    independently of protocol.wire: oversize before the body, 10 bytes at most."""
    n = shift = i = 0
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            break
        if i >= 10:
            raise ProtocolError("malformed", "length prefix too long")
    if n > MAX_FRAME:
        raise ProtocolError("oversize", "frame too long")
    assert len(raw) == i + n, "a vector frame is exactly one frame"
    return raw[i:]


def run(inp: dict[str, Any]) -> tuple[str, str | None, int | None, str | None]:
    sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["submitter_seed_hex"]))
    pk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["provider_seed_hex"]))
    s, p = (peer_id_from_proto_key(public_key_proto_of(k)) for k in (sk, pk))
    if inp["role"] == "provider":
        cache = MemoryReplayCache()
        for seen in inp.get("seen_offers", []):
            cache.remember(replay_key(s, bytes.fromhex(seen["negotiation_id_hex"])), seen["until"], now=0)
        me, m = p, Negotiation(Role.PROVIDER, key=pk, submitter=s, provider=p, replay_cache=cache)
    else:
        nid = bytes.fromhex(inp["negotiation_id_hex"])
        me, m = s, Negotiation(Role.SUBMITTER, key=sk, submitter=s, provider=p, negotiation_id=nid)
    first: tuple[str, int, str | None] | None = None
    for i, f in enumerate(inp["frames"]):
        now = f["now"]
        if f.get("event") == "expire":
            assert set(f) == {"event", "now"}
            m.expire(now=now)
            continue
        try:
            frame = _frame_body(bytes.fromhex(f["frame_hex"]))
            try:
                env = open_envelope(frame)
            except ProtocolError:
                env = None
            if env is not None and env.signer == me:  # our own message: re-send it, same bytes
                assert m.send(env.message, now=now) == frame
                continue
            m.receive_data(frame)
            m.next_event(now=now)
        except ProtocolError as exc:
            if first is None:
                first = (exc.reason, i, getattr(exc, "field", None))
    if first is None:
        return m.state.value, None, None, None
    return m.state.value, *first


def test_file_header() -> None:
    assert CONTENT["area"] == "negotiation" and CONTENT["spec"] == "negotiation.md"
    assert CONTENT["revision"] == 2
    reasons = {v["expected"].get("reason") for v in VECTORS}
    for needed in ("oversize", "bad_sequence", "expiry_too_far", "bad_expiry", "price_above_max",
                   "terms_mismatch", "replayed", "binding_mismatch", "unexpected_message", "expired",
                   "wrong_signer", "bad_signature", "unexpected_type", "invalid_field", "from_future"):
        assert needed in reasons, needed
    finals = {v["expected"]["state"] for v in VECTORS if v["expected"]["outcome"] == "accept"}
    assert {"refused", "cancelled", "expired", "finished", "failed"} <= finals


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    state, reason, index, field = run(vector["input"])
    exp = vector["expected"]
    if exp["outcome"] == "accept":
        assert reason is None
    else:
        assert (reason, index) == (exp["reason"], exp["failing_frame"])
        assert field == exp.get("field")
    assert state == exp["state"]


def spec_table() -> dict[tuple[State, Event, Role | None], State]:
    text = (ROOT / "spec" / "negotiation.md").read_text()
    block = re.search(r"<!-- transitions:begin -->(.*?)<!-- transitions:end -->", text, re.S)
    assert block, "spec/negotiation.md lost its transition table markers"
    table: dict[tuple[State, Event, Role | None], State] = {}
    for line in block.group(1).strip().splitlines()[2:]:
        src, event, sender, dst = (c.strip() for c in line.strip().strip("|").split("|"))
        key = (State(src), Event(event), None if sender == "local" else Role(sender))
        assert key not in table, f"duplicate row {line}"
        table[key] = State(dst)
    return table


def test_spec_table_equals_code_table() -> None:
    assert spec_table() == dict(TRANSITIONS)
