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


# ----------------------------------------------------------------- the model table


def _spec_model_table() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """The model table and rules as spec/identifiers.md §2.1 writes them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "spec" / "identifiers.md").read_text()
    section = text[text.index("### 2.1") : text.index("### 2.2")]
    table: dict[str, set[str]] = {}
    rules: list[tuple[str, str]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 2 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = set(re.findall(r"`([a-z0-9]+)`", cells[1]))
        elif len(cells) >= 3 and cells[0].isdigit():
            row = line.split("|", 3)[3].rsplit("|", 1)[0]
            for pattern in re.findall(r"`([^`]+)`", row.replace("\\|", "|")):
                rules.append((cells[1].strip("`"), pattern))
    return table, rules


def test_spec_model_table_is_the_code_table() -> None:
    from protocol.resources import KNOWN_MODELS, MODEL_PREFIXES

    table, rules = _spec_model_table()
    assert table == {vendor: set(models) for vendor, models in KNOWN_MODELS.items()}
    code_rules = [(vendor, alt) for vendor, pattern in MODEL_PREFIXES for alt in _alternatives(pattern.pattern)]
    assert rules == code_rules


def _alternatives(pattern: str) -> list[str]:
    """Split a top-level alternation ``a|b`` (a group ``(x|y)z`` stays whole)."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(pattern):
        depth += c == "("
        depth -= c == ")"
        if c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
    out.append(pattern[start:])
    return [p.replace("(?:", "(") for p in out]


@pytest.mark.parametrize(
    "name",
    ["H100", "h100", "rtx 4090", "a100-40g", "NVIDIA H100 80GB HBM3", "2xh100-80g", "MI300X", "l4"],
)
def test_one_normalisation_for_every_source(name: str) -> None:
    """Probe names, typed names and what ``cpn find`` prints reach the same token."""
    from protocol.resources import parse_gpu_name

    parsed = parse_gpu_name(name)
    assert normalise_gpu_model(name) == (parsed.vendor or "other", parsed.model)
    # the printed form of a device (model-tier) normalises back to the device's model
    assert parse_gpu_name(f"{parsed.model}-{memory_tier(81559)}").model == parsed.model


def test_tier_floor_is_below_every_device_of_the_tier() -> None:
    from protocol.resources import parse_gpu_name, tier_floor_mib

    first: dict[str, int] = {}
    for mib in range(1, 200 * 1024):
        first.setdefault(memory_tier(mib), mib)
    for tier, lowest in first.items():
        gb = int(tier[:-1])
        assert tier_floor_mib(gb) <= lowest, tier
    assert parse_gpu_name("a100-40g").min_memory_mib == tier_floor_mib(40) == 36864


def test_protocol_has_no_import_cycle() -> None:
    """protocol.identifiers imported protocol.jobspec and back (issue 11): no cycles,
    counting imports inside functions too."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "protocol"
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                deps.update(n.split(".")[0] for n in names)
        graph[path.stem] = deps - {path.stem}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert cycles == []
