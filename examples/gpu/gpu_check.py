"""CPN example job: report the GPUs this container can see, via NVML (ctypes).

    python3 gpu_check.py OUTPUT_JSON

Uses only the standard library: libnvidia-ml.so.1 comes from the host driver
(mounted by the provider's CDI spec), so the image needs no CUDA packages.
Exits 1 when no GPU is visible, so a misconfigured provider shows up as a
failed job rather than a silent success.
"""

import ctypes
import json
import shutil
import subprocess
import sys


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed with NVML error {rc}")


def nvml_gpus() -> tuple[str, list[dict]]:
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    _check(nvml.nvmlInit_v2(), "nvmlInit")
    try:
        buf = ctypes.create_string_buffer(96)
        _check(nvml.nvmlSystemGetDriverVersion(buf, 96), "nvmlSystemGetDriverVersion")
        driver = buf.value.decode()
        count = ctypes.c_uint()
        _check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        gpus = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            _check(nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)), "GetHandle")
            name, uuid = ctypes.create_string_buffer(96), ctypes.create_string_buffer(96)
            _check(nvml.nvmlDeviceGetName(handle, name, 96), "nvmlDeviceGetName")
            _check(nvml.nvmlDeviceGetUUID(handle, uuid, 96), "nvmlDeviceGetUUID")
            mem = _Memory()
            _check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)), "GetMemoryInfo")
            major, minor = ctypes.c_int(), ctypes.c_int()
            cc = nvml.nvmlDeviceGetCudaComputeCapability(
                handle, ctypes.byref(major), ctypes.byref(minor))
            gpus.append({
                "index": i,
                "name": name.value.decode(),
                "uuid": uuid.value.decode(),
                "memory_mib": mem.total // (1024 * 1024),
                "compute_capability": f"{major.value}.{minor.value}" if cc == 0 else None,
            })
        return driver, gpus
    finally:
        nvml.nvmlShutdown()


def main(dest: str) -> int:
    report: dict = {"driver": None, "gpus": [], "nvidia_smi": None, "error": None}
    try:
        report["driver"], report["gpus"] = nvml_gpus()
    except (OSError, AttributeError, RuntimeError) as exc:
        report["error"] = f"NVML unavailable: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = (out.stdout or out.stderr).strip()
    for gpu in report["gpus"]:
        print(f"GPU {gpu['index']}: {gpu['name']} {gpu['memory_mib']} MiB "
              f"cc {gpu['compute_capability']} {gpu['uuid']}")
    if report["error"]:
        print(report["error"], file=sys.stderr)
    with open(dest, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return 0 if report["gpus"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
