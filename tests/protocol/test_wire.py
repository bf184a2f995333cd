"""Struct decoding (protocol/wire.py, spec/encoding.md section 2): the order of
checks the spec fixes, peer-ID fields, and the CDDL of the spec documents
against the structs the code decodes."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.advert import Advert, ContainerCapability, FreeCapacity, Price, Tombstone
from protocol.errors import ProtocolError, ValidationError
from protocol.jobspec import (
    BlobRef,
    GpuRequirement,
    ImageRef,
    InputRef,
    JobSpec,
    Resources,
    Timeouts,
)
from protocol.negotiation import (
    Accept,
    Agreement,
    Cancel,
    JobStatus,
    Offer,
    Quote,
    Refusal,
    Terms,
)
from protocol.resources import GpuInfo, Metric, ResourceSet
from protocol.result import GpuUsage, Metering, OutputBlob, Receipt, Result
from protocol.wire import Struct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobspec_samples import sample_spec as make_spec  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "spec"

#: CDDL rule name (as the documents write it) -> the struct that decodes it.
CDDL_RULES: dict[tuple[str, str], type[Struct]] = {
    ("jobspec.md", "job-spec"): JobSpec,
    ("jobspec.md", "image-ref"): ImageRef,
    ("jobspec.md", "blob-ref"): BlobRef,
    ("jobspec.md", "input-ref"): InputRef,
    ("jobspec.md", "resources"): Resources,
    ("jobspec.md", "gpu-requirement"): GpuRequirement,
    ("jobspec.md", "timeouts"): Timeouts,
    ("identifiers.md", "resource-set"): ResourceSet,
    ("identifiers.md", "gpu-info"): GpuInfo,
    ("identifiers.md", "metric"): Metric,
    ("discovery.md", "Advert"): Advert,
    ("discovery.md", "FreeCapacity"): FreeCapacity,
    ("discovery.md", "Price"): Price,
    ("discovery.md", "ContainerCapability"): ContainerCapability,
    ("discovery.md", "Tombstone"): Tombstone,
    ("negotiation.md", "offer"): Offer,
    ("negotiation.md", "quote"): Quote,
    ("negotiation.md", "refusal"): Refusal,
    ("negotiation.md", "terms"): Terms,
    ("negotiation.md", "accept"): Accept,
    ("negotiation.md", "agreement"): Agreement,
    ("negotiation.md", "cancel"): Cancel,
    ("negotiation.md", "job-status"): JobStatus,
    ("execution.md", "Result"): Result,
    ("execution.md", "OutputBlob"): OutputBlob,
    ("execution.md", "Metering"): Metering,
    ("execution.md", "GpuUsage"): GpuUsage,
    ("execution.md", "Receipt"): Receipt,
}

_FIELD = re.compile(r'"?([a-z_]+)"?\s*:')


def cddl_fields(doc: str) -> dict[str, list[str]]:
    """Field names of every map/group rule in the ```cddl blocks of ``doc``, in order."""
    text = (SPEC / doc).read_text()
    rules: dict[str, list[str]] = {}
    for block in re.findall(r"```cddl\n(.*?)```", text, re.S):
        current: str | None = None
        depth = 0
        for raw in block.splitlines():
            line = raw.split(";", 1)[0]
            start = re.match(r"^([A-Za-z][\w-]*)\s*=\s*([{(])(.*)$", line)
            if start:
                current, line, depth = start.group(1), start.group(3), 1
                rules[current] = []
            if current is None:
                continue
            if depth == 1:  # fields of this rule, not of a map type inside it
                for group in re.findall(r"^\s*([a-z][\w-]*),\s*$", line):
                    rules[current] += rules[group]
                rules[current] += _FIELD.findall(line)
            depth += len(re.findall(r"[{(]", line)) - len(re.findall(r"[})]", line))
            if depth <= 0:
                current = None
    return rules


@pytest.mark.parametrize(("doc", "rule"), sorted(CDDL_RULES), ids=lambda x: str(x))
def test_cddl_lists_the_fields_in_decoding_order(doc: str, rule: str) -> None:
    """encoding.md §2: fields are decoded in the order the CDDL lists them."""
    cls = CDDL_RULES[(doc, rule)]
    assert cddl_fields(doc)[rule] == [name for name, _ in cls._fields_]


# --------------------------------------------------------------------------- decoding order


def _reason(cls: type[Struct], wire: Any) -> tuple[str, str | None]:
    try:
        cls.decode(cbor.encode(wire))
    except ValidationError as exc:
        return exc.reason, exc.field
    except ProtocolError as exc:
        return exc.reason, None
    return "accept", None


def test_unknown_field_before_missing_field() -> None:
    wire = make_spec().to_wire()
    del wire["nonce"]
    wire["priority"] = 1
    assert _reason(JobSpec, wire) == ("unknown_field", None)


def test_integer_key_is_an_unknown_field() -> None:
    wire: dict[Any, Any] = dict(make_spec().to_wire())
    wire[1] = 0
    assert _reason(JobSpec, wire) == ("unknown_field", None)


def test_nested_key_set_before_the_outer_rules() -> None:
    """A struct's rules run after all its fields, nested structs included."""
    wire = make_spec().to_wire()
    wire["name"] = "bad/name"  # an outer rule
    del wire["resources"]["disk_mib"]  # a nested key set
    assert _reason(JobSpec, wire) == ("missing_field", None)


def test_earlier_field_type_before_later_nested_key_set() -> None:
    wire = make_spec().to_wire()
    wire["name"] = 7  # type of the first field
    del wire["resources"]["disk_mib"]
    assert _reason(JobSpec, wire) == ("invalid_field", "name")


def test_negative_uint_is_a_rule_not_a_type() -> None:
    """uint >= 0 is checked with the rules, so a later nested key-set error wins."""
    wire = make_spec().to_wire()
    wire["max_price"] = -1
    assert _reason(JobSpec, wire) == ("invalid_field", "max_price")
    del wire["timeouts"]["run_s"]
    assert _reason(JobSpec, wire) == ("missing_field", None)


def test_not_a_map_is_named_by_path_or_message_name() -> None:
    assert _reason(JobSpec, [1]) == ("invalid_field", "JobSpec")
    wire = make_spec().to_wire()
    wire["image"]["manifest"] = "x"
    assert _reason(JobSpec, wire) == ("invalid_field", "image.manifest")


# --------------------------------------------------------------------------- peer-ID fields

PEER_FIELDS: list[tuple[type[Struct], str]] = [
    (Offer, "submitter"), (Offer, "provider"), (Quote, "provider"), (Refusal, "submitter"),
    (Cancel, "provider"), (JobStatus, "submitter"), (Result, "submitter"), (Result, "provider"),
    (Advert, "peer_id"), (Tombstone, "peer_id"),
]  # fmt: skip


def _samples() -> dict[type[Struct], dict[str, Any]]:
    """A valid wire map of each message class (from the vector generators' fixtures)."""
    sys.path.insert(0, str(SPEC.parent / "tools"))
    try:
        from vectors import discovery, execution, negotiation
    finally:
        sys.path.pop(0)
    from protocol.envelope import open_envelope
    from protocol.negotiation import CancelReason, RefusalReason

    out: dict[type[Struct], dict[str, Any]] = {}
    for _, frame, _ in negotiation.happy_transcript():
        msg = open_envelope(frame).message
        out.setdefault(type(msg), msg.to_wire())
    s, p = (negotiation.peer_of(negotiation.key_of(x)) for x in (negotiation.SUBMITTER_SEED, negotiation.PROVIDER_SEED))
    header = {"negotiation_id": negotiation.NEGOTIATION_ID, "submitter": s, "provider": p, "seq": 0}
    out[Refusal] = Refusal(**header, in_reply_to=bytes(32), reason=RefusalReason.BUSY, detail="", queue_depth=1).to_wire()
    out[Cancel] = Cancel(**header, reason=CancelReason.USER, detail="").to_wire()
    out[Advert] = discovery.sample_advert().to_wire()
    out[Tombstone] = Tombstone(peer_id=p, seq=1, issued_at=1).to_wire()
    out[Result] = execution.sample_result(negotiation.key_of(negotiation.PROVIDER_SEED), s).to_wire()
    out[JobSpec] = make_spec().to_wire()
    return out


SAMPLES = _samples()


def _sample(cls: type[Struct]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(SAMPLES[cls])


@pytest.mark.parametrize(("cls", "field"), PEER_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("bad", ["", "0abc", "Qm" + "1" * 44, "12D3KooW" + "x" * 60])
def test_peer_id_fields_are_invalid_field(cls: type[Struct], field: str, bad: str) -> None:
    """encoding.md §2: a peer-ID field that is not an Ed25519 peer ID is
    invalid_field naming the field (bad_peer_id is only for parsing alone)."""
    wire = _sample(cls)
    assert _reason(cls, wire) == ("accept", None)
    wire[field] = bad
    assert _reason(cls, wire) == ("invalid_field", field)


def test_terms_peer_field_path_inside_accept() -> None:
    wire = _sample(Accept)
    wire["terms"]["provider"] = "nope"
    assert _reason(Accept, wire) == ("invalid_field", "terms.provider")


_ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64), (1 << 64) - 1) | st.binary(max_size=40) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@pytest.mark.parametrize("cls", sorted(SAMPLES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_field_value_gives_a_struct_reason(cls: type[Struct], data: st.DataObject) -> None:
    """Whatever one field of a valid message holds, decoding fails only with the
    reasons of encoding.md §2 (no rule leaks another reason such as bad_peer_id)."""
    wire = _sample(cls)
    field = data.draw(st.sampled_from(sorted(wire)))
    wire[field] = data.draw(_ANY_VALUE)
    reason, _ = _reason(cls, wire)
    assert reason in {"accept", "invalid_field", "unknown_field", "missing_field"}
