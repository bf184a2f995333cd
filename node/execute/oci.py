"""OCI images without a registry: reproducible packing, safe assembly, loading.

Three jobs, all about keeping podman away from anything unverified:

* :func:`pack_image` builds an OCI image layout from a directory or a rootfs
  tar, byte-identical for the same input (sorted entries, mtime 0, uid/gid 0,
  no user/group names, gzip header mtime 0 and no file name), so the image ID
  (the config digest) is a function of the content alone and a job spec can
  name it before anyone builds it twice.
* :func:`assemble_layout` builds an OCI layout from blobs that arrived over
  the network, *after* checking every blob's sha256 and size, the manifest
  against the signed :class:`ImageRef`, the config's ``diff_ids`` against the
  uncompressed layers, and every layer entry against :func:`check_layer`
  (no absolute or ``..`` paths, nothing written through a symlink, no
  device files, no setuid/setgid bits, no hardlinks to outside the layer).
  A refused image never reaches podman.
* :func:`load_image` copies a verified layout into containers-storage with
  ``skopeo copy`` (measured faster than ``podman load`` here), skipping it
  when the image ID is already present; containers-storage itself skips
  layers it already holds, so shared layers are imported once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MEDIA_MANIFEST",
    "MEDIA_CONFIG",
    "MEDIA_LAYER_GZIP",
    "MEDIA_LAYER_TAR",
    "ImageError",
    "Blob",
    "PackedImage",
    "ImageSpec",
    "deterministic_layer",
    "pack_image",
    "check_layer",
    "verify_blob_file",
    "assemble_layout",
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
_LAYER_TYPES = (MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR)

#: Manifests and configs are small JSON documents; anything bigger is hostile.
MAX_JSON_BLOB = 1 << 20
#: Default bound on one layer's uncompressed size (a gzip bomb stops here).
DEFAULT_MAX_LAYER_BYTES = 16 << 30
_READ = 1 << 20


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
    """What :func:`assemble_layout` needs from a job's ``ImageRef``: the signed
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
    """The result of :func:`pack_image`: an OCI layout directory."""

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


# --------------------------------------------------------------------------- packing


def _json_bytes(doc: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces) so manifests hash the same everywhere."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _normal_info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _strip_mode(mode: int, is_dir: bool) -> int:
    """Permission bits only: setuid/setgid never survive packing (a job image
    has no business carrying them and :func:`check_layer` refuses them)."""
    return mode & (0o1777 if is_dir else 0o777)


def _dir_entries(src: Path) -> Iterable[tuple[str, Path]]:
    """Every path under ``src`` in sorted order (names relative, POSIX)."""
    stack = [src]
    out: list[tuple[str, Path]] = []
    while stack:
        cur = stack.pop()
        with os.scandir(cur) as it:
            for entry in it:
                p = Path(entry.path)
                out.append((p.relative_to(src).as_posix(), p))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(p)
    return sorted(out, key=lambda kv: kv[0].encode())


def _tar_from_dir(src: Path, out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _dir_entries(src):
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_normal_info(name, tarfile.DIRTYPE, _strip_mode(st.st_mode, True)))
            elif stat.S_ISLNK(st.st_mode):
                info = _normal_info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info = _normal_info(name, tarfile.REGTYPE, _strip_mode(st.st_mode, False))
                info.size = st.st_size
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                raise ImageError("unsafe_layer", f"{name}: only files, directories and symlinks can be packed")


def _tar_from_tar(src: Path, out: IO[bytes]) -> None:
    """Re-normalise a rootfs tar: sorted, mtime 0, root-owned, modes stripped."""
    with tarfile.open(src, mode="r:*") as tin:
        members = []
        for m in tin.getmembers():
            name = posixpath.normpath(m.name.lstrip("/"))
            if name in (".", ""):
                continue
            members.append((name, m))
        members.sort(key=lambda kv: kv[0].encode())
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, m in members:
                if m.isdir():
                    tar.addfile(_normal_info(name, tarfile.DIRTYPE, _strip_mode(m.mode, True)))
                elif m.issym():
                    info = _normal_info(name, tarfile.SYMTYPE, 0o777)
                    info.linkname = m.linkname
                    tar.addfile(info)
                elif m.islnk():
                    # Stored as a copy: sorting could put a link before its
                    # target, which neither extraction nor check_layer accepts.
                    target = tin.getmember(m.linkname)
                    info = _normal_info(name, tarfile.REGTYPE, _strip_mode(target.mode, False))
                    info.size = target.size
                    tar.addfile(info, tin.extractfile(target))
                elif m.isreg():
                    info = _normal_info(name, tarfile.REGTYPE, _strip_mode(m.mode, False))
                    info.size = m.size
                    tar.addfile(info, tin.extractfile(m))
                else:
                    raise ImageError("unsafe_layer", f"{name}: only files, directories and links can be packed")


def deterministic_layer(src: Path, dest_dir: Path) -> tuple[Blob, str]:
    """Write a gzip layer for ``src`` (directory or tar) into ``dest_dir``'s
    blob folder; return its :class:`Blob` and the uncompressed ``diff_id``."""
    raw = io.BytesIO()
    if src.is_dir():
        _tar_from_dir(src, raw)
    elif src.is_file():
        _tar_from_tar(src, raw)
    else:
        raise ImageError("missing_blob", f"{src} is neither a directory nor a tar file")
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    gz = io.BytesIO()
    # mtime=0 and an empty file name keep the gzip header free of host state.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, compresslevel=6, mtime=0) as zf:
        zf.write(tar_bytes)
    blob = _write_blob(dest_dir, gz.getvalue(), MEDIA_LAYER_GZIP)
    return blob, diff_id


def _write_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return Blob(digest, len(data), media_type)


def _write_index(layout: Path, manifest: Blob) -> None:
    (layout / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest.descriptor()]}
    (layout / "index.json").write_bytes(_json_bytes(index))


def pack_image(
    sources: Path | Sequence[Path],
    out: Path,
    *,
    cmd: Sequence[str] = (),
    entrypoint: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str = "/",
    architecture: str = "amd64",
) -> PackedImage:
    """Build a reproducible OCI layout in ``out`` (created; must be empty or
    absent), one layer per source.  The config carries no creation time and no
    history, so two builds of the same input give the same image ID."""
    srcs = [sources] if isinstance(sources, Path) else list(sources)
    if not srcs:
        raise ImageError("bad_config", "an image needs at least one layer source")
    for src in srcs:
        if not (Path(src).is_dir() or Path(src).is_file()):
            raise ImageError("missing_blob", f"{src} is neither a directory nor a tar file")
    if out.exists() and any(out.iterdir()):
        raise ImageError("bad_config", f"output directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    layers, diff_ids = [], []
    for src in srcs:
        blob, diff_id = deterministic_layer(Path(src), out)
        layers.append(blob)
        diff_ids.append(diff_id)
    conf: dict[str, Any] = {"Env": list(env), "WorkingDir": workdir or "/"}
    if cmd:
        conf["Cmd"] = list(cmd)
    if entrypoint:
        conf["Entrypoint"] = list(entrypoint)
    config_doc = {
        "architecture": architecture,
        "os": "linux",
        "config": conf,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config = _write_blob(out, _json_bytes(config_doc), MEDIA_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    manifest = _write_blob(out, _json_bytes(manifest_doc), MEDIA_MANIFEST)
    _write_index(out, manifest)
    return PackedImage(out, manifest, config, tuple(layers), tuple(diff_ids))


def read_layout(layout: Path) -> PackedImage:
    """Describe an existing single-image OCI layout (digests as stated; see
    :func:`assemble_layout` for verification)."""
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


# --------------------------------------------------------------------------- verification


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
            raise ImageError("unsafe_layer", f"layer expands beyond {self.limit} bytes")
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
    reader = _HashingReader(fh, gzipped, max_bytes)
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
        if media not in _LAYER_TYPES:
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
) -> PackedImage:
    """Verify an image's blobs and build an OCI layout in ``dest`` from them.

    Blobs are hardlinked from the store when possible (copied otherwise); all
    checks run on the files in ``dest``, which is what skopeo will read, so a
    blob changed in the store after the check cannot slip through.
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
    for layer in spec.layers:
        with (bdir / layer.hex).open("rb") as fh:
            diff_ids.append(
                check_layer(fh, gzipped=layer.media_type == MEDIA_LAYER_GZIP, max_bytes=max_layer_bytes)
            )
    _check_config(config, diff_ids)
    _write_index(dest, spec.manifest)
    return PackedImage(dest, spec.manifest, spec.config, spec.layers, tuple(diff_ids))


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
