#!/usr/bin/env python3
"""An honest job's end-to-end time alone, and while an attacker floods the network.

    .venv/bin/python bench/floods.py [-n 3] [--json]

In-process daemons (real libp2p on 127.0.0.1, real podman in a private storage):
an honest provider with execution and an honest submitter.  Each row times the
honest job (busybox, a few lines of output) from ``POST /v1/jobs`` to its
co-signed receipt, the median of ``n`` submissions, first with no attacker and
then while one runs **in its own process** (so it does not share the daemons'
event loop):

* **negotiation flood**: 4 identities, each running 50 negotiations at once
  against the provider in a loop (quote, then cancel);
* **quote-and-abandon**: 4 identities, 20 loops each: quote, then walk away
  without accept or cancel;
* **sybil provider records**: 3 DHT peers placed closest to the job's
  identifier answer every provider lookup with 200 forged provider records
  (two thirds at a TCP tarpit, the rest at a closed port) ahead of the honest
  provider; here the honest job *finds* its provider (both rows);
* **log flood**: a malicious provider agrees to another job of the same
  submitter and floods it with log lines (256 lines of 400 bytes per update)
  while the honest job runs.

The table shows the flood, the honest time alone, under the flood, and the
ratio.  Attackers: tests/support/adversary.py.
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
from typing import Any

import trio
import trio.lowlevel

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FLOODS = ("sybil", "negotiation", "abandon", "logflood")
SETTLE_S = 3.0
TITLES = {"negotiation": "negotiation flood (4 x 50 at once)", "abandon": "quote-and-abandon (4 x 20 loops)",
          "sybil": "sybil provider records (3 x 200)", "logflood": "log flood (1 job, 256 lines/update)"}


# --------------------------------------------------------------------------- the attacker process


async def attack(kind: str, target: str, others: list[str]) -> None:
    """Run one attacker until killed; print one JSON line once it is ready."""
    from support.adversary import bare_peer

    if kind in ("negotiation", "abandon"):
        async with bare_peer() as (a, ka), bare_peer() as (b, kb), bare_peer() as (c, kc), \
                bare_peer() as (d, kd):
            print(json.dumps({"ready": True}), flush=True)
            async with trio.open_nursery() as n:
                for p2p, key in ((a, ka), (b, kb), (c, kc), (d, kd)):
                    for _ in range(50 if kind == "negotiation" else 20):
                        n.start_soon(_negotiate_loop, p2p, key, target, kind == "abandon")
    elif kind == "sybil":
        await _sybils(target, others)
    else:
        await _log_flooder()


async def _negotiate_loop(p2p: Any, key: Any, target: str, abandon: bool) -> None:
    from support.adversary import signed_job

    from node.addrs import peer_and_addrs
    from node.clock import unix_now
    from node.negotiate.client import cancel_quote, request_quote
    from protocol.negotiation import CancelReason

    peer, addrs = peer_and_addrs(target)
    while True:
        s = await request_quote(p2p, key, peer, signed_job(key), clock=unix_now, addrs=addrs)
        if s.quote is not None and s.stream is not None:
            if abandon:
                await s.stream.close()
            else:
                await cancel_quote(s, CancelReason.USER, clock=unix_now)
        await trio.lowlevel.checkpoint()


async def _sybils(honest: str, everyone: list[str]) -> None:
    from support.adversary import (
        answer_providers_with,
        bare_peer,
        closed_port,
        closest_key,
        fake_providers,
        tarpit,
    )

    from node.addrs import peer_and_addrs
    from protocol.identifiers import lookup_ids

    ids = lookup_ids(_job_resources())
    async with trio.open_nursery() as n:
        slow = await n.start(tarpit)
        fakes = fake_providers(200, [f"/ip4/127.0.0.1/tcp/{slow}"] * 2 + [f"/ip4/127.0.0.1/tcp/{closed_port()}"])
        peer, addrs = peer_and_addrs(honest)
        real = [(peer, [a.split("/p2p/")[0] for a in addrs])]
        async with bare_peer(closest_key(ids, everyone)) as (s1, _), \
                bare_peer(closest_key(ids, everyone)) as (s2, _), \
                bare_peer(closest_key(ids, everyone)) as (s3, _):
            for s in (s1, s2, s3):
                answer_providers_with(s, fakes + real)
            print(json.dumps({"ready": True, "addrs": [s.listen_addrs[0] for s in (s1, s2, s3)]}), flush=True)
            await trio.sleep_forever()


async def _log_flooder() -> None:
    from support.adversary import flood_logs
    from support.net import container_proven

    from node.config import config_from_dict
    from node.daemon import run_node

    with tempfile.TemporaryDirectory(prefix="cpn-bench-flood-") as tmp:
        cfg = config_from_dict({"node": {"data_dir": tmp, "listen": ["/ip4/127.0.0.1/tcp/0"]}})
        async with trio.open_nursery() as n:
            node = await n.start(lambda task_status: run_node(cfg, prepare=container_proven,
                                                              task_status=task_status))
            flood_logs(node.p2p, node.key)
            print(json.dumps({"ready": True, "addrs": [node.p2p.listen_addrs[0]]}), flush=True)
            await trio.sleep_forever()


def _job_resources() -> Any:
    from protocol.jobspec import Resources

    return Resources(gpu=None, cpu_millis=500, memory_mib=64, disk_mib=16)


# --------------------------------------------------------------------------- the honest side


def hello_job(d: Path) -> Path:
    from node.execute.selftest_image import build_busybox_image

    build_busybox_image(d / "image")
    job = d / "job.toml"
    job.write_text('name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\n'
                   'args = ["echo start; echo hello > /out/greeting.txt; echo done"]\noutputs = ["/out"]\n'
                   "max_price = 100000\n[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
                   "[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = 60\n")
    return job


async def one(sub: Any, job: Path, results: Path, peers: list[str]) -> float | None:
    """Seconds from submit to the receipt of one honest job; None if it did not finish."""
    from node.api.routes.jobs import submit_request
    from node.jobs.jobfile import load_job

    loaded = load_job(job)  # a fresh nonce: a new job each time
    body = {"job_hex": loaded.spec.encode().hex(), "results_dir": str(results), "timeout": 5.0,
            "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()}, "retries": 0, "providers": 1}
    if peers:
        body["peers"] = peers
    t0 = time.perf_counter()
    run = await sub.runner.submit(submit_request(body))
    with trio.fail_after(300):
        await sub.runner.live[run.id].done.wait()
    if run.state != "finished":
        print(f"bench: an honest run ended {run.state}: {run.detail}", file=sys.stderr)
        return None
    return time.perf_counter() - t0


async def median(sub: Any, job: Path, results: Path, peers: list[str], n: int) -> tuple[float, int]:
    """Median seconds of the honest jobs that finished, and how many did not."""
    times = [await one(sub, job, results, peers) for _ in range(n)]
    done = [t for t in times if t is not None]
    return (statistics.median(done) if done else float("nan")), len(times) - len(done)


async def start_attacker(kind: str, target: str, others: list[str]) -> tuple[trio.Process, dict[str, Any]]:
    cmd = [sys.executable, __file__, "--attack", kind, "--target", target, "--others", ",".join(others)]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(60):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise SystemExit(f"bench: the {kind} attacker exited")
            buf += chunk
    return proc, json.loads(buf.split(b"\n")[0])


async def bench(n: int) -> list[dict[str, Any]]:
    from support.net import network
    from support.podman import shared_env

    env = await trio.to_thread.run_sync(shared_env)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cpn-bench-floods-") as tmp:
        base = Path(tmp)
        job = await trio.to_thread.run_sync(hello_job, base / "job")
        async with network(base, env) as net:
            prov = await net.start("prov", execution=True)
            sub = await net.start("sub", discovery={"enabled": False})
            direct = [prov.p2p.listen_addrs[0]]
            await one(sub, job, base / "r", direct)  # warm: image loaded, connections open
            for kind in FLOODS:
                peers = [] if kind == "sybil" else direct
                alone, _ = await median(sub, job, base / "r", peers, n)
                everyone = [x.peer_id for x in net.nodes.values()]
                proc, info = await start_attacker(kind, prov.p2p.listen_addrs[0], everyone)
                try:
                    for addr in info.get("addrs", []) if kind == "sybil" else []:
                        await sub.p2p.connect_multiaddr(addr)
                    flooding = None
                    if kind == "logflood":
                        flooding = await _start_flooded_job(sub, job, base, info["addrs"])
                    await trio.sleep(1.0)  # let the attack ramp up
                    under, failed = await median(sub, job, base / "r", peers, n)
                    if flooding is not None:
                        await sub.runner.cancel(flooding)
                finally:
                    proc.kill()
                    await proc.wait()
                await trio.sleep(SETTLE_S)  # quotes lapse, the provider's advert shows its capacity again
                rows.append({"flood": kind, "title": TITLES[kind], "alone_s": round(alone, 3),
                             "under_flood_s": round(under, 3), "ratio": round(under / alone, 2), "n": n,
                             "failed_under_flood": failed})
    return rows


async def _start_flooded_job(sub: Any, job: Path, base: Path, addrs: list[str]) -> Any:
    from node.api.routes.jobs import submit_request
    from node.jobs.jobfile import load_job

    loaded = load_job(job)
    run = await sub.runner.submit(submit_request({
        "job_hex": loaded.spec.encode().hex(), "results_dir": str(base / "flooded"), "peers": addrs,
        "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()}, "retries": 0}))
    await sub.runner.wait_negotiated(run)
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3, help="honest submissions per measurement (median)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--attack", choices=FLOODS, help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--others", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    if args.attack:
        trio.run(attack, args.attack, args.target, [o for o in args.others.split(",") if o])
        return 0
    rows = trio.run(bench, max(1, args.n))
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    print(f"{'flood':<40} {'honest alone (s)':>17} {'under flood (s)':>16} {'ratio':>6} {'failed':>7}")
    for r in rows:
        print(f"{r['title']:<40} {r['alone_s']:>17} {r['under_flood_s']:>16} {r['ratio']:>6} "
              f"{r['failed_under_flood']:>4}/{r['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
