"""OCI images without a registry: the shared vocabulary, and loading a verified layout into podman.

Three jobs, all about keeping podman away from anything unverified, each in
its own module:

* packing (:mod:`node.execute.oci_pack`): :func:`~node.execute.oci_pack.pack_image`
  builds a byte-identical OCI layout for the same input, so the image ID (the
  config digest) is a function of the content alone;
* verifying (:mod:`node.execute.oci_verify`):
  :func:`~node.execute.oci_verify.assemble_layout` builds a layout from blobs
  that arrived over the network *after* checking every blob, the manifest,
  the config and every layer entry.  A refused image never reaches podman;
* loading (here): :func:`load_image` copies a verified layout into
  containers-storage with ``skopeo copy`` (measured faster than ``podman
  load`` here), skipping it when the image ID is already present;
  containers-storage itself skips layers it already holds, so shared layers
  are imported once.

This module holds what all three share: media types, :class:`ImageError`,
the :class:`Blob`, :class:`ImageSpec` and :class:`PackedImage` values, and the
layout's index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MEDIA_MANIFEST",
    "MEDIA_INDEX",
    "MEDIA_CONFIG",
    "MEDIA_LAYER_GZIP",
    "MEDIA_LAYER_TAR",
    "LAYER_TYPES",
    "ImageError",
    "Blob",
    "PackedImage",
    "ImageSpec",
    "json_bytes",
    "write_index",
    "read_layout",
    "load_image",
    "image_exists",
    "storage_reference",
]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_TYPES = (MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR)


class ImageError(Exception):
    """An image is malformed, fails verification or is unsafe.  ``reason`` is
    machine-readable (``bad_digest``, ``bad_size``, ``bad_manifest``,
    ``bad_config``, ``unsafe_layer``, ``missing_blob``, ``load_failed``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Blob:
    """A content-addressed blob of an image: digest, size and media type."""

    digest: str
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """What :func:`~node.execute.oci_verify.assemble_layout` needs from a job's ``ImageRef``: the signed
    digests and sizes.  ``from_ref`` adapts protocol.jobspec.ImageRef."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def image_id(self) -> str:
        return self.config.hex

    @classmethod
    def from_ref(cls, ref: Any) -> ImageSpec:
        def conv(b: Any) -> Blob:
            return Blob(b.digest, b.size, b.media_type)

        return cls(conv(ref.manifest), conv(ref.config), tuple(conv(b) for b in ref.layers))

    def blobs(self) -> tuple[Blob, ...]:
        return (self.manifest, self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class PackedImage:
    """The result of :func:`~node.execute.oci_pack.pack_image`: an OCI layout directory."""

    layout: Path
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...] = field(default=())

    @property
    def image_id(self) -> str:
        """podman's image ID: the hex of the config digest."""
        return self.config.hex

    def spec(self) -> ImageSpec:
        return ImageSpec(self.manifest, self.config, self.layers)

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]


# --------------------------------------------------------------------------- layouts


def json_bytes(doc: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces) so manifests hash the same everywhere."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_index(layout: Path, manifest: Blob) -> None:
    (layout / "oci-layout").write_bytes(json_bytes({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest.descriptor()]}
    (layout / "index.json").write_bytes(json_bytes(index))


def read_layout(layout: Path) -> PackedImage:
    """Describe an existing single-image OCI layout (digests as stated; see
    :func:`~node.execute.oci_verify.assemble_layout` for verification)."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        mdesc = index["manifests"][0]
        manifest = Blob(mdesc["digest"], int(mdesc["size"]), mdesc.get("mediaType", MEDIA_MANIFEST))
        mdoc = json.loads((layout / "blobs" / "sha256" / manifest.hex).read_bytes())
        config = Blob(mdoc["config"]["digest"], int(mdoc["config"]["size"]), MEDIA_CONFIG)
        layers = tuple(Blob(d["digest"], int(d["size"]), d["mediaType"]) for d in mdoc["layers"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ImageError("bad_manifest", f"{layout} is not a readable OCI layout: {exc}") from None
    return PackedImage(layout, manifest, config, layers)


# --------------------------------------------------------------------------- loading


def storage_reference(image_id: str, root: Path | None, runroot: Path | None, driver: str = "overlay") -> str:
    """A skopeo ``containers-storage:`` reference for podman's store (ours in tests)."""
    name = f"localhost/cpn-image:{image_id[:64]}"
    if root is None:
        return f"containers-storage:{name}"
    return f"containers-storage:[{driver}@{root}+{runroot}]{name}"


async def image_exists(podman_args: Sequence[str], image_id: str) -> bool:
    import trio

    proc = await trio.run_process([*podman_args, "image", "exists", image_id], check=False,
                                  capture_stdout=True, capture_stderr=True)
    return proc.returncode == 0


async def load_image(
    image: PackedImage,
    *,
    podman_args: Sequence[str],
    root: Path | None = None,
    runroot: Path | None = None,
    driver: str = "overlay",
    skopeo: str = "skopeo",
) -> bool:
    """Load a *verified* layout into containers-storage.  Returns False when the
    image was already present (nothing done), True when it was copied."""
    import trio

    if await image_exists(podman_args, image.image_id):
        return False
    ref = storage_reference(image.image_id, root, runroot, driver)
    proc = await trio.run_process(
        [skopeo, "copy", "--quiet", f"oci:{image.layout}", ref],
        check=False, capture_stdout=True, capture_stderr=True,
    )
    if proc.returncode != 0:
        raise ImageError("load_failed", proc.stderr.decode(errors="replace").strip()[-2000:])
    if not await image_exists(podman_args, image.image_id):
        raise ImageError("load_failed", f"image {image.image_id[:12]} not present after skopeo copy")
    return True
