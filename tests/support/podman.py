"""Shared podman test environment (not a test module): private storage in a
temp dir, the busybox test image built and loaded once per test process.

Each podman test module has a session fixture that calls :func:`shared_env`;
the cache makes every module share one storage and one image load.  Storage
lives under a temp dir so tests never touch the host's /var/lib/containers.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.execute.oci import PackedImage, load_image
from node.execute.podman import Podman, PodmanSettings
from node.execute.selftest import choose_runtime
from node.execute.selftest_image import build_busybox_image


@dataclass
class PodmanEnv:
    base: Path
    settings: PodmanSettings
    image: PackedImage

    def podman(self) -> Podman:
        return Podman(self.settings)

    def containers(self) -> list[str]:
        """Every container in the private storage (running or not)."""
        out = subprocess.run(
            [*Podman(self.settings).global_args(), "ps", "--all", "--format", "{{.Names}}"],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.split()


@functools.cache
def shared_env() -> PodmanEnv:
    base = Path(tempfile.mkdtemp(prefix="cpn-podman-test-"))
    settings = PodmanSettings(
        root=base / "root", runroot=base / "runroot", runtime=choose_runtime()[0],
        node_label=f"test-{base.name}", cdi_dirs=(base / "cdi",),
    )
    image = build_busybox_image(base / "busybox.oci")
    trio.run(lambda: load_image(
        image, podman_args=Podman(settings).global_args(), root=settings.root,
        runroot=settings.runroot,
    ))
    atexit.register(_cleanup, settings, base)
    return PodmanEnv(base, settings, image)


def _cleanup(settings: PodmanSettings, base: Path) -> None:
    args = Podman(settings).global_args()
    names = subprocess.run([*args, "ps", "-aq"], capture_output=True, text=True).stdout.split()
    if names:
        subprocess.run([*args, "rm", "-f", "-t", "0", *names], capture_output=True)
    subprocess.run(["umount", "-R", str(settings.root / "overlay")], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def blob_ref(path: Path, media_type: str) -> Any:
    from protocol.chunks import DEFAULT_CHUNK_SIZE, chunk_hashes, chunk_root
    from protocol.jobspec import BlobRef

    data = path.read_bytes()
    return BlobRef(
        digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data),
        chunk_size=DEFAULT_CHUNK_SIZE, chunk_root=chunk_root(chunk_hashes(data)),
        media_type=media_type,
    )


def job_for(
    image: PackedImage,
    command: tuple[str, ...],
    *,
    inputs: tuple[tuple[Path, str], ...] = (),
    outputs: tuple[str, ...] = (),
    memory_mib: int = 64,
    disk_mib: int = 64,
    run_s: int = 30,
) -> Any:
    """A JobSpec for ``image`` (a packed layout) running ``command``."""
    from protocol.jobspec import ImageRef, InputRef, JobSpec, Resources, Timeouts

    ref = ImageRef(
        manifest=blob_ref(image.blob_path(image.manifest.digest), image.manifest.media_type),
        config=blob_ref(image.blob_path(image.config.digest), image.config.media_type),
        layers=tuple(blob_ref(image.blob_path(b.digest), b.media_type) for b in image.layers),
    )
    return JobSpec(
        name="test", image=ref, command=command, args=(), env={"CPN_TEST": "1"}, workdir="/",
        resources=Resources(gpu=None, cpu_millis=1000, memory_mib=memory_mib, disk_mib=disk_mib),
        inputs=tuple(InputRef(blob=blob_ref(p, "application/octet-stream"), path=c) for p, c in inputs),
        outputs=outputs, timeouts=Timeouts(transfer_s=60, queue_s=60, run_s=run_s), network="none",
        max_price=0, created_at=1_767_225_600, nonce=bytes(16),
    )
