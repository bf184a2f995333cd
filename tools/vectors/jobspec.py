"""Vectors for spec/jobspec.md: job spec payloads (valid and invalid) and chunk roots.

Invalid specs are built by mutating the wire map of a valid one and encoding
it with the raw CBOR encoder, bypassing construction-time validation, so the
bytes are exactly what a hostile or buggy submitter could send.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

from protocol import cbor
from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.envelope import seal
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

from . import NOW, accept, key_from_seed, reject, seed, vector, vector_file

CHUNK = 1 << 12  # small chunks keep the vectors short


def blob(label: str, size: int, media_type: str) -> BlobRef:
    """A BlobRef for deterministic content ``label`` repeated to ``size`` bytes."""
    data = (label.encode() * (size // max(1, len(label)) + 1))[:size]
    return BlobRef(
        digest=digest_of(data),
        size=size,
        chunk_size=CHUNK,
        chunk_root=chunk_root(chunk_hashes(data, CHUNK)),
        media_type=media_type,
    )


def sample_spec(**changes: Any) -> JobSpec:
    """The reference job spec of the vectors (also used by envelope vectors)."""
    spec = JobSpec(
        name="train-resnet",
        image=ImageRef(
            manifest=blob("manifest", 400, OCI_MANIFEST),
            config=blob("config", 300, OCI_CONFIG),
            layers=(blob("layer0", 10000, "application/vnd.oci.image.layer.v1.tar+gzip"),),
        ),
        command=("/bin/sh", "-c"),
        args=("python train.py --epochs 1",),
        env={"EPOCHS": "1", "PYTHONUNBUFFERED": "1"},
        workdir="/work",
        resources=Resources(
            gpu=GpuRequirement(count=2, min_memory_mib=40960, vendor="nvidia", models=("a100", "h100"), min_compute_capability="8.0"),
            cpu_millis=4000,
            memory_mib=16384,
            disk_mib=10240,
        ),
        inputs=(InputRef(blob=blob("dataset", 5000, "application/octet-stream"), path="/data/train.csv"),),
        outputs=("/work/out",),
        timeouts=Timeouts(transfer_s=600, queue_s=300, run_s=3600),
        network="none",
        max_price=2_500_000,
        created_at=NOW,
        nonce=bytes(range(16)),
    )
    return spec.replace(**changes) if changes else spec


def _mutated(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    wire = copy.deepcopy(sample_spec().to_wire())
    mutate(wire)
    return cbor.encode(wire)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(wire: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = wire
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda wire: wire.pop(key)


_A = "a" * 64
_INVALID: list[tuple[str, str, Callable[[dict[str, Any]], None], str, str | None]] = [
    # name, description, mutation, reason, field
    ("missing-field", "the 'network' field is absent", _delete("network"), "missing_field", None),
    ("unknown-field", "an extra top-level field", _set("priority", 1), "unknown_field", None),
    ("name-empty", "empty job name", _set("name", ""), "invalid_field", "name"),
    ("name-slash", "job name with a slash", _set("name", "a/b"), "invalid_field", "name"),
    ("name-wrong-type", "job name as bytes", _set("name", b"x"), "invalid_field", "name"),
    ("workdir-relative", "relative working directory", _set("workdir", "work"), "invalid_field", "workdir"),
    ("workdir-dotdot", "'..' in the working directory", _set("workdir", "/work/../etc"), "invalid_field", "workdir"),
    ("output-relative", "relative output path", _set("outputs", ["out"]), "invalid_field", "outputs[0]"),
    ("output-trailing-slash", "output path not normalised", _set("outputs", ["/work/out/"]), "invalid_field", "outputs[0]"),
    ("output-duplicate", "the same output twice", _set("outputs", ["/o", "/o"]), "invalid_field", "outputs[1]"),
    ("output-root", "collecting / is refused", _set("outputs", ["/"]), "invalid_field", "outputs[0]"),
    ("output-proc", "paths under /proc are reserved", _set("outputs", ["/proc/self"]), "invalid_field", "outputs[0]"),
    ("input-dotdot", "input mount path with '..'", _set("inputs.0.path", "/data/../../etc/passwd"), "invalid_field", "inputs[0].path"),
    ("input-relative", "relative input mount path", _set("inputs.0.path", "data.csv"), "invalid_field", "inputs[0].path"),
    ("env-key-dash", "environment key with '-'", _set("env", {"MY-VAR": "1"}), "invalid_field", "env.MY-VAR"),
    ("env-key-digit", "environment key starting with a digit", _set("env", {"1X": "1"}), "invalid_field", "env.1X"),
    ("env-value-nul", "NUL in an environment value", _set("env", {"X": "a\x00b"}), "invalid_field", "env.X"),
    ("command-empty-program", "empty program name", _set("command", [""]), "invalid_field", "command[0]"),
    ("network-host", "only network 'none' exists in v0.1", _set("network", "host"), "invalid_field", "network"),
    ("max-price-negative", "negative price", _set("max_price", -1), "invalid_field", "max_price"),
    ("created-at-zero", "creation time 0", _set("created_at", 0), "invalid_field", "created_at"),
    ("nonce-short", "nonce of 8 bytes", _set("nonce", bytes(8)), "invalid_field", "nonce"),
    ("nonce-text", "nonce as text", _set("nonce", "0123456789abcdef"), "invalid_field", "nonce"),
    ("cpu-zero", "zero CPU", _set("resources.cpu_millis", 0), "invalid_field", "resources.cpu_millis"),
    ("memory-huge", "memory beyond 16 TiB", _set("resources.memory_mib", 1 << 25), "invalid_field", "resources.memory_mib"),
    ("disk-negative", "negative disk", _set("resources.disk_mib", -5), "invalid_field", "resources.disk_mib"),
    ("gpu-count-zero", "a GPU requirement of zero GPUs", _set("resources.gpu.count", 0), "invalid_field", "resources.gpu.count"),
    ("gpu-count-huge", "65 GPUs", _set("resources.gpu.count", 65), "invalid_field", "resources.gpu.count"),
    ("gpu-vendor-unknown", "vendor outside nvidia/amd/intel", _set("resources.gpu.vendor", "acme"), "invalid_field", "resources.gpu.vendor"),
    ("gpu-models-unsorted", "models must be sorted", _set("resources.gpu.models", ["h100", "a100"]), "invalid_field", "resources.gpu.models"),
    ("gpu-model-not-normalised", "model as NVML reports it", _set("resources.gpu.models", ["NVIDIA H100"]), "invalid_field", "resources.gpu.models[0]"),
    ("gpu-model-wrong-vendor", "an AMD model with vendor nvidia", _set("resources.gpu.models", ["mi300x"]), "invalid_field", "resources.gpu.models[0]"),
    ("gpu-cc-malformed", "compute capability '8'", _set("resources.gpu.min_compute_capability", "8"), "invalid_field", "resources.gpu.min_compute_capability"),
    ("timeout-zero", "run timeout 0", _set("timeouts.run_s", 0), "invalid_field", "timeouts.run_s"),
    ("timeout-huge", "transfer timeout beyond 7 days", _set("timeouts.transfer_s", 604801), "invalid_field", "timeouts.transfer_s"),
    ("digest-uppercase", "digest in upper-case hex", _set("image.config.digest", "sha256:" + _A.upper()), "invalid_field", "image.config.digest"),
    ("digest-sha512", "digest with another algorithm", _set("image.config.digest", "sha512:" + _A), "invalid_field", "image.config.digest"),
    ("chunk-size-small", "chunk size below 4 KiB", _set("image.manifest.chunk_size", 1024), "invalid_field", "image.manifest.chunk_size"),
    ("chunk-size-not-pow2", "chunk size not a power of two", _set("image.manifest.chunk_size", 5000), "invalid_field", "image.manifest.chunk_size"),
    ("chunk-root-malformed", "chunk root not a digest", _set("image.manifest.chunk_root", "abc"), "invalid_field", "image.manifest.chunk_root"),
    ("blob-size-negative", "negative blob size", _set("image.manifest.size", -1), "invalid_field", "image.manifest.size"),
    ("manifest-media-type", "manifest with a layer media type", _set("image.manifest.media_type", "application/vnd.oci.image.layer.v1.tar"), "invalid_field", "image.manifest.media_type"),
    ("gpu-count-text", "count as text", _set("resources.gpu.count", "2"), "invalid_field", "resources.gpu.count"),
    ("outputs-not-array", "outputs as text", _set("outputs", "/work/out"), "invalid_field", "outputs"),
]


def _spec_vectors() -> list[dict[str, Any]]:
    good = sample_spec()
    cpu_only = sample_spec(resources=Resources(gpu=None, cpu_millis=500, memory_mib=256, disk_mib=0), inputs=(), outputs=(), env={}, command=(), args=())
    out = [
        vector(
            "valid-gpu-job",
            "a complete GPU job; the payload is the canonical CBOR of the JobSpec",
            "jobspec.decode",
            {"bytes_hex": good.encode().hex()},
            accept(name=good.name, blobs=[b.digest for b in good.blobs()]),
        ),
        vector(
            "valid-cpu-job",
            "a CPU-only job keeping the image entrypoint (empty command and args)",
            "jobspec.decode",
            {"bytes_hex": cpu_only.encode().hex()},
            accept(name=cpu_only.name, blobs=[b.digest for b in cpu_only.blobs()]),
        ),
    ]
    for name, description, mutate, reason, field in _INVALID:
        expected = reject(reason, field=field) if field else reject(reason)
        out.append(vector(f"invalid-{name}", description, "jobspec.decode", {"bytes_hex": _mutated(mutate).hex()}, expected))
    out.append(
        vector(
            "invalid-non-canonical",
            "a valid spec whose map keys are not in canonical order",
            "jobspec.decode",
            {"bytes_hex": _reordered(good.encode()).hex()},
            reject("non_canonical"),
        )
    )
    return out


def _reordered(data: bytes) -> bytes:
    """Swap the first two top-level entries of an encoded map (still valid CBOR)."""
    import cbor2

    value = cbor2.loads(data)
    keys = list(value)
    keys[0], keys[1] = keys[1], keys[0]
    return cbor2.dumps({k: value[k] for k in keys}, canonical=False)


def _signed_vectors() -> list[dict[str, Any]]:
    submitter = seed("jobspec/submitter")
    signed = seal(sample_spec(), key_from_seed(submitter))
    return [
        vector(
            "signed-jobspec",
            "a job spec sealed by its submitter; the job is identified by sha256 of the envelope",
            "jobspec.open",
            {"envelope_hex": signed.raw.hex(), "now": NOW},
            accept(signer=signed.signer, job_digest_hex=signed.digest.hex(), submitter_seed_hex=submitter.hex()),
        ),
        vector(
            "signed-jobspec-expired",
            "a spec created more than 24 h before now is refused",
            "jobspec.open",
            {"envelope_hex": signed.raw.hex(), "now": NOW + 24 * 3600 + 1},
            reject("expired"),
        ),
        vector(
            "signed-jobspec-from-future",
            "a spec created more than 300 s after now is refused",
            "jobspec.open",
            {"envelope_hex": signed.raw.hex(), "now": NOW - 301},
            reject("from_future"),
        ),
    ]


def _chunk_vectors() -> list[dict[str, Any]]:
    out = []
    for name, data, size in (
        ("empty", b"", 4096),
        ("one-byte", b"x", 4096),
        ("exactly-one-chunk", bytes(4096), 4096),
        ("two-chunks", bytes(range(256)) * 20, 4096),
        ("two-full-chunks", bytes(range(256)) * 32, 4096),
        ("three-chunks", bytes(range(255)) * 40, 4096),
    ):
        hashes = chunk_hashes(data, size)
        out.append(
            vector(
                f"chunk-root-{name}",
                "digest, chunk list (SHA-256 chaining values at chunk boundaries, then the digest) and chunk root (sha256 of the concatenated entries)",
                "blob.chunk_root",
                {"data_hex": data.hex(), "chunk_size": size},
                accept(
                    digest="sha256:" + hashlib.sha256(data).hexdigest(),
                    chunk_hashes_hex=[h.hex() for h in hashes],
                    chunk_root=chunk_root(hashes),
                ),
            )
        )
    return out


def generate() -> dict[str, Any]:
    return vector_file("jobspec", "jobspec.md", 1, _spec_vectors() + _signed_vectors() + _chunk_vectors())
