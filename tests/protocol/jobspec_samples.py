"""A valid job spec for tests (imported by the job spec and envelope tests)."""

from __future__ import annotations

from typing import Any

from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.jobspec import (
    OCI_CONFIG,
    OCI_MANIFEST,
    BlobRef,
    GpuRequirement,
    ImageRef,
    InputRef,
    JobSpec,
    Resources,
    Timeouts,
)

NOW = 1_767_225_600


def blob(data: bytes, media_type: str = "application/octet-stream", chunk_size: int = 4096) -> BlobRef:
    return BlobRef(
        digest=digest_of(data),
        size=len(data),
        chunk_size=chunk_size,
        chunk_root=chunk_root(chunk_hashes(data, chunk_size)),
        media_type=media_type,
    )


def sample_spec(**changes: Any) -> JobSpec:
    spec = JobSpec(
        name="sample",
        image=ImageRef(
            manifest=blob(b"{manifest}", OCI_MANIFEST),
            config=blob(b"{config}", OCI_CONFIG),
            layers=(blob(b"layer" * 2000, "application/vnd.oci.image.layer.v1.tar"),),
        ),
        command=("/bin/echo",),
        args=("hello",),
        env={"A": "1"},
        workdir="/",
        resources=Resources(
            gpu=GpuRequirement(count=1, min_memory_mib=0, vendor="nvidia", models=(), min_compute_capability=None),
            cpu_millis=1000,
            memory_mib=512,
            disk_mib=100,
        ),
        inputs=(InputRef(blob=blob(b"input data"), path="/data/in"),),
        outputs=("/out",),
        timeouts=Timeouts(transfer_s=60, queue_s=60, run_s=60),
        network="none",
        max_price=1000,
        created_at=NOW,
        nonce=bytes(16),
    )
    return spec.replace(**changes) if changes else spec
