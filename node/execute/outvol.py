"""A job's output directories on a file system of their own, as large as the job's ``disk_mib``.

Why: a writable bind mount of a directory on the provider's disk lets a job
write until that disk is full (issue 12: 1 GiB written with ``disk_mib = 16``);
checking sizes after the run is too late.  Each job with outputs gets a sparse
file of ``disk_mib`` (plus the file system's own overhead), formatted ext4 and
loop-mounted ``nosuid,nodev`` at ``<run>/out``; its output paths are
directories in it, bind-mounted into the container.  A write past the limit
fails inside the job with ENOSPC, and the sparse file never takes more of the
real disk than the job wrote.  Measured here (Debian 12, kernel 6.x, root):
truncate + mkfs.ext4 + mount of 16 MiB or 100 GiB each take under 20 ms.

Where loop devices cannot be had (no ``/dev/loop-control``, not root), a
``tmpfs`` of the same size stands in: still bounded, but in memory (the
container's memory cgroup is charged for what it writes there).  Where
neither mounts, the job is refused: unbounded outputs are never offered.
All calls are blocking (subprocesses): the executor runs them in threads.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["OutputVolume", "VolumeError", "release_at", "release_leftovers"]

log = logging.getLogger("cpn.execution")

IMAGE_NAME = "out.img"  #: the sparse file system image in the run directory
MOUNT_NAME = "out"  #: its mount point in the run directory
MOUNT_OPTIONS = "nosuid,nodev"
_TIMEOUT_S = 60


class VolumeError(Exception):
    """No size-limited output volume could be made (the job is refused)."""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def _is_mount(path: Path) -> bool:
    target = str(path.resolve())
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return os.path.ismount(path)


class OutputVolume:
    """``<run>/out`` limited to ``size_mib``: :meth:`create`, then :meth:`release`."""

    def __init__(self, run_dir: Path, size_mib: int) -> None:
        self.run_dir = run_dir
        self.size_mib = max(0, size_mib)
        self.image = run_dir / IMAGE_NAME
        self.path = run_dir / MOUNT_NAME
        self.kind = ""  #: "ext4" or "tmpfs" once created

    def image_bytes(self) -> int:
        """The file system's size: ``size_mib`` usable after ext4's own
        metadata (measured: 1/16 plus 2 MiB is enough from 0 MiB to 1 GiB)."""
        return (self.size_mib + self.size_mib // 16 + 2) << 20

    def create(self) -> None:
        """Blocking: make and mount the volume (ext4 on a loop device, else tmpfs)."""
        self.path.mkdir(mode=0o755, exist_ok=True)
        problems = []
        try:
            self._ext4()
            self.kind = "ext4"
            return
        except (VolumeError, OSError, subprocess.SubprocessError) as exc:
            problems.append(f"ext4 on a loop device: {exc}")
            self.image.unlink(missing_ok=True)
        proc = _run("mount", "-t", "tmpfs", "-o", f"size={max(self.size_mib, 1)}m,mode=0755,{MOUNT_OPTIONS}",
                    "cpn-out", str(self.path))
        if proc.returncode == 0:
            self.kind = "tmpfs"
            log.warning("job outputs in memory (tmpfs): %s", problems[0])
            return
        problems.append(f"tmpfs: {proc.stderr.strip()}")
        raise VolumeError("no size-limited output volume: " + "; ".join(problems))

    def _ext4(self) -> None:
        with open(self.image, "wb") as f:
            f.truncate(self.image_bytes())
        for argv in (
            ("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode",
             "-E", "nodiscard,root_owner=0:0", str(self.image)),
            ("mount", "-o", f"loop,{MOUNT_OPTIONS}", str(self.image), str(self.path)),
        ):
            proc = _run(*argv)
            if proc.returncode != 0:
                raise VolumeError(f"{argv[0]} failed: {proc.stderr.strip()[-300:]}")
        lost = self.path / "lost+found"
        if lost.is_dir():
            lost.rmdir()

    def dir_for(self, index: int) -> Path:
        """The host directory of the job's ``index``-th output path."""
        d = self.path / str(index)
        d.mkdir(mode=0o755, exist_ok=True)
        return d

    def release(self) -> None:
        """Blocking: unmount (lazily if something still holds it) and delete the volume."""
        release_at(self.run_dir)


def release_at(run_dir: Path) -> None:
    """Blocking: whatever output volume ``run_dir`` has, unmounted and gone."""
    path, image = run_dir / MOUNT_NAME, run_dir / IMAGE_NAME
    if _is_mount(path):
        proc = _run("umount", str(path))
        if proc.returncode != 0:
            _run("umount", "-l", str(path))  # busy: detach now, the kernel frees it when idle
    image.unlink(missing_ok=True)
    if path.is_dir() and not _is_mount(path):
        shutil.rmtree(path, ignore_errors=True)


def release_leftovers(runs_dir: Path) -> int:
    """Blocking, at start-up: release the volumes of every run directory (a
    crash or a shutdown left them mounted).  Returns how many were found."""
    found = 0
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if (run_dir / IMAGE_NAME).exists() or _is_mount(run_dir / MOUNT_NAME):
            found += 1
            release_at(run_dir)
    return found
