"""Vectors for spec/identifiers.md: GPU name normalisation, memory tiers,
identifier parsing and DHT keys, advertised ladders and lookups.

Expected values are written out by hand (names, tiers, ladders); only the
CIDs are computed, with hashlib and base64 rather than protocol code.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from protocol.jobspec import GpuRequirement, Resources
from protocol.resources import GpuInfo, ResourceSet

from . import accept, reject, vector, vector_file

# (NVML name, memory MiB as NVML reports it, vendor, model, memory tier)
NAMES = [
    ("NVIDIA H100 80GB HBM3", 81559, "nvidia", "h100", "80g"),
    ("NVIDIA H100 PCIe", 81559, "nvidia", "h100", "80g"),
    ("NVIDIA H100 NVL", 95830, "nvidia", "h100", "94g"),
    ("NVIDIA H200", 143771, "nvidia", "h200", "141g"),
    ("NVIDIA GH200 480GB", 97871, "nvidia", "gh200", "96g"),
    ("NVIDIA A100-SXM4-40GB", 40960, "nvidia", "a100", "40g"),
    ("NVIDIA A100-SXM4-80GB", 81920, "nvidia", "a100", "80g"),
    ("NVIDIA A100 80GB PCIe", 81920, "nvidia", "a100", "80g"),
    ("NVIDIA A10G", 23028, "nvidia", "a10g", "24g"),
    ("NVIDIA L4", 23034, "nvidia", "l4", "24g"),
    ("NVIDIA L40S", 46068, "nvidia", "l40s", "48g"),
    ("Tesla V100-SXM2-16GB", 16160, "nvidia", "v100", "16g"),
    ("Tesla V100-SXM2-32GB", 32510, "nvidia", "v100", "32g"),
    ("Tesla T4", 15360, "nvidia", "t4", "16g"),
    ("NVIDIA GeForce RTX 4090", 24564, "nvidia", "rtx4090", "24g"),
    ("NVIDIA GeForce RTX 3080", 10240, "nvidia", "rtx3080", "10g"),
    ("NVIDIA GeForce RTX 4070 Ti SUPER", 16376, "nvidia", "rtx4070tisuper", "16g"),
    ("NVIDIA GeForce GTX 1080 Ti", 11264, "nvidia", "gtx1080ti", "11g"),
    ("NVIDIA RTX A6000", 49140, "nvidia", "rtxa6000", "48g"),
    ("NVIDIA RTX 6000 Ada Generation", 49140, "nvidia", "rtx6000ada", "48g"),
    ("Quadro RTX 8000", 49152, "nvidia", "rtx8000", "48g"),
    ("AMD Instinct MI300X", 196608, "amd", "mi300x", "192g"),
    ("AMD Instinct MI250X/MI250", 131072, "amd", "mi250x", "128g"),
    ("AMD Instinct MI210", 65520, "amd", "mi210", "64g"),
    ("AMD Radeon RX 7900 XTX", 24560, "amd", "rx7900xtx", "24g"),
    ("Intel(R) Data Center GPU Max 1550", 131072, "intel", "max1550", "128g"),
    ("Some Future Accelerator 9000", 409600, "other", "somefuture9000", "400g"),
    ("NVIDIA", 512, "nvidia", "unknown", "1g"),
]

# Model table version 1 (spec/identifiers.md 2.1), written out by hand: one
# ``model.vendor`` vector per entry.
TABLE = {
    "nvidia": ["a10", "a100", "a10g", "a16", "a2", "a30", "a40", "a800", "b100", "b200", "gb200", "gh200",
               "h100", "h20", "h200", "h800", "k80", "l20", "l4", "l40", "l40s", "p100", "p4", "p40", "t4", "v100"],
    "amd": ["mi100", "mi210", "mi250", "mi250x", "mi300a", "mi300x", "mi325x", "mi50"],
    "intel": ["flex140", "flex170", "max1100", "max1550"],
}  # fmt: skip

# (token, vendor or None, why): the rules for tokens outside the table.
RULES = [
    ("rtx4090", "nvidia", "rule 1: rtx..."),
    ("rtxa6000", "nvidia", "rule 1: rtx..."),
    ("gtx1080ti", "nvidia", "rule 1: gtx..."),
    ("titanv", "nvidia", "rule 1: titan..."),
    ("quadrop6000", "nvidia", "rule 1: quadro... (only a written token: probes drop the brand word)"),
    ("rtx", "nvidia", "rule 1: the prefix alone matches"),
    ("mi300", "amd", "rule 2: mi<digits> (not in the table)"),
    ("mi60x", "amd", "rule 2: mi<digits> and one letter"),
    ("mi300xx", None, "rule 2 allows one letter after mi<digits>: no rule matches"),
    ("rx7900xtx", "amd", "rule 2: rx<digits><letters>"),
    ("w7900", "amd", "rule 2: w<digits>"),
    ("prow7900", "amd", "rule 2: pro..."),
    ("arca770", "intel", "rule 3: arc..."),
    ("max1450", "intel", "rule 3: max<digits> (not in the table)"),
    ("flex170x", None, "rule 3 wants flex<digits> and nothing after"),
    ("maxq", None, "rule 3 wants digits after max"),
    ("h100x", None, "not in the table, no rule: the table is exact"),
    ("a1000", None, "not in the table, no rule"),
    ("unknown", None, "what normalisation gives for a name without a model word"),
    ("rx", None, "rule 2 needs digits after rx"),
]

# (written name, vendor or None, model, memory_gb or None): spec/identifiers.md 2.2.
WRITTEN = [
    ("H100", "nvidia", "h100", None),
    ("h100", "nvidia", "h100", None),
    ("rtx 4090", "nvidia", "rtx4090", None),
    ("RTX-4090", "nvidia", "rtx4090", None),
    ("GeForce RTX 4090", "nvidia", "rtx4090", None),
    ("a100-40g", "nvidia", "a100", 40),
    ("A100 40GB", "nvidia", "a100", 40),
    ("2xh100-80g", "nvidia", "h100", 80),
    ("16xa100-40g+mig", "nvidia", "a100", 40),
    ("NVIDIA H100 80GB HBM3", "nvidia", "h100", 80),
    ("NVIDIA A100-SXM4-40GB", "nvidia", "a100", 40),
    ("  nvidia   h100  ", "nvidia", "h100", None),
    ("MI300X", "amd", "mi300x", None),
    ("AMD Instinct MI250X/MI250", "amd", "mi250x", None),
    ("Intel(R) Data Center GPU Max 1550", "intel", "max1550", None),
    ("NVIDIA Foo 9", "nvidia", "foo9", None),
    ("Foo 9", None, "foo9", None),
    ("NVIDIA", "nvidia", "unknown", None),
    ("", None, "unknown", None),
    ("80g", None, "unknown", 80),
    ("h100 0g", "nvidia", "h100", None),
    ("h100 1234567890g", "nvidia", "h100", None),
    ("8x", None, "8x", None),
    ("\u00c4rger-GPU \u2713", None, "rger", None),
    ("\u0130ntel Max 1550", None, "ntelmax1550", None),
    ("\u212a80", None, "80", None),
    ("abcdefghijklmnopqrstuvwxyz0123456789", None, "abcdefghijklmnopqrstuvwxyz012345", None),
]

VALID_IDS = [
    "cpn:gpu",
    "cpn:gpu/nvidia",
    "cpn:gpu/nvidia/h100",
    "cpn:gpu/nvidia/h100/80g",
    "cpn:gpu/nvidia/h100/x8",
    "cpn:gpu/amd/mi300x/192g",
    "cpn:gpu/amd/mi300x/x64",
    "cpn:cpu",
    "cpn:cpu/c4",
    "cpn:cpu/c16/m64g",
    "cpn:cpu/c256/m1g",
]

INVALID_IDS = [
    ("upper-case", "cpn:gpu/NVIDIA/h100", "identifiers are lower case"),
    ("trailing-slash", "cpn:gpu/nvidia/", "no empty segments"),
    ("no-scheme", "gpu/nvidia/h100", "the cpn: prefix is required"),
    ("wrong-scheme", "cpn2:gpu", "only the cpn: scheme"),
    ("count-not-pow2", "cpn:gpu/nvidia/h100/x3", "count tiers are powers of two"),
    ("count-1", "cpn:gpu/nvidia/h100/x1", "x1 is the model level itself"),
    ("count-too-big", "cpn:gpu/nvidia/h100/x128", "count tiers stop at x64"),
    ("count-leading-zero", "cpn:gpu/nvidia/h100/x08", "no leading zeros"),
    ("mem-zero", "cpn:gpu/nvidia/h100/0g", "memory tier at least 1g"),
    ("mem-and-count", "cpn:gpu/nvidia/h100/80g/x8", "memory and count tiers are alternatives at level 4"),
    ("mem-unit", "cpn:gpu/nvidia/h100/80gb", "the memory unit is 'g'"),
    ("model-punct", "cpn:gpu/nvidia/h100-sxm", "tokens are [a-z0-9]"),
    ("model-too-long", "cpn:gpu/nvidia/" + "a" * 33, "tokens are at most 32 characters"),
    ("cores-not-pow4", "cpn:cpu/c8", "core tiers are powers of four"),
    ("cores-1", "cpn:cpu/c1", "core tiers start at c4"),
    ("ram-not-pow2", "cpn:cpu/c16/m48g", "RAM tiers are powers of two"),
    ("ram-without-cores", "cpn:cpu/m64g", "the RAM tier follows a cores tier"),
    ("unknown-kind", "cpn:tpu", "kinds are gpu and cpu"),
    ("whitespace", "cpn:gpu ", "no whitespace"),
    ("empty", "", "empty string"),
    ("too-long", "cpn:gpu/" + "a" * 32 + "/" + "b" * 32 + "/" + "c" * 60, "at most 128 characters"),
]


def _cid(text: str) -> tuple[str, str]:
    key = b"\x01\x55\x12\x20" + hashlib.sha256(text.encode()).digest()
    return key.hex(), "b" + base64.b32encode(key).decode().lower().rstrip("=")


def _gpu(name: str, model: str, mib: int, i: int, vendor: str = "nvidia", mig: bool = False) -> GpuInfo:
    return GpuInfo(vendor=vendor, model=model, name=name, uuid=f"GPU-{model}-{i}", memory_mib=mib,
                   compute_capability="9.0" if vendor == "nvidia" else "", mig=mig)


LADDERS: list[tuple[str, str, ResourceSet, list[str]]] = [
    (
        "cpu-only-2-cores", "a small CPU-only node: below the first core tier",
        ResourceSet(cpu_cores=2, cpu_model="x", memory_mib=4096, disk_mib=10000, gpus=()),
        ["cpn:cpu"],
    ),
    (
        "cpu-only-16-cores", "a 16-core 64 GiB node",
        ResourceSet(cpu_cores=16, cpu_model="x", memory_mib=65536, disk_mib=10000, gpus=()),
        ["cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c16", "cpn:cpu/c16/m64g"],
    ),
    (
        "8x-h100", "8 H100 80GB, 96 cores, 1 TiB RAM: count tiers x2, x4, x8",
        ResourceSet(cpu_cores=96, cpu_model="x", memory_mib=1 << 20, disk_mib=1 << 20,
                    gpus=tuple(_gpu("NVIDIA H100 80GB HBM3", "h100", 81559, i) for i in range(8))),
        ["cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c16", "cpn:cpu/c64", "cpn:cpu/c64/m1024g",
         "cpn:gpu", "cpn:gpu/nvidia", "cpn:gpu/nvidia/h100", "cpn:gpu/nvidia/h100/80g",
         "cpn:gpu/nvidia/h100/x2", "cpn:gpu/nvidia/h100/x4", "cpn:gpu/nvidia/h100/x8"],
    ),
    (
        "3x-rtx4090", "3 GPUs: x2 but not x4",
        ResourceSet(cpu_cores=8, cpu_model="x", memory_mib=32000, disk_mib=1000,
                    gpus=tuple(_gpu("NVIDIA GeForce RTX 4090", "rtx4090", 24564, i) for i in range(3))),
        ["cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c4/m16g", "cpn:gpu", "cpn:gpu/nvidia",
         "cpn:gpu/nvidia/rtx4090", "cpn:gpu/nvidia/rtx4090/24g", "cpn:gpu/nvidia/rtx4090/x2"],
    ),
    (
        "mixed-a100", "two A100 40GB and two A100 80GB: both memory tiers, count counts all four",
        ResourceSet(cpu_cores=4, cpu_model="x", memory_mib=8192, disk_mib=1000,
                    gpus=(_gpu("NVIDIA A100-SXM4-40GB", "a100", 40960, 0), _gpu("NVIDIA A100-SXM4-40GB", "a100", 40960, 1),
                          _gpu("NVIDIA A100-SXM4-80GB", "a100", 81920, 2), _gpu("NVIDIA A100-SXM4-80GB", "a100", 81920, 3))),
        ["cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c4/m8g", "cpn:gpu", "cpn:gpu/nvidia", "cpn:gpu/nvidia/a100",
         "cpn:gpu/nvidia/a100/40g", "cpn:gpu/nvidia/a100/80g", "cpn:gpu/nvidia/a100/x2", "cpn:gpu/nvidia/a100/x4"],
    ),
    (
        "mig-excluded", "a GPU in MIG mode is not advertised",
        ResourceSet(cpu_cores=4, cpu_model="x", memory_mib=8192, disk_mib=1000,
                    gpus=(_gpu("NVIDIA A100-SXM4-40GB", "a100", 40960, 0, mig=True),)),
        ["cpn:cpu", "cpn:cpu/c4", "cpn:cpu/c4/m8g"],
    ),
]


def _req(gpu: GpuRequirement | None, cpu_millis: int = 1000) -> Resources:
    return Resources(gpu=gpu, cpu_millis=cpu_millis, memory_mib=1024, disk_mib=0)


def _g(count: int, vendor: str | None = None, models: tuple[str, ...] = (), mem: int = 0) -> GpuRequirement:
    return GpuRequirement(count=count, min_memory_mib=mem, vendor=vendor, models=models, min_compute_capability=None)


LOOKUPS: list[tuple[str, str, Resources, list[str]]] = [
    ("cpu-1-core", "one core: every node advertises cpn:cpu", _req(None, 1000), ["cpn:cpu"]),
    ("cpu-6-cores", "6 cores: every such node has at least c4", _req(None, 6000), ["cpn:cpu/c4"]),
    ("cpu-16-cores", "exactly 16 cores", _req(None, 16000), ["cpn:cpu/c16"]),
    ("cpu-fractional", "4.5 cores round up to 5", _req(None, 4500), ["cpn:cpu/c4"]),
    ("any-gpu", "any one GPU", _req(_g(1)), ["cpn:gpu"]),
    ("any-nvidia-4", "4 NVIDIA GPUs of any model: only the vendor level is common", _req(_g(4, "nvidia")), ["cpn:gpu/nvidia"]),
    ("h100-1", "one H100: vendor known from the model", _req(_g(1, None, ("h100",))), ["cpn:gpu/nvidia/h100"]),
    ("h100-8", "8 H100", _req(_g(8, None, ("h100",))), ["cpn:gpu/nvidia/h100/x8"]),
    ("h100-6", "6 H100: every such node advertises x4", _req(_g(6, "nvidia", ("h100",))), ["cpn:gpu/nvidia/h100/x4"]),
    ("a100-or-h100-2-80g", "2 of A100 or H100 with 80 GB: one lookup per model; memory is checked on the advert",
     _req(_g(2, None, ("a100", "h100"), 81920)), ["cpn:gpu/nvidia/a100/x2", "cpn:gpu/nvidia/h100/x2"]),
    ("mi300x-2", "2 MI300X", _req(_g(2, "amd", ("mi300x",))), ["cpn:gpu/amd/mi300x/x2"]),
    ("rule-vendor", "a model outside the table gets its vendor from a rule (rtx...)",
     _req(_g(3, None, ("rtx4090",))), ["cpn:gpu/nvidia/rtx4090/x2"]),
    ("unknown-model-explicit-vendor", "a model of no known vendor is looked up under the stated vendor",
     _req(_g(1, "amd", ("foo9", "mi300x"))), ["cpn:gpu/amd/foo9", "cpn:gpu/amd/mi300x"]),
]


def generate() -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for vendor, models in TABLE.items():
        for model in models:
            out.append(vector(f"model-table-{model}", f"model table version 1: {model} is a {vendor} model",
                              "model.vendor", {"model": model}, accept(vendor=vendor)))
    for model, maybe_vendor, why in RULES:
        out.append(vector(f"model-rule-{model}", why, "model.vendor", {"model": model}, accept(vendor=maybe_vendor)))
    for n, (name, maybe_vendor, model, memory_gb) in enumerate(WRITTEN):
        out.append(vector(f"parse-name-{n:02d}-{model}", f"written name {name!r}", "gpu.parse_name", {"name": name},
                          accept(vendor=maybe_vendor, model=model, memory_gb=memory_gb)))
    for n, (name, mib, vendor, model, tier) in enumerate(NAMES):
        out.append(vector(f"normalise-{n:02d}-{model}-{tier}", f"NVML name {name!r} with {mib} MiB", "gpu.normalise",
                          {"name": name, "memory_mib": mib}, accept(vendor=vendor, model=model, memory_tier=tier)))
    for text in VALID_IDS:
        key_hex, cid = _cid(text)
        out.append(vector(f"id-{text[4:].replace('/', '-')}", "a canonical identifier and its DHT key (CIDv1 raw sha2-256)",
                          "id.parse", {"id": text}, accept(dht_key_hex=key_hex, cid=cid)))
    for name, text, desc in INVALID_IDS:
        out.append(vector(f"id-invalid-{name}", desc, "id.parse", {"id": text}, reject("bad_compute_id")))
    for name, desc, resources, ids in LADDERS:
        out.append(vector(f"ladder-{name}", desc, "ids.advertise", {"resources_hex": resources.encode().hex()}, accept(ids=ids)))
    for name, desc, requirement, ids in LOOKUPS:
        out.append(vector(f"lookup-{name}", desc, "ids.lookup", {"requirement_hex": requirement.encode().hex()}, accept(ids=ids)))
    return vector_file("identifiers", "identifiers.md", 2, out)
