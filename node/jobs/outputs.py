"""Writing a verified result's outputs where the submitter asked for them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from node.execute.oci import ImageError
from node.execute.oci_verify import verify_blob_file
from node.transfer.blobstore import BlobStoreError
from protocol.result import Result

__all__ = ["save_outputs"]


def save_outputs(result: Result, blob_path: Callable[[str], Path], dest: Path) -> list[str]:
    """Write a result's outputs and log under ``dest`` (``./results/<job-id>/``)
    after checking each blob's size and sha256 against the signed result.

    Returns the problems found (empty: every output verified, countersign
    with ``accepted=True``).  Paths were validated by the Result itself
    (relative, normalised, no ``..``), and files are written with O_EXCL
    under a fresh directory, so a hostile result cannot write outside ``dest``.
    """
    problems: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    for blob, rel in [(o, o.path) for o in result.outputs] + [(result.log, "log.txt")]:
        try:
            try:
                src = blob_path(blob.digest)
            except (KeyError, OSError, BlobStoreError) as exc:
                raise ImageError("missing_blob", f"{blob.digest} is not in the blob store ({exc})") from None
            verify_blob_file(src, blob.digest, blob.size)
        except ImageError as exc:
            problems.append(f"{rel or 'log'}: {exc.reason}")
            continue
        target = dest / rel
        if not target.resolve().is_relative_to(dest.resolve()):
            problems.append(f"{rel}: outside the results directory")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
    return problems
