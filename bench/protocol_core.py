#!/usr/bin/env python3
"""Throughput of the sans-IO foundation: CBOR, job specs, envelopes, identifiers.

    .venv/bin/python bench/protocol_core.py [--json] [--seconds S]

Prints operations per second (single core) for each operation.  A benchmark,
not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "protocol"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from jobspec_samples import sample_spec  # noqa: E402

from protocol import cbor  # noqa: E402
from protocol.envelope import open_envelope, seal  # noqa: E402
from protocol.identifiers import advertised_ids, dht_key, lookup_ids, normalise_gpu_model  # noqa: E402
from protocol.jobspec import JobSpec  # noqa: E402
from protocol.resources import GpuInfo, ResourceSet  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    spec = sample_spec()
    raw = spec.encode()
    wire = cbor.decode(raw)
    signed = seal(spec, key)
    gpus = tuple(
        GpuInfo(vendor="nvidia", model="h100", name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{i}",
                memory_mib=81559, compute_capability="9.0", mig=False)
        for i in range(8)
    )  # fmt: skip
    node = ResourceSet(cpu_cores=96, cpu_model="x", memory_mib=1 << 20, disk_mib=1 << 20, gpus=gpus)
    ops: list[tuple[str, Callable[[], object]]] = [
        (f"cbor.encode job spec map ({len(raw)} B)", lambda: cbor.encode(wire)),
        (f"cbor.decode job spec ({len(raw)} B)", lambda: cbor.decode(raw)),
        ("JobSpec.decode (decode + validate)", lambda: JobSpec.decode(raw)),
        ("seal JobSpec (encode + Ed25519 sign)", lambda: seal(spec, key)),
        (f"open_envelope JobSpec ({len(signed.raw)} B)", lambda: open_envelope(signed.raw, expected=JobSpec)),
        ("normalise_gpu_model", lambda: normalise_gpu_model("NVIDIA H100 80GB HBM3")),
        ("advertised_ids (8x H100 node)", lambda: advertised_ids(node)),
        ("lookup_ids", lambda: lookup_ids(spec.resources)),
        ("dht_key", lambda: dht_key("cpn:gpu/nvidia/h100/x8")),
    ]
    results = [{"operation": name, "ops_per_s": round(rate(fn, args.seconds))} for name, fn in ops]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["operation"]) for r in results)  # type: ignore[arg-type]
        print(f"{'operation':<{width}}  {'ops/s':>10}")
        for r in results:
            print(f"{r['operation']:<{width}}  {r['ops_per_s']:>10,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
