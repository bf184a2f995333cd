"""A result's outputs on the submitter's side: checked, fetched, written where asked.

:func:`check_output_sizes` refuses a result whose outputs are larger than the
job's ``disk_mib`` (or whose log is larger than a provider keeps) *before*
anything is fetched: a malicious provider must not be able to fill the
submitter's disk by naming huge outputs (issue 12).  :func:`fetch_outputs`
does that check and then fetches every output and the log from the provider;
:func:`save_outputs` writes the verified ones under the results directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

from node.execute.container import MAX_LINE_BYTES
from node.execute.oci import ImageError
from node.execute.oci_verify import verify_blob_file
from node.transfer.blobstore import BlobStoreError
from node.transfer.blobtypes import BlobLike, BlobMeta
from node.transfer.fetch import TransferFailed
from protocol.result import Result

__all__ = ["save_outputs", "place_outputs", "check_output_sizes", "fetch_outputs", "MAX_LOG_BYTES"]

#: The largest log a provider returns: its LogStream keeps 16 MiB, a line cut
#: at the limit may add a newline, then the truncation marker.
MAX_LOG_BYTES = (16 << 20) + MAX_LINE_BYTES + 64


class _Fetcher(Protocol):
    async def fetch(self, blob: BlobLike, sources: list[str]) -> BlobMeta: ...


def check_output_sizes(result: Result, *, disk_mib: int) -> list[str]:
    """Why a result's claimed sizes cannot be accepted (empty: they can): its
    outputs together larger than the job's ``disk_mib``, or a log larger than
    MAX_LOG_BYTES.  Pure: it reads only the signed result."""
    problems = []
    total, limit = sum(o.size for o in result.outputs), disk_mib << 20
    if total > limit:
        problems.append(f"outputs: {total} bytes claimed, more than the job's disk_mib ({limit} bytes);"
                        " nothing fetched")
    if result.log.size > MAX_LOG_BYTES:
        problems.append(f"log: {result.log.size} bytes claimed, more than a log can hold ({MAX_LOG_BYTES});"
                        " nothing fetched")
    return problems


async def fetch_outputs(transfer: _Fetcher, result: Result, *, provider: str, disk_mib: int,
                        timeout_s: float) -> list[str]:
    """Check the sizes (:func:`check_output_sizes`), then fetch every output and
    the log from ``provider`` (each within ``timeout_s``).  Returns the problems;
    with a size problem nothing is fetched at all."""
    problems = check_output_sizes(result, disk_mib=disk_mib)
    if problems:
        return problems
    for blob in (*result.outputs, result.log):
        try:
            with trio.fail_after(timeout_s):
                await transfer.fetch(blob, [provider])
        except (TransferFailed, BlobStoreError, trio.TooSlowError) as exc:
            problems.append(f"{blob.path or 'log'}: not delivered as {blob.digest}: {exc}")
    return problems


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
