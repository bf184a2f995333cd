"""What finished jobs leave behind is bounded in time (node/execute/service.py
``sweep``), and log lines are bounded in size (node/execute/container.py).

The sweep runs against a real blob store and podman's private test storage,
with the service's clock moved by hand: a result pin without a receipt
expires after ``result_retention_s``, an old run directory keeps only its
record, and an image CPN loaded that no job used for ``image_idle_s`` is
removed while the images in use stay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.podman import PodmanEnv, shared_env

from node.config import ExecutionSection
from node.execute.container import LogStream
from node.execute.oci import load_image
from node.execute.oci_pack import pack_image
from node.execute.selftest import Capability
from node.execute.selftest_image import BUSYBOX, busybox_rootfs
from node.execute.service import ExecutionService
from node.transfer.blobstore import BlobStore


@pytest.fixture(scope="module")
def podman_env() -> PodmanEnv:
    return shared_env()


@pytest.mark.podman
@pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static")
async def test_sweep_expires_results_cleans_runs_and_removes_idle_images(
    podman_env: PodmanEnv, tmp_path: Path
) -> None:
    now = [1_800_000_000]
    config = ExecutionSection(enabled=True, podman_root=str(podman_env.settings.root),
                              podman_runroot=str(podman_env.settings.runroot),
                              result_retention_s=3600, image_idle_s=7200)
    blobs = BlobStore(tmp_path / "node", now=lambda: now[0])
    svc = ExecutionService(config, runs_dir=tmp_path / "runs", key=Ed25519PrivateKey.generate(), peer_id="me",
                           clock=lambda: now[0], blobs=blobs)
    ex = svc.executor
    assert ex is not None
    ex.capability = Capability(ok=True, runtime=podman_env.settings.runtime)  # proven by the shared env
    ex.selftest_image = podman_env.image.image_id

    # a result that no receipt settles: its output pinned, its run directory with a log left
    out = blobs.import_bytes(b"output", chunk_size=4096)
    blobs.pin(out.digest, "result:aa")
    run = tmp_path / "runs" / "aa"
    run.mkdir()
    for name in ("state.json", "result.cbor", "log"):
        (run / name).write_bytes(b"x")
    os.utime(run / "result.cbor", (now[0], now[0]))
    # an image CPN loaded for a job, not used since
    root = tmp_path / "rootfs"
    busybox_rootfs(root)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "marker").write_text(str(tmp_path))
    image = pack_image([root, extra], tmp_path / "img", cmd=["/bin/sh"])
    await load_image(image, podman_args=ex.podman.global_args(), root=podman_env.settings.root,
                     runroot=podman_env.settings.runroot)
    await trio.to_thread.run_sync(ex.images.touch, image.image_id)

    assert await svc.sweep() == {"pins": 0, "runs": 0, "images": 0}  # nothing is old yet
    now[0] += 3601
    assert await svc.sweep() == {"pins": 1, "runs": 1, "images": 0}
    assert blobs.pinned(out.digest) == [] and sorted(p.name for p in run.iterdir()) == ["result.cbor", "state.json"]
    now[0] += 3600
    for other in await ex.images.loaded(ex.podman):  # images other tests use in the shared storage: in use
        if other != image.image_id:
            await trio.to_thread.run_sync(ex.images.touch, other)
    assert await svc.sweep() == {"pins": 0, "runs": 0, "images": 1}
    assert (await ex.podman.call("image", "exists", image.image_id, check=False)).returncode != 0
    assert (await ex.podman.call("image", "exists", podman_env.image.image_id, check=False)).returncode == 0
    blobs.close()


async def test_log_lines_are_cut_at_the_limit_and_truncation_stops_the_work(tmp_path: Path) -> None:
    log = LogStream(tmp_path / "log", max_bytes=1 << 20, max_line=100)
    for _ in range(50):
        log.feed(b"y" * 999)  # no newline anywhere
        assert len(log._partial) < 100
    log.feed(b"\nshort\n")
    lines = log.lines()
    assert all(len(line) <= 101 and line.endswith(b"\n") for line in lines)
    assert b"".join(lines).replace(b"\n", b"") == b"y" * 49950 + b"short"
    big: Any = b"z" * (2 << 20)
    log.feed(big)
    assert log.truncated and log.lines()[-1] == b"[cpn: log truncated]\n"
    size = log.size
    log.feed(big)  # after the cut: nothing is kept, nothing is copied
    assert log.size == size and not log._partial
    log.close()
    assert (tmp_path / "log").stat().st_size <= (1 << 20) + 64
