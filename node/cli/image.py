"""``cpn image pack``: build a reproducible OCI image layout without a registry."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def _pack(args: argparse.Namespace) -> int:
    import json

    from node.cli import CliError
    from node.errors import ExitCode
    from node.execute.oci import ImageError
    from node.execute.oci_pack import pack_image

    out = Path(args.output) if args.output else Path(Path(args.src[0]).name + ".oci")
    for env in args.env:
        if "=" not in env:
            raise CliError(f"--env {env!r}: expected KEY=VALUE", ExitCode.BAD_INPUT)
    cmd = shlex.split(args.cmd) if args.cmd else []
    entrypoint = shlex.split(args.entrypoint) if args.entrypoint else []
    try:
        image = pack_image(
            [Path(s) for s in args.src], out, cmd=cmd, entrypoint=entrypoint,
            env=args.env, workdir=args.workdir,
        )
    except ImageError as exc:
        raise CliError(str(exc), ExitCode.BAD_INPUT) from None
    except OSError as exc:
        raise CliError(f"cannot pack {args.src}: {exc}", ExitCode.BAD_INPUT) from None
    if args.json:
        print(json.dumps({"image_id": image.image_id, "manifest": image.manifest.digest, "layout": str(out)}))
        return 0
    print(f"image {image.image_id}")
    print(f"manifest {image.manifest.digest}")
    print(f"layout {out}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("image", help="build OCI images without a registry")
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    pack = sub.add_parser(
        "pack",
        help="pack directories or rootfs tars into a reproducible OCI layout",
        description="Each SRC (a directory or a tar) becomes one layer, in order. Entries are "
        "sorted, mtimes 0, owners root, setuid bits dropped: the same input gives the same image ID.",
    )
    pack.add_argument("src", nargs="+", help="directory or rootfs tar (one layer each)")
    pack.add_argument("--cmd", help="default command, shell-quoted (e.g. \"/bin/sh -c 'echo hi'\")")
    pack.add_argument("--entrypoint", help="entrypoint, shell-quoted")
    pack.add_argument("--env", action="append", default=[], metavar="K=V", help="environment (repeatable)")
    pack.add_argument("--workdir", default="/", help="working directory (default /)")
    pack.add_argument("-o", "--output", help="output OCI layout directory (default SRC.oci)")
    pack.set_defaults(func=_pack)
