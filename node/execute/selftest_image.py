"""The busybox self-test image, built from Debian's busybox-static.

The daemon's start-up self-test and the podman tests need an image without a
registry; this builds one from ``/bin/busybox`` with :func:`node.execute.oci_pack.pack_image`,
so the same busybox gives the same image ID everywhere (tools/build-test-image
is the command-line face of the same function).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from node.execute.oci import ImageError, PackedImage, read_layout
from node.execute.oci_pack import pack_image

__all__ = ["BUSYBOX", "busybox_rootfs", "build_busybox_image"]

BUSYBOX = Path("/bin/busybox")


def busybox_rootfs(root: Path, busybox: Path = BUSYBOX) -> None:
    """/bin/busybox, one relative symlink per applet, /etc/passwd, mount points."""
    if not busybox.is_file():
        raise ImageError("missing_blob", f"{busybox} missing (apt-get install busybox-static)")
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "out"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    listing = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    for name in sorted(set(listing.stdout.split())):
        if name != "busybox" and "/" not in name:
            (root / "bin" / name).symlink_to("busybox")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


def build_busybox_image(out: Path, busybox: Path = BUSYBOX) -> PackedImage:
    """Build (or reuse, if ``out`` already holds a layout) the busybox image."""
    if (out / "index.json").exists():
        return read_layout(out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        busybox_rootfs(root, busybox)
        staging = Path(tmp) / "layout"
        image = pack_image(root, staging, cmd=["/bin/sh"], env=["PATH=/bin"], workdir="/")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    return PackedImage(out, image.manifest, image.config, image.layers, image.diff_ids)
