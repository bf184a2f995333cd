"""Shared test configuration: hardware markers skip cleanly where the machine lacks the part.

* ``gpu``: needs NVML and at least one NVIDIA GPU (the real-hardware twin of the fake NVML tests).
* ``podman``: needs podman, runc/crun and root (CI installs them; see tools/install).
* ``netns``: needs root and ``ip netns``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Shared test helpers (tests/support/) and the vector builders (tools/vectors/)
# import as ``support.*`` and ``vectors.*``.  Appended, so they never shadow the
# real ``node`` and ``protocol`` packages.
_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS, _TESTS.parent / "tools"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))


@functools.cache
def gpu_available() -> str | None:
    """None when a GPU is usable, else the reason it is not."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or broken: that is exactly the skip reason
        return f"no usable NVML: {exc}"
    return None if count > 0 else "NVML reports no GPU"


@functools.cache
def podman_available() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (tools/install installs it)"
    if os.geteuid() != 0:
        return "podman tests run as root (rootless storage is not configured)"
    if shutil.which("runc") is None and shutil.which("crun") is None:
        return "no OCI runtime (runc or crun) installed"
    return None


@functools.cache
def netns_available() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2"
    name = f"cpn-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if add.returncode != 0:
        return f"ip netns unavailable: {add.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {"gpu": gpu_available, "podman": podman_available, "netns": netns_available}
    for item in items:
        for marker, check in checks.items():
            if item.get_closest_marker(marker) is not None:
                reason = check()
                if reason is not None:
                    item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Unmount what tests left mounted under the session's temp dir.

    A provider killed mid-run (as some tests do on purpose) leaves its jobs'
    output volumes loop-mounted (node/execute/outvol.py; the daemon releases
    them at its next start, which these tests never make).  Left alone, each
    one holds a loop device and makes pytest's clean-up of old temp dirs fail.
    """
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or os.geteuid() != 0:
        return
    try:
        base = str(factory.getbasetemp().resolve())
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except (OSError, ValueError):
        return
    for point in sorted((p for p in points if p.startswith(base + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
