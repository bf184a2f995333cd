#!/usr/bin/env python3
"""End-to-end job time: a cold 100 MB image against a warm one, through real daemons.

    .venv/bin/python bench/e2e.py [--size-mib 100] [-n 3] [--json]

Two in-process nodes (real libp2p hosts on 127.0.0.1, real podman in a private
storage under a temp dir): a provider with execution enabled and a submitter.
The job's image is the busybox test image plus one layer holding SIZE MiB of
incompressible bytes.  Each row is one submission, timed by the submitter from
``POST /v1/jobs`` (the job runner's ``submit``) to the milestones of its event
log:

* **agreed**: find skipped (the provider is given), quotes and the co-signed
  agreement;
* **transferred**: the provider holds every blob, pulled from the submitter
  over the transfer service and verified;
* **running**: the image is assembled, verified and loaded into podman, and
  the container started;
* **result**: the run is over and the signed Result has arrived;
* **done**: outputs and log fetched, verified, written; receipt countersigned
  and in the ledger.

*cold*: the provider has neither the blobs nor the image.  *warm*: a new job
(new nonce, same image): the blobs are deduplicated and podman has the image.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def build_image(base: Path, size_mib: int) -> Path:
    from node.execute.oci_pack import pack_image
    from node.execute.selftest_image import busybox_rootfs

    root = base / "rootfs"
    root.mkdir()
    busybox_rootfs(root)
    big = base / "big"
    big.mkdir()
    rng = random.Random(7)
    with (big / "data.bin").open("wb") as f:
        for _ in range(size_mib):
            f.write(rng.randbytes(1 << 20))
    out = base / "image"
    pack_image([root, big], out, cmd=["/bin/sh"], env=["PATH=/bin"])
    return out


def job_file(base: Path, image: Path) -> Path:
    job = base / "job.toml"
    job.write_text(
        f'name = "bench"\nimage = "{image}"\ncommand = ["/bin/sh", "-c"]\n'
        'args = ["wc -c /data.bin > /out/size.txt"]\noutputs = ["/out"]\nmax_price = 1000000\n'
        "[resources]\ncpus = 1\nmemory_mib = 128\ndisk_mib = 64\n"
        "[timeouts]\ntransfer_s = 600\nqueue_s = 60\nrun_s = 120\n"
    )
    return job


async def one(sub: Any, prov: Any, job: Path, results: Path) -> dict[str, float]:
    from node.jobs.jobfile import load_job

    loaded = load_job(job)  # a fresh nonce: a new job each time
    body = {"job_hex": loaded.spec.encode().hex(), "results_dir": str(results),
            "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()},
            "peers": [f"{prov.p2p.listen_addrs[0]}/p2p/{prov.peer_id}"], "retries": 0}
    from node.api.routes.jobs import submit_request

    runner = sub.runner
    t0 = time.perf_counter()
    run = await runner.submit(submit_request(body))
    live = runner.live[run.id]
    marks: dict[str, float] = {"submit": time.perf_counter() - t0}
    seen = 0
    with trio.fail_after(900):
        while True:
            changed = live.changed
            for ev in live.events[seen:]:
                key = {"agreement": "agreed", "result": "result", "receipt": "done"}.get(ev["event"])
                if ev["event"] == "phase" and ev["phase"] == "running":
                    key = "running"
                if ev["event"] == "progress" and ev["done"] == ev["total"]:
                    key = "transferred"
                if key and key not in marks:
                    marks[key] = time.perf_counter() - t0
            seen = len(live.events)
            if live.done.is_set():
                break
            await changed.wait()
    if run.state != "finished":
        raise SystemExit(f"bench: run ended {run.state}: {run.detail}")
    return marks


async def bench(size_mib: int, n: int) -> list[dict[str, Any]]:
    from support.podman import shared_env  # private podman storage, cleaned at exit

    from node.config import config_from_dict
    from node.daemon import run_node

    env = await trio.to_thread.run_sync(shared_env)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cpn-bench-e2e-") as tmp:
        base = Path(tmp)
        image = await trio.to_thread.run_sync(build_image, base, size_mib)
        job = job_file(base, image)
        async with trio.open_nursery() as nursery:
            def cfg(name: str, execution: bool) -> Any:
                table: dict[str, Any] = {"node": {"data_dir": str(base / name), "listen": ["/ip4/127.0.0.1/tcp/0"]}}
                if execution:
                    table["execution"] = {"enabled": True, "podman_root": str(env.settings.root),
                                          "podman_runroot": str(env.settings.runroot)}
                return config_from_dict(table)

            prov = await nursery.start(lambda task_status: run_node(cfg("prov", True), task_status=task_status))
            sub = await nursery.start(lambda task_status: run_node(cfg("sub", False), task_status=task_status))
            for i in range(n):
                marks = await one(sub, prov, job, base / "results")
                rows.append({"kind": "cold" if i == 0 else "warm", "size_mib": size_mib,
                             **{k: round(v, 3) for k, v in marks.items()}})
            nursery.cancel_scope.cancel()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=100)
    p.add_argument("-n", type=int, default=3, help="submissions (the first is cold)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    rows = trio.run(bench, args.size_mib, max(2, args.n))
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    cols = ["kind", "size_mib", "agreed", "transferred", "running", "result", "done"]
    print("  ".join(f"{c:>11}" for c in cols) + "   (seconds from submit)")
    for r in rows:
        print("  ".join(f"{r.get(c, ''):>11}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
