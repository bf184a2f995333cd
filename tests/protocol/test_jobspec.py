"""Job spec validation (protocol/jobspec.py, spec/jobspec.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor
from protocol.errors import ProtocolError, ValidationError
from protocol.jobspec import (
    BlobRef,
    GpuRequirement,
    InputRef,
    JobSpec,
    Resources,
    Timeouts,
    check_container_path,
    check_created_at,
    compute_capability_at_least,
)
from protocol.wire import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobspec_samples import NOW, blob, sample_spec  # noqa: E402


def _field(fn: Any) -> str:
    with pytest.raises(ValidationError) as err:
        fn()
    return err.value.field


def test_registered_as_message_1() -> None:
    assert REGISTRY[1] is JobSpec
    assert JobSpec.TYPE == 1 and JobSpec.DOMAIN == "cpn/jobspec"


def test_round_trip() -> None:
    spec = sample_spec()
    assert JobSpec.decode(spec.encode()) == spec


def test_blobs_order() -> None:
    spec = sample_spec()
    img = spec.image
    assert spec.blobs() == (img.manifest, img.config, *img.layers, spec.inputs[0].blob)
    assert img.image_id == img.config.digest


def test_frozen() -> None:
    spec = sample_spec()
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "-lead"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"command": ("",)}, "command[0]"),
        ({"command": ("a\x00b",)}, "command[0]"),
        ({"args": ("x",) * 300}, "command"),
        ({"env": {"A B": "1"}}, "env.A B"),
        ({"env": {"": "1"}}, "env."),
        ({"env": {"A": "x" * 5000}}, "env.A"),
        ({"workdir": "relative"}, "workdir"),
        ({"workdir": "/a/../b"}, "workdir"),
        ({"workdir": "/a/./b"}, "workdir"),
        ({"workdir": "/a//b"}, "workdir"),
        ({"workdir": "/sys/x"}, "workdir"),
        ({"outputs": ("/",)}, "outputs[0]"),
        ({"outputs": ("/out/",)}, "outputs[0]"),
        ({"outputs": ("/dev",)}, "outputs[0]"),
        ({"outputs": ("/a", "/a")}, "outputs[1]"),
        ({"outputs": ("/data/in",)}, "outputs[0]"),
        ({"network": "host"}, "network"),
        ({"max_price": -1}, "max_price"),
        ({"created_at": 0}, "created_at"),
        ({"nonce": b"short"}, "nonce"),
        ({"nonce": "x" * 16}, "nonce"),
        ({"name": 5}, "name"),
        ({"command": ["/bin/sh"]}, "command"),
    ],
)
def test_invalid_fields(changes: dict[str, Any], field: str) -> None:
    assert _field(lambda: sample_spec(**changes)) == field


def test_duplicate_input_paths() -> None:
    inp = InputRef(blob=blob(b"x"), path="/in")
    assert _field(lambda: sample_spec(inputs=(inp, inp))) == "inputs[1].path"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"digest": "sha256:" + "A" * 64}, "digest"),
        ({"digest": "md5:" + "a" * 32}, "digest"),
        ({"size": -1}, "size"),
        ({"size": (1 << 40) + 1}, "size"),
        ({"chunk_size": 1000}, "chunk_size"),
        ({"chunk_size": 3 << 12}, "chunk_size"),
        ({"chunk_size": 1 << 25}, "chunk_size"),
        ({"chunk_root": "sha256:xyz"}, "chunk_root"),
        ({"media_type": "nonsense"}, "media_type"),
        ({"media_type": "Application/JSON"}, "media_type"),
    ],
)
def test_blob_rules(kwargs: dict[str, Any], field: str) -> None:
    base = blob(b"abc").to_wire()
    base.update(kwargs)
    assert _field(lambda: BlobRef(**base)) == field


def test_empty_blob_must_use_the_empty_root() -> None:
    ok = blob(b"")
    assert ok.size == 0
    assert _field(lambda: ok.replace(chunk_root="sha256:" + "0" * 64)) == "chunk_root"


def test_image_media_types() -> None:
    spec = sample_spec()
    layer = blob(b"l", "application/json")
    with pytest.raises(ValidationError) as err:
        spec.image.replace(layers=(layer,))
    assert err.value.field == "layers[0].media_type"
    with pytest.raises(ValidationError) as err:
        spec.image.replace(manifest=blob(b"m", "application/json"))
    assert err.value.field == "manifest.media_type"


def _gpu(**kw: Any) -> GpuRequirement:
    base: dict[str, Any] = {"count": 1, "min_memory_mib": 0, "vendor": None, "models": (), "min_compute_capability": None}
    base.update(kw)
    return GpuRequirement(**base)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 65}, "count"),
        ({"min_memory_mib": -1}, "min_memory_mib"),
        ({"vendor": "NVIDIA"}, "vendor"),
        ({"models": ("h100", "a100")}, "models"),
        ({"models": ("a100", "a100")}, "models"),
        ({"models": ("H100",)}, "models[0]"),
        ({"models": ("mystery9",)}, "models[0]"),
        ({"vendor": "amd", "models": ("h100",)}, "models[0]"),
        ({"min_compute_capability": "9"}, "min_compute_capability"),
        ({"min_compute_capability": "09.0"}, "min_compute_capability"),
        ({"vendor": "amd", "min_compute_capability": "8.0"}, "min_compute_capability"),
        ({"models": ("mi300x",), "min_compute_capability": "8.0"}, "min_compute_capability"),
    ],
)
def test_gpu_requirement_rules(kw: dict[str, Any], field: str) -> None:
    assert _field(lambda: _gpu(**kw)) == field


def test_gpu_requirement_valid_forms() -> None:
    assert _gpu(models=("mystery9",), vendor="nvidia").models == ("mystery9",)
    assert _gpu(models=("a100", "h100"), min_compute_capability="8.0").count == 1
    assert _gpu(vendor="amd", models=("mi250x", "mi300x")).vendor == "amd"


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"cpu_millis": 0}, "cpu_millis"), ({"memory_mib": 0}, "memory_mib"), ({"disk_mib": -1}, "disk_mib"),
     ({"cpu_millis": (1 << 20) + 1}, "cpu_millis")],
)  # fmt: skip
def test_resources_rules(kw: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"gpu": None, "cpu_millis": 1, "memory_mib": 1, "disk_mib": 0}
    base.update(kw)
    assert _field(lambda: Resources(**base)) == field


@pytest.mark.parametrize("name", ["transfer_s", "queue_s", "run_s"])
@pytest.mark.parametrize("value", [0, -1, 7 * 24 * 3600 + 1])
def test_timeouts_rules(name: str, value: int) -> None:
    base = {"transfer_s": 1, "queue_s": 1, "run_s": 1, name: value}
    assert _field(lambda: Timeouts(**base)) == name


def test_nested_errors_name_the_full_path_when_decoding() -> None:
    wire = sample_spec().to_wire()
    wire["image"]["layers"][0]["chunk_size"] = 12345
    with pytest.raises(ValidationError) as err:
        JobSpec.decode(cbor.encode(wire))
    assert err.value.field == "image.layers[0].chunk_size"
    assert "power of two" in err.value.rule


@pytest.mark.parametrize(("mutation", "reason"), [("drop", "missing_field"), ("add", "unknown_field")])
def test_missing_and_unknown_fields(mutation: str, reason: str) -> None:
    wire = sample_spec().to_wire()
    if mutation == "drop":
        del wire["timeouts"]["run_s"]
    else:
        wire["resources"]["tpu"] = 1
    with pytest.raises(ProtocolError) as err:
        JobSpec.decode(cbor.encode(wire))
    assert err.value.reason == reason


def test_created_at_freshness() -> None:
    spec = sample_spec()
    check_created_at(spec, now=NOW)
    check_created_at(spec, now=NOW - 300)
    check_created_at(spec, now=NOW + 24 * 3600)
    with pytest.raises(ProtocolError) as err:
        check_created_at(spec, now=NOW - 301)
    assert err.value.reason == "from_future"
    with pytest.raises(ProtocolError) as err:
        check_created_at(spec, now=NOW + 24 * 3600 + 1)
    assert err.value.reason == "expired"


def test_compute_capability_comparison() -> None:
    assert compute_capability_at_least("10.0", "9.0")
    assert compute_capability_at_least("8.6", "8.0")
    assert not compute_capability_at_least("7.5", "8.0")
    assert not compute_capability_at_least("", "8.0")


segments = st.text(alphabet="ab.", min_size=0, max_size=4)


@given(st.lists(segments, min_size=1, max_size=5))
def test_container_paths_are_normalised(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    try:
        check_container_path(path, "p")
    except ValidationError:
        assert ".." in parts or "." in parts or "" in parts
    else:
        assert all(p not in ("", ".", "..") for p in parts)


@given(st.data())
def test_corrupted_specs_raise_only_protocol_errors(data: st.DataObject) -> None:
    raw = bytearray(sample_spec().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        spec = JobSpec.decode(bytes(raw))
    except ProtocolError as exc:
        assert exc.reason
    else:
        assert spec.encode() == bytes(raw)  # anything accepted is canonical and valid


@given(
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), st.text(max_size=30).filter(lambda t: "\x00" not in t), max_size=5),
    st.lists(st.text(max_size=20).filter(lambda t: "\x00" not in t), max_size=5),
    st.integers(0, 2**63 - 1),
)
def test_valid_specs_round_trip(env: dict[str, str], args: list[str], price: int) -> None:
    spec = sample_spec(env=env, args=tuple(args), max_price=price)
    assert JobSpec.decode(spec.encode()) == spec
