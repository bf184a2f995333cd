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
    TRANSITIONS,
    Event,
    MemoryReplayCache,
    Negotiation,
    Role,
    State,
)

ROOT = Path(__file__).resolve().parents[2]
CONTENT = json.loads((ROOT / "spec" / "vectors" / "negotiation.json").read_text())
VECTORS: list[dict[str, Any]] = CONTENT["vectors"]


def run(inp: dict[str, Any]) -> tuple[str, str | None, int | None]:
    sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["submitter_seed_hex"]))
    pk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inp["provider_seed_hex"]))
    s, p = (peer_id_from_proto_key(public_key_proto_of(k)) for k in (sk, pk))
    if inp["role"] == "provider":
        me, m = p, Negotiation(Role.PROVIDER, key=pk, submitter=s, provider=p, replay_cache=MemoryReplayCache())
    else:
        nid = bytes.fromhex(inp["negotiation_id_hex"])
        me, m = s, Negotiation(Role.SUBMITTER, key=sk, submitter=s, provider=p, negotiation_id=nid)
    for i, f in enumerate(inp["frames"]):
        frame, now = bytes.fromhex(f["frame_hex"]), f["now"]
        try:
            env = open_envelope(frame)
        except ProtocolError:
            env = None
        if env is not None and env.signer == me:  # our own message: re-send it, same bytes
            assert m.send(env.message, now=now) == frame
            continue
        m.receive_data(frame)
        try:
            m.next_event(now=now)
        except ProtocolError as exc:
            return m.state.value, exc.reason, i
    return m.state.value, None, None


def test_file_header() -> None:
    assert CONTENT["area"] == "negotiation" and CONTENT["spec"] == "negotiation.md"
    assert any(v["expected"]["outcome"] == "reject" for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    state, reason, index = run(vector["input"])
    exp = vector["expected"]
    if exp["outcome"] == "accept":
        assert reason is None
    else:
        assert (reason, index) == (exp["reason"], exp["failing_frame"])
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
