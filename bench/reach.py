#!/usr/bin/env python3
"""Reach: submitter x provider in public / EIM-NAT / symmetric-NAT / firewalled networks.

    .venv/bin/python bench/reach.py [--json] [--cells pub:eim,sym:sym] [--size-mib 50]

Needs root, nftables and podman (the providers run the job).  Builds the NAT
testbed (``tools/testnet up --nat``, default topology, docs/testbed.md) with
real daemons: pub-0 is the bootstrap node and a relay; the submitters are
pub-1, eim1-0, sym1-0, fw1-0 and the providers (execution on) pub-2, eim2-0,
sym2-0, fw2-0, so "EIM x EIM" crosses two different NATs.  For each cell:

* **find**: the submitter's ``POST /v1/find`` lists the provider as a
  verified offer (its advert fetched over libp2p: directly, or through a
  relay); the advert's addresses are checked (none private);
* **agreement**: ``POST /v1/jobs`` naming the provider at the addresses its
  advert gave (a relay circuit for a private provider): quote, agreement;
* **job**: a busybox job with its own SIZE MiB random input (new in every
  cell: blobs are content-addressed, a known one is not transferred again)
  that it copies, behind one line naming the cell, to a SIZE MiB output;
  **verified**: the run finished, the receipt was accepted and the output's
  SHA-256 is the expected one.

Columns: the libp2p path between the two (``connection_path``: direct /
reversed / hole-punched / relayed) at the end of the cell, seconds from the
submission to the agreement; then per direction (data in: the provider
fetches the input; data out: the submitter fetches the output), from the
fetching side's transfer record (``GET /v1/transfers/<digest>``), the data
path (``direct``: TCP to the data port or a libp2p stream on a direct
connection; ``reversed``, ``hole-punched``, ``relayed``: a libp2p data stream
on such a connection; ``punched-tcp``: a raw TCP connection punched through
a symmetric NAT and an EIM one, spec/transfer.md section 3.7), ``ttfb``: seconds from the fetch's start to its first
verified bytes (chunks are reported per request of 16 chunks, so this is the
time to the first 16 MiB), and the throughput of the whole fetch; and the
stage where a failed cell stopped.  Last line: ``reach: K/16 cells completed, D direct`` (D: completed
cells whose data went over a non-relayed path in both directions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

KINDS = {"pub": "public", "eim": "eim", "sym": "symmetric", "fw": "firewall"}
SUBMITTERS = {"pub": "pub-1", "eim": "eim1-0", "sym": "sym1-0", "fw": "fw1-0"}
PROVIDERS = {"pub": "pub-2", "eim": "eim2-0", "sym": "sym2-0", "fw": "fw2-0"}
DIRECT = ("direct", "reversed", "hole-punched", "punched-tcp")


def make_job(base: Path, image: Path, size_mib: int, transfer_s: int, seed: int
             ) -> tuple[Path, str, str]:
    """A job with its own SIZE MiB input (content-addressed blobs: a reused input or
    an output equal to the input would not be transferred at all), and the
    SHA-256 its output must have: the input behind a line naming the seed."""
    base.mkdir(parents=True)
    rng = random.Random(seed)
    salt = f"cell {seed}\n".encode()
    h = hashlib.sha256(salt)
    hin = hashlib.sha256()
    with (base / "input.bin").open("wb") as f:
        for _ in range(size_mib):
            chunk = rng.randbytes(1 << 20)
            h.update(chunk)
            hin.update(chunk)
            f.write(chunk)
    job = base / "job.toml"
    job.write_text(
        f'name = "reach"\nimage = "{image}"\ncommand = ["/bin/sh", "-c"]\n'
        f'args = ["(echo cell {seed}; cat /in/input.bin) > /out/output.bin"]\n'
        'outputs = ["/out"]\nmax_price = 1000000\n'
        f"[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = {4 * size_mib + 64}\n"
        f"[timeouts]\ntransfer_s = {transfer_s}\nqueue_s = 30\nrun_s = 120\n"
        '[[inputs]]\nfile = "input.bin"\npath = "/in/input.bin"\n'
    )
    return job, h.hexdigest(), hin.hexdigest()


def data_path(node: dict[str, Any], digest: str) -> dict[str, Any]:
    """The fetching side's transfer record of ``sha256:digest``: the data path, the
    time from the fetch's start to its first verified request (16 chunks), and
    the throughput of the whole fetch (control messages included)."""
    try:
        t = api(node).get(f"/v1/transfers/sha256:{digest}")
    except Exception:  # noqa: BLE001 - no record: the transfer never started
        return {}
    took = t.get("elapsed_s") or 0
    return {"path": t.get("path"), "ttfb_s": t.get("first_byte_s"),
            "mib_s": round(t["moved_bytes"] / (1 << 20) / took, 1) if took > 0 and t["moved_bytes"] else None}


def api(node: dict[str, Any], timeout: float = 60) -> Any:
    from node.api.client import ApiClient

    return ApiClient(socket_path=node["api"], timeout=timeout)


def find(sub: dict[str, Any], prov: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    res = api(sub).post("/v1/find", {"cpus": 0.5, "limit": 50, "timeout": 20})
    offer = next((o for o in res["offers"] if o["peer_id"] == prov["peer_id"]), None)
    cand = next((c for c in res["candidates"] if c["peer_id"] == prov["peer_id"]), None)
    return {"find_s": round(time.monotonic() - t0, 2), "offer": offer,
            "find_status": cand["status"] if cand else "not found"}


def run_job(sub: dict[str, Any], prov: dict[str, Any], addrs: list[str], job: Path,
            results: Path) -> dict[str, Any]:
    """Submit to ``prov`` at ``addrs``; follow the events; the cell's timings."""
    from node.jobs.jobfile import load_job

    loaded = load_job(job)
    peers = [f"{a}/p2p/{prov['peer_id']}" for a in addrs] or [prov["peer_id"]]
    body = {"job_hex": loaded.spec.encode().hex(), "results_dir": str(results),
            "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()},
            "peers": peers[:1], "retries": 0}
    t0 = time.monotonic()
    run = api(sub).post("/v1/jobs", body)
    marks: dict[str, float] = {}
    detail, outcome, end = "", None, {}
    for ev in api(sub, timeout=600).stream("GET", f"/v1/jobs/{run['id']}/events?follow=1"):
        now = time.monotonic() - t0
        kind = ev.get("event")
        if kind == "agreement":
            marks["agreed"] = now
        elif kind == "progress" and ev.get("done", 0) > 0:
            marks.setdefault("first_byte", now)
            if ev["done"] == ev["total"]:
                marks.setdefault("transferred", now)
        elif kind == "phase" and ev.get("phase") == "running":
            marks.setdefault("running", now)
        elif kind == "result":
            marks["result"], outcome = now, ev.get("outcome")
        elif kind == "receipt":
            marks["receipt"] = now
        elif kind == "end":
            end = ev
            break
        if kind in ("attempt_failed", "state") and ev.get("detail"):
            detail = str(ev["detail"])
    if "agreed" not in marks:
        stage = "agreement"
    elif "transferred" not in marks or "running" not in marks:
        stage = "transfer in"  # the provider could not fetch the image and inputs
    elif outcome != "exited":
        stage = "run"
    else:
        stage = "transfer out"  # the run succeeded; its outputs did not reach us
    return {"run": run["id"], "state": end.get("state"), "detail": end.get("detail") or detail,
            "stage": stage, "outcome": outcome, **{k: round(v, 2) for k, v in marks.items()}}


def cell(nodes: dict[str, dict[str, Any]], s: str, p: str, image: Path, size_mib: int,
         transfer_s: int, base: Path, seed: int) -> dict[str, Any]:
    sub, prov = nodes[SUBMITTERS[s]], nodes[PROVIDERS[p]]
    job, digest, in_digest = make_job(base / f"job-{s}-{p}", image, size_mib, transfer_s, seed)
    row: dict[str, Any] = {"submitter": s, "provider": p}
    row.update(find(sub, prov))
    offer = row.pop("offer")
    if offer is None:
        row.update(completed=False, stage="find")
        return row
    row["advert_addrs"] = offer["addrs"]
    results = base / f"results-{s}-{p}"
    try:
        row.update(run_job(sub, prov, offer["addrs"], job, results))
    except Exception as exc:  # noqa: BLE001 - a bench reports, it does not stop
        row.update(state="error", detail=str(exc), stage="submit")
    out = results / str(row.get("run", "")) / "out" / "output.bin"
    verified = out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == digest
    row["completed"] = row.get("state") == "finished" and verified
    if row["completed"]:
        row["stage"] = "done"
    ident = api(sub).get("/v1/id")
    row["path"] = ident["reachability"].get("connections", {}).get(prov["peer_id"])
    # the data plane, per direction, from the fetching side's transfer record
    row["data_in"] = data_path(prov, in_digest)
    row["data_out"] = data_path(sub, digest)
    return row


def bench(cells: list[tuple[str, str]], size_mib: int, transfer_s: int,
          logs: Path | None = None, log_level: str = "info") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cpn-bench-reach-") as tmp:
        base = Path(tmp)
        os.environ["CPN_TESTNET_DIR"] = str(base / "testnet")
        import netlab
        import testnet

        order = [h["name"] for h in netlab.plan(netlab.DEFAULT_TOPOLOGY, "x-")["hosts"].values()]
        seeds = [n for n in order if n == "pub-0"]
        order = seeds + [n for n in order if n not in seeds]
        execution = frozenset(order.index(n) for n in PROVIDERS.values())
        from node.execute.selftest_image import build_busybox_image

        image = base / "image"
        build_busybox_image(image)
        t0 = time.monotonic()
        try:
            up = testnet.up(0, nat=True, execution=execution, log_level=log_level, timeout=240)
            nodes = {n["name"]: n for n in up}
            up_s = round(time.monotonic() - t0, 1)
            reach = {n: api(nodes[n]).get("/v1/id")["reachability"] for n in nodes}
            rows = [cell(nodes, s, p, image, size_mib, transfer_s, base, seed)
                    for seed, (s, p) in enumerate(cells)]
        finally:
            if logs is not None:  # each daemon's log, for a cell that went wrong
                logs.mkdir(parents=True, exist_ok=True)
                for log in (base / "testnet").glob("*/node.log"):
                    shutil.copy(log, logs / f"{log.parent.name}.log")
            testnet.down()
    return {"up_s": up_s, "size_mib": size_mib, "reachability": reach, "rows": rows}


def table(result: dict[str, Any]) -> str:
    cols = ["sub", "prov", "find", "libp2p", "agreed", "data in", "ttfb", "MiB/s", "data out", "ttfb",
            "MiB/s", "result"]
    widths = [4, 4, 8, 12, 6, 12, 5, 6, 12, 5, 6, 0]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
    for r in result["rows"]:
        outcome = "verified" if r["completed"] else f"stopped: {r['stage']}"
        i, o = r.get("data_in") or {}, r.get("data_out") or {}
        vals = [r["submitter"], r["provider"], r["find_status"], r.get("path") or "-", r.get("agreed", "-"),
                i.get("path") or "-", i.get("ttfb_s") or "-", i.get("mib_s") or "-",
                o.get("path") or "-", o.get("ttfb_s") or "-", o.get("mib_s") or "-", outcome]
        lines.append("  ".join(f"{v!s:>{w}}" for v, w in zip(vals, widths, strict=True)))
    return "\n".join(lines)


def data_direct(row: dict[str, Any]) -> bool:
    """Both directions' data went over a non-relayed path."""
    return all((row.get(k) or {}).get("path") in DIRECT for k in ("data_in", "data_out"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--size-mib", type=int, default=50)
    p.add_argument("--cells", help="e.g. pub:eim,sym:sym (submitter:provider; default all 16)")
    p.add_argument("--logs", type=Path, help="copy every daemon's log to this directory")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                   help="the daemons' log level (with --logs: debug shows each hole punch's steps)")
    p.add_argument("--transfer-s", type=int, default=60,
                   help="the job's transfer timeout: how long a cell that cannot move data waits")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/reach.py: needs root (network namespaces, nftables)")
    cells = [(s, q) for s in KINDS for q in KINDS]
    if args.cells:
        cells = [tuple(c.split(":", 1)) for c in args.cells.split(",")]  # type: ignore[misc]
        bad = [c for c in cells if c[0] not in KINDS or c[1] not in KINDS]
        if bad:
            raise SystemExit(f"bench/reach.py: unknown cells {bad}; kinds: {', '.join(KINDS)}")
    import logging

    logging.basicConfig(level=logging.ERROR)
    result = bench(cells, args.size_mib, args.transfer_s, args.logs, args.log_level)
    done = [r for r in result["rows"] if r["completed"]]
    direct = [r for r in done if data_direct(r)]
    summary = f"reach: {len(done)}/{len(cells)} cells completed, {len(direct)} direct"
    if args.json:
        print(json.dumps(dict(result, summary=summary), indent=2))
    else:
        print(f"testnet up in {result['up_s']} s; {result['size_mib']} MiB in and out per job")
        for name, r in sorted(result["reachability"].items()):
            print(f"  {name:8} {r['status']:8} NAT {r['nat_type']:10} announces "
                  f"{len(r['direct_addrs'])} direct, {len(r['relay_addrs'])} relay address(es)")
        print(table(result))
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
