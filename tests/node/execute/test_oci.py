"""node/execute/oci*.py: reproducible packing, verification before podman, unsafe layers refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from support.podman import PodmanEnv, shared_env  # noqa: E402

from node.cli import main as cli_main
from node.execute.oci import (
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    Blob,
    ImageError,
    ImageSpec,
    image_exists,
    load_image,
)
from node.execute.oci_pack import pack_image
from node.execute.oci_verify import assemble_layout


@pytest.fixture(scope="session")
def podman_env() -> PodmanEnv:
    return shared_env()


def _rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o4755)  # setuid: packing must drop it
    (root / "bin" / "alias").symlink_to("tool")
    (root / "data").mkdir()
    (root / "data" / "z.txt").write_text("z")
    (root / "data" / "a.txt").write_text("a")
    return root


def test_pack_is_byte_identical(tmp_path: Path) -> None:
    a = pack_image(_rootfs(tmp_path / "src1"), tmp_path / "a", cmd=["/bin/tool"], env=["A=1"])
    src2 = _rootfs(tmp_path / "src2")
    for p in src2.rglob("*"):  # different mtimes must not matter
        if not p.is_symlink():
            import os
            os.utime(p, (12345, 12345))
    b = pack_image(src2, tmp_path / "b", cmd=["/bin/tool"], env=["A=1"])
    assert (a.image_id, a.manifest.digest) == (b.image_id, b.manifest.digest)
    for blob in (a.manifest, a.config, *a.layers):
        assert a.blob_path(blob.digest).read_bytes() == b.blob_path(blob.digest).read_bytes()
    with tarfile.open(a.blob_path(a.layers[0].digest)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert not any(m.mode & 0o6000 for m in members)
    # a different command is a different image
    c = pack_image(_rootfs(tmp_path / "src3"), tmp_path / "c", cmd=["/bin/other"], env=["A=1"])
    assert c.image_id != a.image_id and c.layers == a.layers


def test_pack_from_tar_matches_dir_contents(tmp_path: Path) -> None:
    src = _rootfs(tmp_path / "src")
    tar_path = tmp_path / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(src.rglob("*"), reverse=True):  # unsorted on purpose
            tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
    from_tar = pack_image(tar_path, tmp_path / "t")
    from_dir = pack_image(src, tmp_path / "d")
    assert from_tar.layers == from_dir.layers
    # a hardlink sorting before its target is stored as a copy, and passes the checks
    linked = tmp_path / "linked.tar"
    with tarfile.open(tar_path) as tin, tarfile.open(linked, "w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
        link = tarfile.TarInfo("a-link")
        link.type, link.linkname = tarfile.LNKTYPE, "data/z.txt"
        tout.addfile(link)
    image = pack_image(linked, tmp_path / "l")
    assembled = assemble_layout(image.spec(), image.blob_path, tmp_path / "l-check")
    assert assembled.image_id == image.image_id


def test_cli_pack_prints_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _rootfs(tmp_path / "src")
    assert cli_main(["image", "pack", str(src), "--cmd", "/bin/tool -x", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "image" and len(out[1]) == 64
    assert json.loads((tmp_path / "o" / "index.json").read_text())["manifests"][0]["digest"] == out[3]
    assert cli_main(["image", "pack", str(tmp_path / "missing"), "-o", str(tmp_path / "p")]) == 2  # bad input


# --------------------------------------------------------------------------- hostile images


def _image(store: Path, layer_tar: bytes, *, gz: bool = True) -> tuple[ImageSpec, Callable[[str], Path]]:
    """An image made of one hand-built layer, its blobs in a fake blob store."""
    store.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media: str) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (store / digest[7:]).write_bytes(data)
        return Blob(digest, len(data), media)

    layer = put(gzip.compress(layer_tar, mtime=0) if gz else layer_tar, MEDIA_LAYER_GZIP)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    config = put(json.dumps({"os": "linux", "architecture": "amd64", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode(), MEDIA_CONFIG)
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                               "config": config.descriptor(), "layers": [layer.descriptor()]}).encode(),
                   MEDIA_MANIFEST)
    return ImageSpec(manifest, config, (layer,)), lambda d: store / d[7:]


def _tar(*entries: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            data = b"x" * info.size if info.isreg() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


HOSTILE = {
    "absolute-path": [_entry("/etc/cron.d/x", size=1)],
    "dotdot-path": [_entry("a/../../etc/passwd", size=1)],
    "write-through-symlink": [_entry("etc", tarfile.SYMTYPE, link="/etc"), _entry("etc/passwd", size=1)],
    "symlink-escaping": [_entry("a", tarfile.DIRTYPE, mode=0o755), _entry("a/up", tarfile.SYMTYPE, link="../../../etc")],
    "char-device": [_entry("dev/mem", tarfile.CHRTYPE)],
    "block-device": [_entry("sda", tarfile.BLKTYPE)],
    "fifo": [_entry("pipe", tarfile.FIFOTYPE)],
    "setuid": [_entry("bin/su", mode=0o4755, size=1)],
    "setgid": [_entry("bin/sg", mode=0o2755, size=1)],
    "hardlink-outside": [_entry("shadow", tarfile.LNKTYPE, link="/etc/shadow")],
    "hardlink-dotdot": [_entry("x", tarfile.LNKTYPE, link="../etc/shadow")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_refused(tmp_path: Path, case: str) -> None:
    spec, blob_path = _image(tmp_path / "store", _tar(*HOSTILE[case]))
    with pytest.raises(ImageError) as exc:
        assemble_layout(spec, blob_path, tmp_path / "layout")
    assert exc.value.reason == "unsafe_layer"


def test_benign_links_accepted(tmp_path: Path) -> None:
    layer = _tar(
        _entry("bin", tarfile.DIRTYPE, mode=0o755), _entry("bin/busybox", mode=0o755, size=3),
        _entry("bin/sh", tarfile.SYMTYPE, link="busybox"),
        _entry("bin/abs", tarfile.SYMTYPE, link="/bin/busybox"),  # resolved inside the container
        _entry("lib", tarfile.SYMTYPE, link="bin/../bin"),
        _entry("bin/hard", tarfile.LNKTYPE, link="bin/busybox"),
        _entry("bin/.wh.old", size=0),  # an OCI whiteout is a plain empty file
    )
    spec, blob_path = _image(tmp_path / "store", layer)
    layout = assemble_layout(spec, blob_path, tmp_path / "layout")
    assert layout.image_id == spec.config.hex
    assert (tmp_path / "layout" / "index.json").exists()


def test_gzip_bomb_bounded(tmp_path: Path) -> None:
    spec, blob_path = _image(tmp_path / "store", _tar(_entry("big", size=4 << 20)))
    with pytest.raises(ImageError) as exc:
        assemble_layout(spec, blob_path, tmp_path / "layout", max_layer_bytes=1 << 20)
    assert exc.value.reason == "unsafe_layer"


def test_config_diff_ids_must_match(tmp_path: Path) -> None:
    spec, blob_path = _image(tmp_path / "store", _tar(_entry("f", size=1)))
    other_spec, other_path = _image(tmp_path / "other", _tar(_entry("g", size=1)))
    # the manifest and config of one image with the layer of another
    mixed = ImageSpec(spec.manifest, spec.config, other_spec.layers)
    with pytest.raises(ImageError) as exc:
        assemble_layout(mixed, lambda d: blob_path(d) if blob_path(d).exists() else other_path(d),
                        tmp_path / "layout")
    assert exc.value.reason == "bad_manifest"


@pytest.mark.podman
def test_corrupt_blob_refused_before_podman(tmp_path: Path, podman_env: PodmanEnv) -> None:
    src = _rootfs(tmp_path / "src")
    (src / "bin" / "tool").chmod(0o755)
    image = pack_image(src, tmp_path / "img", cmd=["/bin/tool"], env=["CORRUPT=1"])
    layer_path = image.blob_path(image.layers[0].digest)
    data = bytearray(layer_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer_path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as exc:
        assemble_layout(image.spec(), image.blob_path, tmp_path / "layout")
    assert exc.value.reason == "bad_digest"
    assert not trio.run(image_exists, podman_env.podman().global_args(), image.image_id)


@pytest.mark.podman
def test_load_verified_image_once(tmp_path: Path, podman_env: PodmanEnv) -> None:
    src = _rootfs(tmp_path / "src")
    (src / "bin" / "tool").chmod(0o755)
    image = pack_image(src, tmp_path / "img", cmd=["/bin/tool"], env=["LOADTEST=1"])
    layout = assemble_layout(image.spec(), image.blob_path, tmp_path / "layout")
    s = podman_env.settings
    args = podman_env.podman().global_args()

    async def load() -> bool:
        return await load_image(layout, podman_args=args, root=s.root, runroot=s.runroot)

    assert trio.run(load) is True
    assert trio.run(image_exists, args, image.image_id)
    assert trio.run(load) is False  # already present: nothing copied
