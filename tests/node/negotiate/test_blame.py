"""Blame split as in h11: a message this node builds from its own values and that
breaks a rule is a LocalProtocolError (our bug); the same rule broken by a peer's
bytes is a ProtocolError (its fault)."""

from __future__ import annotations

import pytest
from vectors import negotiation as V

from protocol import cbor
from protocol.envelope import seal
from protocol.errors import LocalProtocolError, ProtocolError, ValidationError
from protocol.jobflow import JobPhase, JobUpdate
from protocol.negotiation import RefusalReason
from protocol.wire import build


def test_build_blames_us_and_decoding_blames_the_peer() -> None:
    fields = dict(agreement_id=bytes(16), phase=JobPhase.RUNNING, at=1, detail="", transfer_done=0,
                  transfer_total=0, log_from=0, lines=("x",) * 300)
    with pytest.raises(LocalProtocolError, match="cannot build JobUpdate: invalid_field: lines"):
        build(JobUpdate, **fields)
    assert not issubclass(LocalProtocolError, ProtocolError)
    ok = build(JobUpdate, **{**fields, "lines": ("x",)})
    wire = {**ok.to_wire(), "lines": ["x"] * 300}  # the same rule, broken by a peer
    with pytest.raises(ValidationError):
        JobUpdate.decode(cbor.encode(wire))


def test_negotiation_builders_raise_local_errors() -> None:
    sub, prov = V.pair()
    key = V.key_of(V.SUBMITTER_SEED)
    prov.receive_data(sub.send_offer(seal(V.job_spec(), key).raw, expires_at=V.T0 + 60, now=V.T0))
    prov.next_event(now=V.T0)
    with pytest.raises(LocalProtocolError, match="cannot build Quote: invalid_field: price"):
        prov.send_quote(price=-1, estimated_start=V.T0, queue_position=0, reservation_expires_at=V.T0 + 30,
                        gpu_models=(), now=V.T0)
    with pytest.raises(LocalProtocolError, match="queue_depth"):
        prov.send_refusal(RefusalReason.BUSY, "x", queue_depth=-1, now=V.T0)
    assert prov.state.value == "offered"  # nothing was sent, nothing changed
