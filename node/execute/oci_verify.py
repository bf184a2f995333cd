"""Verifying an image before podman sees it: blobs, manifest, config and every layer entry.

:func:`assemble_layout` builds an OCI layout from blobs that arrived over the
network, *after* checking every blob's sha256 and size, the manifest against
the signed ``ImageRef``, the config's ``diff_ids`` against the uncompressed
layers, and every layer entry against :func:`check_layer` (no absolute or
``..`` paths, nothing written through a symlink, no device files, no
setuid/setgid bits, no hardlinks to outside the layer).  A refused image
never reaches podman (:func:`node.execute.oci.load_image`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from node.execute.oci import (
    LAYER_TYPES,
    MEDIA_LAYER_GZIP,
    Blob,
    ImageError,
    ImageSpec,
    PackedImage,
    write_index,
)

__all__ = ["verify_blob_file", "check_layer", "assemble_layout", "MAX_JSON_BLOB", "DEFAULT_MAX_LAYER_BYTES",
           "DEFAULT_MAX_IMAGE_BYTES"]

#: Manifests and configs are small JSON documents; anything bigger is hostile.
MAX_JSON_BLOB = 1 << 20
#: Default bound on one layer's uncompressed size (a gzip bomb stops here).
DEFAULT_MAX_LAYER_BYTES = 16 << 30
#: Default bound on all layers of one image together, uncompressed ([execution] max_image_unpacked_mib).
DEFAULT_MAX_IMAGE_BYTES = 32 << 30
_READ = 1 << 20


def verify_blob_file(path: Path, digest: str, size: int) -> None:
    """The file at ``path`` must be exactly ``size`` bytes hashing to ``digest``."""
    try:
        st = path.stat()
    except OSError:
        raise ImageError("missing_blob", f"{digest} is not in the blob store") from None
    if st.st_size != size:
        raise ImageError("bad_size", f"{digest}: {st.st_size} bytes, expected {size}")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != digest:
        raise ImageError("bad_digest", f"{path.name} does not hash to {digest}")


class _HashingReader(io.RawIOBase):
    """Decompresses (optionally) and hashes what tarfile reads, with a size cap
    so a gzip bomb is refused instead of filling memory or disk."""

    def __init__(self, fh: IO[bytes], gzipped: bool, limit: int) -> None:
        self._fh = fh
        self._gzipped = gzipped
        self._z: Any = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self._pending = b""
        self._buf = b""
        self._eof = False
        self.hash = hashlib.sha256()
        self.total = 0
        self.limit = limit

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        if self._z is None:
            self._buf = self._fh.read(_READ)
            self._eof = not self._buf
            return
        data = self._pending or self._fh.read(_READ)
        if not data:
            self._buf = self._z.flush()
            self._eof = True
            return
        self._buf = self._z.decompress(data, _READ)
        self._pending = self._z.unconsumed_tail
        if self._z.eof:  # concatenated gzip members are legal
            rest = self._z.unused_data + self._pending
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._pending = rest

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._eof:
            self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.hash.update(self._buf[:n])
        self.total += n
        if self.total > self.limit:
            raise ImageError("unsafe_layer", f"layers expand beyond {self.limit} bytes uncompressed"
                             " (the provider's image limit)")
        self._buf = self._buf[n:]
        return n


def check_layer(
    fh: IO[bytes], *, gzipped: bool, max_bytes: int = DEFAULT_MAX_LAYER_BYTES
) -> str:
    """Refuse an unsafe layer; return its ``diff_id`` (sha256 of the tar).

    Rules (each is a way a layer could reach outside the container's root when
    unpacked, or smuggle privilege into it):

    * member names are relative and contain no ``..`` component;
    * no member lies below a path that this layer made a symlink (writing
      "through" a link is how tar extraction escapes its root);
    * a symlink's relative target resolved from its directory stays inside
      the root (absolute targets are resolved inside the container's root);
    * a hardlink points to a regular file earlier in the same layer;
    * only regular files, directories, symlinks and hardlinks: no character
      or block devices, FIFOs or sockets;
    * no setuid or setgid bit.
    """
    return _check_stream(_HashingReader(fh, gzipped, max_bytes))


def _check_stream(reader: _HashingReader) -> str:
    """:func:`check_layer` on a reader that bounds (and counts) what it expands."""
    symlinks: set[str] = set()
    files: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, _READ), mode="r|") as tar:
            for m in tar:
                _check_member(m, symlinks, files)
        # drain trailing padding so the diff_id covers the whole stream
        while reader.read(_READ):
            pass
    except tarfile.TarError as exc:
        raise ImageError("unsafe_layer", f"not a valid tar stream: {exc}") from None
    except (zlib.error, EOFError, OSError) as exc:
        raise ImageError("unsafe_layer", f"layer does not decompress: {exc}") from None
    return "sha256:" + reader.hash.hexdigest()


def _check_member(m: tarfile.TarInfo, symlinks: set[str], files: set[str]) -> None:
    raw = m.name
    if raw.startswith("/"):
        raise ImageError("unsafe_layer", f"{raw!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError("unsafe_layer", f"{raw!r}: '..' in path")
    name = "/".join(parts)
    if not name:
        return  # "./" itself
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in symlinks:
            raise ImageError("unsafe_layer", f"{raw!r}: lies below symlink {'/'.join(parts[:i])!r}")
    if m.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ImageError("unsafe_layer", f"{raw!r}: setuid/setgid bit")
    if m.issym():
        target = m.linkname
        if not target.startswith("/"):
            resolved = posixpath.normpath(posixpath.join("/", posixpath.dirname(name), target))
            if not _stays_inside(posixpath.dirname(name), target):
                raise ImageError("unsafe_layer", f"{raw!r}: symlink to {target!r} escapes the root ({resolved})")
        symlinks.add(name)
        files.discard(name)
    elif m.islnk():
        target = "/".join(p for p in m.linkname.split("/") if p not in ("", "."))
        if m.linkname.startswith("/") or ".." in target.split("/") or target not in files:
            raise ImageError("unsafe_layer", f"{raw!r}: hardlink to {m.linkname!r} outside this layer")
    elif m.isreg():
        files.add(name)
        symlinks.discard(name)
    elif m.isdir():
        symlinks.discard(name)
    else:
        raise ImageError("unsafe_layer", f"{raw!r}: device, FIFO or other special file")


def _stays_inside(base: str, target: str) -> bool:
    """Does ``target`` (relative) walked from ``base`` ever climb above the root?"""
    depth = len([p for p in base.split("/") if p])
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def _read_json_blob(path: Path, blob: Blob, what: str) -> Any:
    if blob.size > MAX_JSON_BLOB:
        raise ImageError(f"bad_{what}", f"{what} of {blob.size} bytes is too large")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"bad_{what}", f"{what} is not JSON: {exc}") from None


def _check_manifest(doc: Any, spec: ImageSpec) -> None:
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ImageError("bad_manifest", "not an OCI image manifest (schemaVersion 2)")
    try:
        config = doc["config"]
        layers = doc["layers"]
        got_config = (config["digest"], int(config["size"]))
        got_layers = [(d["digest"], int(d["size"]), d["mediaType"]) for d in layers]
    except (KeyError, TypeError, ValueError):
        raise ImageError("bad_manifest", "manifest lacks config or layers descriptors") from None
    if got_config != (spec.config.digest, spec.config.size):
        raise ImageError("bad_manifest", "manifest names a different config than the job spec")
    want = [(b.digest, b.size, b.media_type) for b in spec.layers]
    if got_layers != want:
        raise ImageError("bad_manifest", "manifest layers differ from the job spec's")
    for _, _, media in got_layers:
        if media not in LAYER_TYPES:
            raise ImageError("bad_manifest", f"unsupported layer media type {media}")


def _check_config(doc: Any, diff_ids: list[str]) -> None:
    try:
        stated = list(doc["rootfs"]["diff_ids"])
        ok_os = doc.get("os") == "linux"
    except (KeyError, TypeError):
        raise ImageError("bad_config", "config lacks rootfs.diff_ids") from None
    if not ok_os:
        raise ImageError("bad_config", "image is not for linux")
    if stated != diff_ids:
        raise ImageError("bad_config", "config diff_ids do not match the layers' contents")


def assemble_layout(
    spec: ImageSpec,
    blob_path: Callable[[str], Path],
    dest: Path,
    *,
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> PackedImage:
    """Verify an image's blobs and build an OCI layout in ``dest`` from them.

    Blobs are hardlinked from the store when possible (copied otherwise); all
    checks run on the files in ``dest``, which is what skopeo will read, so a
    blob changed in the store after the check cannot slip through.  The
    uncompressed bytes of all layers together count against
    ``max_image_bytes`` while they are read: a gzip bomb is refused
    (``unsafe_layer``) as soon as it passes the limit, never expanded whole.
    """
    dest.mkdir(parents=True, exist_ok=True)
    bdir = dest / "blobs" / "sha256"
    bdir.mkdir(parents=True, exist_ok=True)
    for blob in spec.blobs():
        if not blob.digest.startswith("sha256:") or len(blob.hex) != 64:
            raise ImageError("bad_digest", f"{blob.digest!r} is not a sha256 digest")
        target = bdir / blob.hex
        if not target.exists():
            src = blob_path(blob.digest)
            try:
                os.link(src, target)
            except FileNotFoundError:
                raise ImageError("missing_blob", f"{blob.digest} is not in the blob store") from None
            except OSError:
                shutil.copyfile(src, target)
        verify_blob_file(target, blob.digest, blob.size)
    manifest = _read_json_blob(bdir / spec.manifest.hex, spec.manifest, "manifest")
    _check_manifest(manifest, spec)
    config = _read_json_blob(bdir / spec.config.hex, spec.config, "config")
    diff_ids = []
    budget = max_image_bytes
    for layer in spec.layers:
        with (bdir / layer.hex).open("rb") as fh:
            reader = _HashingReader(fh, layer.media_type == MEDIA_LAYER_GZIP, min(max_layer_bytes, budget))
            diff_ids.append(_check_stream(reader))
        budget -= reader.total
    _check_config(config, diff_ids)
    write_index(dest, spec.manifest)
    return PackedImage(dest, spec.manifest, spec.config, spec.layers, tuple(diff_ids))
