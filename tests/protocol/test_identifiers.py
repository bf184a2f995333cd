"""Compute identifiers (protocol/identifiers.py, spec/identifiers.md)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError, ValidationError
from protocol.identifiers import (
    ComputeId,
    advertised_ids,
    cid_string,
    cores_tiers,
    count_tiers,
    dht_key,
    lookup_ids,
    memory_tier,
    normalise_gpu_model,
    parse_id,
    ram_tier,
)
from protocol.jobspec import GpuRequirement, Resources
from protocol.resources import TOKEN_RE, GpuInfo, Metric, ResourceSet


def gpu(model: str = "h100", mib: int = 81559, i: int = 0, vendor: str = "nvidia", mig: bool = False) -> GpuInfo:
    return GpuInfo(vendor=vendor, model=model, name=f"{vendor} {model}", uuid=f"GPU-{model}-{mib}-{i}",
                   memory_mib=mib, compute_capability="9.0" if vendor == "nvidia" else "", mig=mig)  # fmt: skip


def node(cores: int = 16, mem: int = 65536, gpus: tuple[GpuInfo, ...] = ()) -> ResourceSet:
    return ResourceSet(cpu_cores=cores, cpu_model="cpu", memory_mib=mem, disk_mib=1000, gpus=gpus)


@pytest.mark.parametrize(
    ("name", "vendor", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "nvidia", "h100"),
        ("NVIDIA A100-SXM4-40GB", "nvidia", "a100"),
        ("NVIDIA GeForce RTX 4090", "nvidia", "rtx4090"),
        ("Tesla V100-SXM2-16GB", "nvidia", "v100"),
        ("NVIDIA L4", "nvidia", "l4"),
        ("AMD Instinct MI300X", "amd", "mi300x"),
        ("AMD Radeon RX 7900 XTX", "amd", "rx7900xtx"),
        ("  nvidia   h100  ", "nvidia", "h100"),
        ("H100", "nvidia", "h100"),
        ("MI250X", "amd", "mi250x"),
        ("", "other", "unknown"),
        ("Ärger-GPU ✓", "other", "rger"),
    ],
)
def test_normalise(name: str, vendor: str, model: str) -> None:
    assert normalise_gpu_model(name) == (vendor, model)


@given(st.text(max_size=80))
def test_normalise_always_gives_tokens(name: str) -> None:
    vendor, model = normalise_gpu_model(name)
    assert TOKEN_RE.match(vendor) and TOKEN_RE.match(model)
    assert str(parse_id(f"cpn:gpu/{vendor}/{model}")) == f"cpn:gpu/{vendor}/{model}"


@pytest.mark.parametrize(
    ("mib", "tier"),
    [(81559, "80g"), (40960, "40g"), (23034, "24g"), (15360, "16g"), (95830, "94g"), (143771, "141g"),
     (196608, "192g"), (1, "1g"), (409600, "400g"), (10240, "10g")],
)  # fmt: skip
def test_memory_tier(mib: int, tier: str) -> None:
    assert memory_tier(mib) == tier


def test_memory_tier_rejects_non_positive() -> None:
    with pytest.raises(ProtocolError):
        memory_tier(0)


@given(st.integers(1, 1 << 24))
def test_memory_tier_is_a_valid_identifier_part(mib: int) -> None:
    parse_id(f"cpn:gpu/nvidia/h100/{memory_tier(mib)}")


def test_tiers() -> None:
    assert count_tiers(1) == [] and count_tiers(3) == [2] and count_tiers(8) == [2, 4, 8]
    assert count_tiers(1000) == [2, 4, 8, 16, 32, 64]
    assert cores_tiers(3) == [] and cores_tiers(16) == [4, 16] and cores_tiers(63) == [4, 16]
    assert ram_tier(65536) == "m64g" and ram_tier(100) == "m1g" and ram_tier(96 * 1024) == "m64g"


def test_ladder_of_an_8_gpu_server_is_small_and_ordered() -> None:
    ids = advertised_ids(node(96, 1 << 20, tuple(gpu(i=i) for i in range(8))))
    assert ids == [
        "cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c16", "cpn:cpu/c64", "cpn:cpu/c64/m1024g",
        "cpn:gpu", "cpn:gpu/nvidia", "cpn:gpu/nvidia/h100", "cpn:gpu/nvidia/h100/80g",
        "cpn:gpu/nvidia/h100/x2", "cpn:gpu/nvidia/h100/x4", "cpn:gpu/nvidia/h100/x8",
    ]  # fmt: skip
    assert len(ids) <= 12


def test_mig_gpus_are_not_advertised() -> None:
    assert not [i for i in advertised_ids(node(gpus=(gpu(mig=True),))) if i.startswith("cpn:gpu")]


def _req(gpu_req: GpuRequirement | None, cpu_millis: int = 1000) -> Resources:
    return Resources(gpu=gpu_req, cpu_millis=cpu_millis, memory_mib=1, disk_mib=0)


def test_lookup_examples() -> None:
    g = GpuRequirement(count=5, min_memory_mib=0, vendor=None, models=("a100", "h100"), min_compute_capability=None)
    assert lookup_ids(_req(g)) == ["cpn:gpu/nvidia/a100/x4", "cpn:gpu/nvidia/h100/x4"]
    assert lookup_ids(_req(None, 3000)) == ["cpn:cpu"]
    assert lookup_ids(_req(None, 3001)) == ["cpn:cpu/c4"]  # needs a 4th core
    assert lookup_ids(_req(None, 4000)) == ["cpn:cpu/c4"]
    g = GpuRequirement(count=1, min_memory_mib=0, vendor="amd", models=(), min_compute_capability=None)
    assert lookup_ids(_req(g)) == ["cpn:gpu/amd"]


MODELS = [("nvidia", "h100", 81559), ("nvidia", "a100", 40960), ("nvidia", "a100", 81920),
          ("nvidia", "rtx4090", 24564), ("amd", "mi300x", 196608)]  # fmt: skip


@st.composite
def node_and_matching_requirement(draw: st.DrawFn) -> tuple[ResourceSet, Resources]:
    """A node, and a requirement the node satisfies (so some lookup id must hit)."""
    picks = draw(st.lists(st.sampled_from(MODELS), min_size=0, max_size=12))
    gpus = tuple(gpu(model, mib, i, vendor) for i, (vendor, model, mib) in enumerate(picks))
    cores = draw(st.integers(1, 300))
    rs = node(cores, draw(st.integers(1, 1 << 21)), gpus)
    if not gpus or draw(st.booleans()):
        return rs, _req(None, draw(st.integers(1, cores * 1000)))
    vendor, model, _ = draw(st.sampled_from(picks))
    have = sum(1 for v, m, _ in picks if (v, m) == (vendor, model))
    others = draw(st.lists(st.sampled_from(["a100", "h100", "rtx4090", "l4"]), max_size=3))
    models: tuple[str, ...] = ()
    if draw(st.booleans()):
        models = tuple(sorted({model, *(o for o in others if vendor == "nvidia")}))
    req = GpuRequirement(
        count=draw(st.integers(1, have)), min_memory_mib=0,
        vendor=draw(st.sampled_from([None, vendor])), models=models, min_compute_capability=None,
    )  # fmt: skip
    return rs, _req(req, draw(st.integers(1, cores * 1000)))


@given(node_and_matching_requirement())
def test_a_capable_provider_is_always_found(case: tuple[ResourceSet, Resources]) -> None:
    resources, requirement = case
    advertised = advertised_ids(resources)
    assert set(lookup_ids(requirement)) & set(advertised)


@given(node_and_matching_requirement())
def test_advertised_ids_are_canonical_and_ordered(case: tuple[ResourceSet, Resources]) -> None:
    ids = advertised_ids(case[0])
    assert len(ids) == len(set(ids))
    for text in ids:
        assert str(parse_id(text)) == text
    depth = [(t.split("/")[0], t.count("/")) for t in ids]
    assert depth == sorted(depth)


def test_dht_key_is_a_cidv1_raw_sha256() -> None:
    text = "cpn:gpu/nvidia/h100"
    key = dht_key(text)
    assert key[:4] == b"\x01\x55\x12\x20" and len(key) == 36
    assert key[4:] == hashlib.sha256(text.encode()).digest()
    cid = cid_string(text)
    assert cid.startswith("bafkrei")
    assert base64.b32decode(cid[1:].upper() + "=" * (-len(cid[1:]) % 8)) == key


def test_dht_key_refuses_non_canonical_text() -> None:
    with pytest.raises(ProtocolError) as err:
        dht_key("cpn:gpu/NVIDIA")
    assert err.value.reason == "bad_compute_id"


@pytest.mark.parametrize("text", ["cpn:gpu/nvidia/h100/x3", "cpn:cpu/c8", "cpn:cpu/c16/m3g", "cpn:gpu//h100", 7])
def test_parse_rejects(text: object) -> None:
    with pytest.raises(ProtocolError):
        parse_id(text)  # type: ignore[arg-type]


def test_parse_fields() -> None:
    assert parse_id("cpn:gpu/nvidia/h100/x8") == ComputeId("gpu", vendor="nvidia", model="h100", count=8)
    assert parse_id("cpn:cpu/c16/m64g") == ComputeId("cpu", cores=16, ram_gib=64)


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"vendor": "NVIDIA"}, "vendor"), ({"model": "h-100"}, "model"), ({"memory_mib": 0}, "memory_mib"),
     ({"compute_capability": "9"}, "compute_capability"), ({"name": ""}, "name"), ({"uuid": "a\nb"}, "uuid")],
)  # fmt: skip
def test_gpu_info_rules(kw: dict[str, object], field: str) -> None:
    base = gpu().to_wire()
    base.update(kw)
    with pytest.raises(ValidationError) as err:
        GpuInfo(**base)  # type: ignore[arg-type]
    assert err.value.field == field


def test_resource_set_rules() -> None:
    with pytest.raises(ValidationError) as err:
        node(gpus=(gpu(), gpu()))
    assert err.value.field == "gpus[1].uuid"
    with pytest.raises(ValidationError) as err:
        node(cores=0)
    assert err.value.field == "cpu_cores"
    assert ResourceSet.decode(node(gpus=(gpu(),)).encode()) == node(gpus=(gpu(),))


def test_metric_rules() -> None:
    m = Metric(type="gpu-memory-free", unit="MiB", source="measured", value=1024)
    assert Metric.decode(m.encode()) == m
    with pytest.raises(ValidationError) as err:
        m.replace(source="guessed")
    assert err.value.field == "source"
    with pytest.raises(ValidationError) as err:
        m.replace(type="GPU Memory")
    assert err.value.field == "type"
