"""Resource probe: what this host has, measured, never assumed.

GPUs come from NVML through a pluggable backend: :class:`RealNvml` wraps
``pynvml`` (nvidia-ml-py); :class:`FakeNvml` replays a JSON inventory so tests
and a GPU-less testnet can present a realistic mix of providers, including MIG
and failing calls.  CPU, memory and disk come from ``/proc``, the cgroup
limits and ``statvfs`` of the data directory.

A host without the NVML library, without a GPU, or with a failing driver
still probes successfully: one clear log line, zero GPUs, no exception.  A GPU
whose essential facts (name, UUID, memory, compute capability) cannot be read
is left out rather than guessed; optional facts (PCI bus id, utilisation,
MIG mode) become ``None``.

The container capability is reported as ``"none"`` unless the caller passes
the result of the execution engine's self-test (``container=``): a provider
never claims what was not checked.

The blocking NVML and file-system calls run in a worker thread
(:func:`probe`); :func:`probe_sync` is the same without trio.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from node.find.nvml import (
    MIB,
    NvmlBackend,
    NvmlError,
    NvmlNotSupported,
    RealNvml,
    is_fake,
    make_backend,
    strip_fake,
)
from protocol.advert import NO_CONTAINER, ContainerCapability
from protocol.resources import GpuInfo, Metric, ResourceSet, normalise_gpu_model

__all__ = [
    "GpuReport",
    "ProbeReport",
    "probe",
    "probe_sync",
    "probe_gpus",
    "describe",
]

log = logging.getLogger("cpn.probe")



# --------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class GpuReport:
    """Everything NVML told us about one GPU."""

    index: int
    name: str
    uuid: str
    pci_bus_id: str | None
    memory_total_mib: int
    memory_free_mib: int
    compute_capability: str  #: "9.0"
    utilisation_gpu_pct: int | None
    utilisation_memory_pct: int | None
    mig_mode: bool | None  #: None: MIG not supported (or query failed)
    mig_pending: bool | None

    @property
    def fake(self) -> bool:
        """Reported by the fake NVML backend (a testnet), not by a driver."""
        return is_fake(self.name)

    def gpu_info(self) -> GpuInfo:
        vendor, model = normalise_gpu_model(strip_fake(self.name))
        return GpuInfo(
            vendor=vendor,
            model=model,
            name=self.name,
            uuid=self.uuid,
            memory_mib=self.memory_total_mib,
            compute_capability=self.compute_capability,
            mig=bool(self.mig_mode),
        )


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """A full probe.  :meth:`resource_set` is what goes into adverts."""

    gpus: tuple[GpuReport, ...]
    nvml_error: str | None  #: why NVML gave no GPUs at all, if it did not
    gpu_errors: tuple[str, ...]  #: GPUs left out, one line each
    driver_version: str | None
    cuda_driver_version: str | None  #: "12.4"
    cpu_model: str
    cpu_cores: int  #: usable cores (affinity and cgroup quota)
    memory_mib: int  #: usable memory (MemTotal or cgroup limit, whichever is lower)
    memory_source: str  #: "meminfo" or "cgroup"
    disk_free_mib: int
    disk_total_mib: int
    data_dir: str
    container: ContainerCapability = NO_CONTAINER

    def resource_set(self) -> ResourceSet:
        return ResourceSet(
            cpu_cores=self.cpu_cores,
            cpu_model=self.cpu_model,
            memory_mib=self.memory_mib,
            disk_mib=self.disk_free_mib,
            gpus=tuple(g.gpu_info() for g in self.gpus),
        )

    def metrics(self) -> tuple[Metric, ...]:
        """CATS-style metrics (spec/discovery.md, "Metrics")."""
        out = [
            Metric(type="cpu-cores", unit="count", source="nominal", value=self.cpu_cores),
            Metric(type="memory", unit="MiB", source="nominal", value=self.memory_mib),
            Metric(type="storage-free", unit="MiB", source="measured", value=self.disk_free_mib),
            Metric(type="gpu-count", unit="count", source="nominal", value=len(self.gpus)),
        ]
        if self.gpus:
            total = sum(g.memory_total_mib for g in self.gpus)
            free = sum(g.memory_free_mib for g in self.gpus)
            out.append(Metric(type="gpu-memory", unit="MiB", source="nominal", value=total))
            out.append(Metric(type="gpu-memory-free", unit="MiB", source="measured", value=free))
            utils = [g.utilisation_gpu_pct for g in self.gpus if g.utilisation_gpu_pct is not None]
            if utils:
                avg = round(sum(utils) / len(utils))
                out.append(
                    Metric(type="gpu-utilisation", unit="percent", source="measured", value=avg)
                )
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["container"] = self.container.to_wire()
        return d


# --------------------------------------------------------------------------- GPU probe


def _cuda_text(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _optional(fn: Callable[[], Any], what: str, index: int) -> Any:
    try:
        return fn()
    except NvmlNotSupported:
        return None
    except NvmlError as exc:
        log.info("GPU %d: %s unavailable: %s", index, what, exc)
        return None


def _probe_one(nv: NvmlBackend, i: int) -> GpuReport:
    """One GPU; an :class:`NvmlError` from an essential call propagates."""
    name = nv.name(i)
    uuid = nv.uuid(i)
    total, free = nv.memory(i)
    major, minor = nv.compute_capability(i)
    util = _optional(lambda: nv.utilisation(i), "utilisation", i)
    mig = _optional(lambda: nv.mig_mode(i), "MIG mode", i)
    return GpuReport(
        index=i,
        name=name,
        uuid=uuid,
        pci_bus_id=_optional(lambda: nv.pci_bus_id(i), "PCI bus id", i),
        memory_total_mib=total // MIB,
        memory_free_mib=free // MIB,
        compute_capability=f"{major}.{minor}",
        utilisation_gpu_pct=None if util is None else util[0],
        utilisation_memory_pct=None if util is None else util[1],
        mig_mode=None if mig is None else mig[0],
        mig_pending=None if mig is None else mig[1],
    )


@dataclass(frozen=True, slots=True)
class GpuProbe:
    gpus: tuple[GpuReport, ...]
    nvml_error: str | None
    gpu_errors: tuple[str, ...]
    driver_version: str | None
    cuda_driver_version: str | None


_SAID: set[str] = set()  #: probe findings already logged at their level (see :func:`_once`)
SAID_MAX = 256


def _once(level: int, message: str) -> None:
    """Log ``message`` at ``level`` the first time, at DEBUG after: the host is
    probed again before every advert refresh (every ~5 minutes), and a host
    without a GPU said "NVML unavailable" as a warning each time."""
    if message in _SAID:
        log.debug("%s", message)
        return
    if len(_SAID) < SAID_MAX:
        _SAID.add(message)
    log.log(level, "%s", message)


def probe_gpus(nv: NvmlBackend) -> GpuProbe:
    """Ask NVML about every GPU.  Never raises :class:`NvmlError`: failures are
    logged once (each distinct one; again at DEBUG) and reported in the result."""
    try:
        nv.init()
    except NvmlError as exc:
        _once(logging.WARNING, f"NVML unavailable ({exc}): advertising zero GPUs")
        return GpuProbe((), f"init: {exc}", (), None, None)
    try:
        try:
            count = nv.device_count()
        except NvmlError as exc:
            _once(logging.WARNING, f"NVML cannot count GPUs ({exc}): advertising zero GPUs")
            return GpuProbe((), f"device count: {exc}", (), None, None)
        driver = _optional(nv.driver_version, "driver version", -1)
        cuda = _optional(nv.cuda_driver_version, "CUDA driver version", -1)
        gpus: list[GpuReport] = []
        errors: list[str] = []
        for i in range(count):
            try:
                gpus.append(_probe_one(nv, i))
            except NvmlError as exc:
                line = f"GPU {i}: left out, NVML error: {exc}"
                _once(logging.WARNING, line)
                errors.append(line)
        if count == 0:
            _once(logging.INFO, "NVML reports no GPUs")
        return GpuProbe(
            tuple(gpus), None, tuple(errors), driver, None if cuda is None else _cuda_text(cuda)
        )
    finally:
        try:
            nv.shutdown()
        except NvmlError as exc:
            log.info("NVML shutdown failed: %s", exc)


# --------------------------------------------------------------------------- host probe


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_model(root: Path) -> str:
    text = _read(root / "proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Hardware") and value.strip():
            return value.strip()
    return "unknown"


def _own_cgroups(root: Path) -> dict[str, str]:
    """Controller -> cgroup path of this process, from /proc/self/cgroup
    ("" is the unified v2 hierarchy)."""
    out: dict[str, str] = {}
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                out[controller] = parts[2]
    return out


def _cgroup_files(root: Path, mounts: Sequence[str], controller: str, name: str) -> list[Path]:
    """``name`` in this process's cgroup and every ancestor, for each candidate
    mount; the tightest limit anywhere on the path applies."""
    rel = _own_cgroups(root).get(controller, "/").strip("/")
    files: list[Path] = []
    for mount in mounts:
        base = root / "sys/fs/cgroup" / mount if mount else root / "sys/fs/cgroup"
        parts = [p for p in rel.split("/") if p]
        for depth in range(len(parts), -1, -1):
            files.append(base.joinpath(*parts[:depth], name))
    return list(dict.fromkeys(files))


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The lowest CPU quota (in cores) on this process's cgroup path, if any."""
    limits: list[float] = []
    for f in _cgroup_files(root, [""], "", "cpu.max"):  # v2: "max 100000" or "200000 100000"
        parts = (_read(f) or "").split()
        if len(parts) == 2 and parts[0] != "max" and parts[0].isdigit() and parts[1].isdigit():
            if int(parts[1]) > 0:
                limits.append(int(parts[0]) / int(parts[1]))
    for mount in ("cpu", "cpu,cpuacct"):
        for f in _cgroup_files(root, [mount], "cpu", "cpu.cfs_quota_us"):
            q = (_read(f) or "").strip()
            per = (_read(f.with_name("cpu.cfs_period_us")) or "").strip()
            if q.isdigit() and per.isdigit() and int(q) > 0 and int(per) > 0:
                limits.append(int(q) / int(per))
    return min(limits) if limits else None


def cpu_cores(root: Path, affinity: int | None = None) -> int:
    """Cores this process may use: CPU affinity, lowered by a cgroup CPU quota."""
    cores = affinity if affinity is not None else len(os.sched_getaffinity(0))
    limit = _cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def memory_mib(root: Path) -> tuple[int, str]:
    """(usable MiB, source): MemTotal, or the cgroup memory limit when lower."""
    total = 0
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024  # kB
            break
    limits: list[int] = []
    files = _cgroup_files(root, [""], "", "memory.max")
    files += _cgroup_files(root, ["memory"], "memory", "memory.limit_in_bytes")
    for f in files:
        text = (_read(f) or "").strip()
        if text.isdigit() and int(text) > 0:
            limits.append(int(text))
    limit = min(limits) if limits else None
    if limit is not None and 0 < limit < total:
        return limit // MIB, "cgroup"
    return total // MIB, "meminfo"


def disk_mib(path: Path) -> tuple[int, int]:
    """(free, total) MiB of the file system holding ``path`` (or its nearest parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    usage = shutil.disk_usage(p)
    return usage.free // MIB, usage.total // MIB


def probe_sync(
    data_dir: Path,
    *,
    backend: NvmlBackend | None = None,
    container: ContainerCapability | None = None,
    root: Path = Path("/"),
    affinity: int | None = None,
) -> ProbeReport:
    """Probe everything (blocking).  ``root`` and ``affinity`` exist for tests."""
    g = probe_gpus(backend if backend is not None else RealNvml())
    mem, source = memory_mib(root)
    free, total = disk_mib(Path(data_dir))
    return ProbeReport(
        gpus=g.gpus,
        nvml_error=g.nvml_error,
        gpu_errors=g.gpu_errors,
        driver_version=g.driver_version,
        cuda_driver_version=g.cuda_driver_version,
        cpu_model=cpu_model(root),
        cpu_cores=cpu_cores(root, affinity),
        memory_mib=mem,
        memory_source=source,
        disk_free_mib=free,
        disk_total_mib=total,
        data_dir=str(data_dir),
        container=container if container is not None else NO_CONTAINER,
    )


async def probe(
    data_dir: Path,
    *,
    backend: NvmlBackend | None = None,
    container: ContainerCapability | None = None,
) -> ProbeReport:
    """:func:`probe_sync` in a worker thread: NVML calls block (a lost GPU can
    stall for seconds) and must not freeze the daemon's event loop."""
    return await trio.to_thread.run_sync(
        lambda: probe_sync(data_dir, backend=backend, container=container)
    )


def describe(report: ProbeReport, *, container_checked: bool = False) -> Sequence[str]:
    """Human summary lines (for ``python -m node.find.probe`` and logs).

    ``container_checked``: the report's container capability is a self-test's
    verdict; otherwise it was not looked at (the standalone probe runs no
    containers) and the summary says where to see it instead of "none"."""
    lines = [
        f"CPU: {report.cpu_model} ({report.cpu_cores} cores usable)",
        f"Memory: {report.memory_mib} MiB ({report.memory_source})",
        f"Disk free in {report.data_dir}: {report.disk_free_mib} MiB of {report.disk_total_mib} MiB",
    ]
    if report.nvml_error:
        lines.append(f"GPUs: none (NVML: {report.nvml_error})")
    else:
        lines.append(
            f"GPUs: {len(report.gpus)} (driver {report.driver_version}, CUDA {report.cuda_driver_version})"
        )
    for gpu in report.gpus:
        mig = {None: "n/a", True: "on", False: "off"}[gpu.mig_mode]
        lines.append(
            f"  [{gpu.index}] {gpu.name} {gpu.uuid} bus {gpu.pci_bus_id} "
            f"{gpu.memory_free_mib}/{gpu.memory_total_mib} MiB free, cc {gpu.compute_capability}, "
            f"util {gpu.utilisation_gpu_pct}%, MIG {mig}"
        )
    lines += [f"  {e}" for e in report.gpu_errors]
    if any(g.fake for g in report.gpus):
        lines.append("  (fake): a fake NVML inventory (testnets); these GPUs do not exist")
    if report.container.runtime != NO_CONTAINER.runtime:
        lines.append(f"Container runtime: {report.container.runtime} (proven by the daemon's self-test)")
    elif container_checked:
        lines.append("Container runtime: none (the self-test did not pass; the daemon's log says why)")
    else:
        lines.append("Container runtime: not checked here; the daemon runs a podman self-test when it starts "
                     "with [execution] enabled = true (see `cpn status`)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.find.probe [--fake SPEC] [--data-dir DIR] [--json]``: print
    what this host would advertise (handy on a GPU machine).  The container
    runtime is not checked here: the daemon's self-test does that at start
    (``cpn status`` shows its verdict)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m node.find.probe", description=main.__doc__)
    parser.add_argument(
        "--fake", help="fake NVML spec (compact, JSON text or file) instead of NVML"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("."), help="directory for the disk probe"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        backend = make_backend(args.fake, seed="cli")
    except ValueError as exc:
        parser.error(str(exc))
    report = trio.run(lambda: probe(args.data_dir, backend=backend))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(describe(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
