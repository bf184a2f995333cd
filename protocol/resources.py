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

from .errors import ValidationError
from .wire import Struct, struct

__all__ = [
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
TOKEN_RE = re.compile(r"^[a-z0-9]{1,32}$")
#: CUDA compute capability "major.minor" ("9.0"); empty for non-NVIDIA devices.
COMPUTE_CAPABILITY_RE = re.compile(r"^(?:0|[1-9][0-9]?)\.(?:0|[1-9][0-9]?)$")
METRIC_SOURCES = ("nominal", "measured")
_METRIC_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9%/._-]{1,16}$")

MAX_GPUS = 64  #: GPUs one node may report (bounds adverts and identifier ladders)
MAX_CPU_CORES = 1 << 16
MAX_MEMORY_MIB = 1 << 32  #: 4 PiB, far beyond any single host: a sanity bound
MAX_TEXT = 256


def _text(value: str, field: str, *, empty_ok: bool = False, limit: int = MAX_TEXT) -> None:
    if not value and not empty_ok:
        raise ValidationError(field, "must not be empty")
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
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
