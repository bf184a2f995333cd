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

__all__ = ["save_outputs", "place_outputs"]


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


def place_outputs(results_dir: Path, run_id: str, accepted: bool, result: bytes, receipt: bytes) -> Path | None:
    """Move the verified outputs from ``.<run id>.partial`` to ``<run id>/`` with the
    signed result and receipt beside them (or drop them when not accepted)."""
    dest = results_dir / run_id
    partial = results_dir / f".{run_id}.partial"
    if not accepted:
        shutil.rmtree(partial, ignore_errors=True)
        return None
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    (dest / "receipt.cbor").write_bytes(receipt)
    (dest / "result.cbor").write_bytes(result)
    return dest
