#!/usr/bin/env python3
"""Dispatch overhead: an agreed job with a cached image, up to its container
running, against a bare ``podman run`` of the same image, in the same run.

    .venv/bin/python bench/dispatch.py [-n 15] [--json]

"Running" is the moment the container's first output line arrives (the
command is ``echo ready``), measured the same way for both:

* **bare**: ``podman run --rm --pull never --ulimit ... IMAGE sh -c 'echo ready'``
  (the ulimits are needed at all on these machines), podman's default network;
* **bare_network_none**: the same with ``--network none`` (no network setup,
  the faster one: the ratio is taken against whichever bare variant is faster);
* **cpn**: :meth:`node.execute.executor.Executor.execute` from the call to the first
  log line: run record, image check (cached), limits, mounts, CDI, labels,
  cgroup parent, then the same ``podman run`` with every default
  (``--network none``, ``--read-only``, ``--cap-drop all``, ...).
* **cpn-total**: the whole execute(), including output collection, metering
  and signing the Result, for reference.

Runs alternate (bare, cpn, bare, cpn, ...) so drift on a shared machine hits
both alike.  Podman uses private storage in a temp dir.  Target: cpn <= 1.5x bare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.podman import job_for  # noqa: E402

from node.execute.container import ContainerRun  # noqa: E402
from node.execute.executor import Executor  # noqa: E402
from node.execute.oci import load_image  # noqa: E402
from node.execute.podman import Podman, PodmanSettings  # noqa: E402
from node.execute.selftest import choose_runtime, self_test  # noqa: E402
from node.execute.selftest_image import build_busybox_image  # noqa: E402
from protocol.envelope import public_key_proto_of  # noqa: E402
from protocol.identity import peer_id_from_proto_key  # noqa: E402


async def bare_once(podman: Podman, image_id: str, *extra: str) -> float:
    argv = podman.cmd("run", "--rm", "--pull", "never", "--ulimit", "nofile=1024:1024",
                      "--ulimit", "nproc=4096:4096", *extra, image_id, "/bin/sh", "-c", "echo ready")
    t0 = time.perf_counter()
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = await proc.stdout.receive_some(64)
    t1 = time.perf_counter()
    await proc.wait()
    if not first.startswith(b"ready"):
        raise SystemExit(f"bare podman run failed: {first!r}")
    return t1 - t0


async def cpn_once(executor: Executor, job: object, blob_path: object, n: int) -> tuple[float, float]:
    running_at: list[float] = []
    runs: list[ContainerRun] = []
    got_run = trio.Event()

    def on_running(run: ContainerRun) -> None:
        runs.append(run)
        got_run.set()

    async def watch() -> None:
        await got_run.wait()
        await runs[0].running.wait()
        running_at.append(time.perf_counter())

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        ex = await executor.execute(
            job, agreement_id=n.to_bytes(16, "big"), job_digest=bytes(32),
            submitter=executor.peer_id, blob_path=blob_path, on_running=on_running,  # type: ignore[arg-type]
        )
    t_end = time.perf_counter()
    if ex.result.message.exit_code != 0 or ex.log_path.read_bytes() != b"ready\n":
        raise SystemExit(f"cpn run failed: {ex.result.message}")
    return running_at[0] - t0, t_end - t0


async def main_async(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="cpn-bench-") as tmp:
        base = Path(tmp)
        settings = PodmanSettings(root=base / "root", runroot=base / "runroot",
                                  runtime=choose_runtime()[0], node_label="bench")
        podman = Podman(settings)
        image = build_busybox_image(base / "busybox.oci")
        await load_image(image, podman_args=podman.global_args(), root=settings.root,
                         runroot=settings.runroot)
        key = Ed25519PrivateKey.from_private_bytes(bytes(32))
        peer = peer_id_from_proto_key(public_key_proto_of(key))
        executor = Executor(settings, base / "runs", key, peer)
        executor.capability = await self_test(settings, image.image_id, base)
        if not executor.capability.ok:
            raise SystemExit(executor.capability.reason)
        job = job_for(image, ("/bin/sh", "-c", "echo ready"))
        blobs = {f"sha256:{p.name}": p for p in (image.layout / "blobs" / "sha256").iterdir()}
        # warm-up (page cache, first image check)
        await bare_once(podman, image.image_id)
        await cpn_once(executor, job, blobs.__getitem__, 10_000)
        bare, bare_nonet, cpn, total = [], [], [], []
        for i in range(n):
            bare.append(await bare_once(podman, image.image_id))
            bare_nonet.append(await bare_once(podman, image.image_id, "--network", "none"))
            c, t = await cpn_once(executor, job, blobs.__getitem__, i)
            cpn.append(c)
            total.append(t)
        try:
            await trio.run_process(podman.cmd("system", "reset", "--force"), capture_stdout=True,
                                   capture_stderr=True, check=False)
        finally:
            await trio.run_process(["umount", "-R", str(settings.root / "overlay")],
                                   capture_stdout=True, capture_stderr=True, check=False)

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs) * 1000, 1),
                "p90_ms": round(xs[int(0.9 * (len(xs) - 1))] * 1000, 1),
                "min_ms": round(xs[0] * 1000, 1)}
    result: dict[str, object] = {
        "runs": n, "runtime": settings.runtime,
        "bare": stats(bare), "bare_network_none": stats(bare_nonet), "cpn": stats(cpn),
        "cpn_total": stats(total),
    }
    # The honest ratio is against the faster bare variant (no network setup).
    fastest_bare = min(statistics.median(bare), statistics.median(bare_nonet))
    result["ratio_median"] = round(statistics.median(cpn) / fastest_bare, 2)
    result["target_ratio"] = 1.5
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each (default 15)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = trio.run(main_async, args.n)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Dispatch to running container, busybox `echo ready`, {args.n} runs each, runtime {result['runtime']}")
    print(f"{'path':<18} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}")
    for name in ("bare", "bare_network_none", "cpn", "cpn_total"):
        s = result[name]
        assert isinstance(s, dict)
        print(f"{name:<18} {s['median_ms']:>10} {s['p90_ms']:>8} {s['min_ms']:>8}")
    print(f"ratio cpn / faster bare (median): {result['ratio_median']}  (target <= {result['target_ratio']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
