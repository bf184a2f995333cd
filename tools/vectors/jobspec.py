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


def _mutated(mutate: Callable[[dict[str, Any]], Any]) -> bytes:
    wire = copy.deepcopy(sample_spec().to_wire())
    mutate(wire)
    return cbor.encode(getattr(mutate, "replacement", wire))


def _replaced_by(value: Any) -> Callable[[dict[str, Any]], None]:
    """Not a mutation: the payload is ``value`` instead of the spec's map."""

    def mutate(wire: dict[str, Any]) -> None:
        pass

    mutate.replacement = value  # type: ignore[attr-defined]
    return mutate


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


def _multi(*mutations: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(wire: dict[str, Any]) -> None:
        for m in mutations:
            m(wire)

    return mutate


def _set_key(key: Any, value: Any) -> Callable[[dict[Any, Any]], None]:
    def mutate(wire: dict[Any, Any]) -> None:
        wire[key] = value

    return mutate


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
    # ---- field paths of every kind of rule
    ("name-trailing-newline", "a final newline is not part of any pattern", _set("name", "train\n"), "invalid_field", "name"),
    ("digest-trailing-newline", "a digest followed by a newline", _set("image.config.digest", "sha256:" + _A + "\n"),
     "invalid_field", "image.config.digest"),
    ("env-key-trailing-newline", "an environment key followed by a newline", _set("env", {"X\n": "1"}), "invalid_field", "env.X\n"),
    ("layer-media-type", "a layer with a config media type", _set("image.layers.0.media_type", OCI_CONFIG),
     "invalid_field", "image.layers[0].media_type"),
    ("layer-digest", "a layer digest that is not sha256", _set("image.layers.0.digest", "md5:abc"),
     "invalid_field", "image.layers[0].digest"),
    ("input-blob-digest", "an input blob digest in upper case", _set("inputs.0.blob.digest", "sha256:" + _A.upper()),
     "invalid_field", "inputs[0].blob.digest"),
    ("input-blob-media-type", "an input blob media type without a subtype", _set("inputs.0.blob.media_type", "text"),
     "invalid_field", "inputs[0].blob.media_type"),
    ("empty-blob-wrong-root", "a blob of size 0 must have digest and root sha256('')",
     _set("image.manifest.size", 0), "invalid_field", "image.manifest.chunk_root"),
    ("gpu-model-unknown-no-vendor", "a model of no known vendor without an explicit vendor",
     _multi(_set("resources.gpu.vendor", None), _set("resources.gpu.models", ["a100", "zz9"])), "invalid_field",
     "resources.gpu.models[1]"),
    ("gpu-cc-amd", "a compute capability with an AMD model", _multi(_set("resources.gpu.vendor", None),
     _set("resources.gpu.models", ["mi300x"])), "invalid_field", "resources.gpu.min_compute_capability"),
    ("gpu-models-duplicate", "the same model twice", _set("resources.gpu.models", ["h100", "h100"]),
     "invalid_field", "resources.gpu.models"),
    ("gpu-models-too-many", "17 models", _set("resources.gpu.models", [f"m{i:02d}" for i in range(17)]),
     "invalid_field", "resources.gpu.models"),
    ("gpu-not-a-map", "the GPU requirement as a list", _set("resources.gpu", [2]), "invalid_field", "resources.gpu"),
    ("gpu-memory-over", "more than 4 TiB per GPU", _set("resources.gpu.min_memory_mib", (1 << 22) + 1),
     "invalid_field", "resources.gpu.min_memory_mib"),
    ("command-too-many", "257 entries in command and args together", _set("command", ["/bin/true"] * 256),
     "invalid_field", "command"),
    ("arg-too-long", "an argument of 4097 characters", _set("args", ["x" * 4097]), "invalid_field", "args[0]"),
    ("env-too-many", "257 environment variables", _set("env", {f"V{i}": "" for i in range(257)}), "invalid_field", "env"),
    ("inputs-duplicate-path", "two inputs mounted at the same path",
     lambda w: w["inputs"].append(copy.deepcopy(w["inputs"][0])), "invalid_field", "inputs[1].path"),
    ("output-is-input", "an output path equal to an input path", _set("outputs", ["/data/train.csv"]),
     "invalid_field", "outputs[0]"),
    ("outputs-too-many", "65 outputs", _set("outputs", [f"/o/{i}" for i in range(65)]), "invalid_field", "outputs"),
    ("workdir-dev", "a working directory under /dev", _set("workdir", "/dev/shm"), "invalid_field", "workdir"),
    ("path-too-long", "a container path of 1025 characters", _set("workdir", "/" + "a" * 1024), "invalid_field", "workdir"),
    ("nonce-null", "a required field given as null", _set("nonce", None), "invalid_field", "nonce"),
    ("created-at-over", "created_at beyond 2^40", _set("created_at", (1 << 40) + 1), "invalid_field", "created_at"),
    ("max-price-over", "max_price beyond 2^63-1", _set("max_price", 1 << 63), "invalid_field", "max_price"),
    ("network-null", "network as null", _set("network", None), "invalid_field", "network"),
    ("not-a-map", "the payload is an array", _replaced_by([1, 2]), "invalid_field", "JobSpec"),
    # ---- decoding order (encoding.md section 2)
    ("unknown-and-missing", "an unknown field and a missing one: unknown_field first",
     _multi(_delete("nonce"), _set("priority", 1)), "unknown_field", None),
    ("nested-missing-before-outer-rule", "resources lacks disk_mib and the name is bad: the nested key set comes first",
     _multi(_set("name", "a/b"), lambda w: w["resources"].pop("disk_mib")), "missing_field", None),
    ("field-type-before-later-missing", "the name is an integer and resources lacks disk_mib: name comes first",
     _multi(_set("name", 1), lambda w: w["resources"].pop("disk_mib")), "invalid_field", "name"),
    ("nested-rule-before-outer-rule", "a bad GPU count and a bad name: the nested rule comes first",
     _multi(_set("name", "a/b"), _set("resources.gpu.count", 0)), "invalid_field", "resources.gpu.count"),
    ("integer-key", "an integer key in the job spec map", _set_key(1, 0), "unknown_field", None),
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
    key = key_from_seed(submitter)
    signed = seal(sample_spec(), key)
    ok = accept(signer=signed.signer, job_digest_hex=signed.digest.hex())
    other = seal(sample_spec(), key_from_seed(seed("jobspec/other")))

    def opened(name: str, description: str, raw: bytes, now: int, expected: dict[str, Any]) -> dict[str, Any]:
        return vector(name, description, "jobspec.open",
                      {"envelope_hex": raw.hex(), "now": now, "submitter_seed_hex": submitter.hex()}, expected)

    bad_spec = sample_spec().to_wire()
    bad_spec["timeouts"]["run_s"] = 0
    invalid = _sealed_payload(key, cbor.encode(bad_spec))
    return [
        opened("signed-jobspec", "a job spec sealed by its submitter; the job is identified by sha256 of the envelope",
               signed.raw, NOW, ok),
        opened("signed-jobspec-oldest", "created exactly 86400 s before now: still fresh", signed.raw, NOW + 86400, ok),
        opened("signed-jobspec-expired", "created 86401 s before now: expired", signed.raw, NOW + 86401, reject("expired")),
        opened("signed-jobspec-newest", "created exactly 300 s after now: tolerated clock skew", signed.raw, NOW - 300, ok),
        opened("signed-jobspec-from-future", "created 301 s after now", signed.raw, NOW - 301, reject("from_future")),
        opened("signed-jobspec-other-signer", "signed by another key: the signer is whoever signed (checked by the caller)",
               other.raw, NOW, accept(signer=other.signer, job_digest_hex=other.digest.hex())),
        opened("signed-jobspec-invalid-before-fresh", "an invalid spec that is also expired: the payload is checked first",
               invalid, NOW + 86401, reject("invalid_field", field="timeouts.run_s")),
        opened("signed-jobspec-not-a-jobspec", "an envelope of another type (a Tombstone, tag 17)",
               _sealed_payload(key, cbor.encode({"peer_id": signed.signer, "seq": 1, "issued_at": NOW}), tag=17,
                               domain="cpn/discovery/tombstone"), NOW, reject("unexpected_type")),
    ]


def _sealed_payload(key: Any, payload: bytes, *, tag: int = 1, domain: str = "cpn/jobspec") -> bytes:
    """An envelope around arbitrary payload bytes (seal() would refuse an invalid spec)."""
    from protocol.envelope import public_key_proto_of, signing_bytes

    return cbor.encode({"key": public_key_proto_of(key), "payload": payload,
                        "sig": key.sign(signing_bytes(domain, tag, payload)), "type": tag})


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
    return vector_file("jobspec", "jobspec.md", 3, _spec_vectors() + _signed_vectors() + _chunk_vectors())
