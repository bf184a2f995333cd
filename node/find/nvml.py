"""NVML backends: the real GPUs through ``pynvml`` (nvidia-ml-py), or a fake inventory.

:class:`RealNvml` wraps ``pynvml``; :class:`FakeNvml` replays a JSON inventory
(or a compact spec such as ``h100:2,a100-40g:1``) so tests and a GPU-less
testnet can present a realistic mix of providers, including MIG and failing
calls.  :mod:`node.find.probe` turns either into a probe report.

Every name the fake backend reports ends in :data:`FAKE_MARK` (``" (fake)"``),
so a fake GPU can never pass for a real one: the name travels in the signed
advert, and ``cpn find``, ``cpn status`` and the probe show it marked.  The
model token is normalised from the name without the mark (:func:`strip_fake`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protocol.resources import COMPUTE_CAPABILITY_RE

__all__ = [
    "NvmlError",
    "NvmlUnavailable",
    "NvmlNotSupported",
    "NvmlBackend",
    "RealNvml",
    "FakeGpu",
    "FakeNvml",
    "FAKE_PRESETS",
    "load_fake_nvml",
    "make_backend",
    "FAKE_MARK",
    "is_fake",
    "strip_fake",
]

MIB = 1 << 20
FAKE_MARK = " (fake)"  #: ends the name of every GPU the fake backend reports


def is_fake(name: str) -> bool:
    """Whether a GPU name comes from the fake backend."""
    return name.endswith(FAKE_MARK)


def strip_fake(name: str) -> str:
    """The GPU name without the fake backend's mark (for model normalisation)."""
    return name.removesuffix(FAKE_MARK)


class NvmlError(Exception):
    """An NVML call failed (driver error, unsupported query, lost GPU...)."""


class NvmlUnavailable(NvmlError):
    """NVML itself cannot be used: no library, no driver, init failed."""


class NvmlNotSupported(NvmlError):
    """The query does not apply to this device (e.g. MIG on a non-MIG GPU)."""


class NvmlBackend(Protocol):
    """The NVML calls the probe needs, mirroring NVML one call per fact so that
    error handling is exercised per call by the fake backend."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> int: ...  #: NVML form: 12040 = CUDA 12.4
    def device_count(self) -> int: ...
    def name(self, index: int) -> str: ...
    def uuid(self, index: int) -> str: ...
    def pci_bus_id(self, index: int) -> str: ...
    def memory(self, index: int) -> tuple[int, int]: ...  #: (total, free) bytes
    def compute_capability(self, index: int) -> tuple[int, int]: ...
    def utilisation(self, index: int) -> tuple[int, int]: ...  #: (gpu %, memory %)
    def mig_mode(self, index: int) -> tuple[bool, bool]: ...  #: (current, pending)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RealNvml:
    """NVML through ``pynvml``; every pynvml error becomes :class:`NvmlError`."""

    def __init__(self) -> None:
        self._nv: Any = None
        self._handles: dict[int, Any] = {}

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError_NotSupported as exc:
            raise NvmlNotSupported(str(exc)) from None
        except self._nv.NVMLError as exc:
            raise NvmlError(str(exc)) from None

    def init(self) -> None:
        try:
            import pynvml  # type: ignore[import-untyped]
        except ImportError as exc:  # nvidia-ml-py is a dependency, but be honest if absent
            raise NvmlUnavailable(f"pynvml not importable: {exc}") from None
        self._nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(str(exc)) from None

    def shutdown(self) -> None:
        self._handles.clear()
        self._call(self._nv.nvmlShutdown)

    def _h(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._call(self._nv.nvmlDeviceGetHandleByIndex, index)
        return self._handles[index]

    def driver_version(self) -> str:
        return _text(self._call(self._nv.nvmlSystemGetDriverVersion))

    def cuda_driver_version(self) -> int:
        return int(self._call(self._nv.nvmlSystemGetCudaDriverVersion))

    def device_count(self) -> int:
        return int(self._call(self._nv.nvmlDeviceGetCount))

    def name(self, index: int) -> str:
        return _text(self._call(self._nv.nvmlDeviceGetName, self._h(index)))

    def uuid(self, index: int) -> str:
        return _text(self._call(self._nv.nvmlDeviceGetUUID, self._h(index)))

    def pci_bus_id(self, index: int) -> str:
        return _text(self._call(self._nv.nvmlDeviceGetPciInfo, self._h(index)).busId)

    def memory(self, index: int) -> tuple[int, int]:
        info = self._call(self._nv.nvmlDeviceGetMemoryInfo, self._h(index))
        return int(info.total), int(info.free)

    def compute_capability(self, index: int) -> tuple[int, int]:
        major, minor = self._call(self._nv.nvmlDeviceGetCudaComputeCapability, self._h(index))
        return int(major), int(minor)

    def utilisation(self, index: int) -> tuple[int, int]:
        rates = self._call(self._nv.nvmlDeviceGetUtilizationRates, self._h(index))
        return int(rates.gpu), int(rates.memory)

    def mig_mode(self, index: int) -> tuple[bool, bool]:
        current, pending = self._call(self._nv.nvmlDeviceGetMigMode, self._h(index))
        enabled = self._nv.NVML_DEVICE_MIG_ENABLE
        return current == enabled, pending == enabled


#: Presets for the compact fake spec ("h100:2,a100-40g:1"): NVML name, MiB, cc.
FAKE_PRESETS: dict[str, tuple[str, int, str]] = {
    "h100": ("NVIDIA H100 80GB HBM3", 81559, "9.0"),
    "h100-pcie": ("NVIDIA H100 PCIe", 81559, "9.0"),
    "h200": ("NVIDIA H200", 143771, "9.0"),
    "a100-40g": ("NVIDIA A100-SXM4-40GB", 40960, "8.0"),
    "a100-80g": ("NVIDIA A100-SXM4-80GB", 81920, "8.0"),
    "l40s": ("NVIDIA L40S", 46068, "8.9"),
    "l4": ("NVIDIA L4", 23034, "8.9"),
    "a10": ("NVIDIA A10", 23028, "8.6"),
    "rtx4090": ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
    "t4": ("Tesla T4", 15360, "7.5"),
    "v100": ("Tesla V100-SXM2-32GB", 32768, "7.0"),
}

_FAKE_CALLS = (
    "name",
    "uuid",
    "pci_bus_id",
    "memory",
    "compute_capability",
    "utilisation",
    "mig_mode",
)


def _fake_uuid(seed: str, index: int) -> str:
    h = hashlib.sha256(f"cpn-fake-gpu:{seed}:{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass
class FakeGpu:
    name: str
    memory_mib: int
    cc: str
    uuid: str
    mig: bool | None = False  #: None: MIG not supported by this model
    free_mib: int | None = None  #: default: all free
    utilisation: int = 0
    pci_bus_id: str = ""
    fail: dict[str, str] = field(default_factory=dict)  #: call name -> error message

    def problem(self) -> str | None:
        """Why this entry cannot be a GPU, or None: a bad spec must fail at load
        time with a readable message, not as a crash inside the probe."""
        if not isinstance(self.name, str) or not self.name:
            return "name must be a non-empty string"
        if not isinstance(self.uuid, str) or not self.uuid:
            return "uuid must be a non-empty string"
        if not _is_int(self.memory_mib) or self.memory_mib < 1:
            return "memory_mib must be a positive integer"
        if not isinstance(self.cc, str) or not COMPUTE_CAPABILITY_RE.match(self.cc):
            return 'cc must be "major.minor", e.g. "9.0"'
        mig: object = self.mig  # from JSON: its type is what is being checked
        if mig is not None and not isinstance(mig, bool):
            return "mig must be true, false or null"
        if self.free_mib is not None and not (
            _is_int(self.free_mib) and 0 <= self.free_mib <= self.memory_mib
        ):
            return "free_mib must be an integer between 0 and memory_mib"
        if not _is_int(self.utilisation) or not 0 <= self.utilisation <= 100:
            return "utilisation must be an integer percentage"
        pci: object = self.pci_bus_id
        if not isinstance(pci, str):
            return "pci_bus_id must be a string"
        if not isinstance(self.fail, dict) or not all(
            isinstance(v, str) for v in self.fail.values()
        ):
            return "fail must map call names to error messages"
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FakeNvml:
    """An NVML stand-in built from a JSON-able inventory (see :func:`load_fake_nvml`).

    Spec keys: ``gpus`` (list of {name, memory_mib, cc, uuid?, mig?, free_mib?,
    utilisation?, pci_bus_id?, fail?: {call: message}}), ``driver_version``,
    ``cuda_driver_version`` (int, 12040 = 12.4), ``fail`` ({"init" | "count" |
    "driver_version" | "cuda_driver_version": message}).
    """

    def __init__(self, spec: dict[str, Any], *, seed: str = "") -> None:
        if not isinstance(spec, dict):
            raise ValueError("fake NVML spec must be a JSON object")
        unknown = set(spec) - {"gpus", "driver_version", "cuda_driver_version", "fail"}
        if unknown:
            raise ValueError(f"fake NVML spec: unknown key(s) {sorted(unknown)}")
        self.gpus: list[FakeGpu] = []
        for i, g in enumerate(spec.get("gpus", [])):
            if not isinstance(g, dict):
                raise ValueError(f"fake NVML spec: gpus[{i}] must be an object")
            try:
                gpu = FakeGpu(**{"uuid": _fake_uuid(seed, i), **g})
            except TypeError as exc:
                raise ValueError(f"fake NVML spec: gpus[{i}]: {exc}") from None
            problem = gpu.problem()
            if problem:
                raise ValueError(f"fake NVML spec: gpus[{i}]: {problem}")
            if not gpu.pci_bus_id:
                gpu.pci_bus_id = f"00000000:{0x10 + i:02X}:00.0"
            bad = set(gpu.fail) - set(_FAKE_CALLS)
            if bad:
                raise ValueError(f"fake NVML spec: gpus[{i}].fail: unknown call(s) {sorted(bad)}")
            self.gpus.append(gpu)
        self._driver = str(spec.get("driver_version", "550.54.15"))
        cuda = spec.get("cuda_driver_version", 12040)
        if not _is_int(cuda) or cuda < 0:
            raise ValueError("fake NVML spec: cuda_driver_version must be an integer like 12040")
        self._cuda: int = cuda
        fail = spec.get("fail", {})
        if not isinstance(fail, dict) or set(fail) - {
            "init",
            "count",
            "driver_version",
            "cuda_driver_version",
        }:
            raise ValueError(
                "fake NVML spec: fail keys are init, count, driver_version, cuda_driver_version"
            )
        self._fail: dict[str, str] = {k: str(v) for k, v in fail.items()}
        self.initialised = False
        self.calls: list[str] = []  #: call log, for tests

    def _maybe_fail(self, what: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(what)
        table = gpu.fail if gpu is not None else self._fail
        if what in table:
            raise NvmlError(table[what])

    def init(self) -> None:
        if "init" in self._fail:
            self.calls.append("init")
            raise NvmlUnavailable(self._fail["init"])
        self.calls.append("init")
        self.initialised = True

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        self.initialised = False

    def driver_version(self) -> str:
        self._maybe_fail("driver_version")
        return self._driver

    def cuda_driver_version(self) -> int:
        self._maybe_fail("cuda_driver_version")
        return self._cuda

    def device_count(self) -> int:
        self._maybe_fail("count")
        return len(self.gpus)

    def _gpu(self, index: int, call: str) -> FakeGpu:
        if not self.initialised:
            raise NvmlError("Uninitialized")
        gpu = self.gpus[index]
        self._maybe_fail(call, gpu)
        return gpu

    def name(self, index: int) -> str:
        name = self._gpu(index, "name").name
        return name if is_fake(name) else name + FAKE_MARK

    def uuid(self, index: int) -> str:
        return self._gpu(index, "uuid").uuid

    def pci_bus_id(self, index: int) -> str:
        return self._gpu(index, "pci_bus_id").pci_bus_id

    def memory(self, index: int) -> tuple[int, int]:
        g = self._gpu(index, "memory")
        free = g.memory_mib if g.free_mib is None else g.free_mib
        return g.memory_mib * MIB, free * MIB

    def compute_capability(self, index: int) -> tuple[int, int]:
        major, _, minor = self._gpu(index, "compute_capability").cc.partition(".")
        return int(major), int(minor or 0)

    def utilisation(self, index: int) -> tuple[int, int]:
        g = self._gpu(index, "utilisation")
        return g.utilisation, g.utilisation

    def mig_mode(self, index: int) -> tuple[bool, bool]:
        g = self._gpu(index, "mig_mode")
        if g.mig is None:
            raise NvmlNotSupported("Not Supported")
        return g.mig, g.mig


def _parse_compact(text: str) -> dict[str, Any]:
    """ "h100:2,a100-40g+mig:1" -> spec dict.  ``+mig`` turns MIG mode on."""
    gpus: list[dict[str, Any]] = []
    if text.strip() == "none":  # explicitly a host without GPUs
        return {"gpus": gpus}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, count_text = part.partition(":")
        mig = kind.endswith("+mig")
        kind = kind.removesuffix("+mig")
        if kind not in FAKE_PRESETS:
            raise ValueError(f"unknown fake GPU {kind!r}; known: {', '.join(sorted(FAKE_PRESETS))}")
        try:
            count = int(count_text or "1")
        except ValueError:
            raise ValueError(f"bad GPU count in {part!r}") from None
        if not 0 <= count <= 64:
            raise ValueError(f"GPU count in {part!r} must be 0..64")
        name, mib, cc = FAKE_PRESETS[kind]
        gpus += [{"name": name, "memory_mib": mib, "cc": cc, "mig": mig} for _ in range(count)]
    return {"gpus": gpus}


def load_fake_nvml(spec: str | Path | dict[str, Any], *, seed: str = "") -> FakeNvml:
    """Build a :class:`FakeNvml` from a dict, a JSON file path, JSON text, or a
    compact string like ``"h100:2,a100-40g:1"``.  ``seed`` makes the generated
    UUIDs differ between testnet nodes while staying reproducible.
    Raises ``ValueError`` with a readable message on a bad spec."""
    if isinstance(spec, dict):
        return FakeNvml(spec, seed=seed)
    text = str(spec).strip()
    if isinstance(spec, Path) or text.endswith(".json") or os.sep in text:
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read fake NVML spec {spec}: {exc.strerror}") from None
    if text.startswith("{"):
        try:
            return FakeNvml(json.loads(text), seed=seed)
        except json.JSONDecodeError as exc:
            raise ValueError(f"fake NVML spec is not valid JSON: {exc}") from None
    return FakeNvml(_parse_compact(text), seed=seed)


def make_backend(fake: str | None = None, *, seed: str = "") -> NvmlBackend:
    """The backend the daemon should use: the fake one when configured, else NVML."""
    return load_fake_nvml(fake, seed=seed) if fake else RealNvml()
