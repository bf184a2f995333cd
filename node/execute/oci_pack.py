"""Packing OCI images: a reproducible layout from a directory or a rootfs tar.

:func:`pack_image` builds an OCI image layout byte-identical for the same
input (sorted entries, mtime 0, uid/gid 0, no user/group names, no
setuid/setgid bits, gzip header mtime 0 and no file name), so the image ID
(the config digest) is a function of the content alone and a job spec can
name it before anyone builds it twice.  ``cpn image pack`` and the
self-test image use it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from node.execute.oci import (
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    Blob,
    ImageError,
    PackedImage,
    json_bytes,
    write_index,
)

__all__ = ["pack_image", "deterministic_layer"]


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
    has no business carrying them and :func:`~node.execute.oci_verify.check_layer` refuses them)."""
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
    config = _write_blob(out, json_bytes(config_doc), MEDIA_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    manifest = _write_blob(out, json_bytes(manifest_doc), MEDIA_MANIFEST)
    write_index(out, manifest)
    return PackedImage(out, manifest, config, tuple(layers), tuple(diff_ids))
