"""Hostile jobs against the executor (issue 12 items 7, 8, gzip bomb, blocking
work), with real podman and a real blob store, each beside an honest job that
runs at the same time and must finish normally.

Facts, not timings: a job that writes 1 GiB with ``disk_mib = 16`` gets
ENOSPC at 16 MiB and leaves nothing behind once its outputs are stored; a
1 GiB gzip bomb is refused after the provider's image limit, before podman
sees it; 60 MB of stdout without a newline keeps the first 16 MiB of the log
in bounded lines (before, the one endless line was thrown away whole, after
a minute of copying on the event loop); outputs are stored from a worker
thread, never on the event loop.  The time an honest job takes under each
flood is bench/floods_transfer.py's business.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tarfile
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.podman import PodmanEnv, job_for, shared_env

from node.execute.executor import Execution, Executor
from node.execute.oci import (
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    Blob,
    PackedImage,
    json_bytes,
)
from node.execute.selftest import Capability, self_test
from node.execute.selftest_image import BUSYBOX
from node.transfer.blobstore import BlobStore
from protocol.envelope import public_key_proto_of
from protocol.identity import peer_id_from_proto_key
from protocol.result import Outcome

pytestmark = [
    pytest.mark.adversarial,
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]

PROVIDER = Ed25519PrivateKey.generate()
PROVIDER_ID = peer_id_from_proto_key(public_key_proto_of(PROVIDER))
SUBMITTER_ID = peer_id_from_proto_key(public_key_proto_of(Ed25519PrivateKey.generate()))
BOUND = 120  #: seconds any job may take before the test fails instead of hanging


@pytest.fixture(scope="module")
def podman_env() -> PodmanEnv:
    return shared_env()


@pytest.fixture(scope="module")
def capability(podman_env: PodmanEnv, tmp_path_factory: pytest.TempPathFactory) -> Capability:
    return trio.run(self_test, podman_env.settings, podman_env.image.image_id, tmp_path_factory.mktemp("st"))


@pytest.fixture
def executor(podman_env: PodmanEnv, capability: Capability, tmp_path: Path) -> Executor:
    ex = Executor(podman_env.settings, tmp_path / "runs", PROVIDER, PROVIDER_ID)
    ex.capability = capability
    ex.max_image_bytes = 32 << 20  # [execution] max_image_unpacked_mib = 32
    return ex


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = BlobStore(tmp_path / "node")
    yield s
    s.close()


def _blob_path(image: PackedImage, store: BlobStore) -> Any:
    def lookup(digest: str) -> Path:
        p = image.blob_path(digest)
        return p if p.is_file() else store.path_of(digest)

    return lookup


async def _run(ex: Executor, job: Any, aid: int, store: BlobStore, image: PackedImage,
               **kw: Any) -> Execution:
    with trio.fail_after(BOUND):
        return await ex.execute(job, agreement_id=bytes([aid]) * 16, job_digest=bytes(32), submitter=SUBMITTER_ID,
                                blob_path=_blob_path(image, store), store_output=store.import_file, **kw)


async def _beside_honest(ex: Executor, store: BlobStore, image: PackedImage, attack: Any, **kw: Any,
                         ) -> tuple[Execution, Execution]:
    """Run ``attack`` and an honest job at the same time; return both results."""
    honest = job_for(image, ("/bin/sh", "-c", "echo fine > /out/ok"), outputs=("/out",), disk_mib=1)
    results: dict[str, Execution] = {}

    async def one(name: str, job: Any, aid: int, **more: Any) -> None:
        results[name] = await _run(ex, job, aid, store, image, **more)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(one, "attack", attack, 1, **kw))
        nursery.start_soon(one, "honest", honest, 2)
    h = results["honest"].result.message
    assert (h.outcome, h.exit_code) == (Outcome.EXITED, 0), "the honest job beside the attack failed"
    assert [o.path for o in h.outputs] == ["out/ok"] and store.path_of(h.outputs[0].digest).read_bytes() == b"fine\n"
    return results["attack"], results["honest"]


async def test_outputs_cannot_fill_the_disk(executor: Executor, store: BlobStore, podman_env: PodmanEnv) -> None:
    """A job with ``disk_mib = 16`` writes 1 GiB to /out (issue 12 item 7): the
    write fails at the output volume's size, and once the (bounded) outputs are
    in the blob store the run directory holds only its record."""
    attack = job_for(podman_env.image, ("/bin/sh", "-c",
                     "dd if=/dev/zero of=/out/big bs=1M count=1024 2>&1; echo rc=$?"),
                     outputs=("/out",), disk_mib=16)
    ex, _ = await _beside_honest(executor, store, podman_env.image, attack)
    r = ex.result.message
    log = store.path_of(r.log.digest).read_text()
    assert r.outcome is Outcome.EXITED and "No space left on device" in log and "rc=1" in log
    assert sum(o.size for o in r.outputs) <= 16 << 20  # at most what was agreed, if anything
    assert sorted(p.name for p in ex.run_dir.iterdir()) == ["result.cbor", "state.json"]
    assert store.used_bytes() < 20 << 20  # outputs (bounded) and two small logs


def _bomb_image(out: Path, expands_to: int) -> PackedImage:
    """An image whose one gzip layer is a tar of ``expands_to`` zero bytes (about 1/200 as big)."""
    bdir = out / "blobs" / "sha256"
    bdir.mkdir(parents=True)
    info = tarfile.TarInfo("big")
    info.size = expands_to
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [z.compress(info.tobuf(format=tarfile.GNU_FORMAT))]
    zeros = bytes(1 << 20)
    for _ in range(expands_to >> 20):
        parts.append(z.compress(zeros))
    parts += [z.compress(bytes(2 * 512)), z.flush()]
    layer_bytes = b"".join(parts)

    def put(data: bytes, media: str) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        (bdir / digest).write_bytes(data)
        return Blob("sha256:" + digest, len(data), media)

    layer = put(layer_bytes, MEDIA_LAYER_GZIP)
    config = put(json_bytes({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}), MEDIA_CONFIG)
    manifest = put(json_bytes({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config.descriptor(),
                               "layers": [layer.descriptor()]}), MEDIA_MANIFEST)
    return PackedImage(out, manifest, config, (layer,))


async def test_a_gzip_bomb_image_is_refused_at_the_image_limit(
    executor: Executor, store: BlobStore, podman_env: PodmanEnv, tmp_path: Path
) -> None:
    """A ~5 MB layer that expands to 1 GiB, with ``disk_mib = 16`` and a
    provider image limit of 32 MiB (issue 12: a 4 MB -> 4 GiB bomb was
    accepted): refused while the layer is read, never handed to podman."""
    bomb = _bomb_image(tmp_path / "bomb", 1 << 30)
    assert bomb.layers[0].size < 8 << 20  # a few MB on the wire
    attack = job_for(bomb, ("/bin/true",), disk_mib=16)
    for blob in (bomb.manifest, bomb.config, *bomb.layers):  # the provider fetched them into its store
        store.import_file(bomb.blob_path(blob.digest))
    shutil.rmtree(bomb.layout / "blobs")
    ex, _ = await _beside_honest(executor, store, podman_env.image, attack)
    r = ex.result.message
    assert r.outcome is Outcome.FAILED
    assert "unsafe_layer" in r.detail and "expand beyond 33554432 bytes" in r.detail, r.detail
    assert (await executor.podman.call("image", "exists", bomb.image_id, check=False)).returncode != 0


async def test_stdout_without_newlines_keeps_bounded_lines(
    executor: Executor, store: BlobStore, podman_env: PodmanEnv
) -> None:
    """60 MB of stdout without a newline (issue 12): the log keeps its first
    16 MiB cut into lines of at most 4096 bytes, then the truncation marker.
    (Before: the partial line grew to 60 MB, was recopied on every read, and
    was dropped whole at the end: the log held only the marker.)"""
    attack = job_for(podman_env.image, ("/bin/sh", "-c", "head -c 60000000 /dev/zero | tr '\\0' x"))
    runs: list[Any] = []
    ex, _ = await _beside_honest(executor, store, podman_env.image, attack, on_running=runs.append)
    r = ex.result.message
    assert (r.outcome, r.exit_code) == (Outcome.EXITED, 0)
    log = store.path_of(r.log.digest).read_bytes()
    body, marker = log.rsplit(b"\n[cpn: log truncated]", 1)
    kept = body.split(b"\n")
    assert len(kept) > 4000 and all(len(line) <= 4096 and set(line) == {ord("x")} for line in kept)
    assert sum(len(line) + 1 for line in kept) <= 16 << 20
    assert runs[0].logs.truncated


async def test_outputs_are_stored_off_the_event_loop(
    executor: Executor, store: BlobStore, podman_env: PodmanEnv
) -> None:
    """Importing outputs into the blob store hashes and copies them: it runs in
    a worker thread (the executor's limiter), never on the event loop's thread."""
    threads: list[bool] = []

    def store_output(path: Path) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return store.import_file(path)

    job = job_for(podman_env.image, ("/bin/sh", "-c", "head -c 3000000 /dev/urandom > /out/r"), outputs=("/out",))
    with trio.fail_after(BOUND):
        ex = await executor.execute(job, agreement_id=bytes([3]) * 16, job_digest=bytes(32), submitter=SUBMITTER_ID,
                                    blob_path=_blob_path(podman_env.image, store), store_output=store_output)
    assert ex.result.message.outcome is Outcome.EXITED
    assert threads == [False, False]  # the output and the log, both from a worker thread
