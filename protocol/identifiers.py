"""Compute identifiers: canonical names for classes of compute (spec/identifiers.md).

Grammar (ABNF)::

    compute-id = "cpn:" ( gpu-id / cpu-id )
    gpu-id     = "gpu" [ "/" vendor [ "/" model [ "/" ( mem-tier / count-tier ) ] ] ]
    cpu-id     = "cpu" [ "/" cores-tier [ "/" ram-tier ] ]
    vendor     = token            ; "nvidia", "amd", "intel", "other"
    model      = token            ; "h100", "rtx4090", "mi300x"
    mem-tier   = number "g"       ; device memory tier in GB: "80g"
    count-tier = "x" pow2         ; at least this many GPUs of the model, >= 2: "x8"
    cores-tier = "c" pow4         ; at least this many cores, 4/16/64/256/...: "c16"
    ram-tier   = "m" pow2 "g"     ; RAM, GiB rounded down to a power of two: "m64g"
    token      = 1*32( %x61-7A / DIGIT )
    number     = "0" / %x31-39 *DIGIT

A node advertises a short *ladder* of identifiers (general -> specific); a
job looks up the most specific identifiers that every provider able to run it
is guaranteed to advertise.  Count and core tiers are *downward closed* (a
node with 8 GPUs advertises x2, x4 and x8) precisely so that one lookup
suffices for any count.  The DHT key of an identifier is a CIDv1 (raw codec,
sha2-256 of the identifier's UTF-8 bytes), so any standard libp2p kad-dht can
hold provider records for it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from .errors import ProtocolError
from .jobspec import Resources

# Model names live in protocol.resources (they are facts about a device, and
# protocol.jobspec needs them without importing this module); re-exported here
# for callers that still import them from protocol.identifiers.
from .resources import ResourceSet, normalise_gpu_model, vendor_of_model

__all__ = [
    "ComputeId",
    "normalise_gpu_model",
    "vendor_of_model",
    "memory_tier",
    "ram_tier",
    "count_tiers",
    "cores_tiers",
    "advertised_ids",
    "lookup_ids",
    "parse_id",
    "dht_key",
    "cid_string",
    "MAX_ID_LENGTH",
    "STANDARD_MEMORY_TIERS_GB",
]

MAX_ID_LENGTH = 128
MAX_COUNT_TIER = 64
#: Marketed device memory sizes in GB.  A device is put in the nearest one
#: (NVML reports usable memory: 81559 MiB for an "80GB" H100, 23034 MiB for a
#: "24GB" L4, 15360 MiB for a "16GB" T4).
STANDARD_MEMORY_TIERS_GB = (
    1, 2, 3, 4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128,
    141, 144, 180, 192, 256, 288,
)  # fmt: skip

_TOKEN = r"[a-z0-9]{1,32}"
_NUMBER = r"(?:0|[1-9][0-9]{0,8})"
_GPU_RE = re.compile(
    rf"^cpn:gpu(?:/(?P<vendor>{_TOKEN})(?:/(?P<model>{_TOKEN})"
    rf"(?:/(?:(?P<mem>{_NUMBER})g|x(?P<count>{_NUMBER})))?)?)?\Z"
)
_CPU_RE = re.compile(rf"^cpn:cpu(?:/c(?P<cores>{_NUMBER})(?:/m(?P<ram>{_NUMBER})g)?)?\Z")

# ----------------------------------------------------------------------- tiers


def memory_tier(mib: int) -> str:
    """Tier of a GPU's memory: the nearest marketed size in GB ("80g").

    Beyond 10 % of every standard size (future parts) the tier is the size
    in GiB rounded to the nearest integer.  Ties go to the smaller tier."""
    return f"{_memory_gb(mib)}g"


def _memory_gb(mib: int) -> int:
    if mib <= 0:
        raise ProtocolError("invalid_field", f"memory_mib: must be positive, got {mib}")
    best = min(STANDARD_MEMORY_TIERS_GB, key=lambda gb: (abs(mib - gb * 1024), gb))
    if abs(mib - best * 1024) * 10 <= best * 1024:
        return best
    return max(1, (mib + 512) // 1024)


def ram_tier(mib: int) -> str:
    """Host RAM tier: GiB rounded down to a power of two ("m64g"), at least m1g."""
    return f"m{_ram_gib(mib)}g"


def _ram_gib(mib: int) -> int:
    gib = max(1, mib // 1024)
    return 1 << (gib.bit_length() - 1)


def count_tiers(count: int) -> list[int]:
    """Count tiers a node with ``count`` GPUs of one model advertises: 2, 4, ... <= count."""
    tiers = []
    k = 2
    while k <= min(count, MAX_COUNT_TIER):
        tiers.append(k)
        k *= 2
    return tiers


def cores_tiers(cores: int) -> list[int]:
    """Core tiers a node advertises: 4, 16, 64, ... <= cores (powers of four)."""
    tiers = []
    k = 4
    while k <= cores:
        tiers.append(k)
        k *= 4
    return tiers


def _floor_tier(tiers: list[int]) -> int | None:
    """The largest tier (tiers are ascending), or None when there is none."""
    return tiers[-1] if tiers else None


# ------------------------------------------------------------------ identifiers


@dataclass(frozen=True, slots=True)
class ComputeId:
    """A parsed compute identifier; ``str()`` gives the canonical text."""

    kind: str  #: "gpu" or "cpu"
    vendor: str | None = None
    model: str | None = None
    memory_gb: int | None = None  #: GPU memory tier
    count: int | None = None  #: GPU count tier
    cores: int | None = None  #: CPU cores tier
    ram_gib: int | None = None  #: CPU RAM tier

    def __str__(self) -> str:
        parts = ["cpn:" + self.kind]
        if self.kind == "gpu":
            parts += [p for p in (self.vendor, self.model) if p is not None]
            if self.memory_gb is not None:
                parts.append(f"{self.memory_gb}g")
            if self.count is not None:
                parts.append(f"x{self.count}")
        else:
            if self.cores is not None:
                parts.append(f"c{self.cores}")
            if self.ram_gib is not None:
                parts.append(f"m{self.ram_gib}g")
        return "/".join(parts)

    @property
    def depth(self) -> int:
        """Number of qualifiers after the kind: 0 is the most general."""
        return str(self).count("/")


def _is_pow(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def parse_id(text: str) -> ComputeId:
    """Parse a canonical compute identifier; anything else raises ``bad_compute_id``.

    Only the canonical form is accepted (no upper case, no trailing slash, no
    leading zeros, tiers from their ladders), so one class has one DHT key."""
    if not isinstance(text, str) or len(text) > MAX_ID_LENGTH:
        raise ProtocolError("bad_compute_id", f"not a compute identifier (max {MAX_ID_LENGTH} characters)")
    m = _GPU_RE.match(text)
    if m:
        count = int(m["count"]) if m["count"] else None
        mem = int(m["mem"]) if m["mem"] else None
        if count is not None and not (2 <= count <= MAX_COUNT_TIER and _is_pow(count, 2)):
            raise ProtocolError("bad_compute_id", f"count tier x{count} is not a power of two in 2..{MAX_COUNT_TIER}")
        if mem is not None and mem < 1:
            raise ProtocolError("bad_compute_id", "memory tier must be at least 1g")
        return ComputeId("gpu", vendor=m["vendor"], model=m["model"], memory_gb=mem, count=count)
    m = _CPU_RE.match(text)
    if m:
        cores = int(m["cores"]) if m["cores"] else None
        ram = int(m["ram"]) if m["ram"] else None
        if cores is not None and not (cores >= 4 and _is_pow(cores, 4)):
            raise ProtocolError("bad_compute_id", f"cores tier c{cores} is not a power of four >= 4")
        if ram is not None and not (ram >= 1 and _is_pow(ram, 2)):
            raise ProtocolError("bad_compute_id", f"RAM tier m{ram}g is not a power of two")
        return ComputeId("cpu", cores=cores, ram_gib=ram)
    raise ProtocolError("bad_compute_id", f"{text!r} does not match the compute identifier grammar")


def _sort_key(i: ComputeId) -> tuple[str, int, str, str, bool, int, int, int, int]:
    # Memory tiers before count tiers at level 4; numbers in numeric order.
    return (
        i.kind, i.depth, i.vendor or "", i.model or "", i.count is not None, i.memory_gb or 0,
        i.count or 0, i.cores or 0, i.ram_gib or 0,
    )  # fmt: skip


def _ordered(ids: list[ComputeId]) -> list[str]:
    """Deduplicate and order: CPU then GPU classes, each general -> specific."""
    return [str(i) for i in sorted(set(ids), key=_sort_key)]


def advertised_ids(resources: ResourceSet) -> list[str]:
    """The ladder of identifiers a node with ``resources`` advertises, general -> specific.

    GPUs in MIG mode are left out (the whole device is not schedulable).  Every
    node also advertises CPU classes, since any node can run CPU-only jobs."""
    ids: list[ComputeId] = [ComputeId("cpu")]
    cores = cores_tiers(resources.cpu_cores)
    ids += [ComputeId("cpu", cores=c) for c in cores]
    if cores:
        ids.append(ComputeId("cpu", cores=cores[-1], ram_gib=_ram_gib(resources.memory_mib)))
    per_model: dict[tuple[str, str], int] = {}
    for gpu in resources.gpus:
        if gpu.mig:
            continue
        per_model[(gpu.vendor, gpu.model)] = per_model.get((gpu.vendor, gpu.model), 0) + 1
        ids += [
            ComputeId("gpu"),
            ComputeId("gpu", vendor=gpu.vendor),
            ComputeId("gpu", vendor=gpu.vendor, model=gpu.model),
            ComputeId("gpu", vendor=gpu.vendor, model=gpu.model, memory_gb=_memory_gb(gpu.memory_mib)),
        ]
    for (vendor, model), n in per_model.items():
        ids += [ComputeId("gpu", vendor=vendor, model=model, count=k) for k in count_tiers(n)]
    return _ordered(ids)


def lookup_ids(requirement: Resources) -> list[str]:
    """Identifiers a job with ``requirement`` (a :class:`protocol.jobspec.Resources`)
    looks up: for each alternative, the most specific identifier that every
    provider able to run the job is guaranteed to advertise.  Providers found
    are then matched exactly against their adverts."""
    gpu = requirement.gpu
    if gpu is None:
        cores = -(-requirement.cpu_millis // 1000)
        tier = _floor_tier(cores_tiers(cores))
        return [str(ComputeId("cpu", cores=tier))]
    count = _floor_tier(count_tiers(gpu.count))
    if not gpu.models:
        return [str(ComputeId("gpu", vendor=gpu.vendor))]
    out: list[str] = []
    for model in gpu.models:
        vendor = gpu.vendor or vendor_of_model(model) or "other"  # check() rules "other" out
        text = str(ComputeId("gpu", vendor=vendor, model=model, count=count))
        if text not in out:
            out.append(text)
    return out


# ------------------------------------------------------------------------- keys


def dht_key(text: str) -> bytes:
    """Binary CIDv1 of a canonical identifier: 0x01 (CIDv1) 0x55 (raw)
    0x12 0x20 (sha2-256, 32 bytes) || sha256(UTF-8 bytes of the identifier)."""
    parse_id(text)
    return b"\x01\x55\x12\x20" + hashlib.sha256(text.encode("utf-8")).digest()


def cid_string(text: str) -> str:
    """The CID in multibase base32 (lowercase, unpadded, prefix "b"), as IPFS writes it."""
    return "b" + base64.b32encode(dht_key(text)).decode("ascii").lower().rstrip("=")
