"""What a node has to offer: CPUs, memory, disk and GPUs (see spec/identifiers.md).

These structs are the *facts* a probe reports and an advert carries; the
compute identifiers a node advertises under are derived from them by
:func:`protocol.identifiers.advertised_ids`.  All quantities are integers with
the unit in the field name (MiB, cores), because floats never go on the wire.

:class:`Metric` follows the field set of the IETF CATS metric drafts
(metric type, unit, source, value) so that metrics can be mapped one-to-one
onto CATS metric TLVs by a gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import ValidationError
from .wire import Struct, struct

__all__ = [
    "KNOWN_MODELS",
    "MODEL_TABLE_VERSION",
    "MODEL_PREFIXES",
    "GpuName",
    "tier_floor_mib",
    "parse_gpu_name",
    "normalise_gpu_model",
    "vendor_of_model",
    "GpuInfo",
    "ResourceSet",
    "Metric",
    "METRIC_SOURCES",
    "TOKEN_RE",
    "COMPUTE_CAPABILITY_RE",
    "MAX_GPUS",
]

#: A normalised vendor or model token: lowercase letters and digits only, so it
#: can be a path segment of a compute identifier without escaping.
TOKEN_RE = re.compile(r"^[a-z0-9]{1,32}\Z")
#: CUDA compute capability "major.minor" ("9.0"); empty for non-NVIDIA devices.
COMPUTE_CAPABILITY_RE = re.compile(r"^(?:0|[1-9][0-9]?)\.(?:0|[1-9][0-9]?)\Z")
METRIC_SOURCES = ("nominal", "measured")
_METRIC_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}\Z")
_UNIT_RE = re.compile(r"^[A-Za-z0-9%/._-]{1,16}\Z")

MAX_GPUS = 64  #: GPUs one node may report (bounds adverts and identifier ladders)
MAX_CPU_CORES = 1 << 16
MAX_MEMORY_MIB = 1 << 32  #: 4 PiB, far beyond any single host: a sanity bound
MAX_TEXT = 256


# ----------------------------------------------------------------- model names
#
# spec/identifiers.md section 2.  The table decides DHT lookup keys (a job that
# names a model without a vendor looks up under the model's vendor) and which
# job specs are valid (an unknown model needs an explicit vendor), so it is
# part of the wire protocol: it is versioned, and spec/identifiers.md holds the
# same table (a test compares them).

#: Version of :data:`KNOWN_MODELS` and :data:`MODEL_PREFIXES` (spec/identifiers.md §2.1).
MODEL_TABLE_VERSION: Final = 1

#: Known model tokens by vendor (model table version 1).
KNOWN_MODELS: Final[dict[str, frozenset[str]]] = {
    "nvidia": frozenset({
        "b100", "b200", "gb200", "h100", "h200", "h800", "h20", "gh200", "a100", "a800",
        "a40", "a30", "a16", "a10", "a10g", "a2", "l40", "l40s", "l20", "l4", "v100",
        "t4", "p100", "p40", "p4", "k80",
    }),
    "amd": frozenset({"mi300x", "mi300a", "mi325x", "mi250x", "mi250", "mi210", "mi100", "mi50"}),
    "intel": frozenset({"max1550", "max1100", "flex170", "flex140"}),
}  # fmt: skip

#: Rules for tokens not in :data:`KNOWN_MODELS`, tried in this order; each
#: pattern must match the whole token.
MODEL_PREFIXES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("nvidia", re.compile(r"(?:rtx|gtx|titan|quadro)[a-z0-9]*")),
    ("amd", re.compile(r"mi[0-9]+[a-z]?|rx[0-9]+[a-z]*|w[0-9]+[a-z]*|pro[a-z0-9]*")),
    ("intel", re.compile(r"arc[a-z0-9]*|max[0-9]+|flex[0-9]+")),
)

_BRAND_WORDS: Final = (
    ("nvidia", frozenset({"nvidia", "tesla", "geforce", "quadro"})),
    ("amd", frozenset({"amd", "ati", "radeon", "instinct"})),
    ("intel", frozenset({"intel"})),
)
#: Words that name the brand, form factor or memory rather than the model.
_NOISE = re.compile(
    r"nvidia|tesla|geforce|quadro|amd|ati|radeon|instinct|intel|graphics|gpu|"
    r"pcie|sxm[0-9]*|nvl|hbm[0-9]*e?|gddr[0-9]*x?|[0-9]+gb?|generation|accelerator|"
    r"oam|mig|data|center|datacenter|r|tm"
)
#: A memory word: "80gb" as vendors write it, "80g" as compute identifiers and
#: ``cpn find`` write the memory tier.
_MEMORY_WORD = re.compile(r"([0-9]+)gb?")
_MAX_TIER_DIGITS = 9
#: A GPU count glued to the model, as ``cpn find`` prints a host's GPUs ("2xh100").
_COUNT_WORD = re.compile(r"[0-9]+x([a-z][a-z0-9]*)")
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def vendor_of_model(model: str) -> str | None:
    """The vendor of a normalised model token by the model table, or None.

    Known models first, then the prefix rules in order (spec/identifiers.md §2.1)."""
    for vendor, models in KNOWN_MODELS.items():
        if model in models:
            return vendor
    for vendor, pattern in MODEL_PREFIXES:
        if pattern.fullmatch(model):
            return vendor
    return None


@dataclass(frozen=True, slots=True)
class GpuName:
    """A GPU name as a person or a vendor tool wrote it, normalised."""

    vendor: str | None  #: named by a brand word or by the model table; None: undecided
    model: str  #: model token ([a-z0-9]{1,32}); "unknown" when the name has none
    memory_gb: int | None  #: a memory size in the name ("80GB", "-40g"), else None

    @property
    def min_memory_mib(self) -> int | None:
        """A floor under the memory of every device in memory tier ``memory_gb``
        (identifiers.md §2.2 and §3), usable as a job's ``min_memory_mib``."""
        return None if self.memory_gb is None else tier_floor_mib(self.memory_gb)


def tier_floor_mib(gb: int) -> int:
    """No device whose memory tier is ``gb`` has less memory than this (MiB).

    A standard tier is within 10 % of its size; any other tier is the memory
    rounded to the nearest GiB; tier 1 also holds anything smaller."""
    if gb <= 1:
        return 1
    return min(-(-gb * 1024 * 9 // 10), gb * 1024 - 512)


def parse_gpu_name(name: str) -> GpuName:
    """Normalise any way of writing a GPU model (spec/identifiers.md §2).

    One function for every source: NVML and rocm-smi names ("NVIDIA H100 80GB
    HBM3"), what people type in job files and ``cpn find --gpu-model`` ("H100",
    "rtx 4090") and the form ``cpn find`` prints, model plus memory tier
    ("a100-40g").  All of those give the same model token.  Total: any text
    gives a result (model "unknown" when no word is left).
    """
    # ASCII case folding only: Unicode lower-casing maps a few non-ASCII
    # letters (U+0130, U+212A) onto a-z, which another language may not.
    text = name.translate(_ASCII_LOWER)
    # "AMD Instinct MI250X/MI250": the first alternative is the device itself.
    text = text.split("/", 1)[0]
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w]
    if words and (counted := _COUNT_WORD.fullmatch(words[0])):
        words[0] = counted.group(1)  # "2xh100-80g": a count as ``cpn find`` prints it
    vendor: str | None = None
    for brand, brand_words in _BRAND_WORDS:
        if brand_words.intersection(words):
            vendor = brand
            break
    memory_gb: int | None = None
    kept: list[str] = []
    for word in words:
        memory = _MEMORY_WORD.fullmatch(word)
        if memory is not None and len(memory.group(1)) <= _MAX_TIER_DIGITS:
            memory_gb = int(memory.group(1)) or None
        if not _NOISE.fullmatch(word):
            kept.append(word)
    model = "".join(kept)[:32] or "unknown"
    if vendor is None:
        vendor = vendor_of_model(model)
    return GpuName(vendor=vendor, model=model, memory_gb=memory_gb)


def normalise_gpu_model(name: str) -> tuple[str, str]:
    """``(vendor, model)`` tokens of a device name as NVML or rocm-smi reports it.

    "NVIDIA H100 80GB HBM3" -> ("nvidia", "h100"); "AMD Instinct MI300X" ->
    ("amd", "mi300x").  :func:`parse_gpu_name`, with an undecided vendor
    written "other" (a probe must advertise some vendor token)."""
    parsed = parse_gpu_name(name)
    return parsed.vendor or "other", parsed.model


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  #: C0 controls and DEL (one pass in C: adverts hold many texts)


def _text(value: str, field: str, *, empty_ok: bool = False, limit: int = MAX_TEXT) -> None:
    if not value and not empty_ok:
        raise ValidationError(field, "must not be empty")
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters")
    if _CONTROL.search(value):
        raise ValidationError(field, "must not contain control characters")


def _bounded(value: int, field: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValidationError(field, f"must be between {lo} and {hi}")


@struct
class GpuInfo(Struct):
    """One GPU as the probe saw it."""

    vendor: str  #: normalised vendor token: "nvidia", "amd", "intel" or "other"
    model: str  #: normalised model token, e.g. "h100", "rtx4090", "mi300x"
    name: str  #: the name exactly as NVML (or the vendor tool) reports it
    uuid: str  #: stable device UUID ("GPU-..."), used for passthrough
    memory_mib: int  #: total device memory
    compute_capability: str  #: CUDA "major.minor", "" for non-NVIDIA devices
    mig: bool  #: MIG mode enabled (the whole device is then not schedulable as one GPU)

    def check(self) -> None:
        if not TOKEN_RE.match(self.vendor):
            raise ValidationError("vendor", "must be a lowercase token [a-z0-9]{1,32}")
        if not TOKEN_RE.match(self.model):
            raise ValidationError("model", "must be a lowercase token [a-z0-9]{1,32}")
        _text(self.name, "name")
        _text(self.uuid, "uuid", limit=128)
        _bounded(self.memory_mib, "memory_mib", 1, MAX_MEMORY_MIB)
        if self.compute_capability and not COMPUTE_CAPABILITY_RE.match(self.compute_capability):
            raise ValidationError("compute_capability", 'must be "" or "major.minor" (e.g. "9.0")')


@struct
class ResourceSet(Struct):
    """Everything a node offers.  Order of ``gpus`` is the device index order."""

    cpu_cores: int  #: logical CPUs available to jobs
    cpu_model: str  #: CPU model name as the OS reports it
    memory_mib: int  #: RAM available to jobs
    disk_mib: int  #: scratch disk available to jobs
    gpus: tuple[GpuInfo, ...]

    def check(self) -> None:
        _bounded(self.cpu_cores, "cpu_cores", 1, MAX_CPU_CORES)
        _text(self.cpu_model, "cpu_model", empty_ok=True)
        _bounded(self.memory_mib, "memory_mib", 1, MAX_MEMORY_MIB)
        _bounded(self.disk_mib, "disk_mib", 0, MAX_MEMORY_MIB)
        if len(self.gpus) > MAX_GPUS:
            raise ValidationError("gpus", f"at most {MAX_GPUS} GPUs")
        seen: set[str] = set()
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid in seen:
                raise ValidationError(f"gpus[{i}].uuid", "must be unique")
            seen.add(gpu.uuid)


@struct
class Metric(Struct):
    """One resource metric, with the IETF CATS metric fields."""

    type: str  #: metric type, e.g. "gpu-memory-free", "cpu-load" (lowercase token)
    unit: str  #: unit of ``value``, e.g. "MiB", "millicores", "%"
    source: str  #: "nominal" (configured/specified) or "measured"
    value: int  #: integer value in ``unit`` (no floats on the wire)

    def check(self) -> None:
        if not _METRIC_TYPE_RE.match(self.type):
            raise ValidationError("type", "must match [a-z][a-z0-9_.-]{0,63}")
        if not _UNIT_RE.match(self.unit):
            raise ValidationError("unit", "must match [A-Za-z0-9%/._-]{1,16}")
        if self.source not in METRIC_SOURCES:
            raise ValidationError("source", 'must be "nominal" or "measured"')
