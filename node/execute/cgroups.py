"""Per-run cgroups: metering a container and removing its cgroups afterwards.

Each container runs under a per-run parent cgroup
(``--cgroup-parent /cpn/<node>/<name>``, see :func:`node.execute.podman.run_args`).
The parent outlives the container and cgroup accounting is hierarchical, so
after exit the parent's CPU time minus that of conmon's sibling cgroup is the
container's CPU time, exactly.  Peak memory is the container cgroup's own
watermark, sampled while it runs, and the parent's watermark (reset once the
container is up, so runc's start-up memory charged to conmon's cgroup is not
counted) for the tail after the last sample (:class:`CgroupMeter`).

Both cgroup v1 (and hybrid hosts, like these) and unified v2 are read.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

__all__ = ["CGROUP_PARENT", "CgroupMeter", "cgroup_version", "label_dir", "reap_cgroups"]

#: top of every per-run parent cgroup: /cpn/<node>/<container name>
CGROUP_PARENT = "cpn"


def cgroup_version(root: Path = Path("/sys/fs/cgroup")) -> int:
    """2 on a unified cgroup v2 host, 1 on v1 or hybrid hosts (like these)."""
    return 2 if (root / "cgroup.controllers").exists() else 1


class CgroupMeter:
    """Reads the per-run parent cgroup after exit, then removes it."""

    def __init__(self, cgroup_root: Path, node_label: str, name: str) -> None:
        self.root = cgroup_root
        self.rel = Path(CGROUP_PARENT) / label_dir(node_label) / name
        self.v2 = cgroup_version(cgroup_root) == 2
        self.container_peak = 0
        self.reset_done = False

    def _read(self, *parts: str) -> str | None:
        try:
            return self.root.joinpath(*parts).read_text()
        except OSError:
            return None

    def _int(self, *parts: str) -> int:
        text = self._read(*parts)
        return int(text) if text and text.strip().isdigit() else 0

    def _usage_usec(self, rel: Path) -> int:
        for line in (self._read(str(rel), "cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
        return 0

    def _container_dir(self) -> Path | None:
        base = self.root / self.rel if self.v2 else self.root / "memory" / self.rel
        try:
            for d in base.iterdir():
                if d.is_dir() and d.name != "conmon":
                    return d
        except OSError:
            pass
        return None

    def sample(self) -> bool:
        """One look at the running container's own cgroup.  The first time it
        is seen, runc has moved the job into it: reset the parent's watermark
        (v1) so runc's start-up memory, charged to the parent, is forgotten.
        Returns whether the container's cgroup was found."""
        d = self._container_dir()
        if d is None:
            return False
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            self.container_peak = max(self.container_peak, int((d / name).read_text()))
        except (OSError, ValueError):
            return False
        if not self.v2 and not self.reset_done:
            try:
                (self.root / "memory" / self.rel / "memory.max_usage_in_bytes").write_text("0")
                self.reset_done = True
            except OSError:
                pass
        return True

    async def watch(self) -> None:
        """Sample until cancelled: every 20 ms for the first second (short jobs),
        then every 250 ms.  The watermark is monotonic, so sampling late loses
        nothing but the last interval, which the reset parent watermark covers."""
        loop_start = trio.current_time()
        while True:
            self.sample()
            fast = trio.current_time() - loop_start < 1
            await trio.sleep(0.02 if fast else 0.25)

    def peak_memory_bytes(self) -> int:
        """The container's own peak: the largest sample of its cgroup, or the
        parent's watermark since the reset minus conmon's current usage (which
        covers the tail after the last sample), whichever is larger."""
        peaks = [self.container_peak]
        if self.v2:
            peaks.append(self._int(str(self.rel), "memory.peak") - self._int(str(self.rel / "conmon"), "memory.current"))
        elif self.reset_done:
            total = self._int("memory", str(self.rel), "memory.max_usage_in_bytes")
            conmon = self._int("memory", str(self.rel / "conmon"), "memory.usage_in_bytes")
            peaks.append(total - conmon)
        return max(0, *peaks)

    def cpu_ms(self) -> int:
        if self.v2:
            usec = self._usage_usec(self.rel) - self._usage_usec(self.rel / "conmon")
            return max(0, usec) // 1000
        ns = self._int("cpuacct", str(self.rel), "cpuacct.usage")
        ns -= self._int("cpuacct", str(self.rel / "conmon"), "cpuacct.usage")
        return max(0, ns) // 1_000_000

    def dirs(self) -> list[Path]:
        if self.v2:
            return [self.root / self.rel]
        return [d / self.rel for d in self.root.iterdir() if (d / self.rel).is_dir()]

    def remove(self) -> bool:
        """rmdir the run's cgroups (children first).  False if some are still busy."""
        ok = True
        for top in self.dirs():
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                ok &= _rmdir(sub)
            ok &= _rmdir(top)
            _rmdir(top.parent)  # the node's directory, once its last run is gone
        return ok


def label_dir(node_label: str) -> str:
    """A cgroup directory name for the node: runs of different nodes (or test
    processes) on one host never share, or reap, each other's cgroups."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node_label)[:64] or "node"


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def reap_cgroups(root: Path, node_label: str) -> None:
    """rmdir this node's leftover per-run cgroups (only empty ones can go)."""
    sub = Path(CGROUP_PARENT) / label_dir(node_label)
    tops = [root / sub] if cgroup_version(root) == 2 else [
        d / sub for d in root.iterdir() if (d / sub).is_dir()
    ]
    for top in tops:
        if not top.is_dir():
            continue
        for run_dir in top.iterdir():
            if run_dir.is_dir():
                CgroupMeter(root, node_label, run_dir.name).remove()
