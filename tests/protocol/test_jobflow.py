"""protocol/jobflow.py: message rules, line batching, the submitter's view of a watch."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import seal
from protocol.errors import ProtocolError, ValidationError
from protocol.jobflow import (
    MAX_LINE,
    MAX_LINES,
    MAX_LINES_BYTES,
    JobPhase,
    JobUpdate,
    WatchView,
    batch_lines,
    unknown_agreement,
)

AID = bytes(16)


def _update(log_from: int, lines: tuple[str, ...], phase: JobPhase = JobPhase.RUNNING,
            aid: bytes = AID, detail: str = "") -> JobUpdate:
    return JobUpdate(agreement_id=aid, phase=phase, at=1, detail=detail, transfer_done=0, transfer_total=0,
                     log_from=log_from, lines=lines)


def test_batch_lines_bounds_count_length_and_bytes() -> None:
    wide = ["\U0001f600" * (MAX_LINE + 10)] * 1000  # 4-byte characters, over-long lines
    batch = batch_lines(wide, 0)
    assert all(len(line) == MAX_LINE for line in batch)
    assert sum(len(line.encode()) + 4 for line in batch) <= MAX_LINES_BYTES
    assert len(batch) == MAX_LINES_BYTES // (4 * MAX_LINE + 4)
    assert len(batch_lines(["x"] * 1000, 0)) == MAX_LINES
    assert batch_lines(["a", "b", "c"], 1) == ["b", "c"]
    assert batch_lines(["y" * 100], 0, max_bytes=10) == ["y" * 100]  # the first line always goes


def test_largest_update_a_provider_sends_fits_the_default_decode_limit() -> None:
    lines = tuple(batch_lines(["\U0001f600" * MAX_LINE] * MAX_LINES, 0))
    update = _update(0, lines, detail="\U0001f600" * 1024)
    raw = seal(update, Ed25519PrivateKey.from_private_bytes(bytes(32))).raw
    assert len(raw) < cbor.DEFAULT_LIMITS.max_size // 3


def test_watch_view_appends_new_lines_only() -> None:
    view = WatchView(agreement_id=AID)
    assert view.receive(_update(0, ("a", "b"))) == ("a", "b")
    assert view.receive(_update(1, ("b", "c"))) == ("c",)  # a resent line is not repeated
    assert view.receive(_update(5, ("f",))) == ()  # a gap keeps nothing
    assert view.lines == 3 and view.phase is JobPhase.RUNNING


def test_watch_view_refusals() -> None:
    view = WatchView(agreement_id=AID)
    with pytest.raises(ProtocolError) as exc:
        view.receive(_update(0, (), aid=bytes([1]) * 16))
    assert exc.value.reason == "binding_mismatch"
    with pytest.raises(ProtocolError) as exc:
        view.receive(unknown_agreement(AID, 5))
    assert exc.value.reason == "unknown_agreement"
    # a failed run is not an unknown agreement
    assert view.receive(_update(0, (), JobPhase.FAILED, detail="image refused")) == ()


def test_update_rules_name_their_field_in_field_order() -> None:
    with pytest.raises(ValidationError) as exc:
        _update(-1, ())
    assert exc.value.field == "log_from"
    with pytest.raises(ValidationError) as exc:  # at is checked before log_from
        JobUpdate(agreement_id=AID, phase=JobPhase.RUNNING, at=-1, detail="", transfer_done=0,
                  transfer_total=0, log_from=-1, lines=())
    assert exc.value.field == "at"
